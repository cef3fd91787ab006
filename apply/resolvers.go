package apply

import (
	"fmt"
	"strings"

	"github.com/bdr-dev/bdr/conflict"
)

// Conflict resolvers (bdr.alter_table_conflict_resolver) are read at run
// time, inside the statements that apply rows: every decision expression
// (package conflict) is a CASE on the resolver of its conflict type, read
// from bdr.conflict_resolvers. A change of resolver, made here or applied
// from a peer, takes effect with the next statement that reads it; the
// plans stay as they are.
//
// Resolving statements read the table once per execution, in the CTE
// resolversCTE (one scan for every type, by the table name in $1 and $2),
// and only when an expression needs a resolver: a CTE referenced by
// scalar subqueries runs at the first reference. Each reference is a scan
// of the CTE's one row, not of the table: PostgreSQL initializes every
// expression and subplan of a statement at each execution, used or not,
// so their number is what a statement's execution costs. While no
// resolver is set anywhere (bdr.resolvers_set(), a constant the catalog
// redefines, see below), the references fold to last_update_wins and the
// statements cost what they did before resolvers existed.
//
// Fast statements decide only whether a change is a conflict, which only
// keep_local changes (every change of a row another node wrote is one
// under it); they read the resolver of the row's table (its tableoid: they
// have no table name parameter) only when bdr.keep_local_set() is true.
// Both functions are constants the catalog redefines when a setting
// appears or goes: PostgreSQL folds them into the plans, and plans the
// statements that use them again when they are redefined.
//
// Tables with delta columns decide update_update by their own rule (the
// delta columns added, the other columns by last update wins; see
// plan_delta.go) whatever the resolver; their other conflict types follow
// the resolvers.

// resolversCTE is the CTE rv of a resolving statement: one row, a column
// per conflict type the statement may meet (types) with the resolver of
// the table named by $1 and $2: its own, else the group-wide default
// (empty name), else last_update_wins.
func resolversCTE(types ...conflict.Type) string {
	cols := make([]string, len(types))
	for i, t := range types {
		cols[i] = fmt.Sprintf(`coalesce(max(r.resolver) FILTER (WHERE r.conflict_type = '%s' AND r.table_name <> ''),
		max(r.resolver) FILTER (WHERE r.conflict_type = '%s' AND r.table_name = ''), '%s') AS %s`,
			t, t, conflict.ResolverLastUpdateWins, t)
	}
	return fmt.Sprintf(`rv AS (
	SELECT %s
	FROM bdr.conflict_resolvers r WHERE r.table_name = '' OR (r.schema_name = $1::text AND r.table_name = $2::text)
)`, strings.Join(cols, ",\n\t\t"))
}

// stmtResolvers reads resolvers in a statement with resolversCTE, while
// any is set (bdr.resolvers_set(), folded by the planner: with none, the
// decision expressions are last_update_wins' alone).
func stmtResolvers(t conflict.Type) string {
	return fmt.Sprintf("CASE WHEN bdr.resolvers_set() THEN (SELECT rv.%s FROM rv) ELSE '%s' END", t, conflict.ResolverLastUpdateWins)
}

// fastResolvers reads, in a fast statement, the resolvers of the table of
// the row version alias, when a keep_local setting exists anywhere; else
// they are last_update_wins, which decides what is a conflict as every
// resolver but keep_local does.
func fastResolvers(alias string) func(conflict.Type) string {
	return func(t conflict.Type) string {
		return fmt.Sprintf(`CASE WHEN bdr.keep_local_set() THEN coalesce((SELECT r.resolver FROM bdr.conflict_resolvers r
	WHERE r.conflict_type = '%s' AND (r.table_name = '' OR (r.schema_name, r.table_name) = (SELECT n.nspname::text, c.relname::text
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s.tableoid))
	ORDER BY r.table_name = '' LIMIT 1), '%s') ELSE '%s' END`,
			t, alias, conflict.ResolverLastUpdateWins, conflict.ResolverLastUpdateWins)
	}
}

// deltaResolvers are resolvers for a table with delta columns: update_update
// is the delta rule's.
func deltaResolvers(resolvers func(conflict.Type) string) func(conflict.Type) string {
	return func(t conflict.Type) string {
		if t == conflict.UpdateUpdate {
			return ""
		}
		return resolvers(t)
	}
}

// appliedConflict is when a resolving UPDATE that applied its row may
// still have met a conflict to record: its resolver is apply_remote.
func appliedConflict() string {
	return fmt.Sprintf("%s = '%s'", stmtResolvers(conflict.UpdateUpdate), conflict.ResolverApplyRemote)
}
