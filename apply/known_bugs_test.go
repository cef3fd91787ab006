package apply_test

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

// Known bugs. Every test in this file FAILS today: each is the smallest
// deterministic reproduction of a divergence or a silent loss that the
// conflict matrix or the randomized convergence test ran into (issue 5).
// They say what should happen; fix the engine, not the test.

// divergenceGroup starts a group of size nodes with the tables of c (kv
// by default) in a schema of its own, c's rows inserted on the first node
// and replicated.
func divergenceGroup(t *testing.T, size int, c matrixCase) *matrixEnv {
	t.Helper()
	nodes := grouptest.Group(t, shared(t)[:size], c.name, grouptest.Options{ErrorRetry: time.Second}, nil)
	e := newMatrixEnv(t, nodes, c)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	return e
}

// provoke runs writes in order with every applier paused, then resumes
// and waits for quiet.
func (e *matrixEnv) provoke(t *testing.T, writes ...mwrite) {
	t.Helper()
	resume := pauseAll(t, e.nodes)
	for _, w := range writes {
		e.exec(t, e.nodes[w.on], w.sql)
	}
	resume()
	grouptest.WaitQuiet(t, e.nodes, time.Minute)
}

// assertSame fails unless the case's tables have the same checksums on
// every node; it shows each node's rows (the result of check, kvCheck by
// default), conflicts and parked transactions.
func (e *matrixEnv) assertSame(t *testing.T, check string) {
	t.Helper()
	if diff := schemaDiff(t, e.nodes, e.schema); diff != "" {
		var b strings.Builder
		for _, n := range e.nodes {
			fmt.Fprintf(&b, "%s: %q; conflicts:\n\t%s\n\tparked: %q\n", n.Name, e.query(t, n, cmp.Or(check, kvCheck)),
				strings.Join(conflicts(t, n), "\n\t"),
				pgtest.Strings(t, n.DSN, `SELECT format('%s from %s: %s (%s)', error_id, origin_node_name, state, error) FROM bdr.apply_errors ORDER BY 1`))
		}
		t.Errorf("the nodes diverged:\n%s%s", diff, b.String())
	}
}

// TestKnownBugKeyChangeLosesToUpdate: A changes a row's primary key while
// B updates the row, later. A then skips B's update (update_missing: the
// old key is gone) and keeps the row under its new key; B keeps its update
// over A's older key change (update_update, keep local) under the old key.
// A ends with 10=start, B with 1=b, for good.
func TestKnownBugKeyChangeLosesToUpdate(t *testing.T) {
	t.Parallel()
	e := divergenceGroup(t, 2, matrixCase{name: "bugkey", rows: kvStart})
	e.provoke(t,
		mwrite{nodeA, `UPDATE kv SET k = 10 WHERE k = 1`},
		mwrite{nodeB, `UPDATE kv SET v = 'b' WHERE k = 1`})
	e.assertSame(t, "")
}

// TestKnownBugDeleteBeatsReinsert: A deletes a row; B, not having seen it,
// deletes it too and inserts it again (later). A applies B's insert (no
// row there); B applies A's delete to its new row ("delete wins over a
// concurrent update"): A ends with the row, B without.
func TestKnownBugDeleteBeatsReinsert(t *testing.T) {
	t.Parallel()
	e := divergenceGroup(t, 2, matrixCase{name: "bugreins", rows: kvStart})
	e.provoke(t,
		mwrite{nodeA, `DELETE FROM kv WHERE k = 1`},
		mwrite{nodeB, `DELETE FROM kv WHERE k = 1`},
		mwrite{nodeB, `INSERT INTO kv VALUES (1, 'b')`})
	e.assertSame(t, "")
}

// TestKnownBugChangeOvertakesInsert: on three nodes, C's stream from A is
// held up (a local lock on another table A wrote first) while A inserts a
// row and B, having applied the insert, changes it. C gets B's change first
// and skips it (update_missing, delete_missing: no row yet), then A's
// insert arrives and is applied: C keeps A's row, which the others changed
// or deleted, for good.
func TestKnownBugChangeOvertakesInsert(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, change, typ string }{
		{"update", `UPDATE kv SET v = 'b' WHERE k = 5`, "update_missing"},
		{"delete", `DELETE FROM kv WHERE k = 5`, "delete_missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := divergenceGroup(t, 3, matrixCase{name: "bugcausal" + tc.name})
			a, b, c := e.nodes[0], e.nodes[1], e.nodes[2]
			for _, n := range e.nodes {
				pgtest.Exec(t, e.dsn(n), `CREATE TABLE gate (id int PRIMARY KEY)`)
			}
			ctx := context.Background()
			holder := pgtest.Conn(t, e.dsn(c))
			if _, err := holder.Exec(ctx, `BEGIN; LOCK TABLE gate IN ACCESS EXCLUSIVE MODE`); err != nil {
				t.Fatal(err)
			}
			e.exec(t, a, `INSERT INTO gate VALUES (1)`)
			e.exec(t, a, `INSERT INTO kv VALUES (5, 'a')`)
			pgtest.WaitFor(t, time.Minute, "B to apply A's insert", func() (bool, error) {
				return e.query(t, b, `SELECT count(*)::text FROM kv WHERE k = 5`) == "1", nil
			})
			e.exec(t, b, tc.change)
			pgtest.WaitFor(t, time.Minute, "C to resSkip B's change", func() (bool, error) {
				return c.QueryInt(`SELECT count(*) FROM bdr.conflict_history WHERE schema_name = $1 AND conflict_type = $2`,
					e.schema, tc.typ) == 1, nil
			})
			if _, err := holder.Exec(ctx, `COMMIT`); err != nil {
				t.Fatal(err)
			}
			grouptest.WaitQuiet(t, e.nodes, time.Minute)
			e.assertSame(t, "")
		})
	}
}

// TestKnownBugParkedRetryResurrects: two nodes insert different ids with
// the same email at the same time; each parks the other's insert (unique
// violation, TestUniqueSecondaryParked). Then each deletes its own row;
// the other skips the delete (delete_missing: it never had the row). The
// parked inserts no longer collide, and their retries apply them: A ends
// with B's deleted row, B with A's, and bdr.apply_errors says "applied".
// A retry applies a transaction out of order, after later changes of the
// same rows were skipped.
func TestKnownBugParkedRetryResurrects(t *testing.T) {
	t.Parallel()
	const users = `SELECT coalesce(string_agg(id || '=' || email, ' ' ORDER BY id), '') FROM users`
	e := divergenceGroup(t, 2, matrixCase{name: "bugresurrect", schema: `CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE)`})
	a, b := e.nodes[nodeA], e.nodes[nodeB]
	e.provoke(t,
		mwrite{nodeA, `INSERT INTO users VALUES (1, 'x@example.com')`},
		mwrite{nodeB, `INSERT INTO users VALUES (2, 'x@example.com')`})
	for _, n := range e.nodes {
		if got := n.QueryInt(`SELECT count(*) FROM bdr.apply_errors WHERE state = 'parked'`); got != 1 {
			t.Fatalf("%s parked %d transactions, want 1", n.Name, got)
		}
	}
	e.exec(t, a, `DELETE FROM users WHERE id = 1`)
	e.exec(t, b, `DELETE FROM users WHERE id = 2`)
	grouptest.WaitQuiet(t, e.nodes, time.Minute)
	for _, n := range e.nodes {
		pgtest.WaitFor(t, time.Minute, "the parked insert on "+n.Name+" to be retried and applied", func() (bool, error) {
			return n.QueryInt(`SELECT count(*) FROM bdr.apply_errors WHERE state = 'applied'`) == 1, nil
		})
	}
	e.assertSame(t, users)
}

// TestKnownBugParkedRetryAfterTypeFix: a transaction parked for a type
// error (v is an integer on B, text on A) must apply once B's column is
// text too. The applier keeps the plan it built with the old type (every
// value is cast to integer) until bdrd restarts: the retry keeps failing.
func TestKnownBugParkedRetryAfterTypeFix(t *testing.T) {
	t.Parallel()
	c := matrixCase{
		name:   "type_fix",
		schema: `CREATE TABLE kv (k int PRIMARY KEY, v int)`,
		onlyA:  `ALTER TABLE kv ALTER COLUMN v TYPE text`,
		writes: []mwrite{{nodeA, `INSERT INTO kv VALUES (1, 'not a number')`}},
		want:   "1=not a number",
		parked: []mparked{{write: 0, sqlstate: "22P02", err: "integer"}},
		fix:    `ALTER TABLE kv ALTER COLUMN v TYPE text`,
	}
	runMatrix(t, "bugtype", []matrixCase{c}, 2)
}

// TestKnownBugValueTooLong: a remote value longer than B's varchar(3)
// column must be parked (SQLSTATE 22001), not cut: the applier casts every
// value to the local column type explicitly ($2::character varying(3)),
// and an explicit cast truncates without an error. B keeps "lon" with no
// record anywhere.
func TestKnownBugValueTooLong(t *testing.T) {
	t.Parallel()
	c := matrixCase{
		name:   "too_long",
		schema: `CREATE TABLE kv (k int PRIMARY KEY, v varchar(3))`,
		onlyA:  `ALTER TABLE kv ALTER COLUMN v TYPE text`,
		writes: []mwrite{{nodeA, `INSERT INTO kv VALUES (1, 'long value')`}},
		want:   "1=long value",
		parked: []mparked{{write: 0, sqlstate: "22001", err: "too long"}},
		fix:    `ALTER TABLE kv ALTER COLUMN v TYPE text`,
		// Also hit by TestKnownBugParkedRetryAfterTypeFix once parked.
		restartAfterFix: true,
	}
	runMatrix(t, "buglong", []matrixCase{c}, 2)
}

// TestKnownBugConflictRecordMissesConcurrentRow: a remote INSERT applied
// with the resolving statement meets a row a local transaction has inserted
// but not committed yet; it waits for it, and once it commits, keeps the
// newer local row (right). The conflict record, though, reads the local row
// with the statement's snapshot, taken before the commit: it has no local
// row, an unknown local version, and a reason saying the remote change is
// newer, under the resolution last_update_wins_keep_local. On three nodes
// the two incoming streams of a node race the same way.
func TestKnownBugConflictRecordMissesConcurrentRow(t *testing.T) {
	t.Parallel()
	e := divergenceGroup(t, 2, matrixCase{name: "bugrecord"})
	a, b := e.nodes[nodeA], e.nodes[nodeB]
	// A conflict first: B's applier then resolves the next transactions.
	e.provoke(t,
		mwrite{nodeA, `INSERT INTO kv VALUES (9, 'a')`},
		mwrite{nodeB, `INSERT INTO kv VALUES (9, 'b')`})

	ctx := context.Background()
	local := pgtest.Conn(t, e.dsn(b))
	if _, err := local.Exec(ctx, `BEGIN; INSERT INTO kv VALUES (4, 'b')`); err != nil {
		t.Fatal(err)
	}
	e.exec(t, a, `INSERT INTO kv VALUES (4, 'a')`)
	pgtest.WaitFor(t, time.Minute, "B's applier to wait for the local transaction", func() (bool, error) {
		return b.QueryInt(`SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE application_name = $1
			AND wait_event_type = 'Lock'`, "bdr apply "+a.Name) == 1, nil
	})
	if _, err := local.Exec(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	grouptest.WaitQuiet(t, e.nodes, time.Minute)
	e.assertSame(t, "")
	var res, reason string
	var localRow *string
	pgtest.Scan(t, b.DSN, `SELECT resolution, reason, local_tuple::text FROM bdr.conflict_history
		WHERE schema_name = $1 AND remote_tuple->>'k' = '4'`, []any{e.schema}, &res, &reason, &localRow)
	if res != resKeepLocal || localRow == nil || !strings.Contains(reason, "local ") || strings.Contains(reason, "unknown") {
		t.Errorf("%s recorded %s (%s) with local row %v; want %s naming B's row and its version",
			b.Name, res, reason, localRow, resKeepLocal)
	}
}
