package apply

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/conflict"
	"github.com/bdr-dev/bdr/decoder"
)

// Delta columns (bdr.alter_column_set_delta) are counters: a remote UPDATE
// adds its increment (new - old) to the local value instead of replacing
// it, whatever the versions, so that increments made concurrently on
// different nodes add up. The declaration sets REPLICA IDENTITY FULL, so
// every UPDATE carries the old row, where the old values come from; the
// rows are still found by their primary key, read from the local catalog.
// The other columns follow last-update-wins as on any table: an UPDATE
// carries the whole row, so one that changed only a delta column still
// brings the other values of its row version when it wins.
//
// NULLs: a delta column an UPDATE leaves unchanged keeps the local value;
// one set to NULL becomes NULL (an assignment, not an increment); one set
// from NULL to a number adds that number (NULL counts as 0).
//
// A remote UPDATE whose other columns lose still writes the row (its
// increment), and the local transaction stamps that row version with the
// remote commit, older than the local version that won. Last-update-wins
// would then compare later changes with the older version and decide
// differently than the nodes where the winner arrived later: the version
// that won is kept for it in bdr.row_versions (by relation, tuple id and
// xmin, so that it lapses as soon as the row is written again) and the
// statements of tables with delta columns read a row's version there
// first.

// deltaRead is what the local catalog says about a table's delta columns.
type deltaRead struct {
	pk    []string        // primary key columns, in key order
	delta map[string]bool // declared delta columns
}

func loadDelta(ctx context.Context, conn *pgx.Conn, rel *decoder.Relation) (deltaRead, error) {
	var d deltaRead
	if err := conn.QueryRow(ctx, `SELECT coalesce(array_agg(a.attname::text ORDER BY k.i), '{}')
		FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_catalog.pg_index x ON x.indrelid = c.oid AND x.indisprimary
		CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, i)
		JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
		WHERE n.nspname = $1 AND c.relname = $2`, rel.Schema, rel.Name).Scan(&d.pk); err != nil {
		return d, fmt.Errorf("read primary key of %s: %w", rel, err)
	}
	rows, err := conn.Query(ctx, `SELECT column_name FROM bdr.delta_columns WHERE schema_name = $1 AND table_name = $2`,
		rel.Schema, rel.Name)
	if err != nil {
		return d, fmt.Errorf("read delta columns of %s: %w", rel, err)
	}
	cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return d, fmt.Errorf("read delta columns of %s: %w", rel, err)
	}
	d.delta = map[string]bool{}
	for _, c := range cols {
		d.delta[c] = true
	}
	return d, nil
}

// deltaFingerprint reads the declarations of every table: plans of tables
// whose changes carry old rows are built again when it changes.
func deltaFingerprint(ctx context.Context, conn *pgx.Conn) (string, error) {
	var fp string
	err := conn.QueryRow(ctx, `SELECT coalesce(string_agg(pg_catalog.format('%I.%I.%I', schema_name, table_name, column_name),
		',' ORDER BY schema_name, table_name, column_name), '') FROM bdr.delta_columns`).Scan(&fp)
	if err != nil {
		return "", fmt.Errorf("read delta columns: %w", err)
	}
	return fp, nil
}

// useDelta makes p a plan with delta columns when the relation carries old
// rows (REPLICA IDENTITY FULL on the provider) and the local table has a
// primary key and declared delta columns: the key becomes the primary key.
// Otherwise the plan is left as it is (a provider that has not applied the
// declaration yet sends ordinary updates, applied as such).
func (p *plan) useDelta(d deltaRead) {
	if p.rel.ReplicaIdentity != decoder.IdentityFull || len(d.pk) == 0 || len(d.delta) == 0 {
		return
	}
	pos := map[string]int{}
	for i, c := range p.rel.Columns {
		pos[c.Name] = i
	}
	keys := make([]int, len(d.pk))
	for i, k := range d.pk {
		at, ok := pos[k]
		if !ok {
			return // the provider's table lacks a key column: no row identity
		}
		keys[i] = at
	}
	p.keys, p.full = keys, false
	p.delta = make([]bool, len(p.rel.Columns))
	for i, c := range p.rel.Columns {
		p.delta[i] = d.delta[c.Name]
	}
}

func (p *plan) hasDelta() bool { return p.delta != nil }

// ovMatch matches the bdr.row_versions entry o of the row version alias.
func ovMatch(alias string) string {
	return fmt.Sprintf("o.relid = %s.tableoid AND o.tid = %s.ctid AND o.row_xmin = %s.xmin", alias, alias, alias)
}

// rowInputs are the decision inputs for the row version alias against a
// remote change committed at rts, under resolvers (see resolvers.go; for a
// table with delta columns, update_update is the delta rule's): its commit
// time and origin, or for a table with delta columns the version kept in
// bdr.row_versions.
func (p *plan) rowInputs(alias, rts string, resolvers func(conflict.Type) string) conflict.Inputs {
	xmin := alias + ".xmin"
	c := "(pg_catalog.pg_xact_commit_timestamp_origin(" + xmin + "))"
	if !p.hasDelta() {
		in := inputs("true", mine(xmin), c, rts)
		in.Resolver = resolvers
		return in
	}
	has := fmt.Sprintf("EXISTS (SELECT 1 FROM bdr.row_versions o WHERE %s)", ovMatch(alias))
	kept := func(col string) string {
		return fmt.Sprintf("(SELECT o.%s FROM bdr.row_versions o WHERE %s)", col, ovMatch(alias))
	}
	ts := fmt.Sprintf("(CASE WHEN %s THEN %s ELSE %s.timestamp END)", has, kept("commit_time"), c)
	ro := fmt.Sprintf("(CASE WHEN %s THEN %s ELSE %s.roident END)", has, kept("roident"), c)
	return conflict.Inputs{
		Found:      "true",
		Same:       fmt.Sprintf("coalesce((NOT %s AND %s) OR %s, false)", has, mine(xmin), sameStream(ro)),
		LocalTS:    ts,
		LocalNode:  nodeOf(ro),
		RemoteTS:   rts,
		RemoteNode: setting(setRemoteID, "int"),
		Resolver:   deltaResolvers(resolvers),
	}
}

// deltaExpr is the new value of delta column cur of type typ for a remote
// change from old to new (placeholders).
func deltaExpr(cur, newP, oldP, typ string) string {
	return fmt.Sprintf(`(CASE WHEN %s IS NOT DISTINCT FROM %s THEN %s WHEN %s IS NULL THEN NULL
	ELSE (coalesce(%s::numeric, 0) + (%s::numeric - coalesce(%s::numeric, 0)))::%s END)`,
		newP, oldP, cur, newP, cur, newP, oldP, typ)
}

// deltaSets are the SET items of an UPDATE of the columns in mask; a delta
// column takes two parameters (new, old), the others one, from next on.
// other gives the SET expression of a column that is not a delta column.
// It returns the items and, for the columns that are not delta columns,
// a condition that the row holds the values of the parameters.
func (p *plan) deltaSets(mask string, next int, other func(col, param string) string) (sets []string, same string) {
	var eq []string
	for i, c := range p.cols {
		if mask[i] != '1' {
			continue
		}
		newP := placeholder(next, p.types[i])
		next++
		if p.delta[i] {
			oldP := placeholder(next, p.types[i])
			next++
			sets = append(sets, fmt.Sprintf("%s = %s", c, deltaExpr("t."+c, newP, oldP, p.types[i])))
			continue
		}
		sets = append(sets, fmt.Sprintf("%s = %s", c, other(c, newP)))
		eq = append(eq, fmt.Sprintf("t.%s::text IS NOT DISTINCT FROM (%s)::text", c, newP))
	}
	if len(eq) == 0 {
		return sets, "true"
	}
	return sets, strings.Join(eq, " AND ")
}

// deltaValues are the parameters of deltaSets: the present values of new,
// with the old value after each delta column's.
func (p *plan) deltaValues(old, new decoder.Tuple) ([]param, error) {
	if old == nil {
		return nil, fmt.Errorf("update of %s: no old row to compute the delta columns from (is REPLICA IDENTITY FULL set on the provider?)", p.table)
	}
	ps := make([]param, 0, len(new)+len(old))
	for i, v := range new {
		if v.Kind == decoder.Unchanged {
			continue
		}
		ps = append(ps, valueParam(v))
		if p.delta[i] {
			ps = append(ps, valueParam(old[i]))
		}
	}
	return ps, nil
}

// deltaUpdateSQL is the fast UPDATE of a table with delta columns.
func (p *plan) deltaUpdateSQL(mask string) string {
	sets, _ := p.deltaSets(mask, len(p.keys)+1, func(_, param string) string { return param })
	next := len(p.keys) + 1 + strings.Count(mask, "1")
	for i := range p.cols {
		if mask[i] == '1' && p.delta[i] {
			next++
		}
	}
	return fmt.Sprintf("UPDATE ONLY %s t SET %s WHERE %s AND %s RETURNING %s",
		p.table, strings.Join(sets, ", "), p.keyConds("t", p.keyParams(false, 1)),
		conflict.CleanSQL(p.rowInputs("t", placeholder(next, "timestamptz"), nil)), countApplied)
}

// resolvingDeltaUpdateSQL is the resolving UPDATE of a table with delta
// columns: the row is locked and its version read once (l); the delta
// columns are always added, the other columns written when the remote
// change wins; when it loses, the version that won is kept for the row
// version written (bdr.row_versions). A conflict is recorded when the
// other columns lost and held other values, or when the row is missing.
func (p *plan) resolvingDeltaUpdateSQL(mask string) string {
	sets, same := p.deltaSets(mask, len(p.keys)+3, func(col, param string) string {
		return fmt.Sprintf("CASE WHEN w.wins THEN %s ELSE t.%s END", param, col)
	})
	in := conflict.Inputs{
		Found:      "coalesce(l.found, false)",
		Same:       fmt.Sprintf("coalesce(l.mine OR %s, false)", sameStream("l.ro")),
		LocalTS:    "l.ts",
		LocalNode:  nodeOf("l.ro"),
		RemoteTS:   remoteTS,
		RemoteNode: setting(setRemoteID, "int"),
		Resolver:   deltaResolvers(stmtResolvers), // update_missing
	}
	dec := conflict.UpdateSQL(in)
	dec.Reason = fmt.Sprintf("(%s) || CASE WHEN %s THEN '; the delta columns were added' ELSE '' END", dec.Reason, in.Found)
	var tuple []string
	n := len(p.keys) + 3
	for i, c := range p.cols {
		if mask[i] != '1' {
			continue
		}
		tuple = append(tuple, fmt.Sprintf("%s AS %s", placeholder(n, p.types[i]), c))
		n++
		if p.delta[i] {
			n++
		}
	}
	tupleJSON := fmt.Sprintf("(SELECT pg_catalog.to_jsonb(r) FROM (SELECT %s) r)", strings.Join(tuple, ", "))
	keys := p.keyConds("t", p.keyParams(false, 3))
	return fmt.Sprintf(`WITH %s, l0 AS (
	SELECT t.tableoid AS relid, t.ctid AS tid, t.xmin AS xm, t AS row,
		(SELECT o FROM bdr.row_versions o WHERE %s) AS ov, (%s) AS same_values
	FROM ONLY %s t WHERE %s LIMIT 1 FOR UPDATE OF t
), l AS (
	SELECT l0.relid, l0.tid, l0.row, l0.same_values, true AS found,
		CASE WHEN (l0.ov).relid IS NULL THEN c.timestamp ELSE (l0.ov).commit_time END AS ts,
		CASE WHEN (l0.ov).relid IS NULL THEN c.roident ELSE (l0.ov).roident END AS ro,
		((l0.ov).relid IS NULL AND %s) AS mine
	FROM l0 LEFT JOIN LATERAL pg_catalog.pg_xact_commit_timestamp_origin(l0.xm) c ON true
), w AS (
	SELECT l.*, %s AS wins FROM l
), u AS (
	UPDATE ONLY %s t SET %s FROM w WHERE %s RETURNING t.ctid AS tid
), d AS (
	DELETE FROM bdr.row_versions o USING w WHERE o.relid = w.relid AND o.tid = w.tid
), v AS (
	INSERT INTO bdr.row_versions (relid, tid, row_xmin, commit_time, roident)
	SELECT w.relid, u.tid, pg_catalog.pg_current_xact_id()::xid, w.ts, w.ro FROM w, u WHERE NOT w.wins
	ON CONFLICT (relid, tid) DO UPDATE SET row_xmin = excluded.row_xmin, commit_time = excluded.commit_time, roident = excluded.roident
), %s
SELECT (SELECT conflict_type FROM h)`,
		resolversCTE(conflict.UpdateMissing), ovMatch("t"), same, p.table, keys, mine("l0.xm"), dec.Apply,
		p.table, strings.Join(sets, ", "), keys,
		p.recordWith(dec, dec.Resolution, tupleJSON,
			"FROM (SELECT 1) g LEFT JOIN w l ON true WHERE NOT coalesce(l.found, false) OR (NOT l.wins AND NOT l.same_values)",
			"l.ts", "l.ro"))
}
