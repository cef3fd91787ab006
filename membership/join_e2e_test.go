package membership_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgcluster"
	"github.com/bdr-dev/bdr/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// load is write traffic on a group: pgbench TPC-B on every node and an
// insert-only writer per node that remembers which of its rows committed.
type load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	acked  map[string]int64 // per node: rows 1..acked[node] committed
	errs   []error
}

// startLoad starts pgbench (clients per node) and an insert-only writer on
// each node; table ins must exist.
func startLoad(t *testing.T, nodes []*grouptest.Node, clients int) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel, acked: map[string]int64{}}
	for _, n := range nodes {
		l.wg.Go(func() {
			cmd := n.Server.Command(ctx, "pgbench", "-n", "-c", fmt.Sprint(clients), "-T", "600", n.DB)
			if out, err := cmd.CombinedOutput(); err != nil && ctx.Err() == nil {
				l.fail(fmt.Errorf("pgbench on %s: %v\n%s", n.Name, err, out))
			}
		})
		l.wg.Go(func() {
			conn, err := pgx.Connect(ctx, n.DSN)
			if err != nil {
				l.fail(err)
				return
			}
			defer conn.Close(context.Background())
			for seq := int64(1); ctx.Err() == nil; seq++ {
				if _, err := conn.Exec(ctx, `INSERT INTO ins (node, seq) VALUES ($1, $2)`, n.Name, seq); err != nil {
					if ctx.Err() == nil {
						l.fail(fmt.Errorf("insert on %s: %w", n.Name, err))
					}
					return
				}
				l.mu.Lock()
				l.acked[n.Name] = seq
				l.mu.Unlock()
			}
		})
	}
	t.Cleanup(l.stop)
	return l
}

func (l *load) fail(err error) {
	l.mu.Lock()
	l.errs = append(l.errs, err)
	l.mu.Unlock()
}

// stop ends the load and returns what failed on the way.
func (l *load) stop() {
	l.cancel()
	l.wg.Wait()
}

func (l *load) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return errors.Join(l.errs...)
}

// checkInserts checks that every node holds exactly the acknowledged rows
// of every writer: none missing, none twice (the key forbids twice; a row
// not acknowledged may or may not have committed).
func (l *load) checkInserts(t *testing.T, nodes []*grouptest.Node) {
	t.Helper()
	for _, n := range nodes {
		for writer, acked := range l.acked {
			got := n.QueryInt(`SELECT count(*) FROM ins WHERE node = $1 AND seq <= $2`, writer, acked)
			if got != acked {
				t.Errorf("%s holds %d of the %d rows %s acknowledged", n.Name, got, acked, writer)
			}
		}
	}
}

// TestJoinUnderLoad joins a fourth node, through a member that is not the
// first, while pgbench and insert-only writers run on every member the
// whole time; afterwards all four are identical and no acknowledged row is
// missing anywhere.
func TestJoinUnderLoad(t *testing.T) {
	t.Parallel()
	s := []*pgcluster.Server{pgtest.Shared(t, 0), pgtest.Shared(t, 1), pgtest.Shared(t, 2)}
	opts := grouptest.Options{Bdrd: bdrdBinary}
	nodes := grouptest.Group(t, s, "jl", opts, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE ins (node text, seq bigint, at timestamptz DEFAULT now(), PRIMARY KEY (node, seq))`)
		cmd := first.Server.Command(context.Background(), "pgbench", "-i", "-q", "-s", "1", first.DB)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("pgbench -i: %v\n%s", err, out)
		}
	})
	joiner := grouptest.NewNode(t, s[0], pgtest.UniqueName(t, "jld"), opts)
	t.Cleanup(joiner.Stop)

	l := startLoad(t, nodes, 2)
	time.Sleep(3 * time.Second)
	start := time.Now()
	grouptest.Join(t, joiner, nodes[1])
	t.Logf("joined under load in %s", time.Since(start).Round(10*time.Millisecond))
	if b, err := os.ReadFile(joiner.LogPath); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "msg=join ") && !strings.Contains(line, "catching up:") {
				t.Log(line)
			}
		}
	}
	time.Sleep(3 * time.Second)
	l.stop()
	if err := l.err(); err != nil {
		t.Fatal(err)
	}
	all := append(nodes, joiner)
	grouptest.WaitQuiet(t, all, 3*time.Minute)
	grouptest.AssertConverged(t, all)
	l.checkInserts(t, all)
	for w, n := range l.acked {
		t.Logf("%s: %d inserts acknowledged", w, n)
	}
}
