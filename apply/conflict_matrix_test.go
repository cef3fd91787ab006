package apply_test

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/conflict"
	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/checksum"
	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

// The conflict matrix (issue 5): one case per conflict type and per apply
// error, each run on a group of two nodes and on a group of three. A case
// writes on the first two nodes (A and B) while their appliers are paused,
// then resumes them. A third node is not paused: it applies each write
// before the next one is made, so it meets the writes in commit order, as
// the node of the first write does. The case then checks:
//
//   - the rows on every node (the expected winner);
//   - the conflicts in bdr.conflict_history, exactly: type, resolution,
//     the remote change's node, xid and commit time, the local row's commit
//     time and node, and a reason that names both versions;
//   - the transactions parked in bdr.apply_errors;
//   - no stall: every node writes once more and every node gets all of it;
//   - after fix (run on every node that parked) and a retry of the parked
//     transactions: every node has the rows want says, and the case's
//     tables have equal checksums on all nodes.
//
// Each case runs in a schema of its own (on the search_path of every
// statement it runs), so it names its tables plainly and cannot disturb
// the others.
//
// Adding a case: a name, the writes in commit order, want, and the
// conflicts or parked transactions they cause. Tables other than kv need
// schema (run on every node) and check (the query whose text result is
// compared with want).

// Nodes of a case: writes go to the first two nodes of a group.
const (
	nodeA = 0
	nodeB = 1
	// noLocal: a conflict without a local row (update_missing, delete_missing).
	noLocal = -1
)

// Resolutions, short.
const (
	resKeepLocal  = string(conflict.KeepLocal)
	resKeepRemote = string(conflict.KeepRemote)
	resSkip       = string(conflict.Skip)
)

type matrixCase struct {
	// name names the subtest and the case's schema, m_<name>: lowercase
	// letters, digits and _.
	name string
	// schema creates the case's tables on every node (DDL does not
	// replicate); empty is kvTable.
	schema string
	// onlyA is DDL run on A alone after schema: what the other nodes lack
	// (apply error cases).
	onlyA string
	// rows run on A, and replicate to every node, before the writes.
	rows string
	// writes run in this order, each committed after the previous one, while
	// A's and B's appliers are paused.
	writes []mwrite
	// check is a query returning one text value that must be want on every
	// node at the end; empty is kvCheck.
	check string
	want  string
	// conflicts are the conflicts A and B record, no more.
	conflicts []mconflict
	// third is what a third node records, when it is not what the node
	// of the first write records (on is ignored).
	third []mconflict
	// parked are the transactions every other node than the write's parks.
	parked []mparked
	// fix runs on every node that parked, before the parked transactions
	// are retried.
	fix string
}

type mwrite struct {
	on  int // nodeA or nodeB
	sql string
}

type mconflict struct {
	on       int // the node that records it: nodeA or nodeB
	typ, res string
	remote   int // index in writes of the remote change
	local    int // index in writes of the local row's version, or noLocal
	// deleted: the local version is a delete (its tombstone): no local row
	deleted bool
}

type mparked struct {
	write    int    // index in writes
	sqlstate string // expected SQLSTATE; "" when the error is bdr's own
	err      string // a substring of the error
}

const (
	kvTable = `CREATE TABLE kv (k int PRIMARY KEY, v text)`
	kvCheck = `SELECT coalesce(string_agg(k || '=' || coalesce(v::text, 'NULL'), ' ' ORDER BY k), '') FROM kv`
	kvStart = `INSERT INTO kv VALUES (1, 'start'), (2, 'other')`
	// users has unique indexes besides its key.
	usersTable = `CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE, name text UNIQUE)`
	usersCheck = `SELECT coalesce(string_agg(id || '=' || email || '/' || name, ' ' ORDER BY id), '') FROM users`
	// createRole creates the role named by bdr_test.role (see matrixEnv).
	createRole = `DO $$ BEGIN EXECUTE format('CREATE ROLE %I NOLOGIN', current_setting('bdr_test.role')); END $$`
)

var matrixCases = []matrixCase{
	{
		name:   "insert_insert",
		writes: []mwrite{{nodeA, `INSERT INTO kv VALUES (1, 'a')`}, {nodeB, `INSERT INTO kv VALUES (1, 'b')`}},
		want:   "1=b",
		conflicts: []mconflict{
			{on: nodeA, typ: "insert_insert", res: resKeepRemote, remote: 1, local: 0},
			{on: nodeB, typ: "insert_insert", res: resKeepLocal, remote: 0, local: 1},
		},
	},
	{
		name:      "update_update",
		rows:      kvStart,
		writes:    []mwrite{{nodeA, `UPDATE kv SET v = 'a' WHERE k = 1`}, {nodeB, `UPDATE kv SET v = 'b' WHERE k = 1`}},
		want:      "1=b 2=other",
		conflicts: []mconflict{{on: nodeB, typ: "update_update", res: resKeepLocal, remote: 0, local: 1}},
	},
	{
		// The later update is on the first node: the winner is the time,
		// not the node.
		name:      "update_update_a_later",
		rows:      kvStart,
		writes:    []mwrite{{nodeB, `UPDATE kv SET v = 'b' WHERE k = 1`}, {nodeA, `UPDATE kv SET v = 'a' WHERE k = 1`}},
		want:      "1=a 2=other",
		conflicts: []mconflict{{on: nodeA, typ: "update_update", res: resKeepLocal, remote: 0, local: 1}},
	},
	{
		// The update is newer than the delete: A inserts the row again as B
		// changed it (the tombstone of A's delete is older).
		name:   "update_delete",
		rows:   kvStart,
		writes: []mwrite{{nodeA, `DELETE FROM kv WHERE k = 1`}, {nodeB, `UPDATE kv SET v = 'b' WHERE k = 1`}},
		want:   "1=b 2=other",
		conflicts: []mconflict{
			{on: nodeA, typ: "update_delete", res: resKeepRemote, remote: 1, local: 0, deleted: true},
			{on: nodeB, typ: "update_delete", res: resKeepLocal, remote: 0, local: 1},
		},
	},
	{
		// The delete is newer than the update: A applies it without a
		// record; B finds the tombstone of its delete, newer than A's update.
		name:      "update_delete_newer_delete",
		rows:      kvStart,
		writes:    []mwrite{{nodeA, `UPDATE kv SET v = 'a' WHERE k = 1`}, {nodeB, `DELETE FROM kv WHERE k = 1`}},
		want:      "2=other",
		conflicts: []mconflict{{on: nodeB, typ: "update_delete", res: resKeepLocal, remote: 0, local: 1, deleted: true}},
	},
	{
		// B deletes the row and inserts it again, after A deleted it: the
		// row of B's insert is the newest version (TestKnownBugDeleteBeatsReinsert).
		name:   "delete_then_insert",
		rows:   kvStart,
		writes: []mwrite{{nodeA, `DELETE FROM kv WHERE k = 1`}, {nodeB, `DELETE FROM kv WHERE k = 1`}, {nodeB, `INSERT INTO kv VALUES (1, 'again')`}},
		want:   "1=again 2=other",
		conflicts: []mconflict{
			{on: nodeA, typ: "delete_delete", res: resSkip, remote: 1, local: noLocal},
			{on: nodeB, typ: "update_delete", res: resKeepLocal, remote: 0, local: 2},
		},
	},
	{
		// An insert older than a delete of its key loses to the tombstone:
		// A inserts and deletes the key after B inserted it.
		name:   "insert_delete",
		writes: []mwrite{{nodeB, `INSERT INTO kv VALUES (3, 'b')`}, {nodeA, `INSERT INTO kv VALUES (3, 'a'); DELETE FROM kv WHERE k = 3`}},
		want:   "",
		conflicts: []mconflict{
			{on: nodeA, typ: "insert_delete", res: resKeepLocal, remote: 0, local: 1, deleted: true},
			{on: nodeB, typ: "insert_insert", res: resKeepRemote, remote: 1, local: 0},
		},
	},
	{
		// Both delete the row: the tombstones meet.
		name:   "delete_delete",
		rows:   kvStart,
		writes: []mwrite{{nodeA, `DELETE FROM kv WHERE k = 1`}, {nodeB, `DELETE FROM kv WHERE k = 1`}},
		want:   "2=other",
		conflicts: []mconflict{
			{on: nodeA, typ: "delete_delete", res: resSkip, remote: 1, local: noLocal},
			{on: nodeB, typ: "delete_delete", res: resSkip, remote: 0, local: noLocal},
		},
	},
	{
		// One remote transaction, three rows, three conflicts of three
		// types, resolved row by row in one local transaction.
		name: "one_transaction_three_types",
		rows: kvStart + `, (3, 'three')`,
		writes: []mwrite{
			{nodeA, `INSERT INTO kv VALUES (4, 'a'); UPDATE kv SET v = 'a' WHERE k = 1; DELETE FROM kv WHERE k = 3`},
			{nodeB, `INSERT INTO kv VALUES (4, 'b'); UPDATE kv SET v = 'b' WHERE k = 1; DELETE FROM kv WHERE k = 3`},
		},
		want: "1=b 2=other 4=b",
		conflicts: []mconflict{
			{on: nodeA, typ: "insert_insert", res: resKeepRemote, remote: 1, local: 0},
			{on: nodeA, typ: "delete_delete", res: resSkip, remote: 1, local: noLocal},
			{on: nodeB, typ: "insert_insert", res: resKeepLocal, remote: 0, local: 1},
			{on: nodeB, typ: "update_update", res: resKeepLocal, remote: 0, local: 1},
			{on: nodeB, typ: "delete_delete", res: resSkip, remote: 0, local: noLocal},
		},
	},

	// Apply errors: the other nodes cannot apply A's transaction; they park
	// it, go on, and apply it once fixed.
	{
		name:   "missing_table",
		onlyA:  `CREATE TABLE only_a (id int PRIMARY KEY)`,
		writes: []mwrite{{nodeA, `INSERT INTO kv VALUES (1, 'with only_a'); INSERT INTO only_a VALUES (1)`}},
		check:  `SELECT ` + "(" + kvCheck + `) || ' only_a=' || (SELECT count(*) FROM only_a)`,
		want:   "1=with only_a only_a=1",
		parked: []mparked{{write: 0, err: "only_a"}},
		fix:    `CREATE TABLE only_a (id int PRIMARY KEY)`,
	},
	{
		name:   "missing_column",
		onlyA:  `ALTER TABLE kv ADD COLUMN extra text`,
		writes: []mwrite{{nodeA, `INSERT INTO kv VALUES (1, 'a', 'x')`}},
		check:  `SELECT string_agg(format('%s=%s/%s', k, v, extra), ' ') FROM kv`,
		want:   "1=a/x",
		parked: []mparked{{write: 0, err: "extra"}},
		fix:    `ALTER TABLE kv ADD COLUMN extra text`,
	},
	{
		// Two rows with one email: the later stays everywhere.
		name:   "unique_secondary",
		schema: usersTable,
		writes: []mwrite{{nodeA, `INSERT INTO users VALUES (1, 'x', 'a')`}, {nodeB, `INSERT INTO users VALUES (2, 'x', 'b')`}},
		check:  usersCheck,
		want:   "2=x/b",
		conflicts: []mconflict{
			{on: nodeA, typ: "unique_secondary", res: resKeepRemote, remote: 1, local: 0},
			{on: nodeB, typ: "unique_secondary", res: resKeepLocal, remote: 0, local: 1},
		},
	},
	{
		// One row colliding with another on two indexes at once.
		name:   "multiple_unique",
		schema: usersTable,
		writes: []mwrite{{nodeA, `INSERT INTO users VALUES (1, 'x', 'n')`}, {nodeB, `INSERT INTO users VALUES (2, 'x', 'n')`}},
		check:  usersCheck,
		want:   "2=x/n",
		conflicts: []mconflict{
			{on: nodeA, typ: "multiple_unique", res: resKeepRemote, remote: 1, local: 0},
			{on: nodeB, typ: "multiple_unique", res: resKeepLocal, remote: 0, local: 1},
		},
	},
	{
		// A key change into a key B inserts later: B's row stays, and the
		// changed row goes (on A it became B's row; B deletes it).
		name:   "pk_change",
		rows:   kvStart,
		writes: []mwrite{{nodeA, `UPDATE kv SET k = 3 WHERE k = 1`}, {nodeB, `INSERT INTO kv VALUES (3, 'b')`}},
		want:   "2=other 3=b",
		conflicts: []mconflict{
			{on: nodeA, typ: "insert_insert", res: resKeepRemote, remote: 1, local: 0},
			{on: nodeB, typ: "pk_change", res: resKeepLocal, remote: 0, local: 1},
		},
	},
	{
		// A key change is a delete of the old key and an insert of the
		// new one: a later update of the row wins over the delete, and the
		// insert stays.
		name:   "key_change_later_update",
		rows:   kvStart,
		writes: []mwrite{{nodeA, `UPDATE kv SET k = 3 WHERE k = 1`}, {nodeB, `UPDATE kv SET v = 'b' WHERE k = 1`}},
		want:   "1=b 2=other 3=start",
		conflicts: []mconflict{
			{on: nodeA, typ: "update_delete", res: resKeepRemote, remote: 1, local: 0, deleted: true},
			{on: nodeB, typ: "update_update", res: resKeepLocal, remote: 0, local: 1},
		},
	},
	{
		// A key change that meets a newer row under its old key leaves
		// that row, and inserts its own under the new key as an insert:
		// here that insert collides with the newer row on a unique index
		// and loses to it, as on A, where the newer row's arrival deletes
		// the key change's row.
		name:   "key_change_old_row_collides",
		schema: usersTable,
		rows:   `INSERT INTO users VALUES (1, 'a@x', 'ann')`,
		writes: []mwrite{{nodeA, `UPDATE users SET id = 2 WHERE id = 1`}, {nodeB, `UPDATE users SET name = 'bob' WHERE id = 1`}},
		check:  usersCheck,
		want:   "1=a@x/bob",
		conflicts: []mconflict{
			{on: nodeA, typ: "unique_secondary", res: resKeepRemote, remote: 1, local: 0},
			{on: nodeA, typ: "update_delete", res: resKeepRemote, remote: 1, local: 0, deleted: true},
			{on: nodeB, typ: "unique_secondary", res: resKeepLocal, remote: 0, local: 1},
		},
	},
	{
		// The same with a past version of the newer row: B's row collided
		// with the key change's row at its first update, not since its
		// second; had the key change arrived between them, it would have
		// lost, as it does on A.
		name:   "key_change_old_version_collides",
		schema: usersTable,
		rows:   `INSERT INTO users VALUES (1, 'a@x', 'ann')`,
		writes: []mwrite{{nodeA, `UPDATE users SET id = 2 WHERE id = 1`}, {nodeB, `UPDATE users SET name = 'zed' WHERE id = 1`},
			{nodeB, `UPDATE users SET email = 'c@x' WHERE id = 1`}},
		check: usersCheck,
		want:  "1=c@x/zed",
		conflicts: []mconflict{
			{on: nodeA, typ: "unique_secondary", res: resKeepRemote, remote: 1, local: 0},
			{on: nodeA, typ: "update_delete", res: resKeepRemote, remote: 1, local: 0, deleted: true},
			{on: nodeB, typ: "unique_secondary", res: resKeepLocal, remote: 0, local: 1},
		},
	},
	{
		// v is an integer on the other nodes.
		name:   "type_error",
		schema: `CREATE TABLE kv (k int PRIMARY KEY, v int)`,
		onlyA:  `ALTER TABLE kv ALTER COLUMN v TYPE text`,
		writes: []mwrite{{nodeA, `INSERT INTO kv VALUES (1, 'not a number')`}},
		want:   "1=not a number",
		parked: []mparked{{write: 0, sqlstate: "22P02", err: "integer"}},
		fix:    `ALTER TABLE kv ALTER COLUMN v TYPE text`,
	},
	{
		// A value longer than the other nodes' varchar(3): parked, not cut.
		name:   "value_too_long",
		schema: `CREATE TABLE kv (k int PRIMARY KEY, v varchar(3))`,
		onlyA:  `ALTER TABLE kv ALTER COLUMN v TYPE text`,
		writes: []mwrite{{nodeA, `INSERT INTO kv VALUES (1, 'long value')`}},
		want:   "1=long value",
		parked: []mparked{{write: 0, sqlstate: "22001", err: "too long"}},
		fix:    `ALTER TABLE kv ALTER COLUMN v TYPE text`,
	},
	{
		// A role that exists on A's server only, named in a row (no DDL
		// between the nodes differs): the others cannot read the value.
		name:   "missing_role",
		schema: `CREATE TABLE grants (id int PRIMARY KEY, grantee regrole)`,
		onlyA:  createRole,
		writes: []mwrite{{nodeA, `INSERT INTO grants VALUES (1, current_setting('bdr_test.role')::regrole)`}},
		check:  `SELECT string_agg(format('%s=%s', id, (grantee::text = current_setting('bdr_test.role'))::text), ' ') FROM grants`,
		want:   "1=true",
		parked: []mparked{{write: 0, sqlstate: "42704", err: "does not exist"}},
		fix:    createRole,
	},
}

// TestConflictMatrix runs every case of matrixCases on a group of two
// nodes and on a group of three.
func TestConflictMatrix(t *testing.T) {
	t.Parallel()
	runMatrix(t, "mx", matrixCases, 2, 3)
}

// runMatrix runs cases, in order, on a group of each size (in parallel),
// one subtest per size and case ("2nodes/insert_insert").
func runMatrix(t *testing.T, prefix string, cases []matrixCase, sizes ...int) {
	for _, size := range sizes {
		t.Run(fmt.Sprintf("%dnodes", size), func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			nodes := grouptest.Group(t, shared(t)[:size], fmt.Sprintf("%s%d", prefix, size), grouptest.Options{ErrorRetry: time.Second}, nil)
			envs := make([]*matrixEnv, len(cases))
			for i, c := range cases {
				envs[i] = newMatrixEnv(t, nodes, c)
			}
			grouptest.WaitQuiet(t, nodes, time.Minute)
			t.Logf("group of %d and the cases' tables ready in %s", size, time.Since(start).Round(time.Millisecond))
			for i, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					start := time.Now()
					envs[i].run(t, c)
					t.Logf("%s on %d nodes: %s", c.name, size, time.Since(start).Round(time.Millisecond))
				})
			}
		})
	}
}

// matrixEnv is where a case runs: its schema, on the search_path of every
// statement, and a role name unique to the run in the setting
// bdr_test.role, for cases that need a role (roles belong to the server,
// which other groups share).
type matrixEnv struct {
	nodes  []*grouptest.Node
	ids    []int32 // node ids
	schema string
	role   string
}

// newMatrixEnv creates the case's schema and tables on every node and its
// rows on A; the caller waits until they replicated.
func newMatrixEnv(t *testing.T, nodes []*grouptest.Node, c matrixCase) *matrixEnv {
	t.Helper()
	e := &matrixEnv{nodes: nodes, schema: "m_" + c.name, role: pgtest.UniqueName(t, "mrole")}
	for _, n := range nodes {
		pgtest.Exec(t, n.DSN, `CREATE SCHEMA `+pgx.Identifier{e.schema}.Sanitize())
		e.exec(t, n, cmp.Or(c.schema, kvTable)+`; CREATE TABLE matrix_later (node text PRIMARY KEY)`)
		var id int32
		pgtest.Scan(t, n.DSN, `SELECT node_id FROM bdr.nodes WHERE is_local AND state <> 'parted'`, nil, &id)
		e.ids = append(e.ids, id)
		t.Cleanup(func() {
			if n.Server.Running() {
				pgtest.Exec(t, n.DSN, `DROP ROLE IF EXISTS `+pgx.Identifier{e.role}.Sanitize())
			}
		})
	}
	if c.onlyA != "" {
		e.exec(t, nodes[nodeA], c.onlyA)
	}
	if c.rows != "" {
		e.exec(t, nodes[nodeA], c.rows)
	}
	return e
}

func (e *matrixEnv) dsn(n *grouptest.Node) string {
	return searchPathDSN(n.DSN, e.schema, "bdr_test.role="+e.role)
}

// searchPathDSN is dsn with schema as the search_path and settings
// ("name=value", values without spaces or quotes) set in every session.
func searchPathDSN(dsn, schema string, settings ...string) string {
	opts := "-c search_path=" + schema
	for _, s := range settings {
		opts += " -c " + s
	}
	return dsn + " options='" + opts + "'"
}

// written is what a write committed.
type written struct {
	node   int
	xid    int64
	commit time.Time
	lsn    string // WAL position after the commit
}

// exec runs sql on n in one transaction and returns its xid, commit time
// and the WAL position after it.
func (e *matrixEnv) exec(t *testing.T, n *grouptest.Node, sql string) written {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, e.dsn(n))
	if err != nil {
		t.Fatalf("connect to %s: %v", n.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var w written
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, sql); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT pg_catalog.pg_current_xact_id()::xid::text::bigint`).Scan(&w.xid)
	})
	if err == nil {
		err = conn.QueryRow(ctx, `SELECT pg_catalog.pg_xact_commit_timestamp($1::text::xid), pg_catalog.pg_current_wal_lsn()::text`,
			fmt.Sprint(w.xid)).Scan(&w.commit, &w.lsn)
	}
	if err != nil {
		t.Fatalf("on %s: %s: %v", n.Name, sql, err)
	}
	return w
}

// query runs a query of one text value on n.
func (e *matrixEnv) query(t *testing.T, n *grouptest.Node, sql string) string {
	t.Helper()
	var s *string
	pgtest.Scan(t, e.dsn(n), sql, nil, &s)
	if s == nil {
		return "NULL"
	}
	return *s
}

// pauseAll holds the appliers of every node; the returned function
// releases them (again at the end of the test, should it fail before).
func pauseAll(t *testing.T, nodes []*grouptest.Node) (resume func()) {
	t.Helper()
	ctx := context.Background()
	for _, n := range nodes {
		if err := n.Client().Pause(ctx, time.Minute); err != nil {
			t.Fatalf("pause %s: %v", n.Name, err)
		}
	}
	resumed := false
	resume = func() {
		if resumed {
			return
		}
		resumed = true
		for _, n := range nodes {
			if err := n.Client().Resume(ctx); err != nil {
				t.Errorf("resume %s: %v", n.Name, err)
			}
		}
	}
	t.Cleanup(resume)
	return resume
}

func (e *matrixEnv) run(t *testing.T, c matrixCase) {
	nodes := e.nodes
	resume := pauseAll(t, nodes[:nodeB+1])
	ws := make([]written, len(c.writes))
	for i, w := range c.writes {
		ws[i] = e.exec(t, nodes[w.on], w.sql)
		ws[i].node = w.on
		for _, n := range nodes[nodeB+1:] {
			if err := n.Client().WaitProcessed(context.Background(), nodes[w.on].Name, ws[i].lsn); err != nil {
				t.Fatalf("%s to apply write %d: %v", n.Name, i, err)
			}
		}
		if i > 0 && !ws[i].commit.After(ws[i-1].commit) {
			t.Fatalf("write %d committed at %s, not after write %d at %s", i, ws[i].commit, i-1, ws[i-1].commit)
		}
	}
	resume()
	grouptest.WaitQuiet(t, nodes, time.Minute)
	defer func() {
		if t.Failed() {
			for _, n := range nodes {
				t.Logf("%s conflicts:\n%s", n.Name, strings.Join(conflicts(t, n), "\n"))
			}
		}
	}()

	if c.fix == "" {
		e.checkRows(t, c)
	}
	for i, n := range nodes {
		e.checkConflicts(t, c, ws, i, n)
	}
	parked := e.checkParked(t, c, ws)

	// No stall: every node writes once more, and every node gets it all.
	for _, n := range nodes {
		pgtest.Exec(t, e.dsn(n), `INSERT INTO matrix_later VALUES ($1)`, n.Name)
	}
	grouptest.WaitQuiet(t, nodes, time.Minute)
	for _, n := range nodes {
		if got := e.query(t, n, `SELECT count(*)::text FROM matrix_later`); got != fmt.Sprint(len(nodes)) {
			t.Errorf("%s: %s of %d later writes arrived", n.Name, got, len(nodes))
		}
		for _, p := range nodes {
			if p != n {
				if s := streamFrom(t, n, p); s.State != "streaming" {
					t.Errorf("%s: stream from %s is %s (%s)", n.Name, p.Name, s.State, s.LastError)
				}
			}
		}
	}

	if c.fix != "" {
		for n, ids := range parked {
			e.exec(t, n, c.fix)
			for _, id := range ids {
				retryParked(t, n, id)
			}
		}
		grouptest.WaitQuiet(t, nodes, time.Minute)
		e.checkRows(t, c)
	}
	e.assertConverged(t)
}

// checkRows checks that every node has the rows c wants.
func (e *matrixEnv) checkRows(t *testing.T, c matrixCase) {
	t.Helper()
	for _, n := range e.nodes {
		if got := e.query(t, n, cmp.Or(c.check, kvCheck)); got != c.want {
			t.Errorf("%s: %q, want %q", n.Name, got, c.want)
		}
	}
}

// recorded is a bdr.conflict_history row.
type recorded struct {
	typ, res, reason, remoteNode string
	xid                          int64
	remoteTime                   time.Time
	localTime                    *time.Time
	localNode                    *int32
	localTuple                   bool
}

func (r recorded) String() string {
	return fmt.Sprintf("%s %s from %s xid %d (%s)", r.typ, r.res, r.remoteNode, r.xid, r.reason)
}

// checkConflicts checks the conflicts node i recorded in the case's schema.
func (e *matrixEnv) checkConflicts(t *testing.T, c matrixCase, ws []written, i int, n *grouptest.Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := pgtest.Conn(t, n.DSN).Query(ctx, `SELECT conflict_type, resolution, reason, remote_node_name, remote_xid,
			remote_commit_time, local_commit_time, local_origin_node_id, local_tuple IS NOT NULL
		FROM bdr.conflict_history WHERE schema_name = $1 AND resolution <> 'parked' ORDER BY conflict_id`, e.schema)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (recorded, error) {
		var r recorded
		err := row.Scan(&r.typ, &r.res, &r.reason, &r.remoteNode, &r.xid, &r.remoteTime, &r.localTime, &r.localNode, &r.localTuple)
		return r, err
	})
	if err != nil {
		t.Fatalf("conflicts of %s: %v", n.Name, err)
	}
	var want []mconflict
	switch {
	case i > nodeB && c.third != nil:
		want = c.third
	case i > nodeB && len(ws) > 0:
		i = ws[0].node
		fallthrough
	default:
		for _, w := range c.conflicts {
			if w.on == i {
				want = append(want, w)
			}
		}
	}
	if len(got) != len(want) {
		t.Errorf("%s recorded %d conflicts, want %d: %v", n.Name, len(got), len(want), got)
		return
	}
	// The records of one remote transaction come in the order of its
	// changes, and so do the cases'.
	for j, w := range want {
		if err := e.matches(w, got[j], ws); err != nil {
			t.Errorf("%s: conflict %d: %v", n.Name, j, err)
		}
	}
}

// matches says why r is not the conflict w, or nil.
func (e *matrixEnv) matches(w mconflict, r recorded, ws []written) error {
	remote := ws[w.remote]
	rnode := e.nodes[remote.node]
	version := func(ts time.Time, node int) string {
		return fmt.Sprintf("%s by node %d", ts.UTC().Format("2006-01-02 15:04:05.000000Z"), e.ids[node])
	}
	switch {
	case r.typ != w.typ || r.res != w.res:
		return fmt.Errorf("%s, want %s %s", r, w.typ, w.res)
	case r.remoteNode != rnode.Name || r.xid != remote.xid || !r.remoteTime.Equal(remote.commit):
		return fmt.Errorf("%s at %s, want the change of %s xid %d at %s", r, r.remoteTime, rnode.Name, remote.xid, remote.commit)
	case w.local == noLocal && r.localTuple:
		return fmt.Errorf("%s has a local row, want none", r)
	case w.local == noLocal:
		return nil
	case w.deleted && r.localTuple:
		return fmt.Errorf("%s has a local row, want the version of a delete", r)
	}
	lw := ws[w.local]
	switch {
	case !w.deleted && !r.localTuple, r.localTime == nil || r.localNode == nil:
		return fmt.Errorf("%s has no local row, version or node", r)
	case !r.localTime.Equal(lw.commit) || *r.localNode != e.ids[lw.node]:
		return fmt.Errorf("%s: local version %s by node %d, want %s", r, r.localTime, *r.localNode, version(lw.commit, lw.node))
	case !strings.Contains(r.reason, version(remote.commit, remote.node)) || !strings.Contains(r.reason, version(lw.commit, lw.node)):
		return fmt.Errorf("%s: the reason does not name both %s and %s", r, version(remote.commit, remote.node), version(lw.commit, lw.node))
	}
	return nil
}

// checkParked checks the transactions parked in the case's schema on every
// node and returns their ids by node.
func (e *matrixEnv) checkParked(t *testing.T, c matrixCase, ws []written) map[*grouptest.Node][]int64 {
	t.Helper()
	out := map[*grouptest.Node][]int64{}
	for i, n := range e.nodes {
		var want []mparked
		for _, p := range c.parked {
			if ws[p.write].node != i {
				want = append(want, p)
			}
		}
		var ids []int64
		var got []string
		for _, line := range pgtest.Strings(t, n.DSN, `SELECT format('%s|%s|%s|%s|%s|%s', error_id, origin_node_name, remote_xid,
				coalesce(sqlstate, ''), state, error)
			FROM bdr.apply_errors WHERE EXISTS (SELECT 1 FROM unnest(tables) x WHERE x LIKE $1 || '.%')
			ORDER BY error_id`, e.schema) {
			f := strings.SplitN(line, "|", 6)
			var id int64
			fmt.Sscan(f[0], &id)
			ids = append(ids, id)
			got = append(got, strings.Join(f[1:], "|"))
		}
		if len(got) != len(want) {
			t.Errorf("%s parked %d transactions, want %d: %q", n.Name, len(got), len(want), got)
			continue
		}
		for j, p := range want {
			w := ws[p.write]
			f := strings.SplitN(got[j], "|", 5)
			if f[0] != e.nodes[w.node].Name || f[1] != fmt.Sprint(w.xid) || f[2] != p.sqlstate || f[3] != "parked" ||
				!strings.Contains(f[4], p.err) {
				t.Errorf("%s parked %q, want the transaction of %s xid %d with SQLSTATE %q and an error naming %q",
					n.Name, got[j], e.nodes[w.node].Name, w.xid, p.sqlstate, p.err)
			}
			// Recorded in conflict_history too, with the apply error's id.
			if n.QueryInt(`SELECT count(*) FROM bdr.conflict_history WHERE schema_name = $1
				AND resolution = 'parked' AND remote_xid = $2 AND reason LIKE '%parked as apply error ' || $3::bigint || ' %'`,
				e.schema, w.xid, ids[j]) != 1 {
				t.Errorf("%s: parked transaction %d is not recorded in conflict_history", n.Name, ids[j])
			}
		}
		if len(ids) > 0 {
			out[n] = ids
		}
	}
	return out
}

// retryParked retries parked transaction id on n until it is applied (the
// stream may retry it by itself meanwhile).
func retryParked(t *testing.T, n *grouptest.Node, id int64) {
	t.Helper()
	var last string
	pgtest.WaitFor(t, 30*time.Second, fmt.Sprintf("parked transaction %d on %s to be applied", id, n.Name), func() (bool, error) {
		var state string
		if err := pgtest.QueryRow(context.Background(), n.DSN, `SELECT state FROM bdr.apply_errors WHERE error_id = $1`,
			[]any{id}, &state); err != nil {
			return false, err
		}
		if state == "applied" {
			return true, nil
		}
		e, err := n.Client().ApplyErrorAction(context.Background(), id, adminapi.ErrorRetry)
		if err != nil {
			return false, err
		}
		last = e.Error
		return e.State == "applied", fmt.Errorf("still %s: %s", e.State, last)
	})
}

// assertConverged compares the checksums of the case's tables on every node.
func (e *matrixEnv) assertConverged(t *testing.T) {
	t.Helper()
	assertSchemaConverged(t, e.nodes, e.schema)
}

// assertSchemaConverged fails the test unless the tables of schema have
// the same checksums on every node.
func assertSchemaConverged(t *testing.T, nodes []*grouptest.Node, schema string) {
	t.Helper()
	if diff := schemaDiff(t, nodes, schema); diff != "" {
		t.Error(diff)
	}
}

// schemaDiff compares the checksums of the tables of schema on every node
// with the first node's, and says how they differ ("" when they do not).
func schemaDiff(t *testing.T, nodes []*grouptest.Node, schema string) string {
	t.Helper()
	of := func(n *grouptest.Node) map[string]checksum.Sum {
		sums := grouptest.Checksums(t, n)
		maps.DeleteFunc(sums, func(table string, _ checksum.Sum) bool { return !strings.HasPrefix(table, schema+".") })
		return sums
	}
	first := of(nodes[0])
	if len(first) == 0 {
		t.Fatalf("%s has no tables in schema %s", nodes[0].Name, schema)
	}
	var b strings.Builder
	for _, n := range nodes[1:] {
		if diff := checksum.Diff(first, of(n)); len(diff) > 0 {
			fmt.Fprintf(&b, "%s (a) and %s (b) differ:\n%s\n", nodes[0].Name, n.Name, strings.Join(diff, "\n"))
		}
	}
	return b.String()
}
