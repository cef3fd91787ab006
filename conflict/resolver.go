package conflict

import (
	"fmt"
	"strings"
)

// Resolver names how the conflicts of one type are decided on one table
// (or group-wide), as bdr.alter_table_conflict_resolver sets it in the
// replicated table bdr.conflict_resolvers. Every node reads the same
// setting, but only last_update_wins and first_update_wins make two nodes
// that meet the same pair of versions keep the same one.
type Resolver string

// Resolvers.
const (
	// ResolverLastUpdateWins (the default): the later origin commit wins,
	// equal times go to the higher node id (DESIGN rule 3).
	ResolverLastUpdateWins Resolver = "last_update_wins"
	// ResolverFirstUpdateWins: the earlier origin commit wins, equal times
	// go to the lower node id; a version of unknown time loses, as under
	// last_update_wins. Only for conflicts both sides detect (an INSERT
	// meeting a row with its key): a node receiving an UPDATE cannot tell
	// one made concurrently from one made after seeing its row, so making
	// the earlier update win would also drop every later one.
	ResolverFirstUpdateWins Resolver = "first_update_wins"
	// ResolverKeepLocal: the local row stays whatever the versions. An
	// UPDATE or DELETE is a conflict as soon as the local row was last
	// written by another node than the change's (concurrently or not).
	// Does not converge: two nodes that changed a row each keep their own.
	ResolverKeepLocal Resolver = "keep_local"
	// ResolverApplyRemote: the remote change is applied whatever the
	// versions. Does not converge: two nodes that changed a row each take
	// the other's.
	ResolverApplyRemote Resolver = "apply_remote"
	// ResolverError: the change is not applied; its whole transaction
	// fails with SQLSTATE BR003 and is parked in bdr.apply_errors.
	ResolverError Resolver = "error"
)

// Resolutions of the resolvers other than last_update_wins.
const (
	FirstKeepLocal  Resolution = "first_update_wins_keep_local"
	FirstKeepRemote Resolution = "first_update_wins_keep_remote"
	// LocalKept: keep_local decided, the remote change is not applied.
	LocalKept Resolution = "keep_local"
	// RemoteApplied: apply_remote decided, the remote change is applied.
	RemoteApplied Resolution = "apply_remote"
)

// ErrorSQLState is the SQLSTATE of a conflict whose resolver is error.
const ErrorSQLState = "BR003"

// Resolvers lists the resolvers conflict type t takes, the default first;
// nil for an unknown type. The conflicts on other unique indexes than the
// replica identity (unique_secondary, multiple_unique, pk_change) compare
// two versions as insert_insert does and take the same.
func Resolvers(t Type) []Resolver {
	switch t {
	case InsertInsert, UniqueSecondary, MultipleUnique, PKChange:
		return []Resolver{ResolverLastUpdateWins, ResolverFirstUpdateWins, ResolverKeepLocal, ResolverApplyRemote, ResolverError}
	case UpdateUpdate, UpdateDelete:
		return []Resolver{ResolverLastUpdateWins, ResolverKeepLocal, ResolverApplyRemote, ResolverError}
	case UpdateMissing, DeleteMissing:
		// No local row: nothing to keep or compare; skip (the default) or park.
		return []Resolver{ResolverLastUpdateWins, ResolverError}
	}
	return nil
}

// Effective is the resolver that decides conflict type t when r is set:
// r when t takes it, last_update_wins otherwise (the SQL function refuses
// such settings; this is what the applier does with one that got in).
func Effective(t Type, r Resolver) Resolver {
	for _, ok := range Resolvers(t) {
		if r == ok {
			return r
		}
	}
	return ResolverLastUpdateWins
}

// Earlier reports whether v beats o under first-update-wins: the earlier
// commit time wins (at microsecond precision), equal times go to the lower
// node id, and a version of unknown time loses, as under Newer: the node
// holding it may be the only one that has it, and only taking the other
// version makes both nodes hold the same.
func (v Version) Earlier(o Version) bool {
	switch {
	case !v.Known:
		return false
	case !o.Known:
		return true
	}
	vt, ot := v.CommitTime.UnixMicro(), o.CommitTime.UnixMicro()
	if vt != ot {
		return vt < ot
	}
	return v.NodeID < o.NodeID
}

// Reasons are templates shared by the Go and the SQL form (PostgreSQL's
// format()): %1$s is the local version, %2$s the remote one.
const (
	reasonNewer       = "remote %2$s is newer than local %1$s"
	reasonNotNewer    = "local %1$s is newer than or ties with remote %2$s"
	reasonEarlier     = "remote %2$s is earlier than local %1$s"
	reasonNotEarlier  = "local %1$s is earlier than or ties with remote %2$s"
	reasonKept        = "the local row is kept whatever the versions (local %1$s, remote %2$s)"
	reasonApplied     = "the remote change is applied whatever the versions (local %1$s, remote %2$s)"
	reasonError       = "local %1$s, remote %2$s"
	reasonKeptUpdate  = "the local row is kept whatever the versions (local %1$s, remote update %2$s)"
	reasonUpdate      = "the remote update is applied whatever the versions (local %1$s, remote update %2$s)"
	reasonErrorUpdate = "local %1$s, remote update %2$s"
	reasonDeleteOlder = "local %1$s is newer than or ties with remote delete %2$s"
	reasonKeptDelete  = "the local row is kept whatever the versions (local %1$s, remote delete %2$s)"
	reasonDelete      = "the remote delete is applied whatever the versions (local %1$s, remote delete %2$s)"
	reasonErrorDelete = "local %1$s, remote delete %2$s"
)

func reason(tmpl string, local, remote Version) string {
	return strings.NewReplacer("%1$s", local.String(), "%2$s", remote.String()).Replace(tmpl)
}

// Resolve decides a conflict of type t in which the remote version meets a
// local one (insert_insert, and the unique index conflicts) under resolver
// r (Effective applies).
func Resolve(t Type, r Resolver, local, remote Version) Decision {
	d := Decision{Conflict: true, Type: t}
	var tmpl string
	switch Effective(t, r) {
	case ResolverFirstUpdateWins:
		d.ApplyRemote = remote.Earlier(local)
		d.Resolution, tmpl = FirstKeepLocal, reasonNotEarlier
		if d.ApplyRemote {
			d.Resolution, tmpl = FirstKeepRemote, reasonEarlier
		}
	case ResolverKeepLocal:
		d.Resolution, tmpl = LocalKept, reasonKept
	case ResolverApplyRemote:
		d.Resolution, d.ApplyRemote, tmpl = RemoteApplied, true, reasonApplied
	case ResolverError:
		d.Error, tmpl = true, reasonError
	default:
		d.ApplyRemote = remote.Newer(local)
		d.Resolution, tmpl = KeepLocal, reasonNotNewer
		if d.ApplyRemote {
			d.Resolution, tmpl = KeepRemote, reasonNewer
		}
	}
	d.Reason = reason(tmpl, local, remote)
	return d
}

// changed decides a remote UPDATE or DELETE (type t: update_update or
// update_delete) of a row last written by another node, that is not older
// than the change or whose resolver is keep_local (see clean).
func changed(t Type, r Resolver, local, remote Version) Decision {
	d := Decision{Conflict: true, Type: t}
	update := t == UpdateUpdate
	var tmpl string
	switch {
	case r == ResolverKeepLocal:
		d.Resolution, tmpl = LocalKept, pick(update, reasonKeptUpdate, reasonKeptDelete)
	case r == ResolverApplyRemote:
		d.Resolution, d.ApplyRemote, tmpl = RemoteApplied, true, pick(update, reasonUpdate, reasonDelete)
	case r == ResolverError:
		d.Error, tmpl = true, pick(update, reasonErrorUpdate, reasonErrorDelete)
	default:
		d.Resolution, tmpl = KeepLocal, pick(update, reasonNotNewer, reasonDeleteOlder)
	}
	d.Reason = reason(tmpl, local, remote)
	return d
}

func pick(cond bool, a, b string) string {
	if cond {
		return a
	}
	return b
}

// clean reports whether a remote UPDATE or DELETE of a row last written by
// another node is no conflict under resolver r: the local version is
// unknown, or older than the change (last-update-wins' ordinary case of a
// row changed later on another node) unless r is keep_local, which keeps
// every row another node wrote.
func clean(r Resolver, local, remote Version) bool {
	return !local.Known || r != ResolverKeepLocal && remote.Newer(local)
}

// missing decides a remote change that found no row (update_missing,
// delete_missing): skipped, or parked under the error resolver.
func missing(t Type, r Resolver, reason string) Decision {
	if r == ResolverError {
		return Decision{Conflict: true, Type: t, Error: true, Reason: reason}
	}
	return Decision{Conflict: true, Type: t, Resolution: Skip, Reason: reason}
}

// ErrorMessage is the message of the error a conflict whose resolver is
// error raises (bdr.conflict_resolver_error), for the decision d.
func ErrorMessage(d Decision) string {
	return fmt.Sprintf("bdr: %s%s%s", d.Type, errorInfix, d.Reason)
}

const errorInfix = " conflict not resolved (resolver error): "

// ErrorType is the conflict type of the error resolver's error message
// msg (ErrorMessage), false when msg is not one.
func ErrorType(msg string) (Type, bool) {
	rest, ok := strings.CutPrefix(msg, "bdr: ")
	if !ok {
		return "", false
	}
	t, _, ok := strings.Cut(rest, errorInfix)
	if !ok || Resolvers(Type(t)) == nil {
		return "", false
	}
	return Type(t), true
}

// The SQL form. Inputs.Resolver gives the resolver of a type as an SQL
// expression read at run time; each decision is a CASE on it listing the
// resolvers the type takes, last_update_wins in the ELSE branch.

// pickSQL is the CASE on the resolver of t: the expression of each
// resolver in cases that t takes, def for last_update_wins and anything
// else. Without a resolver for t (no in.Resolver, or "") it is def.
func pickSQL(in Inputs, t Type, def string, cases map[Resolver]string) string {
	if in.Resolver == nil {
		return def
	}
	r := in.Resolver(t)
	if r == "" {
		return def
	}
	var b strings.Builder
	fmt.Fprintf(&b, "CASE %s", r)
	n := 0
	for _, res := range Resolvers(t) {
		if e, ok := cases[res]; ok && res != ResolverLastUpdateWins {
			fmt.Fprintf(&b, " WHEN '%s' THEN %s", res, e)
			n++
		}
	}
	if n == 0 {
		return def
	}
	fmt.Fprintf(&b, " ELSE %s END", def)
	return b.String()
}

// FirstWinsSQL is first-update-wins: the remote version is earlier than
// the local one (an unknown local commit time loses; equal times go to the
// lower node id).
func FirstWinsSQL(in Inputs) string {
	return fmt.Sprintf("(%s IS NULL OR %s < %s OR (%s = %s AND %s < %s))",
		in.LocalTS, in.RemoteTS, in.LocalTS, in.LocalTS, in.RemoteTS, in.RemoteNode, in.LocalNode)
}

// errorSQL raises the error of the error resolver (text, never returns).
func errorSQL(t Type, reason string) string {
	return fmt.Sprintf("bdr.conflict_resolver_error('%s', %s)", t, reason)
}

func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// reasonSQL formats the template the text expression tmpl gives (a CASE of
// the constants above) with the two versions, each spelled once: a
// statement's execution costs with the size of its expressions.
func reasonSQL(in Inputs, tmpl string) string {
	return fmt.Sprintf("pg_catalog.format(%s, %s, %s)", tmpl,
		VersionSQL(in.LocalTS, in.LocalNode), VersionSQL(in.RemoteTS, in.RemoteNode))
}

// WinsSQL is whether the remote version wins a conflict of type t that
// compares it with a local one (insert_insert, the unique index
// conflicts) under t's resolver; false for the error resolver, whose
// error ResolutionSQL raises.
func WinsSQL(in Inputs, t Type) string {
	return pickSQL(in, t, RemoteWinsSQL(in), map[Resolver]string{
		ResolverFirstUpdateWins: FirstWinsSQL(in),
		ResolverKeepLocal:       "false",
		ResolverApplyRemote:     "true",
		ResolverError:           "false",
	})
}

// ResolutionSQL is the resolution of such a conflict, given whether the
// remote change was applied (the boolean expression applied, e.g. WinsSQL
// or what the statement did); it raises SQLSTATE BR003 under the error
// resolver, so it must only be evaluated for a conflict being recorded.
func ResolutionSQL(in Inputs, t Type, applied string) string {
	outcome := func(remote, local Resolution) string {
		return fmt.Sprintf("CASE WHEN %s THEN '%s' ELSE '%s' END", applied, remote, local)
	}
	return pickSQL(in, t, outcome(KeepRemote, KeepLocal), map[Resolver]string{
		ResolverFirstUpdateWins: outcome(FirstKeepRemote, FirstKeepLocal),
		ResolverKeepLocal:       quote(string(LocalKept)),
		ResolverApplyRemote:     quote(string(RemoteApplied)),
		ResolverError:           errorSQL(t, reasonSQL(in, quote(reasonError))),
	})
}

// ReasonSQL is the reason of such a conflict: the versions compared.
func ReasonSQL(in Inputs, t Type) string {
	choose := func(cond, a, b string) string {
		return fmt.Sprintf("CASE WHEN %s THEN %s ELSE %s END", cond, quote(a), quote(b))
	}
	return reasonSQL(in, pickSQL(in, t, choose(RemoteWinsSQL(in), reasonNewer, reasonNotNewer), map[Resolver]string{
		ResolverFirstUpdateWins: choose(FirstWinsSQL(in), reasonEarlier, reasonNotEarlier),
		ResolverKeepLocal:       quote(reasonKept),
		ResolverApplyRemote:     quote(reasonApplied),
		ResolverError:           quote(reasonError),
	}))
}

// changedSQL are the decision expressions of a remote UPDATE or DELETE
// (type t) of an existing row: clean (no conflict), whether it is applied,
// the resolution and the reason of a conflict (see changed and clean).
func changedSQL(in Inputs, t Type) (cleanExpr, apply, resolution, reason string) {
	update := t == UpdateUpdate
	unknown := fmt.Sprintf("(%s IS NULL)", in.LocalTS)
	cleanExpr = fmt.Sprintf("(%s OR %s)", in.Same,
		pickSQL(in, t, RemoteWinsSQL(in), map[Resolver]string{ResolverKeepLocal: unknown}))
	applyCases := map[Resolver]string{ResolverKeepLocal: unknown, ResolverApplyRemote: "true"}
	// The change applies what is no conflict, as under error.
	apply = fmt.Sprintf("(%s AND (%s OR %s))", in.Found, in.Same, pickSQL(in, t, RemoteWinsSQL(in), applyCases))
	luwReason := fmt.Sprintf("CASE WHEN %s THEN %s ELSE %s END", RemoteWinsSQL(in), quote(reasonNewer), quote(pick(update, reasonNotNewer, reasonDeleteOlder)))
	reason = reasonSQL(in, pickSQL(in, t, luwReason, map[Resolver]string{
		ResolverKeepLocal:   quote(pick(update, reasonKeptUpdate, reasonKeptDelete)),
		ResolverApplyRemote: quote(pick(update, reasonUpdate, reasonDelete)),
		ResolverError:       quote(pick(update, reasonErrorUpdate, reasonErrorDelete)),
	}))
	resolution = pickSQL(in, t, quote(string(KeepLocal)), map[Resolver]string{
		ResolverKeepLocal:   quote(string(LocalKept)),
		ResolverApplyRemote: quote(string(RemoteApplied)),
		ResolverError:       errorSQL(t, reasonSQL(in, quote(pick(update, reasonErrorUpdate, reasonErrorDelete)))),
	})
	return cleanExpr, apply, resolution, reason
}

// missingSQL is the resolution of a change that found no row (type t):
// skip_change, or the error of the error resolver.
func missingSQL(in Inputs, t Type, reason string) string {
	return pickSQL(in, t, quote(string(Skip)), map[Resolver]string{ResolverError: errorSQL(t, quote(reason))})
}
