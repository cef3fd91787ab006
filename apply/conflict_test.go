package apply_test

import (
	"strings"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

// TestLastUpdateWins provokes each conflict of the replica identity with the
// bdrd of all three nodes stopped, then lets them meet: every node must end
// with the same winners, the conflicts must be written down, and a later
// unrelated change must still replicate.
func TestLastUpdateWins(t *testing.T) {
	t.Parallel()
	nodes := grouptest.Group(t, shared(t), "luw", grouptest.Options{}, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE kv (k int PRIMARY KEY, v text)`)
		first.Exec(`INSERT INTO kv SELECT g, 'start' FROM generate_series(1, 6) g`)
	})
	a, b, c := nodes[0], nodes[1], nodes[2]
	for _, n := range nodes {
		n.Stop()
	}
	step := func(n *grouptest.Node, sql string) {
		t.Helper()
		n.Exec(sql)
		time.Sleep(5 * time.Millisecond) // distinct commit times, in this order
	}
	step(a, `INSERT INTO kv VALUES (100, 'a')`)
	step(b, `INSERT INTO kv VALUES (100, 'b')`)   // insert_insert: b is later and wins
	step(a, `UPDATE kv SET v = 'a1' WHERE k = 1`) //
	step(b, `UPDATE kv SET v = 'b1' WHERE k = 1`) // update_update: b1 wins
	step(b, `UPDATE kv SET v = 'b2' WHERE k = 2`) //
	step(a, `DELETE FROM kv WHERE k = 2`)         // the later delete wins
	step(a, `DELETE FROM kv WHERE k = 3`)         //
	step(b, `UPDATE kv SET v = 'b3' WHERE k = 3`) // update_delete: the update is later and wins
	step(a, `DELETE FROM kv WHERE k = 4`)         //
	step(b, `DELETE FROM kv WHERE k = 4`)         // delete_delete on both
	step(c, `UPDATE kv SET v = 'c5' WHERE k = 5`) //
	step(a, `UPDATE kv SET v = 'a5' WHERE k = 5`) // a5 wins over c5
	step(c, `INSERT INTO kv VALUES (200, 'c')`)   // no conflict
	for _, n := range nodes {
		n.Start()
	}
	grouptest.WaitQuiet(t, nodes, time.Minute)
	grouptest.AssertConverged(t, nodes)

	want := map[int]string{1: "b1", 3: "b3", 5: "a5", 6: "start", 100: "b", 200: "c"}
	for _, n := range nodes {
		if got := n.QueryInt(`SELECT count(*) FROM kv`); got != int64(len(want)) {
			t.Errorf("%s: %d rows, want %d", n.Name, got, len(want))
		}
		for k, v := range want {
			if n.QueryInt(`SELECT count(*) FROM kv WHERE k = $1 AND v = $2`, k, v) != 1 {
				t.Errorf("%s: row %d is not %q", n.Name, k, v)
			}
		}
	}
	expect := []struct {
		n          *grouptest.Node
		typ, res   string
		key        int
		remoteNode *grouptest.Node
	}{
		{a, "insert_insert", "last_update_wins_keep_remote", 100, b},
		{b, "insert_insert", "last_update_wins_keep_local", 100, a},
		{b, "update_update", "last_update_wins_keep_local", 1, a},
		{a, "update_delete", "last_update_wins_keep_remote", 3, b},
		{b, "update_delete", "last_update_wins_keep_local", 3, a},
		{a, "delete_delete", "skip_change", 4, b},
		{b, "delete_delete", "skip_change", 4, a},
		{a, "update_update", "last_update_wins_keep_local", 5, c},
	}
	for _, e := range expect {
		got := e.n.QueryInt(`SELECT count(*) FROM bdr.conflict_history
			WHERE conflict_type = $1 AND resolution = $2 AND (remote_tuple->>'k')::int = $3
			  AND remote_node_name = $4 AND table_name = 'kv' AND schema_name = 'public'
			  AND remote_commit_time IS NOT NULL AND reason <> ''`, e.typ, e.res, e.key, e.remoteNode.Name)
		if got != 1 {
			t.Errorf("%s: %d %s/%s records for key %d from %s, want 1", e.n.Name, got, e.typ, e.res, e.key, e.remoteNode.Name)
		}
	}
	// No stall: an unrelated change still replicates everywhere.
	c.Exec(`INSERT INTO kv VALUES (300, 'after')`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	for _, n := range nodes {
		if n.QueryInt(`SELECT count(*) FROM kv WHERE k = 300`) != 1 {
			t.Errorf("%s: the change after the conflicts did not arrive", n.Name)
		}
	}
	if t.Failed() {
		for _, n := range nodes {
			t.Logf("%s conflicts:\n%s", n.Name, strings.Join(conflicts(t, n), "\n"))
		}
	}
}

func conflicts(t *testing.T, n *grouptest.Node) []string {
	return pgtest.Strings(t, n.DSN, `SELECT format('%s from %s: %s %s (%s) local=%s remote=%s', table_name,
		remote_node_name, conflict_type, resolution, reason, local_tuple, remote_tuple) FROM bdr.conflict_history ORDER BY conflict_id`)
}
