package conflict

import "fmt"

// The applier resolves conflicts inside PostgreSQL, in the same statement
// that applies a row, so that applying stays pipelined whatever the conflict
// rate. The expressions below are the SQL form of Decide; a test checks on
// a real server that both agree on every case.

// Inputs names the SQL expressions the decision is computed from.
type Inputs struct {
	Found      string // boolean: a local row with the key exists
	Same       string // boolean: it was last written by the remote change's origin
	LocalTS    string // timestamptz: origin commit time of the local row, NULL when unknown
	LocalNode  string // int: node that wrote the local row
	RemoteTS   string // timestamptz: origin commit time of the remote change
	RemoteNode string // int: node of the remote change
}

// DecisionSQL is Decide as SQL expressions, for one kind of change.
type DecisionSQL struct {
	Record     string // boolean: a conflict happened and is recorded
	Apply      string // boolean: the remote change is applied
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

func versionSQL(ts, node string) string {
	return fmt.Sprintf(`coalesce(to_char(%s AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.USZ') || ' by node ' || %s, 'unknown commit time')`, ts, node)
}

func reasonLUW(in Inputs) string {
	remote, local := versionSQL(in.RemoteTS, in.RemoteNode), versionSQL(in.LocalTS, in.LocalNode)
	return fmt.Sprintf("CASE WHEN %s THEN 'remote ' || %s || ' is newer than local ' || %s ELSE 'local ' || %s || ' is newer than or ties with remote ' || %s END",
		RemoteWinsSQL(in), remote, local, local, remote)
}

func resolutionLUW(in Inputs) string {
	return fmt.Sprintf("CASE WHEN %s THEN '%s' ELSE '%s' END", RemoteWinsSQL(in), KeepRemote, KeepLocal)
}

// InsertSQL is Decide for a remote INSERT.
func InsertSQL(in Inputs) DecisionSQL {
	return DecisionSQL{
		Record:     in.Found,
		Apply:      fmt.Sprintf("(NOT %s OR %s)", in.Found, RemoteWinsSQL(in)),
		Type:       fmt.Sprintf("'%s'", InsertInsert),
		Resolution: resolutionLUW(in),
		Reason:     reasonLUW(in),
	}
}

// recordChange is when a remote UPDATE or DELETE is a conflict: the row is
// missing, or another node changed it at the same time or later.
func recordChange(in Inputs) string {
	return fmt.Sprintf("(NOT %s OR NOT %s)", in.Found, CleanSQL(in))
}

// CleanSQL is when a remote UPDATE or DELETE of an existing row is no
// conflict at all: the row was last written by the remote node itself, or
// by another node before the remote change (Decide applies it without a
// record).
func CleanSQL(in Inputs) string {
	return fmt.Sprintf("(%s OR %s)", in.Same, RemoteWinsSQL(in))
}

// UpdateSQL is Decide for a remote UPDATE.
func UpdateSQL(in Inputs) DecisionSQL {
	return DecisionSQL{
		Record:     recordChange(in),
		Apply:      fmt.Sprintf("(%s AND (%s OR %s))", in.Found, in.Same, RemoteWinsSQL(in)),
		Type:       fmt.Sprintf("CASE WHEN %s THEN '%s' ELSE '%s' END", in.Found, UpdateUpdate, UpdateMissing),
		Resolution: fmt.Sprintf("CASE WHEN %s THEN '%s' ELSE '%s' END", in.Found, KeepLocal, Skip),
		Reason: fmt.Sprintf("CASE WHEN NOT %s THEN 'no local row with this key; the update has nothing to change' ELSE %s END",
			in.Found, reasonLUW(in)),
	}
}

// DeleteSQL is Decide for a remote DELETE.
func DeleteSQL(in Inputs) DecisionSQL {
	return DecisionSQL{
		Record:     recordChange(in),
		Apply:      in.Found,
		Type:       fmt.Sprintf("CASE WHEN %s THEN '%s' ELSE '%s' END", in.Found, UpdateDelete, DeleteMissing),
		Resolution: fmt.Sprintf("CASE WHEN %s THEN '%s' ELSE '%s' END", in.Found, DeleteWins, Skip),
		Reason: fmt.Sprintf("CASE WHEN %s THEN 'delete wins over a concurrent update (local ' || %s || ', remote delete ' || %s || ')' ELSE 'no local row with this key; already deleted' END",
			in.Found, versionSQL(in.LocalTS, in.LocalNode), versionSQL(in.RemoteTS, in.RemoteNode)),
	}
}
