package apply

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/conflict"
	"github.com/bdr-dev/bdr/decoder"
)

// Unique indexes other than the replica identity. A remote row may collide
// with a different local row on one of them (unique_secondary), on several
// (multiple_unique), or, for an UPDATE that changes the key, on the key
// itself (pk_change). The rule, the same on every node: of two rows that
// collide, the older version is deleted (last update wins, the times and
// origins compared as for every conflict). The remote change beats a
// colliding local row: that row is deleted and the change applied. A
// colliding local row beats the remote change: the change is not applied,
// and a remote UPDATE's row is deleted, as it is on the node that wrote the
// update when the newer row reaches it. Each node reaches the same outcome
// for each pair whatever the order the rows arrive in.
//
// Resolving statements of a table with such indexes are preceded, in the
// same pipeline and with the same parameters, by a unique statement that
// finds the colliding rows, deletes the older ones, records each conflict
// and sets bdr.skip for the main statement when the remote change lost.
// Two statements, not one with data-modifying CTEs, because the order in
// which PostgreSQL runs those is not defined: the main statement must see
// the deletions.
//
// Partial and expression indexes are not checked: a collision there fails
// the change, which is retried and then parked (bdr.apply_errors).

// uniqueIndex is a unique index of the local table that the applier checks.
type uniqueIndex struct {
	name             string
	cols             []int // positions in the relation's columns
	nullsNotDistinct bool
}

// localUnique is a unique index as the local catalog describes it.
type localUnique struct {
	name             string
	cols             []string
	nullsNotDistinct bool
}

// setSkip is the transaction-local setting a unique statement leaves for
// the main statement: 'true' when the remote change lost to a local row.
const setSkip = "bdr.skip"

// setCollisionDeleted names, for the tombstone trigger, the rows the
// unique statement deletes because the remote change beat them
// ("relid/ctid;"...): their deletes take the rows' own versions (catalog
// migration 9).
const setCollisionDeleted = "bdr.collision_deleted"

// notSkipped is false when the unique statement before decided that the
// remote change is not applied.
var notSkipped = fmt.Sprintf("coalesce(pg_catalog.current_setting('%s', true), '') <> 'true'", setSkip)

func loadUniques(ctx context.Context, conn *pgx.Conn, rel *decoder.Relation) ([]localUnique, error) {
	rows, err := conn.Query(ctx, `SELECT i.relname::text,
			array(SELECT a.attname::text FROM pg_catalog.unnest(x.indkey) WITH ORDINALITY k(attnum, n)
				JOIN pg_catalog.pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum ORDER BY k.n),
			x.indnullsnotdistinct
		FROM pg_catalog.pg_index x
		JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
		JOIN pg_catalog.pg_class c ON c.oid = x.indrelid
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2 AND x.indisunique AND x.indisvalid
		  AND x.indpred IS NULL AND x.indexprs IS NULL AND NOT (0 = ANY (x.indkey::int2[]))
		ORDER BY i.relname`, rel.Schema, rel.Name)
	if err == nil {
		var out []localUnique
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (localUnique, error) {
			var u localUnique
			err := r.Scan(&u.name, &u.cols, &u.nullsNotDistinct)
			return u, err
		})
		if err == nil {
			return out, nil
		}
	}
	return nil, fmt.Errorf("read unique indexes of %s: %w", rel, err)
}

// useUniques keeps the unique indexes, other than the key's, whose columns
// the remote relation carries.
func (p *plan) useUniques(lus []localUnique) {
	if !p.resolving() || p.hasDelta() {
		return
	}
	pos := map[string]int{}
	for i, c := range p.rel.Columns {
		pos[c.Name] = i
	}
	key := map[int]bool{}
	for _, k := range p.keys {
		key[k] = true
	}
next:
	for _, lu := range lus {
		u := uniqueIndex{name: lu.name, nullsNotDistinct: lu.nullsNotDistinct}
		same := len(lu.cols) == len(p.keys)
		for _, c := range lu.cols {
			i, ok := pos[c]
			if !ok {
				continue next
			}
			same = same && key[i]
			u.cols = append(u.cols, i)
		}
		if !same {
			p.uniques = append(p.uniques, u)
		}
	}
}

// collision is the condition that the row alias collides on index cols
// with the new values, whose parameter numbers param gives by column.
func (p *plan) collision(alias string, cols []int, nnd bool, param func(col int) int) string {
	op := "="
	if nnd {
		op = "IS NOT DISTINCT FROM"
	}
	conds := make([]string, len(cols))
	for i, c := range cols {
		conds[i] = fmt.Sprintf("%s.%s %s %s", alias, p.cols[c], op, placeholder(param(c), p.types[c]))
	}
	return "(" + strings.Join(conds, " AND ") + ")"
}

// uniqueInsertSQL is the unique statement before a resolving INSERT; it
// takes the INSERT's parameters.
func (p *plan) uniqueInsertSQL() string {
	param := func(c int) int { return c + 3 }
	var checks []check
	for _, u := range p.uniques {
		checks = append(checks, check{index: u.name, cond: p.collision("t", u.cols, u.nullsNotDistinct, param), typ: conflict.UniqueSecondary,
			ghost: p.ghostCond(u.cols, param)})
	}
	all := make([]int, len(p.cols))
	for i := range all {
		all[i] = i
	}
	return p.uniqueSQL(checks, p.keyConds("t", p.keyParams(true, 3)), p.keyParams(true, 3), nil, false, p.tupleJSON(all, 3))
}

// uniqueUpdateSQL is the unique statement before the resolving UPDATE of
// the columns in mask, or "" when the UPDATE cannot collide: it takes the
// UPDATE's parameters. With keyChanged it also checks the new key.
func (p *plan) uniqueUpdateSQL(mask string, keyChanged bool) string {
	params := map[int]int{}
	next := len(p.keys) + 3
	var present []int
	for i := range p.cols {
		if mask[i] == '1' {
			params[i] = next
			present = append(present, i)
			next++
		}
	}
	param := func(c int) int { return params[c] }
	carried := func(cols []int) bool {
		for _, c := range cols {
			if _, ok := params[c]; !ok {
				return false
			}
		}
		return true
	}
	var checks []check
	var newKey []int
	if keyChanged && carried(p.keys) {
		checks = append(checks, check{index: "the key", cond: p.collision("t", p.keys, false, param), typ: conflict.PKChange})
		for _, k := range p.keys {
			newKey = append(newKey, param(k))
		}
	}
	for _, u := range p.uniques {
		if carried(u.cols) {
			checks = append(checks, check{index: u.name, cond: p.collision("t", u.cols, u.nullsNotDistinct, param), typ: conflict.UniqueSecondary,
				ghost: p.ghostCond(u.cols, param)})
		}
	}
	if len(checks) == 0 {
		return ""
	}
	return p.uniqueSQL(checks, p.keyConds("t", p.keyParams(false, 3)), p.keyParams(false, 3), newKey, true, p.tupleJSON(present, len(p.keys)+3))
}

// check is one index a remote row may collide on.
type check struct {
	index string
	cond  string
	typ   conflict.Type
	ghost string // the collision with a deleted row (ghostCond); "" for the key
}

// uniqueSQL finds the local rows other than the target (the row with the
// change's key) that collide on one of checks, deletes those the remote
// change beats, and when one beats it, sets bdr.skip and deletes the
// target if the change would have replaced it. It records one conflict per row deleted, and one for
// the local row that beat the change; it returns their types.
//
// A deleted row of another key that collides with the change and is newer
// beats it too (under last_update_wins): had the change arrived before the
// delete, that row would have won (plan_tombstone.go, ghosts).
//
// A key change (newKey, the parameters of its new key; nil for other
// changes) is the delete of its old key and the insert of its row under
// the new one. Its row is the target's, moved, only when it applies to the
// target (the target is older); a newer target stays (update_update), and
// is then a row like any other that the inserted row may collide with, now
// or in its past versions. Its version is kept, and its tombstone left
// when it loses, under the new key: the row it stands for is there.
func (p *plan) uniqueSQL(checks []check, target string, targetKey, newKey []int, update bool, tuple string) string {
	// The target goes when the change would have replaced it: a losing
	// UPDATE's row, and the row a losing INSERT beats under insert_insert;
	// a newer local version of it stays, as it would without the
	// collision.
	apply := onVersion("t.xmin", remoteTS, stmtResolvers, func(in conflict.Inputs) string { return conflict.UpdateSQL(in).Apply })
	loserFate := "the remote update is not applied and, unless the resolver keeps local rows, its row is deleted"
	if !update {
		apply = conflict.WinsSQL(p.rowInputs("t", remoteTS, stmtResolvers), conflict.InsertInsert)
		loserFate = "the remote row is not inserted, and a local row it would have replaced is deleted"
	}
	// own is the condition that row t is the change's own (not one it
	// collides with); otherRow, that entry x of the deleted rows and
	// kept versions is another row's.
	own, otherRow, rowKey := target, p.otherKey(targetKey), targetKey
	if newKey != nil {
		loserFate = "the key change is not applied: its row is not inserted under its new key, and its old row is deleted unless newer"
		own = fmt.Sprintf("(%s AND (%s OR %s))", target, mine("t.xmin"), apply)
		otherRow = fmt.Sprintf("(%s OR NOT EXISTS (SELECT 1 FROM ONLY %s t WHERE %s))", otherRow, p.table, own)
		rowKey = newKey
	}
	conds := make([]string, len(checks))
	indexes := make([]string, len(checks))
	var ghostConds []string
	for i, c := range checks {
		conds[i] = c.cond
		indexes[i] = fmt.Sprintf("CASE WHEN %s THEN '%s:%s' END", c.cond, c.typ, strings.ReplaceAll(c.index, "'", "''"))
		if c.ghost != "" {
			ghostConds = append(ghostConds, c.ghost)
		}
	}
	ghost, ghostRecord, ghostTypes := "", "", ""
	ghostFate := "the remote row is not inserted"
	if update {
		ghostFate = "the remote update is not applied and its row is deleted"
	}
	if len(ghostConds) > 0 {
		gin := conflict.Inputs{Found: "true", Same: "false", LocalTS: "g.lts", LocalNode: "g.lnode",
			RemoteTS: remoteTS, RemoteNode: setting(setRemoteID, "int")}
		ghost = fmt.Sprintf(`, g AS (
	SELECT * FROM (%s) g WHERE %s = '%s' AND NOT %s ORDER BY g.lts DESC LIMIT 1
)`, p.ghosts(ghostConds, otherRow), stmtResolvers(conflict.UniqueSecondary), conflict.ResolverLastUpdateWins, conflict.RemoteWinsSQL(gin))
		ghostRecord = fmt.Sprintf(`, h2 AS (
	INSERT INTO bdr.conflict_history (local_node_id, local_node_name, remote_node_id, remote_node_name,
		schema_name, table_name, conflict_type, resolution, reason, local_tuple, local_commit_time,
		local_origin_node_id, remote_tuple, remote_xid, remote_commit_time, remote_commit_lsn)
	SELECT %s, %s, %s, %s, $1::text, $2::text, '%s', '%s',
		'collides with a row deleted here since (its tombstone): ' || %s || '; %s',
		g.row, g.lts, g.lnode, %s, %s, %s, %s
	FROM g WHERE NOT EXISTS (SELECT 1 FROM w WHERE NOT w.wins)
	RETURNING conflict_type
)`, setting(setLocalID, "int"), setting(setLocalName, "text"), setting(setRemoteID, "int"), setting(setRemoteName, "text"),
			conflict.UniqueSecondary, conflict.KeepLocal, conflict.ReasonSQL(gin, conflict.UniqueSecondary),
			ghostFate,
			tuple, setting(setXid, "bigint"), setting(setCommitTS, "timestamptz"), setting(setCommitLSN, "pg_lsn"))
		ghostTypes = " UNION ALL SELECT conflict_type FROM h2"
	}
	in := conflict.Inputs{Found: "true", Same: "false", LocalTS: "v.lts", LocalNode: "v.lnode",
		RemoteTS: remoteTS, RemoteNode: setting(setRemoteID, "int"), Resolver: stmtResolvers}
	// byType is the expression of each of the three types, by the
	// collision's type (v.ctype).
	byType := func(expr func(t conflict.Type) string) string {
		return fmt.Sprintf("CASE v.ctype WHEN '%s' THEN %s WHEN '%s' THEN %s ELSE %s END",
			conflict.UniqueSecondary, expr(conflict.UniqueSecondary), conflict.PKChange, expr(conflict.PKChange),
			expr(conflict.MultipleUnique))
	}
	wins := byType(func(t conflict.Type) string { return conflict.WinsSQL(in, t) })
	// Only the resolvers under which every node keeps the same row delete
	// the row of a losing remote UPDATE (keep_local keeps the local rows).
	converging := byType(func(t conflict.Type) string {
		return fmt.Sprintf("(%s IN ('%s', '%s'))", stmtResolvers(t), conflict.ResolverLastUpdateWins, conflict.ResolverFirstUpdateWins)
	})
	resolution := byType(func(t conflict.Type) string { return conflict.ResolutionSQL(in, t, "v.wins") })
	reason := byType(func(t conflict.Type) string { return conflict.ReasonSQL(in, t) })
	// The type of a collision: the index's, or multiple_unique when the
	// remote row collides on more than one index (with this row or others).
	typ := fmt.Sprintf("CASE WHEN (SELECT count(DISTINCT x) FROM c, unnest(c.indexes) x) > 1 THEN '%s' ELSE split_part(c.indexes[1], ':', 1) END",
		conflict.MultipleUnique)
	lost := "EXISTS (SELECT 1 FROM w WHERE NOT w.wins)"
	ghostLost := ""
	if ghost != "" {
		lost = "(" + lost + " OR EXISTS (SELECT 1 FROM g))"
		ghostLost = " OR EXISTS (SELECT 1 FROM g)"
	}
	targetGone := fmt.Sprintf(`, k AS (
	DELETE FROM ONLY %s t WHERE %s AND (%s OR %s) AND (EXISTS (SELECT 1 FROM w WHERE NOT w.wins AND w.converging)%s) RETURNING 1
)`, p.table, target, mine("t.xmin"), apply, ghostLost)
	// With no row under its key, the losing change leaves a tombstone
	// there, of its own version: on the nodes where it applied before the
	// row it lost to arrived, that row's arrival deleted its row as of
	// that version (see catalog migration 9).
	row := "NULL::jsonb"
	if !update {
		row = tuple
	}
	lostConverging := fmt.Sprintf("(EXISTS (SELECT 1 FROM w WHERE NOT w.wins AND w.converging)%s)", ghostLost)
	targetGone += ", " + p.leaveTombstone(targetKey, lostConverging, row)
	if newKey != nil {
		// A key change's row, where it applied first, was deleted under
		// its new key when the row it lost to arrived.
		targetGone += ", " + strings.Replace(p.leaveTombstone(newKey, lostConverging, tuple), "ts AS (", "ts2 AS (", 1)
	}
	targetGone += ", " + p.keepVersion(rowKey, tuple)

	return fmt.Sprintf(`WITH %s, c AS (
	SELECT t.ctid AS tid, t AS row, ts.timestamp AS lts, ts.roident AS lro,
		array_remove(ARRAY[%s], NULL) AS indexes
	FROM ONLY %s t LEFT JOIN LATERAL pg_catalog.pg_xact_commit_timestamp_origin(t.xmin) ts ON true
	WHERE (%s) AND NOT %s
	FOR UPDATE OF t
), v AS (
	SELECT c.*, %s AS lnode, %s AS ctype FROM c
), w AS (
	SELECT v.*, %s AS wins, %s AS converging FROM v
)%s, d AS (
	DELETE FROM ONLY %s t USING w WHERE t.ctid = w.tid AND w.wins RETURNING 1
)%s, h AS (
	INSERT INTO bdr.conflict_history (local_node_id, local_node_name, remote_node_id, remote_node_name,
		schema_name, table_name, conflict_type, resolution, reason, local_tuple, local_commit_time,
		local_origin_node_id, remote_tuple, remote_xid, remote_commit_time, remote_commit_lsn)
	SELECT %s, %s, %s, %s, $1::text, $2::text, v.ctype, %s,
		'collides on ' || array_to_string(array(SELECT split_part(x, ':', 2) FROM unnest(v.indexes) x), ', ') || ': ' ||
		%s || '; ' || CASE WHEN v.wins THEN 'the local row is deleted' ELSE '%s' END,
		pg_catalog.to_jsonb(v.row), v.lts, v.lnode, %s, %s, %s, %s
	FROM w v
	WHERE v.wins OR v.tid = (SELECT x.tid FROM w x WHERE NOT x.wins ORDER BY x.lts DESC NULLS LAST, x.lnode DESC LIMIT 1)
	RETURNING conflict_type
)%s
SELECT h.conflict_type FROM (SELECT pg_catalog.set_config('%s', (%s)::text, true),
	pg_catalog.set_config('%s', coalesce((SELECT pg_catalog.string_agg(%s::text || '/' || w.tid::text || ';', '') FROM w WHERE w.wins), ''), true)) s
LEFT JOIN (SELECT conflict_type FROM h%s) h ON true`,
		resolversCTE(conflict.UniqueSecondary, conflict.PKChange, conflict.MultipleUnique, conflict.UpdateUpdate, conflict.InsertInsert),
		strings.Join(indexes, ", "), p.table, strings.Join(conds, " OR "), "("+own+")",
		nodeOf("c.lro"), typ, wins, converging,
		ghost, p.table, targetGone,
		setting(setLocalID, "int"), setting(setLocalName, "text"), setting(setRemoteID, "int"), setting(setRemoteName, "text"),
		resolution, reason, loserFate, tuple, setting(setXid, "bigint"), setting(setCommitTS, "timestamptz"), setting(setCommitLSN, "pg_lsn"),
		ghostRecord, setSkip, lost, setCollisionDeleted, p.relid(), ghostTypes)
}
