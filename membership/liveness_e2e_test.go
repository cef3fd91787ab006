package membership_test

import (
	"context"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgcluster"
	"github.com/bdr-dev/bdr/internal/pgtest"
	"github.com/bdr-dev/bdr/membership"
)

// detectWithin is how soon every other node must show a failed node.
const detectWithin = 10 * time.Second

func TestFailureDetection3(t *testing.T) {
	t.Parallel()
	failureDetection(t, 3)
}

func TestFailureDetection5(t *testing.T) {
	t.Parallel()
	failureDetection(t, 5)
}

// failureDetection runs a group of n bdrd subprocesses and, in turn,
// SIGKILLs one node's bdrd, stops its PostgreSQL, and does both (the host
// going away). Each time every other node's status, bdr.node_status and
// metrics show it suspect then down (db-down when only PostgreSQL is gone)
// within ten seconds, with the time of the change; after the restart it is
// up again everywhere, every stream is streaming again without help, and
// the writes made meanwhile on every node converge.
func failureDetection(t *testing.T, n int) {
	servers := make([]*pgcluster.Server, n)
	for i := range n - 1 {
		servers[i] = pgtest.Shared(t, i%3)
	}
	servers[n-1] = pgtest.Private(t, pgcluster.Options{}) // the one whose PostgreSQL stops
	nodes := grouptest.Group(t, servers, "fd", grouptest.Options{Bdrd: bdrdBinary}, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE kv (node text, seq int, PRIMARY KEY (node, seq))`)
	})
	victim, others := nodes[n-1], nodes[:n-1]
	seq := 0
	write := func(ns ...*grouptest.Node) {
		seq++
		for _, node := range ns {
			node.Exec(`INSERT INTO kv SELECT $1, $2 * 100 + g FROM generate_series(1, 50) g`, node.Name, seq)
		}
	}
	write(nodes...)
	ctx := context.Background()

	scenarios := []struct {
		name         string
		stop, start  func()
		want         string
		suspectFirst bool
		victimWrites bool // the victim's database takes writes while it is out
	}{
		{name: "bdrd killed", want: membership.LiveDown, suspectFirst: true, victimWrites: true,
			stop: victim.Kill, start: victim.Start},
		{name: "PostgreSQL stopped", want: membership.LiveDBDown,
			stop: func() {
				if err := victim.Server.Stop(ctx); err != nil {
					t.Fatal(err)
				}
			},
			start: func() {
				if err := victim.Server.Restart(ctx); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "bdrd and PostgreSQL gone", want: membership.LiveDown, suspectFirst: true,
			stop: func() {
				victim.Kill()
				if err := victim.Server.ImmediateStop(ctx); err != nil {
					t.Fatal(err)
				}
			},
			start: func() {
				if err := victim.Server.Restart(ctx); err != nil {
					t.Fatal(err)
				}
				victim.Start()
			}},
	}
	for _, sc := range scenarios {
		t.Logf("%d nodes, %s: %s", n, victim.Name, sc.name)
		start := time.Now()
		sc.stop()
		took := requireState(t, others, victim.Name, sc.want, start, detectWithin, sc.suspectFirst)
		t.Logf("%d nodes, %s: every other node showed %s %s after %s", n, sc.name, victim.Name, sc.want, took.Round(10*time.Millisecond))
		write(others...)
		if sc.victimWrites {
			write(victim)
		}

		back := time.Now()
		sc.start()
		took = requireState(t, others, victim.Name, membership.LiveUp, back, detectWithin, false)
		t.Logf("%d nodes, %s: up again everywhere %s after the restart", n, sc.name, took.Round(10*time.Millisecond))
		for _, o := range others {
			pgtest.WaitFor(t, 30*time.Second, victim.Name+" to see "+o.Name+" up", func() (bool, error) {
				m, err := member(ctx, victim, o.Name)
				return m.Live == membership.LiveUp, err
			})
		}
		waitStreaming(t, nodes, time.Minute)
		t.Logf("%d nodes, %s: every stream streaming %s after the restart", n, sc.name, time.Since(back).Round(10*time.Millisecond))
		write(nodes...)
		grouptest.WaitQuiet(t, nodes, 2*time.Minute)
		grouptest.AssertConverged(t, nodes)
	}
	if want := int64(n * 50 * (1 + len(scenarios))); nodes[0].QueryInt(`SELECT count(*) FROM kv`) < want {
		t.Errorf("kv has fewer than %d rows", want)
	}
}
