package apply_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

// causalGroup starts three nodes with tables kv and gate, and holds C's
// stream from A: a session on C locks gate, and A's next transaction
// writes gate first. It returns the nodes and the session (COMMIT lets
// C's stream from A go on).
func causalGroup(t *testing.T, name string, opts grouptest.Options) (a, b, c *grouptest.Node, nodes []*grouptest.Node, hold pgx.Tx) {
	t.Helper()
	nodes = grouptest.Group(t, shared(t), name, opts, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE kv (k int PRIMARY KEY, v text)`)
		first.Exec(`CREATE TABLE gate (id int PRIMARY KEY)`)
	})
	a, b, c = nodes[0], nodes[1], nodes[2]
	grouptest.WaitQuiet(t, nodes, time.Minute)
	tx, err := pgtest.Conn(t, c.DSN).Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	if _, err := tx.Exec(context.Background(), `LOCK TABLE gate IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	a.Exec(`INSERT INTO gate VALUES (1)`)
	return a, b, c, nodes, tx
}

// insertThenChange inserts row k on a, waits for b to apply it, and
// changes it on b.
func insertThenChange(t *testing.T, a, b *grouptest.Node, k int, change string) {
	t.Helper()
	a.Exec(`INSERT INTO kv VALUES ($1, 'a')`, k)
	pgtest.WaitFor(t, time.Minute, fmt.Sprintf("%s to apply the insert of %d", b.Name, k), func() (bool, error) {
		return b.QueryInt(`SELECT count(*) FROM kv WHERE k = $1`, k) == 1, nil
	})
	b.Exec(change, k)
}

// counter sums the series of a metric on a node's /metrics page.
func counter(t *testing.T, n *grouptest.Node, name string) float64 {
	t.Helper()
	var sum float64
	for _, line := range strings.Split(n.Metrics(), "\n") {
		if rest, ok := strings.CutPrefix(line, name+"{"); ok {
			if _, v, ok := strings.Cut(rest, "} "); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					t.Fatalf("metric line %q: %v", line, err)
				}
				sum += f
			}
		}
	}
	return sum
}

func kvRows(n *grouptest.Node) string {
	return n.QueryText(`SELECT coalesce(string_agg(k || '=' || v, ' ' ORDER BY k), '') FROM kv`)
}

func missing(n *grouptest.Node, typ string) int64 {
	return n.QueryInt(`SELECT count(*) FROM bdr.conflict_history WHERE table_name = 'kv' AND conflict_type = $1`, typ)
}

// TestCausalChangeOvertakesInsert: on three nodes, C's stream from A is
// held up while A inserts a row and B, having applied the insert, changes
// it. C gets B's change first: it must wait for A's insert instead of
// skipping the change (update_missing, delete_missing) and keeping A's row
// for good (issue 5, TestKnownBugChangeOvertakesInsert of branch rtest).
func TestCausalChangeOvertakesInsert(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, change, typ, want string }{
		{"update", `UPDATE kv SET v = 'b' WHERE k = $1`, "update_missing", "5=b"},
		{"delete", `DELETE FROM kv WHERE k = $1`, "delete_missing", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, b, c, nodes, hold := causalGroup(t, "causal"+tc.name, grouptest.Options{})
			insertThenChange(t, a, b, 5, tc.change)
			pgtest.WaitFor(t, time.Minute, "C to wait for A's insert (or skip B's change)", func() (bool, error) {
				return counter(t, c, "bdr_causal_waits_total") >= 1 || missing(c, tc.typ) > 0, nil
			})
			if err := hold.Commit(context.Background()); err != nil {
				t.Fatal(err)
			}
			grouptest.WaitQuiet(t, nodes, time.Minute)
			for _, n := range nodes {
				if got := kvRows(n); got != tc.want {
					t.Errorf("%s: kv is %q, want %q", n.Name, got, tc.want)
				}
			}
			if n := missing(c, tc.typ); n != 0 {
				t.Errorf("%s skipped B's change (%d %s)", c.Name, n, tc.typ)
			}
			if t.Failed() {
				for _, n := range nodes {
					t.Logf("%s conflicts:\n%s", n.Name, strings.Join(conflicts(t, n), "\n"))
				}
			}
		})
	}
}

// TestCausalWaitBound: C's stream from A stays held longer than
// --causal-wait. C's stream from B waits that long for A's insert, then
// applies B's change without it; it does not wait for A again while its
// stream from A is behind (one timeout per episode), and waits again
// once that stream got past it.
func TestCausalWaitBound(t *testing.T) {
	t.Parallel()
	const bound = 2 * time.Second
	a, b, c, nodes, hold := causalGroup(t, "causalbound", grouptest.Options{CausalWait: bound})
	start := time.Now()
	insertThenChange(t, a, b, 5, `UPDATE kv SET v = 'b' WHERE k = $1`)
	pgtest.WaitFor(t, time.Minute, "C to apply B's update past the bound", func() (bool, error) {
		return missing(c, "update_missing") == 1, nil
	})
	if d := time.Since(start); d < bound {
		t.Errorf("B's update applied on C after %s, before the bound %s", d, bound)
	}
	waits, timeouts := counter(t, c, "bdr_causal_waits_total"), counter(t, c, "bdr_causal_wait_timeouts_total")
	if waits != 1 || timeouts != 1 {
		t.Errorf("%v causal waits and %v timeouts, want 1 and 1", waits, timeouts)
	}

	// Same episode: A's stream to C still held, no second wait.
	insertThenChange(t, a, b, 7, `UPDATE kv SET v = 'b' WHERE k = $1`)
	pgtest.WaitFor(t, time.Minute, "C to apply B's second update", func() (bool, error) {
		return missing(c, "update_missing") == 2, nil
	})
	if w, to := counter(t, c, "bdr_causal_waits_total"), counter(t, c, "bdr_causal_wait_timeouts_total"); w != waits || to != timeouts {
		t.Errorf("%v causal waits and %v timeouts after the second update, want %v and %v (no wait in the episode)", w, to, waits, timeouts)
	}
	if got := kvRows(c); got != "" {
		t.Errorf("%s has %q while its stream from %s is held", c.Name, got, a.Name)
	}

	// A's stream goes on: the episode ends and C is causal again.
	if err := hold.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	grouptest.WaitQuiet(t, nodes, time.Minute)
	insertThenChange(t, a, b, 9, `UPDATE kv SET v = 'b' WHERE k = $1`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	// C applied A's inserts of 5 and 7 after skipping B's updates of them:
	// the divergence the bound accepts.
	for _, n := range nodes {
		want := "5=b 7=b 9=b"
		if n == c {
			want = "5=a 7=a 9=b"
		}
		if got := kvRows(n); got != want {
			t.Errorf("%s: kv is %q, want %q", n.Name, got, want)
		}
	}
}
