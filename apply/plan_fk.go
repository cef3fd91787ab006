package apply

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/conflict"
	"github.com/bdr-dev/bdr/decoder"
)

// Foreign-key orphans. Apply runs with session_replication_role = replica,
// so PostgreSQL does not check foreign keys on applied rows: the node that
// wrote a change checked them against its own data, and a group converges
// only if every node applies the same changes. A remote row may still
// reference a parent that is gone here (deleted concurrently on another
// node), and a remote DELETE of a parent may leave local rows that
// reference it (inserted here concurrently). Both are applied, as on every
// other node, and recorded as foreign_key_orphan, so that the orphans can
// be found and dealt with.
//
// The check is a statement after the change, in the same pipeline: for a
// child row, whether each parent it references exists; for a DELETE,
// whether local rows reference the deleted key. The parent found is locked
// FOR KEY SHARE, as PostgreSQL's own check does: a parent DELETE applied
// from another peer at the same time then waits for this transaction (and
// sees its child), or this check waits for it (and sees the parent gone),
// so that one of the two records the orphan. A parent DELETE is checked
// only for foreign keys on its replica identity columns (all a DELETE
// carries); checking children costs a scan of each child table without an
// index on its referencing columns, as PostgreSQL's own check would.

// foreignKey is a foreign key between the table of a plan and another.
type foreignKey struct {
	name  string
	other string // quoted "schema"."table" of the parent (child side) or child (parent side)
	// cols are the columns of this table (positions in the relation), and
	// otherCols the matching quoted columns of the other table.
	cols      []int
	otherCols []string
}

// localFK is a foreign key as the local catalog describes it, from the
// side of the table: child (it references other) or parent. A table that
// references itself has both.
type localFK struct {
	name               string
	child              bool
	otherSchema, other string
	cols, otherCols    []string
}

func loadForeignKeys(ctx context.Context, conn *pgx.Conn, rel *decoder.Relation) ([]localFK, error) {
	rows, err := conn.Query(ctx, `WITH t AS (
			SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relname = $2
		), f AS (
			SELECT k.conname, true AS child, k.confrelid AS other, k.conkey AS mine, k.confkey AS theirs
			FROM t JOIN pg_catalog.pg_constraint k ON k.contype = 'f' AND k.conrelid = t.oid
			UNION ALL
			SELECT k.conname, false, k.conrelid, k.confkey, k.conkey
			FROM t JOIN pg_catalog.pg_constraint k ON k.contype = 'f' AND k.confrelid = t.oid
		)
		SELECT f.conname::text, f.child, n.nspname::text, o.relname::text,
			array(SELECT a.attname::text FROM unnest(f.mine) WITH ORDINALITY x(n, i)
				JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.n ORDER BY x.i),
			array(SELECT a.attname::text FROM unnest(f.theirs) WITH ORDINALITY x(n, i)
				JOIN pg_catalog.pg_attribute a ON a.attrelid = o.oid AND a.attnum = x.n ORDER BY x.i)
		FROM t, f JOIN pg_catalog.pg_class o ON o.oid = f.other
		JOIN pg_catalog.pg_namespace n ON n.oid = o.relnamespace
		ORDER BY f.conname, f.child`, rel.Schema, rel.Name)
	if err == nil {
		var out []localFK
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (localFK, error) {
			var fk localFK
			err := r.Scan(&fk.name, &fk.child, &fk.otherSchema, &fk.other, &fk.cols, &fk.otherCols)
			return fk, err
		})
		if err == nil {
			return out, nil
		}
	}
	return nil, fmt.Errorf("read foreign keys of %s: %w", rel, err)
}

// useForeignKeys keeps the foreign keys the applier can check with what
// the relation's changes carry.
func (p *plan) useForeignKeys(fks []localFK) {
	pos := map[string]int{}
	for i, c := range p.rel.Columns {
		pos[c.Name] = i
	}
	isKey := map[int]bool{}
	for _, k := range p.keys {
		isKey[k] = true
	}
next:
	for _, l := range fks {
		fk := foreignKey{name: l.name, other: ident(l.otherSchema, l.other)}
		for i, c := range l.cols {
			at, ok := pos[c]
			if !ok {
				continue next
			}
			fk.cols = append(fk.cols, at)
			fk.otherCols = append(fk.otherCols, ident(l.otherCols[i]))
		}
		if l.child {
			p.parents = append(p.parents, fk)
		} else if len(p.keys) > 0 {
			for _, c := range fk.cols {
				if !isKey[c] {
					continue next
				}
			}
			p.children = append(p.children, fk)
		}
	}
}

// orphanRecord inserts a foreign_key_orphan conflict for each row of the
// query from (which gives the reason as reason and the local row as row).
func orphanRecord(tuple, from string) string {
	return fmt.Sprintf(`INSERT INTO bdr.conflict_history (local_node_id, local_node_name, remote_node_id, remote_node_name,
		schema_name, table_name, conflict_type, resolution, reason, local_tuple, remote_tuple, remote_xid,
		remote_commit_time, remote_commit_lsn)
	SELECT %s, %s, %s, %s, $1::text, $2::text, '%s', '%s', o.reason, o.row, %s, %s, %s, %s
	FROM (%s) o
	RETURNING conflict_type`,
		setting(setLocalID, "int"), setting(setLocalName, "text"), setting(setRemoteID, "int"), setting(setRemoteName, "text"),
		conflict.ForeignKeyOrphan, conflict.ApplyAnyway, tuple,
		setting(setXid, "bigint"), setting(setCommitTS, "timestamptz"), setting(setCommitLSN, "pg_lsn"), from)
}

// parentCheckSQL records the parents missing for the row a remote INSERT
// (update false) or UPDATE of the columns in mask wrote; "" when there is
// nothing to check. It takes the resolving statement's parameters.
func (p *plan) parentCheckSQL(mask string, update bool) string {
	params := map[int]int{}
	next := 3
	if update {
		next += len(p.keys)
	}
	var present []int
	for i := range p.cols {
		if mask[i] == '1' {
			params[i] = next
			present = append(present, i)
			next++
		}
	}
	var checks []string
	for _, fk := range p.parents {
		conds, notNull, vals := make([]string, len(fk.cols)), make([]string, len(fk.cols)), make([]string, len(fk.cols))
		carried := true
		for i, c := range fk.cols {
			n, ok := params[c]
			if !ok {
				carried = false
				break
			}
			v := placeholder(n, p.types[c])
			conds[i] = fmt.Sprintf("r.%s = %s", fk.otherCols[i], v)
			notNull[i] = v + " IS NOT NULL"
			vals[i] = fmt.Sprintf("%s::text", v)
		}
		if !carried {
			continue
		}
		reason := fmt.Sprintf("'the remote row references %s (%s) = (' || concat_ws(', ', %s) || '), which does not exist here (foreign key %s); applied as on every node: apply does not enforce foreign keys'",
			quoteLiteral(fk.other), quoteLiteral(strings.Join(fk.otherCols, ", ")), strings.Join(vals, ", "), quoteLiteral(fk.name))
		checks = append(checks, fmt.Sprintf("SELECT %s AS reason, NULL::jsonb AS row WHERE %s AND NOT EXISTS (SELECT 1 FROM %s r WHERE %s FOR KEY SHARE OF r)",
			reason, strings.Join(notNull, " AND "), fk.other, strings.Join(conds, " AND ")))
	}
	if len(checks) == 0 {
		return ""
	}
	sql := orphanRecord(p.tupleJSON(present, params[present[0]]), strings.Join(checks, "\nUNION ALL\n"))
	if update {
		// The key parameters come first and are not used: name their types.
		keys := make([]string, len(p.keys))
		for i, k := range p.keys {
			keys[i] = placeholder(3+i, p.types[k])
		}
		sql = fmt.Sprintf("WITH key AS (SELECT %s)\n%s", strings.Join(keys, ", "), sql)
	}
	return sql
}

// childCheckSQL records the local rows left referencing the key a remote
// DELETE removed; "" when the table is no parent. It takes the resolving
// DELETE's parameters.
func (p *plan) childCheckSQL() string {
	keyParam := map[int]int{}
	for i, k := range p.keys {
		keyParam[k] = i + 3
	}
	var checks []string
	for _, fk := range p.children {
		conds := make([]string, len(fk.cols))
		for i, c := range fk.cols {
			conds[i] = fmt.Sprintf("x.%s = %s", fk.otherCols[i], placeholder(keyParam[c], p.types[c]))
		}
		reason := fmt.Sprintf("'deleting the row leaves ' || CASE WHEN n.count < %d THEN n.count::text ELSE 'at least ' || n.count END || ' row(s) of %s referencing it here (foreign key %s); applied as on every node: apply does not enforce foreign keys'",
			orphansCounted, quoteLiteral(fk.other), quoteLiteral(fk.name))
		checks = append(checks, fmt.Sprintf(`SELECT %s AS reason, n.row FROM (SELECT count(*) AS count, (pg_catalog.array_agg(pg_catalog.to_jsonb(x)))[1] AS row
	FROM (SELECT * FROM ONLY %s x WHERE %s LIMIT %d) x) n WHERE n.count > 0`,
			reason, fk.other, strings.Join(conds, " AND "), orphansCounted))
	}
	if len(checks) == 0 {
		return ""
	}
	return orphanRecord(p.tupleJSON(p.keys, 3), strings.Join(checks, "\nUNION ALL\n"))
}

// orphansCounted bounds the orphans a DELETE's record counts.
const orphansCounted = 100

// quoteLiteral escapes s for an SQL string literal: quotes doubled.
func quoteLiteral(s string) string { return strings.ReplaceAll(s, "'", "''") }

// pendingCheck is an orphan check waiting for the end of its transaction.
type pendingCheck struct {
	st     stmt
	params []param
	what   string // the table
	change decoder.Op
	rel    *decoder.Relation
}

// maxPendingChecks bounds the checks one transaction holds back; beyond
// it they are sent at once (a row and its parent written in the other
// order later in the same transaction may then be recorded).
const maxPendingChecks = 10000

// queueOrphanCheck holds the orphan check of change c (sent with params,
// resolving or fast) for the end of the transaction: a transaction may
// write a child before its parent (deferred constraints), and the deletes
// a cascade makes follow the parent's.
func (a *applier) queueOrphanCheck(ctx context.Context, i int, p *plan, c *decoder.Change, params []param, resolving bool) {
	var st stmt
	switch {
	case c.Op == decoder.Insert && len(p.parents) > 0:
		st = a.parentCheckStmt(p, strings.Repeat("1", len(p.cols)), false)
	case c.Op == decoder.Update && len(p.parents) > 0 && !p.full:
		st = a.parentCheckStmt(p, presence(c.New), true)
	case c.Op == decoder.Delete && p.childCheck.name != "" && !p.full:
		st = p.childCheck
	}
	if st.name == "" {
		return
	}
	base := params
	if resolving && p.resolving() {
		base = base[2:]
	} else if c.Op != decoder.Insert && !p.full {
		base = base[:len(base)-1] // the fast statement's commit time
	}
	all := make([]param, 0, len(base)+2)
	all = append(all, param{data: []byte(p.rel.Schema)}, param{data: []byte(p.rel.Name)})
	a.orphanChecks = append(a.orphanChecks, pendingCheck{st: st, params: append(all, base...), what: p.table, change: c.Op, rel: c.Rel})
	if len(a.orphanChecks) >= maxPendingChecks {
		a.sendOrphanChecks(ctx, i, a.orphanTxn)
	}
}

// sendOrphanChecks sends the orphan checks held back for transaction i,
// t, after the settings their records read (fast statements do not set
// them).
func (a *applier) sendOrphanChecks(ctx context.Context, i int, t *decoder.Txn) {
	if len(a.orphanChecks) == 0 {
		return
	}
	a.send(ctx, stmtRecordSetup, setupParams(t)[2:], op{kind: opChange, txn: i, what: "conflict record setup"})
	for _, pc := range a.orphanChecks {
		a.send(ctx, pc.st, pc.params, op{kind: opResolve, txn: i, what: "foreign key check after " + pc.change.String() + " on " + pc.what, rel: pc.rel})
	}
	a.orphanChecks = a.orphanChecks[:0]
}

// parentCheckStmt returns the parent check of p for an INSERT or for the
// UPDATE of the columns in mask, or none when it has nothing to check.
func (a *applier) parentCheckStmt(p *plan, mask string, update bool) stmt {
	key := "i" + mask
	if update {
		key = "u" + mask
	}
	st, ok := p.parentCheck[key]
	if !ok {
		if sql := p.parentCheckSQL(mask, update); sql != "" {
			st = stmt{a.stmtName(), sql}
		}
		p.parentCheck[key] = st
	}
	return st
}
