package conflict

import "fmt"

// The applier resolves conflicts inside PostgreSQL, in the same statement
// that applies a row, so that applying stays pipelined whatever the conflict
// rate. The expressions below are the SQL form of DecideWith; a test checks
// on a real server that both agree on every case, under every resolver.

// Inputs names the SQL expressions the decision is computed from.
type Inputs struct {
	Found      string // boolean: a local row with the key exists
	Same       string // boolean: it was last written by the remote change's origin
	LocalTS    string // timestamptz: origin commit time of the local row, NULL when unknown
	LocalNode  string // int: node that wrote the local row
	RemoteTS   string // timestamptz: origin commit time of the remote change
	RemoteNode string // int: node of the remote change
	// Resolver, when set, gives the text expression of the resolver of a
	// conflict type (read at run time from bdr.conflict_resolvers); nil,
	// or "" for a type, decides by last_update_wins without reading one.
	Resolver func(Type) string
}

// DecisionSQL is Decide as SQL expressions, for one kind of change.
type DecisionSQL struct {
	Record     string // boolean: a conflict happened and is recorded
	Apply      string // boolean: the remote change is applied
	Clean      string // boolean, UPDATE and DELETE: the existing row's version is no conflict
	Type       string // text: the conflict type
	Resolution string // text: the resolution
	Reason     string // text: why
}

// RemoteWinsSQL is last-update-wins: the remote version is newer than the
// local one (an unknown local commit time is older than anything; equal
// times go to the higher node id).
func RemoteWinsSQL(in Inputs) string {
	return fmt.Sprintf("(%s IS NULL OR %s < %s OR (%s = %s AND %s < %s))",
		in.LocalTS, in.LocalTS, in.RemoteTS, in.LocalTS, in.RemoteTS, in.LocalNode, in.RemoteNode)
}

// VersionSQL is a row version as conflict reasons spell it: its commit
// time (timestamptz expression ts) and node (int expression node).
func VersionSQL(ts, node string) string {
	return fmt.Sprintf(`coalesce(to_char(%s AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.USZ') || ' by node ' || %s, 'unknown commit time')`, ts, node)
}

// InsertSQL is Decide for a remote INSERT.
func InsertSQL(in Inputs) DecisionSQL {
	wins := WinsSQL(in, InsertInsert)
	return DecisionSQL{
		Record:     in.Found,
		Apply:      fmt.Sprintf("(NOT %s OR %s)", in.Found, wins),
		Type:       fmt.Sprintf("'%s'", InsertInsert),
		Resolution: ResolutionSQL(in, InsertInsert, wins),
		Reason:     ReasonSQL(in, InsertInsert),
	}
}

// CleanSQL is when a remote UPDATE or DELETE of an existing row is no
// conflict under last_update_wins: the row was last written by the remote
// node itself, or by another node before the remote change (Decide applies
// it without a record). DecisionSQL.Clean is the same under the resolvers.
func CleanSQL(in Inputs) string {
	return fmt.Sprintf("(%s OR %s)", in.Same, RemoteWinsSQL(in))
}

const (
	noRowUpdate = "no local row with this key; the update has nothing to change"
	noRowDelete = "no local row with this key; already deleted"
)

// UpdateSQL is DecideWith for a remote UPDATE.
func UpdateSQL(in Inputs) DecisionSQL {
	clean, apply, resolution, reason := changedSQL(in, UpdateUpdate)
	return DecisionSQL{
		Record:     fmt.Sprintf("(NOT %s OR NOT %s)", in.Found, clean),
		Apply:      apply,
		Clean:      clean,
		Type:       fmt.Sprintf("CASE WHEN %s THEN '%s' ELSE '%s' END", in.Found, UpdateUpdate, UpdateMissing),
		Resolution: fmt.Sprintf("CASE WHEN %s THEN %s ELSE %s END", in.Found, resolution, missingSQL(in, UpdateMissing, noRowUpdate)),
		Reason:     fmt.Sprintf("CASE WHEN NOT %s THEN %s ELSE %s END", in.Found, quote(noRowUpdate), reason),
	}
}

// DeleteSQL is DecideWith for a remote DELETE.
func DeleteSQL(in Inputs) DecisionSQL {
	clean, apply, resolution, reason := changedSQL(in, UpdateDelete)
	return DecisionSQL{
		Record:     fmt.Sprintf("(NOT %s OR NOT %s)", in.Found, clean),
		Apply:      apply,
		Clean:      clean,
		Type:       fmt.Sprintf("CASE WHEN %s THEN '%s' ELSE '%s' END", in.Found, UpdateDelete, DeleteMissing),
		Resolution: fmt.Sprintf("CASE WHEN %s THEN %s ELSE %s END", in.Found, resolution, missingSQL(in, DeleteMissing, noRowDelete)),
		Reason:     fmt.Sprintf("CASE WHEN %s THEN %s ELSE %s END", in.Found, reason, quote(noRowDelete)),
	}
}
