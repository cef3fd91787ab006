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
// Every statement of a relation with a replica identity resolves conflicts
// itself: it locks the local row with the key, applies the change or not as
// package conflict decides, and records any conflict in
// bdr.conflict_history, all in one statement (see conflict.InsertSQL).
// Parameters: $1 schema and $2 table name (for the history), then the key
// values (UPDATE, DELETE) or all column values (INSERT), then for UPDATE the
// values of the present columns.
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
// legitimately repeat) are inserted as they come.
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

// lookupCTE locks the local row whose key matches the parameters at
// keyParams (one per key column) and describes its version.
func (p *plan) lookupCTE(keyParams []int) string {
	op := "="
	if p.full {
		op = "IS NOT DISTINCT FROM"
	}
	conds := make([]string, len(p.keys))
	for i, k := range p.keys {
		conds[i] = fmt.Sprintf("t.%s %s %s", p.cols[k], op, placeholder(keyParams[i], p.types[k]))
	}
	return fmt.Sprintf(`l AS (
	SELECT t.ctid AS tid, t.xmin = pg_catalog.pg_current_xact_id()::xid AS mine, c.timestamp AS ts, c.roident AS ro
	FROM ONLY %s t LEFT JOIN LATERAL pg_catalog.pg_xact_commit_timestamp_origin(t.xmin) c ON true
	WHERE %s LIMIT 1 FOR UPDATE OF t
), d AS (
	SELECT true AS found, l.tid, l.ts,
		(l.mine OR l.ro = %s) AS same,
		CASE WHEN l.ro = 0 THEN %s ELSE coalesce(bdr.origin_node_id(l.ro), 0) END AS node
	FROM (SELECT 1) one LEFT JOIN l ON true
)`, p.table, strings.Join(conds, " AND "), setting(setOrigin, "oid"), setting(setLocalID, "int"))
}

var decisionInputs = conflict.Inputs{
	Found:      "coalesce(d.found, false)",
	Same:       "coalesce(d.same, false)",
	LocalTS:    "d.ts",
	LocalNode:  "d.node",
	RemoteTS:   setting(setCommitTS, "timestamptz"),
	RemoteNode: setting(setRemoteID, "int"),
}

// historyCTE records the conflict decided by dec; tuple is the SQL of the
// remote tuple as jsonb.
func (p *plan) historyCTE(dec conflict.DecisionSQL, tuple string) string {
	return fmt.Sprintf(`h AS (
	INSERT INTO bdr.conflict_history (local_node_id, local_node_name, remote_node_id, remote_node_name,
		schema_name, table_name, conflict_type, resolution, reason, local_tuple, local_commit_time,
		local_origin_node_id, remote_tuple, remote_xid, remote_commit_time, remote_commit_lsn)
	SELECT %s, %s, %s, %s, $1::text, $2::text, %s, %s, %s,
		(SELECT pg_catalog.to_jsonb(x) FROM ONLY %s x WHERE x.ctid = d.tid),
		d.ts, CASE WHEN d.ts IS NOT NULL THEN d.node END, %s, %s, %s, %s
	FROM d WHERE %s
	RETURNING conflict_type
)`, setting(setLocalID, "int"), setting(setLocalName, "text"), setting(setRemoteID, "int"), setting(setRemoteName, "text"),
		dec.Type, dec.Resolution, dec.Reason, p.table, tuple,
		setting(setXid, "bigint"), setting(setCommitTS, "timestamptz"), setting(setCommitLSN, "pg_lsn"), dec.Record)
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

func (p *plan) allCols() []int {
	all := make([]int, len(p.cols))
	for i := range all {
		all[i] = i
	}
	return all
}

func (p *plan) insertSQL() string {
	all := p.allCols()
	vals := make([]string, len(all))
	if !p.resolving() {
		// A plain insert takes only the column values.
		for i := range all {
			vals[i] = placeholder(i+1, p.types[i])
		}
		return fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s)", p.table, strings.Join(p.cols, ", "), strings.Join(vals, ", "))
	}
	for i := range all {
		vals[i] = placeholder(i+3, p.types[i])
	}
	keyParams := make([]int, len(p.keys))
	for i, k := range p.keys {
		keyParams[i] = k + 3
	}
	dec := conflict.InsertSQL(decisionInputs)
	sets := make([]string, len(all))
	for i := range all {
		sets[i] = fmt.Sprintf("%s = %s", p.cols[i], vals[i])
	}
	return fmt.Sprintf(`WITH %s,
i AS (
	INSERT INTO %s (%s) SELECT %s FROM d WHERE NOT coalesce(d.found, false) RETURNING 1
), u AS (
	UPDATE ONLY %s t SET %s FROM d WHERE t.ctid = d.tid AND %s RETURNING 1
), %s
SELECT (SELECT conflict_type FROM h)`,
		p.lookupCTE(keyParams), p.table, strings.Join(p.cols, ", "), strings.Join(vals, ", "),
		p.table, strings.Join(sets, ", "), dec.Apply,
		p.historyCTE(dec, p.tupleJSON(all, 3)))
}

// updateSQL is the UPDATE of the columns present in mask.
func (p *plan) updateSQL(mask string) string {
	keyParams := make([]int, len(p.keys))
	for i := range p.keys {
		keyParams[i] = i + 3
	}
	next := len(p.keys) + 3
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
		return fmt.Sprintf(`WITH %s
UPDATE ONLY %s t SET %s FROM d WHERE t.ctid = d.tid`, p.lookupCTE(keyParams), p.table, strings.Join(sets, ", "))
	}
	dec := conflict.UpdateSQL(decisionInputs)
	return fmt.Sprintf(`WITH %s,
u AS (
	UPDATE ONLY %s t SET %s FROM d WHERE t.ctid = d.tid AND %s RETURNING 1
), %s
SELECT (SELECT conflict_type FROM h)`,
		p.lookupCTE(keyParams), p.table, strings.Join(sets, ", "), dec.Apply,
		p.historyCTE(dec, p.tupleJSON(present, first)))
}

func (p *plan) deleteSQL() string {
	keyParams := make([]int, len(p.keys))
	for i := range p.keys {
		keyParams[i] = i + 3
	}
	if p.full {
		return fmt.Sprintf(`WITH %s
DELETE FROM ONLY %s t USING d WHERE t.ctid = d.tid`, p.lookupCTE(keyParams), p.table)
	}
	dec := conflict.DeleteSQL(decisionInputs)
	return fmt.Sprintf(`WITH %s,
x AS (
	DELETE FROM ONLY %s t USING d WHERE t.ctid = d.tid AND %s RETURNING 1
), %s
SELECT (SELECT conflict_type FROM h)`,
		p.lookupCTE(keyParams), p.table, dec.Apply,
		p.historyCTE(dec, p.tupleJSON(p.keys, 3)))
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
