package apply

import (
	"fmt"
	"strings"

	"github.com/bdr-dev/bdr/conflict"
)

// Tombstones (catalog migration 8): the version of a deleted row is the
// version of its tombstone in bdr.tombstones, one row per deleted key,
// written by the ENABLE ALWAYS triggers on every table with a key (so this
// applier's deletes write them too, stamped with the remote commit). With
// them a remote change that finds no row is compared with the delete, as
// it would be with a row:
//
//   - an INSERT older than the delete is skipped (insert_delete); a newer
//     one is inserted, as on the node that deleted first;
//   - an UPDATE older than the delete is skipped, a newer one inserts its
//     row (update_delete); an UPDATE that finds neither row nor tombstone
//     inserts its row too (update_missing): its INSERT is still on its way
//     from another node, and loses to it when it arrives (insert_update);
//   - a DELETE leaves a tombstone even when the row is missing (its INSERT
//     may still be on its way), and is a delete_delete when it finds one.
//
// A tombstone with deleted false marks a row an UPDATE inserted, so that
// its INSERT, when it comes, is recorded as insert_update.

// relid is the table's oid, fixed when the statement is prepared.
func (p *plan) relid() string {
	return fmt.Sprintf("'%s'::pg_catalog.regclass::pg_catalog.oid", quoteLiteral(p.table))
}

// tombstoneKey is the tombstone key of the row whose key values are the
// parameters params: the jsonb object the trigger builds with to_jsonb.
func (p *plan) tombstoneKey(params []int) string {
	items := make([]string, 0, 2*len(p.keys))
	for i, k := range p.keys {
		items = append(items, "'"+quoteLiteral(p.rel.Columns[k].Name)+"'", placeholder(params[i], p.types[k]))
	}
	return "pg_catalog.jsonb_build_object(" + strings.Join(items, ", ") + ")"
}

// tombstoneCTE is d, the tombstone of the key params (no row when there is
// none), with the columns a conflict record reads of l (see lookup).
func (p *plan) tombstoneCTE(params []int) string {
	return fmt.Sprintf(`d AS (
	SELECT true AS found, x.deleted, NULL::text AS row, %s AS mine, c, %s AS node
	FROM bdr.tombstones x LEFT JOIN LATERAL (%s) c ON true
	WHERE x.relid = %s AND x.key = %s
)`, mine("x.xmin"), nodeOf("c.roident"), tombstoneVersion("x"), p.relid(), p.tombstoneKey(params))
}

// tombstoneVersion selects the version of the delete that tombstone alias
// stands for, as pg_xact_commit_timestamp_origin does (timestamp,
// roident): its xmin's, or the deleted row's own when a unique collision
// deleted it (at_time; catalog migration 9).
func tombstoneVersion(alias string) string {
	ts, ro := deleteVersion(alias, "z")
	return fmt.Sprintf(`SELECT %s AS timestamp, %s AS roident
	FROM pg_catalog.pg_xact_commit_timestamp_origin(%s.xmin) z`, ts, ro, alias)
}

// deleteVersion is the commit time and origin of the delete tombstone
// alias stands for, given xc, the commit time and origin of its xmin.
func deleteVersion(alias, xc string) (ts, ro string) {
	return fmt.Sprintf("coalesce(%s.at_time, %s.timestamp)", alias, xc),
		fmt.Sprintf("CASE WHEN %[1]s.at_time IS NULL THEN %[2]s.roident ELSE %[1]s.at_origin END", alias, xc)
}

// tombstoneNewer is true when the remote change is newer than the delete
// tombstone alias stands for (or this transaction wrote it).
func tombstoneNewer(alias string) string {
	ts, ro := deleteVersion(alias, "(pg_catalog.pg_xact_commit_timestamp_origin("+alias+".xmin))")
	return conflict.CleanSQL(conflict.Inputs{
		Found:      "true",
		Same:       fmt.Sprintf("coalesce(%s OR %s, false)", mine(alias+".xmin"), sameStream(ro)),
		LocalTS:    ts,
		LocalNode:  nodeOf(ro),
		RemoteTS:   remoteTS,
		RemoteNode: setting(setRemoteID, "int"),
	})
}

// tombstoneInputs are the decision inputs of the tombstone alias (d, or l
// in a record) against the remote change.
func tombstoneInputs(alias string) conflict.Inputs {
	in := inputs("true", alias+".mine", "("+alias+".c)", remoteTS)
	in.LocalNode = alias + ".node"
	return in
}

// noTombstone is true when the key params has no tombstone (fast INSERTs:
// any tombstone sends the change to the resolving statements).
func (p *plan) noTombstone(params []int) string {
	return fmt.Sprintf("NOT EXISTS (SELECT 1 FROM bdr.tombstones x WHERE x.relid = %s AND x.key = %s)", p.relid(), p.tombstoneKey(params))
}

// Reasons of the conflicts found with a tombstone.
const (
	reasonInsertMissing = "no local row and no tombstone: its insert has not arrived here yet; the row is inserted as the update made it"
	reasonUpdateToast   = "no local row, and the update does not carry every column (unchanged TOAST values): it has nothing to change"
)

// ghostCond is the condition that the deleted row a tombstone x keeps
// collides with the new values on the unique index of cols (param gives
// the parameter of a column): the same collision as with a live row.
func (p *plan) ghostCond(cols []int, param func(col int) int) string {
	conds := make([]string, len(cols))
	for i, c := range cols {
		conds[i] = fmt.Sprintf("(x.row -> '%s') = pg_catalog.to_jsonb(%s)", quoteLiteral(p.rel.Columns[c].Name), placeholder(param(c), p.types[c]))
	}
	return "(" + strings.Join(conds, " AND ") + ")"
}

// ghosts selects, as g, the row versions of other rows than the change's
// (other: the condition on x, an entry, that it is another row's, see
// otherKey), no longer in the table, that collide with the new
// values (conds, ghostCond's, OR'ed), each with its version (lts, lnode):
// versions a remote change older than them would have lost to had it
// arrived while they were there. They are the deleted rows the tombstones
// keep and the versions in bdr.unique_history (catalog migration 10): old
// rows of deletes and of changes of unique columns, and the remote
// versions unique statements checked, applied or not. This transaction's
// entries are left out: they are its own version or older ones.
func (p *plan) ghosts(conds []string, other string) string {
	cond := strings.Join(conds, " OR ")
	return fmt.Sprintf(`SELECT x.row, coalesce(x.row_time, xc.timestamp) AS lts,
		%[1]s AS lnode
	FROM bdr.tombstones x LEFT JOIN LATERAL pg_catalog.pg_xact_commit_timestamp_origin(x.xmin) xc ON true
	WHERE x.relid = %[2]s AND x.deleted AND x.row IS NOT NULL AND %[3]s AND (%[4]s)
	UNION ALL
	SELECT x.row, x.row_time, %[5]s
	FROM bdr.unique_history x
	WHERE x.relid = %[2]s AND x.row_time IS NOT NULL AND NOT %[6]s AND %[3]s AND (%[4]s)`,
		nodeOf("coalesce(x.row_origin, xc.roident)"), p.relid(), other, cond,
		nodeOf("x.row_origin"), mine("x.xmin"))
}

// otherKey is the condition that entry x (of bdr.tombstones or
// bdr.unique_history) is not of the key params.
func (p *plan) otherKey(params []int) string {
	return "x.key <> " + p.tombstoneKey(params)
}

// keepVersion is the CTE uh of a unique statement: it keeps the remote
// version it checks, tuple (jsonb) under the key params, in
// bdr.unique_history, applied or not: a version older than it that arrives
// later loses to it, as it does where it arrives first.
func (p *plan) keepVersion(params []int, tuple string) string {
	return fmt.Sprintf(`uh AS (
	INSERT INTO bdr.unique_history (relid, key, row, row_time, row_origin)
	VALUES (%s, %s, %s, %s, %s)
)`, p.relid(), p.tombstoneKey(params), tuple, remoteTS, setting(setOrigin, "oid"))
}

// noGhost is true when no deleted row collides with the new values on the
// unique indexes (fast statements: any such row sends the change to the
// resolving ones, whose unique statement compares the versions); "true"
// when the table has no unique index the change carries.
func (p *plan) noGhost(other []int, param func(col int) (int, bool)) string {
	var conds []string
next:
	for _, u := range p.uniques {
		for _, c := range u.cols {
			if _, ok := param(c); !ok {
				continue next
			}
		}
		conds = append(conds, p.ghostCond(u.cols, func(c int) int { n, _ := param(c); return n }))
	}
	if len(conds) == 0 {
		return "true"
	}
	return fmt.Sprintf("NOT EXISTS (%s)", p.ghosts(conds, p.otherKey(other)))
}

// concurrentlyChanged raises SQLSTATE 40001 (see bdr.concurrently_changed):
// the row a statement decided on in its snapshot was changed or deleted
// concurrently, so the decision and its record may be wrong; the applier
// applies the transaction again.
func (p *plan) concurrentlyChanged() string {
	return fmt.Sprintf("bdr.concurrently_changed('the row of %s')", quoteLiteral(p.table))
}

// leaveTombstone is the CTE ts of a remote change that deletes the key
// params where it finds no row (a DELETE, a key change's delete of its old
// key, a change that lost a unique collision): it leaves its tombstone
// there, or makes the one there its own when it is newer. cond is when it
// applies; row, when not "", is the jsonb of the row it stands for, kept
// with the change's version (a ghost, see ghosts).
func (p *plan) leaveTombstone(params []int, cond, row string) string {
	cols, vals, sets := "", "", ""
	if row != "" {
		cols = ", row, row_time, row_origin"
		vals = fmt.Sprintf(", %s, %s, %s", row, remoteTS, setting(setOrigin, "oid"))
		sets = ", row = excluded.row, row_time = excluded.row_time, row_origin = excluded.row_origin"
	}
	return fmt.Sprintf(`ts AS (
	INSERT INTO bdr.tombstones AS bt (relid, key%s)
	SELECT %s, %s%s WHERE %s AND NOT EXISTS (SELECT 1 FROM ONLY %s t WHERE %s)
	ON CONFLICT (relid, key) DO UPDATE SET deleted = true, at_time = NULL, at_origin = NULL%s WHERE NOT bt.deleted OR %s
)`, cols, p.relid(), p.tombstoneKey(params), vals, cond, p.table, p.keyConds("t", params), sets, tombstoneNewer("bt"))
}

// insertDeleteRecord is h2, the insert_delete record of a remote insert (a
// row's, or a key change's under its new key) that the newer delete of its
// key, d's tombstone, beat: when cond holds. prefix starts the reason.
func (p *plan) insertDeleteRecord(tuple, cond, prefix string) string {
	lww := recordInputs()
	lww.Resolver = nil
	deleted := conflict.DecisionSQL{
		Type:   fmt.Sprintf("'%s'", conflict.InsertDelete),
		Reason: "'" + prefix + "' || " + conflict.ReasonSQL(lww, conflict.InsertInsert),
	}
	return strings.Replace(p.record(deleted, fmt.Sprintf("'%s'", conflict.KeepLocal), tuple,
		"FROM d l WHERE l.deleted AND "+cond), "h AS (", "h2 AS (", 1)
}
