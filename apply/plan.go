package apply

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/conflict"
	"github.com/bdr-dev/bdr/decoder"
)

// plan holds the statements of one relation as the provider described it.
// Plans are built once per relation description and cached by signature;
// UPDATE statements depend on which columns the change carries (unchanged
// TOAST values are left out) and are built on first use of each shape.
//
// For a relation with a key (primary key or replica identity index) every
// change is one statement that applies the row and resolves any conflict
// inside PostgreSQL, so applying stays pipelined whatever the conflict rate:
//
//   - the decision (package conflict) is a condition of the UPDATE, the
//     DELETE or the INSERT ... ON CONFLICT DO UPDATE itself, evaluated on
//     the row version the statement changes; when a local transaction
//     changes the row concurrently, PostgreSQL re-evaluates it on the newer
//     version, so the decision always sees the version it replaces;
//   - when the change is not applied (or, for a DELETE, when the deleted
//     version was newer), the same statement writes the conflict to
//     bdr.conflict_history; only then is the local row looked up for the
//     record.
//
// Parameters: $1 schema and $2 table name (for the record), then the key
// values (UPDATE, DELETE) or all column values (INSERT), then for UPDATE the
// values of the present columns. Statements of relations without a key
// take only the values.
type plan struct {
	rel     *decoder.Relation
	table   string   // quoted "schema"."name"
	cols    []string // quoted column names, provider order
	types   []string // local type of each column, format_type() text
	keys    []int    // positions of the replica identity columns
	full    bool     // REPLICA IDENTITY FULL: any one row with equal columns
	insert  stmt
	del     stmt
	updates map[string]stmt // by presence mask
}

// stmt is a statement prepared on the applier's connection.
type stmt struct {
	name string
	sql  string
}

// localTable is what the local catalog says about the target of a relation.
type localTable struct {
	exists bool
	types  map[string]string // column name -> format_type
}

func loadLocalTable(ctx context.Context, conn *pgx.Conn, rel *decoder.Relation) (localTable, error) {
	rows, err := conn.Query(ctx, `SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)
		FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
		WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
		  AND a.attgenerated = ''`, rel.Schema, rel.Name)
	if err != nil {
		return localTable{}, fmt.Errorf("read local table %s: %w", rel, err)
	}
	lt := localTable{types: map[string]string{}}
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			return localTable{}, fmt.Errorf("read local table %s: %w", rel, err)
		}
		lt.types[name] = typ
		lt.exists = true
	}
	if err := rows.Err(); err != nil {
		return localTable{}, fmt.Errorf("read local table %s: %w", rel, err)
	}
	return lt, nil
}

// signature identifies a relation description: plans are shared between
// equal descriptions (the provider resends them per streamed transaction).
func signature(rel *decoder.Relation) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d|%s|%s|%c", rel.ID, rel.Schema, rel.Name, rel.ReplicaIdentity)
	for _, c := range rel.Columns {
		fmt.Fprintf(&b, "|%s:%d:%d:%t", c.Name, c.TypeOID, c.TypeMod, c.Key)
	}
	return b.String()
}

func ident(parts ...string) string { return pgx.Identifier(parts).Sanitize() }

// newPlan builds a relation's plan; name gives statement names unique on
// the connection.
func newPlan(rel *decoder.Relation, lt localTable, name func() string) (*plan, error) {
	if !lt.exists {
		return nil, fmt.Errorf("table %s does not exist on this node (create it here too)", ident(rel.Schema, rel.Name))
	}
	p := &plan{
		rel:     rel,
		table:   ident(rel.Schema, rel.Name),
		keys:    rel.KeyColumns(),
		full:    rel.ReplicaIdentity == decoder.IdentityFull,
		updates: map[string]stmt{},
	}
	for _, c := range rel.Columns {
		typ, ok := lt.types[c.Name]
		if !ok {
			return nil, fmt.Errorf("column %s of table %s does not exist on this node", ident(c.Name), p.table)
		}
		p.cols = append(p.cols, ident(c.Name))
		p.types = append(p.types, typ)
	}
	p.insert = stmt{name(), p.insertSQL()}
	if len(p.keys) > 0 {
		p.del = stmt{name(), p.deleteSQL()}
	}
	return p, nil
}

// resolving reports whether the relation's changes go through conflict
// resolution: it needs a key that identifies one row. Rows of tables
// without one (no replica identity, or FULL, where equal rows may
// legitimately repeat) are applied as they come.
func (p *plan) resolving() bool { return len(p.keys) > 0 && !p.full }

func placeholder(n int, typ string) string { return "$" + strconv.Itoa(n) + "::" + typ }

// Session settings the statements read: set once per session (node ids and
// names, the peer's origin) and once per transaction (the remote commit).
const (
	setOrigin     = "bdr.origin"
	setLocalID    = "bdr.local_node_id"
	setLocalName  = "bdr.local_node_name"
	setRemoteID   = "bdr.remote_node_id"
	setRemoteName = "bdr.remote_node_name"
	setCommitTS   = "bdr.commit_ts"
	setXid        = "bdr.remote_xid"
	setCommitLSN  = "bdr.commit_lsn"
)

func setting(name, typ string) string {
	return fmt.Sprintf("pg_catalog.current_setting('%s')::%s", name, typ)
}

// nodeOf maps the replication origin of a row version to the node that
// wrote it (origin 0 is a local write).
func nodeOf(ro string) string {
	return fmt.Sprintf("CASE WHEN %s = 0 THEN %s ELSE coalesce(bdr.origin_node_id(%s), 0) END", ro, setting(setLocalID, "int"), ro)
}

func mine(xmin string) string { return xmin + " = pg_catalog.pg_current_xact_id()::xid" }

// inputs are the decision inputs for a row version whose commit time and
// origin are in c (from pg_xact_commit_timestamp_origin).
func inputs(found, mineExpr, c string) conflict.Inputs {
	return conflict.Inputs{
		Found:      found,
		Same:       fmt.Sprintf("coalesce(%s OR %s.roident = %s, false)", mineExpr, c, setting(setOrigin, "oid")),
		LocalTS:    c + ".timestamp",
		LocalNode:  nodeOf(c + ".roident"),
		RemoteTS:   setting(setCommitTS, "timestamptz"),
		RemoteNode: setting(setRemoteID, "int"),
	}
}

// onVersion evaluates a boolean decision expression on the row version
// with xmin (a correlated subquery: it is re-evaluated when PostgreSQL
// follows a concurrently updated row to its newer version).
func onVersion(xmin string, expr func(conflict.Inputs) string) string {
	return fmt.Sprintf("(SELECT %s FROM pg_catalog.pg_xact_commit_timestamp_origin(%s) c)",
		expr(inputs("true", mine(xmin), "c")), xmin)
}

// base is the number of the first value parameter: $3 after the schema
// and table names of a resolving statement, else $1.
func (p *plan) base() int {
	if p.resolving() {
		return 3
	}
	return 1
}

// keyParams numbers the key parameters: the key values come first, or for
// an INSERT, which passes every column, are among them.
func (p *plan) keyParams(insert bool) []int {
	ps := make([]int, len(p.keys))
	for i, k := range p.keys {
		if insert {
			ps[i] = k + p.base()
		} else {
			ps[i] = i + p.base()
		}
	}
	return ps
}

// keyConds matches the row whose key columns equal the parameters params.
func (p *plan) keyConds(alias string, params []int) string {
	op := "="
	if p.full {
		op = "IS NOT DISTINCT FROM"
	}
	conds := make([]string, len(p.keys))
	for i, k := range p.keys {
		conds[i] = fmt.Sprintf("%s.%s %s %s", alias, p.cols[k], op, placeholder(params[i], p.types[k]))
	}
	return strings.Join(conds, " AND ")
}

// lookup describes, for the conflict record, the local row with the key
// params as the statement's snapshot sees it: l.found, l.row, l.c (its
// commit time and origin) and l.mine.
func (p *plan) lookup(params []int) string {
	return fmt.Sprintf(`(SELECT true AS found, t AS row, %s AS mine, c
	FROM ONLY %s t LEFT JOIN LATERAL pg_catalog.pg_xact_commit_timestamp_origin(t.xmin) c ON true
	WHERE %s LIMIT 1)`, mine("t.xmin"), p.table, p.keyConds("t", params))
}

// record inserts the conflict_history row of a conflict; the FROM clause
// must provide l (see lookup) and the decision expressions.
func (p *plan) record(dec conflict.DecisionSQL, resolution, tuple, from string) string {
	return fmt.Sprintf(`h AS (
	INSERT INTO bdr.conflict_history (local_node_id, local_node_name, remote_node_id, remote_node_name,
		schema_name, table_name, conflict_type, resolution, reason, local_tuple, local_commit_time,
		local_origin_node_id, remote_tuple, remote_xid, remote_commit_time, remote_commit_lsn)
	SELECT %s, %s, %s, %s, $1::text, $2::text, %s, %s, %s,
		pg_catalog.to_jsonb(l.row), (l.c).timestamp, CASE WHEN (l.c).timestamp IS NOT NULL THEN %s END,
		%s, %s, %s, %s
	%s
	RETURNING conflict_type
)`, setting(setLocalID, "int"), setting(setLocalName, "text"), setting(setRemoteID, "int"), setting(setRemoteName, "text"),
		dec.Type, resolution, dec.Reason, nodeOf("(l.c).roident"), tuple,
		setting(setXid, "bigint"), setting(setCommitTS, "timestamptz"), setting(setCommitLSN, "pg_lsn"), from)
}

// recordInputs are the decision inputs of the looked-up row l.
func recordInputs() conflict.Inputs {
	return inputs("coalesce(l.found, false)", "l.mine", "(l.c)")
}

// tupleJSON is the jsonb of the columns at positions cols, whose values are
// the parameters from first on.
func (p *plan) tupleJSON(cols []int, first int) string {
	items := make([]string, len(cols))
	for i, c := range cols {
		items[i] = fmt.Sprintf("%s AS %s", placeholder(first+i, p.types[c]), p.cols[c])
	}
	return fmt.Sprintf("(SELECT pg_catalog.to_jsonb(r) FROM (SELECT %s) r)", strings.Join(items, ", "))
}

func (p *plan) insertSQL() string {
	if !p.resolving() {
		vals := make([]string, len(p.cols))
		for i := range p.cols {
			vals[i] = placeholder(i+1, p.types[i])
		}
		return fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s)", p.table, strings.Join(p.cols, ", "), strings.Join(vals, ", "))
	}
	all := make([]int, len(p.cols))
	vals := make([]string, len(p.cols))
	sets := make([]string, len(p.cols))
	for i, c := range p.cols {
		all[i] = i
		vals[i] = placeholder(i+3, p.types[i])
		sets[i] = fmt.Sprintf("%s = excluded.%s", c, c)
	}
	keyCols := make([]string, len(p.keys))
	for i, k := range p.keys {
		keyCols[i] = p.cols[k]
	}
	wins := onVersion("t.xmin", func(in conflict.Inputs) string { return conflict.RemoteWinsSQL(in) })
	dec := conflict.InsertSQL(recordInputs())
	return fmt.Sprintf(`WITH i AS (
	INSERT INTO %s AS t (%s) VALUES (%s)
	ON CONFLICT (%s) DO UPDATE SET %s WHERE %s
	RETURNING t.xmax = 0 AS inserted
), %s
SELECT (SELECT conflict_type FROM h)`,
		p.table, strings.Join(p.cols, ", "), strings.Join(vals, ", "),
		strings.Join(keyCols, ", "), strings.Join(sets, ", "), wins,
		p.record(dec, fmt.Sprintf("CASE WHEN EXISTS (SELECT 1 FROM i) THEN '%s' ELSE '%s' END", conflict.KeepRemote, conflict.KeepLocal),
			p.tupleJSON(all, 3),
			fmt.Sprintf("FROM (SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM i WHERE i.inserted)) g LEFT JOIN LATERAL %s l ON true",
				p.lookup(p.keyParams(true)))))
}

// updateSQL is the UPDATE of the columns present in mask.
func (p *plan) updateSQL(mask string) string {
	next := len(p.keys) + p.base()
	first := next
	var sets []string
	var present []int
	for i, c := range p.cols {
		if mask[i] == '1' {
			sets = append(sets, fmt.Sprintf("%s = %s", c, placeholder(next, p.types[i])))
			present = append(present, i)
			next++
		}
	}
	if p.full {
		return fmt.Sprintf("UPDATE ONLY %s t SET %s WHERE t.ctid = (SELECT x.ctid FROM ONLY %s x WHERE %s LIMIT 1)",
			p.table, strings.Join(sets, ", "), p.table, p.keyConds("x", p.keyParams(false)))
	}
	apply := onVersion("t.xmin", func(in conflict.Inputs) string { return conflict.UpdateSQL(in).Apply })
	dec := conflict.UpdateSQL(recordInputs())
	return fmt.Sprintf(`WITH u AS (
	UPDATE ONLY %s t SET %s WHERE %s AND (%s OR %s) RETURNING 1
), %s
SELECT (SELECT conflict_type FROM h)`,
		p.table, strings.Join(sets, ", "), p.keyConds("t", p.keyParams(false)), mine("t.xmin"), apply,
		p.record(dec, dec.Resolution, p.tupleJSON(present, first),
			fmt.Sprintf("FROM (SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM u)) g LEFT JOIN LATERAL %s l ON true", p.lookup(p.keyParams(false)))))
}

func (p *plan) deleteSQL() string {
	if p.full {
		return fmt.Sprintf("DELETE FROM ONLY %s t WHERE t.ctid = (SELECT x.ctid FROM ONLY %s x WHERE %s LIMIT 1)",
			p.table, p.table, p.keyConds("x", p.keyParams(false)))
	}
	dec := conflict.DeleteSQL(recordInputs())
	return fmt.Sprintf(`WITH x AS (
	DELETE FROM ONLY %s t WHERE %s RETURNING t AS row, t.xmin AS xm
), %s
SELECT (SELECT conflict_type FROM h)`,
		p.table, p.keyConds("t", p.keyParams(false)),
		p.record(dec, dec.Resolution, p.tupleJSON(p.keys, 3),
			fmt.Sprintf(`FROM (SELECT 1) g LEFT JOIN LATERAL (
		SELECT true AS found, x.row, %s AS mine, c FROM x LEFT JOIN LATERAL pg_catalog.pg_xact_commit_timestamp_origin(x.xm) c ON true
	) l ON true
	WHERE %s`, mine("x.xm"), dec.Record)))
}

// presence is the mask of columns a tuple carries (not unchanged-TOAST).
func presence(t decoder.Tuple) string {
	b := make([]byte, len(t))
	for i, v := range t {
		if v.Kind == decoder.Unchanged {
			b[i] = '0'
		} else {
			b[i] = '1'
		}
	}
	return string(b)
}

// keyValues picks the replica identity values of a change: the old key when
// the provider sent one, else the key columns of the new tuple.
func (p *plan) keyValues(old, new decoder.Tuple) []decoder.Value {
	src := new
	if old != nil {
		src = old
	}
	vals := make([]decoder.Value, 0, len(p.keys))
	for _, k := range p.keys {
		vals = append(vals, src[k])
	}
	return vals
}
