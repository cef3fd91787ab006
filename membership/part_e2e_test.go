package membership_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgcluster"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

// TestPartDeadNode parts a node whose PostgreSQL and bdrd are down while
// pgbench and insert-only writers run on the other members: their writes
// never fail, every remaining member drops its stream, slot and origin for
// the node, which shows parted everywhere. When the node comes back it
// learns it was parted, stops replicating and drops its own slots.
func TestPartDeadNode(t *testing.T) {
	t.Parallel()
	dead := pgtest.Private(t, pgcluster.Options{})
	s := []*pgcluster.Server{pgtest.Shared(t, 0), pgtest.Shared(t, 1), dead}
	opts := grouptest.Options{Bdrd: bdrdBinary}
	nodes := grouptest.Group(t, s, "pd", opts, func(first *grouptest.Node) { loadTables(t, first) })
	live, gone := nodes[:2], nodes[2]
	l := startLoad(t, live, 2, 50)
	ctx := context.Background()

	gone.Kill()
	if err := dead.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	res, err := live[1].Client().Part(ctx, gone.Name)
	if err != nil {
		t.Fatalf("part the dead node %s: %v", gone.Name, err)
	}
	t.Logf("parted %s: done on %v, unreachable %v", gone.Name, res.Done, res.Unreachable)
	if !strings.Contains(strings.Join(res.Unreachable, " "), gone.Name) {
		t.Errorf("the part reports %s reachable: %+v", gone.Name, res)
	}
	for _, m := range live {
		pgtest.WaitFor(t, time.Minute, m.Name+" to drop its stream, slot and origin for "+gone.Name, func() (bool, error) {
			n := m.QueryInt(`SELECT (SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = bdr.repl_name($1))
				+ (SELECT count(*) FROM pg_catalog.pg_replication_origin WHERE roname = bdr.repl_name($1))
				+ (SELECT count(*) FROM bdr.nodes WHERE node_name = $1 AND state <> 'parted')`, gone.Name)
			if n != 0 {
				return false, nil
			}
			st, err := m.Client().Status(ctx, false)
			for _, x := range st.Streams {
				if x.From == gone.Name {
					return false, nil
				}
			}
			return err == nil, err
		})
	}
	time.Sleep(2 * time.Second) // writes go on after the part
	l.stopAndCheck(t)

	// Back: it learns it was parted and drops its own slots and origins.
	if err := dead.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	gone.Start()
	pgtest.WaitFor(t, time.Minute, gone.Name+" to leave", func() (bool, error) {
		n := gone.QueryInt(`SELECT (SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE database = pg_catalog.current_database())
			+ (SELECT count(*) FROM pg_catalog.pg_replication_origin WHERE pg_catalog.starts_with(roname, bdr.repl_name('')))
			+ (SELECT count(*) FROM bdr.nodes WHERE state <> 'parted')`)
		return n == 0, nil
	})
	grouptest.WaitQuiet(t, live, 3*time.Minute)
	grouptest.AssertConverged(t, live)
	l.checkInserts(t, live)
}

// TestConcurrentJoins starts two joins at once through different members:
// both succeed with distinct node ids, or one is refused with a clear
// message and succeeds when tried again; never two nodes with one id.
func TestConcurrentJoins(t *testing.T) {
	t.Parallel()
	s := []*pgcluster.Server{pgtest.Shared(t, 0), pgtest.Shared(t, 1)}
	opts := grouptest.Options{Bdrd: bdrdBinary}
	nodes := grouptest.Group(t, s, "cj", opts, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE kv (k int PRIMARY KEY, v text)`)
		first.Exec(`INSERT INTO kv SELECT g, 'v' FROM generate_series(1, 1000) g`)
	})
	x := grouptest.NewNode(t, pgtest.Shared(t, 2), pgtest.UniqueName(t, "cjx"), opts)
	y := grouptest.NewNode(t, pgtest.Shared(t, 2), pgtest.UniqueName(t, "cjy"), opts)
	t.Cleanup(func() { x.Stop(); y.Stop() })
	errs := make(chan error, 2)
	go func() { errs <- grouptest.JoinErr(x, nodes[0]) }()
	go func() { errs <- grouptest.JoinErr(y, nodes[1]) }()
	var refused []error
	for range 2 {
		if err := <-errs; err != nil {
			refused = append(refused, err)
		}
	}
	switch len(refused) {
	case 0:
		t.Log("both joins succeeded")
	case 1:
		t.Logf("one join refused: %v", refused[0])
		if !strings.Contains(refused[0].Error(), "one join at a time") {
			t.Errorf("refusal %q does not say why", refused[0])
		}
		for _, n := range []*grouptest.Node{x, y} {
			if info, err := n.Client().Info(context.Background()); err == nil && info.State != "active" {
				grouptest.Join(t, n, nodes[0])
			}
		}
	default:
		t.Fatalf("both joins failed: %v", refused)
	}
	all := append(nodes, x, y)
	ids := map[int32]string{}
	for _, n := range all {
		info, err := n.Client().Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if info.State != "active" {
			t.Errorf("%s is %s", n.Name, info.State)
		}
		if other, dup := ids[info.ID]; dup {
			t.Errorf("%s and %s both have node id %d", other, n.Name, info.ID)
		}
		ids[info.ID] = n.Name
	}
	nodes[0].Exec(`UPDATE kv SET v = 'w' WHERE k <= 10`)
	y.Exec(`INSERT INTO kv VALUES (1001, 'y')`)
	grouptest.WaitQuiet(t, all, 2*time.Minute)
	grouptest.AssertConverged(t, all)
}
