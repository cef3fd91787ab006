package apply_test

import (
	"strings"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/grouptest"
)

// TestDeltaColumns declares a counter column on the second node of two (the
// declaration must reach the first), then provokes concurrent updates with
// both bdrd stopped: increments add up, the other column of the same rows
// still follows last-update-wins, and a row whose other columns lost on a
// node keeps the winner's version there for the changes that come after.
func TestDeltaColumns(t *testing.T) {
	t.Parallel()
	nodes := grouptest.Group(t, shared(t)[:2], "delta", grouptest.Options{}, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL, amount numeric(12, 2), label text)`)
		first.Exec(`INSERT INTO counters SELECT g, 100, 10.50, 'start' FROM generate_series(1, 4) g`)
	})
	a, b := nodes[0], nodes[1]
	b.Exec(`SELECT bdr.alter_column_set_delta('counters', 'n')`)
	b.Exec(`SELECT bdr.alter_column_set_delta('public.counters'::regclass, 'amount')`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	for _, n := range nodes {
		if got := n.QueryText(`SELECT string_agg(column_name, ',' ORDER BY column_name) FROM bdr.delta_columns
			WHERE schema_name = 'public' AND table_name = 'counters'`); got != "amount,n" {
			t.Fatalf("%s: delta columns %q, want amount,n", n.Name, got)
		}
		if got := n.QueryText(`SELECT relreplident::text FROM pg_catalog.pg_class WHERE oid = 'counters'::regclass`); got != "f" {
			t.Fatalf("%s: replica identity %q, want f (FULL)", n.Name, got)
		}
	}

	for _, n := range nodes {
		n.Stop()
	}
	step := func(n *grouptest.Node, sql string) {
		t.Helper()
		n.Exec(sql)
		time.Sleep(5 * time.Millisecond) // distinct commit times, in this order
	}
	// Row 1: two increments, label changed on both sides: b's label is later.
	step(a, `UPDATE counters SET n = n + 5, amount = amount + 1.25, label = 'a1' WHERE id = 1`)
	step(b, `UPDATE counters SET n = n + 7, amount = amount - 0.75, label = 'b1' WHERE id = 1`)
	// Row 2: only increments on a, a later label on b.
	step(a, `UPDATE counters SET n = n + 3 WHERE id = 2`)
	step(a, `UPDATE counters SET n = n + 4 WHERE id = 2`)
	step(b, `UPDATE counters SET n = n - 2, label = 'b2' WHERE id = 2`)
	// Row 3: b's changes are older than a's; on a the first of them loses
	// its label but adds its increment, and the second, still older than
	// a's, must lose too (the row's version there is a's, kept).
	step(b, `UPDATE counters SET n = n + 10, label = 'b3' WHERE id = 3`)
	step(b, `UPDATE counters SET label = 'b3 again' WHERE id = 3`)
	step(a, `UPDATE counters SET n = n + 20, label = 'a3' WHERE id = 3`)
	// Row 4: increments only, on both: no conflict to record.
	step(a, `UPDATE counters SET n = n + 1 WHERE id = 4`)
	step(b, `UPDATE counters SET n = n + 1 WHERE id = 4`)
	for _, n := range nodes {
		n.Start()
	}
	grouptest.WaitQuiet(t, nodes, time.Minute)
	grouptest.AssertConverged(t, nodes)

	want := []string{"1 112 11.00 b1", "2 105 10.50 b2", "3 130 10.50 a3", "4 102 10.50 start"}
	for _, n := range nodes {
		got := strings.Split(n.QueryText(`SELECT string_agg(format('%s %s %s %s', id, n, amount, label), '|' ORDER BY id) FROM counters`), "|")
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("%s: rows %q, want %q", n.Name, got, want)
		}
	}
	// a recorded that b's older label lost on row 3 (its increment added).
	if got := a.QueryInt(`SELECT count(*) FROM bdr.conflict_history WHERE table_name = 'counters'
		AND conflict_type = 'update_update' AND resolution = 'last_update_wins_keep_local'
		AND (remote_tuple->>'id')::int = 3 AND reason LIKE '%delta columns were added%'`); got < 1 {
		t.Errorf("%s: no conflict recorded for the lost label of row 3", a.Name)
	}
	for _, n := range nodes {
		if got := n.QueryInt(`SELECT count(*) FROM bdr.conflict_history WHERE table_name = 'counters' AND (remote_tuple->>'id')::int = 4`); got != 0 {
			t.Errorf("%s: %d conflicts recorded for concurrent increments alone", n.Name, got)
		}
	}
	if t.Failed() {
		for _, n := range nodes {
			t.Logf("%s conflicts:\n%s", n.Name, strings.Join(conflicts(t, n), "\n"))
		}
	}

	// Unset: the table is back to ordinary rows (last update wins on n).
	a.Exec(`SELECT bdr.alter_column_unset_delta('counters', 'n')`)
	a.Exec(`SELECT bdr.alter_column_unset_delta('counters', 'amount')`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	for _, n := range nodes {
		if got := n.QueryText(`SELECT relreplident::text FROM pg_catalog.pg_class WHERE oid = 'counters'::regclass`); got != "d" {
			t.Errorf("%s: replica identity %q after unset, want d (DEFAULT)", n.Name, got)
		}
	}
	b.Exec(`UPDATE counters SET n = 1000 WHERE id = 4`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	for _, n := range nodes {
		if got := n.QueryInt(`SELECT n FROM counters WHERE id = 4`); got != 1000 {
			t.Errorf("%s: n = %d after an assignment once unset, want 1000", n.Name, got)
		}
	}
}

// TestDeltaPgbench is issue 5's "Delta columns with pgbench": TPC-B on
// every node of three at once, the balance columns declared delta (on the
// first node before the others join: the join copies the declarations).
// Once quiet, on every node the sums of the three balances equal the sum
// of the deltas in pgbench_history, and the nodes are identical.
func TestDeltaPgbench(t *testing.T) {
	t.Parallel()
	nodes := grouptest.Group(t, shared(t), "dpgb", grouptest.Options{}, func(first *grouptest.Node) {
		pgbenchInit(t, 1)(first)
		for _, tc := range [][2]string{{"pgbench_accounts", "abalance"}, {"pgbench_tellers", "tbalance"}, {"pgbench_branches", "bbalance"}} {
			first.Exec(`SELECT bdr.alter_column_set_delta($1, $2)`, tc[0], tc[1])
		}
	})
	for _, n := range nodes {
		if got := n.QueryInt(`SELECT count(*) FROM bdr.delta_columns`); got != 3 {
			t.Fatalf("%s: %d delta columns after the join, want 3", n.Name, got)
		}
	}
	start := time.Now()
	runPgbenchAll(t, nodes, 2, 5*time.Second)
	elapsed := time.Since(start)
	grouptest.WaitQuiet(t, nodes, 2*time.Minute)
	grouptest.AssertConverged(t, nodes)

	txns := nodes[0].QueryInt(`SELECT count(*) FROM pgbench_history`)
	if txns == 0 {
		t.Fatal("pgbench wrote no history")
	}
	var first string
	for _, n := range nodes {
		sums := n.QueryText(`SELECT format('history %s accounts %s tellers %s branches %s',
			(SELECT sum(delta) FROM pgbench_history), (SELECT sum(abalance) FROM pgbench_accounts),
			(SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(bbalance) FROM pgbench_branches))`)
		f := strings.Fields(sums)
		if f[1] != f[3] || f[1] != f[5] || f[1] != f[7] {
			t.Errorf("%s: sums differ: %s", n.Name, sums)
		}
		if first == "" {
			first = sums
		} else if sums != first {
			t.Errorf("%s: %s, but %s: %s", n.Name, sums, nodes[0].Name, first)
		}
		t.Logf("%s: %s; conflicts recorded %d, kept versions %d", n.Name, sums,
			n.QueryInt(`SELECT count(*) FROM bdr.conflict_history`), n.QueryInt(`SELECT count(*) FROM bdr.row_versions`))
	}
	t.Logf("%d transactions on 3 nodes in %s (%.0f tps in all)", txns, elapsed.Round(time.Millisecond), float64(txns)/elapsed.Seconds())
}
