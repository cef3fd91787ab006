package apply

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/conflict"
	"github.com/bdr-dev/bdr/decoder"
	"github.com/bdr-dev/bdr/internal/catalog"
)

// plan holds the statements of one relation as the provider described it.
// Plans are built once per relation description and cached by signature;
// UPDATE statements depend on which columns the change carries (unchanged
// TOAST values are left out) and are built on first use of each shape.
//
// A relation with a key (primary key or replica identity index) has two
// sets of statements, one row change each:
//
//   - fast ones (plan_fast.go) apply a change only when it is no conflict
//     and count what they applied; a check before COMMIT aborts the
//     transaction when one of them did not apply, and the applier applies
//     it again with
//   - resolving ones (plan_resolve.go), which decide and record conflicts
//     in the same statement; they cost more and are used for a while after
//     a conflict.
//
// Relations without a key (no replica identity, or FULL, where equal rows
// may legitimately repeat) have plain statements and no conflict handling,
// except FULL relations with delta columns (plan_delta.go), whose key is the
// local primary key.
type plan struct {
	rel   *decoder.Relation
	table string   // quoted "schema"."name"
	cols  []string // quoted column names, provider order
	types []string // local type of each column, for parameters (no modifier)
	keys  []int    // positions of the replica identity columns
	full  bool     // REPLICA IDENTITY FULL: any one row with equal columns
	// delta marks the delta columns (plan_delta.go); nil when the table
	// has none, or when its changes do not carry old rows.
	delta []bool
	// declares: the table is one of bdr's replicated declarations
	// (catalog.ReplicatedTables); applying it changes other plans.
	declares bool

	insert, del       stmt            // fast (or plain without a key)
	update            map[string]stmt // fast (or plain), by presence mask
	resInsert, resDel stmt            // resolving
	resUpdate         map[string]stmt // resolving, by presence mask and unique check
	// uniques are the unique indexes besides the key that resolving
	// statements check first (plan_unique.go), with uniqInsert and
	// uniqUpdate.
	uniques    []uniqueIndex
	uniqInsert stmt
	uniqUpdate map[string]stmt // by presence mask and key change
	// parents and children are the foreign keys the applier checks for
	// orphans (plan_fk.go), with parentCheck (by presence mask, "" for an
	// INSERT) and childCheck.
	parents, children []foreignKey
	parentCheck       map[string]stmt
	childCheck        stmt
}

// stmt is a statement prepared on the applier's connection.
type stmt struct {
	name string
	sql  string
}

// localTable is what the local catalog says about the target of a relation.
type localTable struct {
	exists bool
	types  map[string]string // column name -> type for parameters (no modifier)
	delta  deltaRead         // read only for relations that carry old rows
	// uniques: unique indexes, read only for relations with a key
	uniques []localUnique
	fks     []localFK
}

func loadLocalTable(ctx context.Context, conn *pgx.Conn, rel *decoder.Relation) (localTable, error) {
	// Parameters are cast to the column's type without its modifier: an
	// explicit cast to varchar(n) or bit(n) cuts a longer value silently,
	// the assignment to the column refuses it (and the transaction is
	// parked). A type named without modifier means length 1 for character
	// and bit, so those take bpchar and varbit.
	rows, err := conn.Query(ctx, `SELECT a.attname, CASE a.atttypid
			WHEN 'pg_catalog.bpchar'::pg_catalog.regtype THEN 'bpchar'
			WHEN 'pg_catalog._bpchar'::pg_catalog.regtype THEN 'bpchar[]'
			WHEN 'pg_catalog.bit'::pg_catalog.regtype THEN 'varbit'
			WHEN 'pg_catalog._bit'::pg_catalog.regtype THEN 'varbit[]'
			ELSE pg_catalog.format_type(a.atttypid, NULL) END
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
	if lt.exists && rel.ReplicaIdentity == decoder.IdentityFull {
		if lt.delta, err = loadDelta(ctx, conn, rel); err != nil {
			return localTable{}, err
		}
	} else if lt.exists && len(rel.KeyColumns()) > 0 {
		if lt.uniques, err = loadUniques(ctx, conn, rel); err != nil {
			return localTable{}, err
		}
	}
	if lt.exists {
		if lt.fks, err = loadForeignKeys(ctx, conn, rel); err != nil {
			return localTable{}, err
		}
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
		rel:         rel,
		table:       ident(rel.Schema, rel.Name),
		keys:        rel.KeyColumns(),
		full:        rel.ReplicaIdentity == decoder.IdentityFull,
		declares:    catalog.IsReplicated(rel.Schema, rel.Name),
		update:      map[string]stmt{},
		resUpdate:   map[string]stmt{},
		uniqUpdate:  map[string]stmt{},
		parentCheck: map[string]stmt{},
	}
	for _, c := range rel.Columns {
		typ, ok := lt.types[c.Name]
		if !ok {
			return nil, fmt.Errorf("column %s of table %s does not exist on this node", ident(c.Name), p.table)
		}
		p.cols = append(p.cols, ident(c.Name))
		p.types = append(p.types, typ)
	}
	p.useDelta(lt.delta)
	p.useUniques(lt.uniques)
	p.useForeignKeys(lt.fks)
	if len(p.children) > 0 {
		p.childCheck = stmt{name(), p.childCheckSQL()}
	}
	p.insert = stmt{name(), p.insertSQL()}
	if len(p.keys) > 0 {
		p.del = stmt{name(), p.deleteSQL()}
	}
	if p.resolving() {
		p.resInsert = stmt{name(), p.resolvingInsertSQL()}
		p.resDel = stmt{name(), p.resolvingDeleteSQL()}
		if len(p.uniques) > 0 {
			p.uniqInsert = stmt{name(), p.uniqueInsertSQL()}
		}
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
	setApplied    = "bdr.applied" // rows applied by fast statements in this transaction
	// setStream is the origin whose row versions a remote change
	// replaces whatever their times: the change's own node's, which its
	// stream sends in commit order. bdr.origin, except in the retry of a
	// parked transaction (noStream): the stream has gone past it, and its
	// node's later versions here are newer than it.
	setStream = "bdr.stream_origin"
)

// noStream is setStream in the retry of a parked transaction: an oid no
// replication origin has (their ids fit in 16 bits), so that a version of
// the change's own node is compared by its time, as any other node's.
const noStream = "4294967295"

// sameStream is true when the replication origin ro is the one the
// change's stream supersedes (see setStream).
func sameStream(ro string) string {
	return fmt.Sprintf("%s = %s", ro, setting(setStream, "oid"))
}

func setting(name, typ string) string {
	return fmt.Sprintf("pg_catalog.current_setting('%s')::%s", name, typ)
}

// nodeOf maps the replication origin of a row version to the node that
// wrote it (origin 0 is a local write). It is bdr.origin_node_id written
// inline: a SQL function with a FROM clause is not inlined, and PostgreSQL
// parses and plans its body again at each call site on every execution of
// the statement (a conflict record calls it several times: that made
// resolving a conflict with a third node's row cost milliseconds); inline,
// it is planned once with the prepared statement.
func nodeOf(ro string) string {
	return fmt.Sprintf(`CASE WHEN %s = 0 THEN %s ELSE coalesce((SELECT n.node_id
	FROM pg_catalog.pg_replication_origin o JOIN bdr.nodes n ON n.state <> 'parted'
	 AND o.roname = 'bdr_' || (SELECT d.oid::text FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()) || '_' || n.node_name
	WHERE o.roident = %s), 0) END`, ro, setting(setLocalID, "int"), ro)
}

func mine(xmin string) string { return xmin + " = pg_catalog.pg_current_xact_id()::xid" }

// remoteTS is the remote commit time as resolving statements read it (fast
// statements take it as a parameter instead).
var remoteTS = setting(setCommitTS, "timestamptz")

// inputs are the decision inputs for a row version whose commit time and
// origin are in c (from pg_xact_commit_timestamp_origin), against a remote
// change committed at rts.
func inputs(found, mineExpr, c, rts string) conflict.Inputs {
	return conflict.Inputs{
		Found:      found,
		Same:       fmt.Sprintf("coalesce(%s OR %s, false)", mineExpr, sameStream(c+".roident")),
		LocalTS:    c + ".timestamp",
		LocalNode:  nodeOf(c + ".roident"),
		RemoteTS:   rts,
		RemoteNode: setting(setRemoteID, "int"),
	}
}

// onVersion evaluates a decision expression on the row version with xmin,
// under resolvers (see resolvers.go). It is a condition of the statement
// that changes the row, so PostgreSQL evaluates it again on the newer
// version when a local transaction updated the row concurrently. The
// commit time and origin are read inline (no subquery: that costs more
// than reading them twice).
func onVersion(xmin, rts string, resolvers func(conflict.Type) string, expr func(conflict.Inputs) string) string {
	in := inputs("true", mine(xmin), "(pg_catalog.pg_xact_commit_timestamp_origin("+xmin+"))", rts)
	in.Resolver = resolvers
	return expr(in)
}

// keyParams numbers the key parameters, from first: the key values come
// first, or for an INSERT, which passes every column, are among them.
func (p *plan) keyParams(insert bool, first int) []int {
	ps := make([]int, len(p.keys))
	for i, k := range p.keys {
		if insert {
			ps[i] = k + first
		} else {
			ps[i] = i + first
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
