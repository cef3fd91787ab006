package apply_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgcluster"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

// writer inserts numbered rows into the insert-only table, one transaction
// each, and remembers which commits were acknowledged.
type writer struct {
	node  *grouptest.Node
	acked []int
	next  int
}

func (w *writer) run(ctx context.Context) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			_ = conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			c, err := pgx.Connect(ctx, w.node.DSN)
			if err != nil {
				time.Sleep(100 * time.Millisecond) // the server may be restarting
				continue
			}
			conn = c
		}
		w.next++
		if _, err := conn.Exec(ctx, `INSERT INTO inserts (node, seq) VALUES ($1, $2)`, w.node.Name, w.next); err != nil {
			// Outcome unknown (the server may have crashed after the commit).
			_ = conn.Close(context.Background())
			conn = nil
			continue
		}
		w.acked = append(w.acked, w.next)
	}
}

// TestCrashSafety SIGKILLs a bdrd at random moments, ten times, and shuts one
// PostgreSQL server down immediately, while TPC-B and an insert-only writer
// run on every node. Afterwards every node is identical, and the insert-only
// table holds every acknowledged row of every node exactly once.
func TestCrashSafety(t *testing.T) {
	t.Parallel()
	servers := make([]*pgcluster.Server, 3)
	var wg sync.WaitGroup
	for i := range servers {
		wg.Go(func() { servers[i] = pgtest.Private(t, pgcluster.Options{}) })
	}
	wg.Wait()
	nodes := grouptest.Group(t, servers, "crash", grouptest.Options{Bdrd: bdrdBinary}, func(first *grouptest.Node) {
		pgbench(t, first, "-i", "-q", "-s", "1")
		first.Exec(`CREATE TABLE inserts (node text NOT NULL, seq int NOT NULL, at timestamptz DEFAULT clock_timestamp())`)
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	writers := make([]*writer, len(nodes))
	var work sync.WaitGroup
	for i, n := range nodes {
		writers[i] = &writer{node: n}
		work.Go(func() { writers[i].run(ctx) })
		work.Go(func() {
			// pgbench stops when its server goes down; start it again.
			for ctx.Err() == nil {
				cmd := n.Server.Command(ctx, "pgbench", "-n", "-c", "2", "-T", "60", n.DB)
				_ = cmd.Run()
				time.Sleep(200 * time.Millisecond)
			}
		})
	}

	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 1))
	t.Logf("chaos seed %d", seed)
	for i := range 10 {
		time.Sleep(time.Duration(300+rng.IntN(1500)) * time.Millisecond)
		n := nodes[rng.IntN(len(nodes))]
		n.Kill()
		time.Sleep(time.Duration(rng.IntN(800)) * time.Millisecond)
		n.Start()
		if i == 4 {
			s := nodes[rng.IntN(len(nodes))]
			t.Logf("immediate shutdown of the PostgreSQL of %s", s.Name)
			if err := s.Server.ImmediateStop(context.Background()); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second)
			if err := s.Server.Restart(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
	time.Sleep(time.Second)
	cancel()
	work.Wait()

	grouptest.WaitQuiet(t, nodes, 3*time.Minute)
	grouptest.AssertConverged(t, nodes)
	for _, w := range writers {
		origin := w.node.Name
		if len(w.acked) < 10 {
			t.Fatalf("%s: only %d inserts acknowledged; the test wrote too little", origin, len(w.acked))
		}
		for _, n := range nodes {
			dups := n.QueryInt(`SELECT count(*) - count(DISTINCT seq) FROM inserts WHERE node = $1`, origin)
			if dups != 0 {
				t.Errorf("%s holds %d duplicate rows from %s", n.Name, dups, origin)
			}
			missing := n.QueryInt(`SELECT count(*) FROM unnest($1::int[]) a(seq)
				WHERE NOT EXISTS (SELECT 1 FROM inserts i WHERE i.node = $2 AND i.seq = a.seq)`, w.acked, origin)
			if missing != 0 {
				t.Errorf("%s misses %d of the %d acknowledged rows from %s", n.Name, missing, len(w.acked), origin)
			}
		}
		t.Logf("%s: %d inserts acknowledged", origin, len(w.acked))
	}
}
