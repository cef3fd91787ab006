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

// TestChangeOvertakesInsert: on three nodes, C's stream from A is held up
// (a local lock on another table A wrote first) while A inserts a row and
// B, having applied the insert, changes it. C gets B's change first:
//
//   - an UPDATE finds neither row nor tombstone: its INSERT is on its way;
//     C inserts the row as B changed it (update_missing,
//     insert_missing_row), and A's older INSERT, when it comes, loses to it
//     (insert_update);
//   - a DELETE finds no row and leaves a tombstone (delete_missing), which
//     A's older INSERT loses to (insert_delete).
//
// Every node ends with B's version.
func TestChangeOvertakesInsert(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, change, first, res, then, want string }{
		{"update", `UPDATE kv SET v = 'b' WHERE k = 5`, "update_missing", "insert_missing_row", "insert_update", "5=b"},
		{"delete", `DELETE FROM kv WHERE k = 5`, "delete_missing", "skip_change", "insert_delete", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := divergenceGroup(t, 3, matrixCase{name: "overtake" + tc.name})
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
			pgtest.WaitFor(t, time.Minute, "C to apply B's change", func() (bool, error) {
				return c.QueryInt(`SELECT count(*) FROM bdr.conflict_history WHERE schema_name = $1 AND conflict_type = $2 AND resolution = $3`,
					e.schema, tc.first, tc.res) == 1, nil
			})
			if _, err := holder.Exec(ctx, `COMMIT`); err != nil {
				t.Fatal(err)
			}
			grouptest.WaitQuiet(t, e.nodes, time.Minute)
			e.assertSame(t, "")
			for _, n := range e.nodes {
				if got := e.query(t, n, kvCheck); got != tc.want {
					t.Errorf("%s: %q, want %q", n.Name, got, tc.want)
				}
			}
			if n := c.QueryInt(`SELECT count(*) FROM bdr.conflict_history WHERE schema_name = $1 AND conflict_type = $2
				AND resolution = 'last_update_wins_keep_local' AND remote_node_name = $3`, e.schema, tc.then, a.Name); n != 1 {
				t.Errorf("%s recorded %d %s conflicts on A's insert, want 1:\n%s", c.Name, n, tc.then, strings.Join(conflicts(t, c), "\n"))
			}
		})
	}
}

// TestTombstoneCollection: deletes leave tombstones (and, the table having
// a unique column, unique history entries) on every node; they go
// once every stream of the node has gone past them (here: a later write
// of each node, more than the margin after the delete). That they stay
// while a stream is down is TestTombstoneHorizon's.
func TestTombstoneCollection(t *testing.T) {
	t.Parallel()
	nodes := grouptest.Group(t, shared(t)[:2], "tombgc", grouptest.Options{TombstoneEvery: 300 * time.Millisecond}, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE kv (k int PRIMARY KEY, v text UNIQUE)`)
		first.Exec(`INSERT INTO kv SELECT g, 'start' || g FROM generate_series(1, 10) g`)
	})
	a, b := nodes[0], nodes[1]
	count := func(n *grouptest.Node) int64 {
		return n.QueryInt(`SELECT count(*) FROM bdr.tombstones WHERE relid = 'kv'::regclass`) +
			n.QueryInt(`SELECT count(*) FROM bdr.unique_history WHERE relid = 'kv'::regclass`)
	}
	a.Exec(`DELETE FROM kv WHERE k <= 3`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	for _, n := range nodes {
		// A tombstone and a unique history entry (the deleted row) each.
		if got := count(n); got != 6 {
			t.Fatalf("%s: %d tombstones and unique history entries after deleting 3 rows, want 6", n.Name, got)
		}
	}
	// Past the margin, each node writes once: every stream goes past the
	// deletes.
	time.Sleep(11 * time.Second)
	a.Exec(`UPDATE kv SET v = 'a' WHERE k = 4`)
	b.Exec(`UPDATE kv SET v = 'b' WHERE k = 5`)
	for _, n := range nodes {
		pgtest.WaitFor(t, time.Minute, "the tombstones of "+n.Name+" to be removed", func() (bool, error) {
			return count(n) == 0, nil
		})
	}

	grouptest.WaitQuiet(t, nodes, time.Minute)
	grouptest.AssertConverged(t, nodes)
}
