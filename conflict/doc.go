// Package conflict decides row conflicts and describes them for the
// bdr.conflict_history table.
//
// It owns the rules (DESIGN rule 3): given what the applier found locally
// and what arrived from the peer, which version wins and why, under the
// resolver set for the table and conflict type (last_update_wins unless
// bdr.alter_table_conflict_resolver says otherwise). It has no network
// code: Decide and DecideWith are the rules in Go, and sql.go and
// resolver.go the same rules as SQL expressions, which the applier puts in
// the statements that apply rows, so that conflicts are decided and
// recorded inside PostgreSQL.
//
// Every function is pure and safe for concurrent use.
package conflict
