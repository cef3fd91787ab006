package membership_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgcluster"
	"github.com/bdr-dev/bdr/internal/pgtest"
	"github.com/bdr-dev/bdr/membership"
)

// TestPartition splits a group of five 3|2 (gossip, consensus and the
// members' admin calls; the databases still reach each other). The minority
// cannot admit a node nor part one, and says why; the majority admits a
// node. Healed, the minority learns what was decided, the node refused
// before joins, and everything converges.
func TestPartition(t *testing.T) {
	t.Parallel()
	nw := grouptest.NewNetwork()
	opts := grouptest.Options{Net: nw}
	s := []*pgcluster.Server{pgtest.Shared(t, 0), pgtest.Shared(t, 1), pgtest.Shared(t, 2)}
	nodes := grouptest.Group(t, []*pgcluster.Server{s[0], s[1], s[2], s[0], s[1]}, "pt", opts, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE kv (node text, seq int, PRIMARY KEY (node, seq))`)
	})
	late := grouptest.NewNode(t, s[2], pgtest.UniqueName(t, "ptx"), opts)  // tries to join the minority
	extra := grouptest.NewNode(t, s[2], pgtest.UniqueName(t, "pty"), opts) // joins the majority
	t.Cleanup(func() { late.Stop(); extra.Stop() })
	majority, minority := nodes[:3], nodes[3:]
	ctx := context.Background()
	write := func(seq int, ns ...*grouptest.Node) {
		for _, n := range ns {
			n.Exec(`INSERT INTO kv SELECT $1, $2 * 100 + g FROM generate_series(1, 20) g`, n.Name, seq)
		}
	}
	write(1, nodes...)

	nw.Partition(append([]*grouptest.Node{extra}, majority...), append([]*grouptest.Node{late}, minority...))
	for _, n := range minority {
		pgtest.WaitFor(t, 15*time.Second, n.Name+" to see the majority down", func() (bool, error) {
			m, err := member(ctx, n, majority[0].Name)
			return m.Live == membership.LiveDown, err
		})
	}
	write(2, nodes...)

	// The minority cannot admit a node...
	err := grouptest.JoinErr(late, minority[0])
	if err == nil || !strings.Contains(err.Error(), "no quorum") {
		t.Fatalf("join through the minority: %v; want a no quorum refusal", err)
	}
	t.Logf("join through the minority refused: %v", err)
	if info, err := late.Client().Info(ctx); err != nil || info.State != "none" {
		t.Errorf("the refused node is %q (%v); want no group", info.State, err)
	}
	// ... nor part one.
	_, err = minority[0].Client().Part(ctx, majority[0].Name)
	if err == nil || !strings.Contains(err.Error(), "no quorum") {
		t.Fatalf("part through the minority: %v; want a no quorum refusal", err)
	}
	t.Logf("part through the minority refused: %v", err)

	// The majority can.
	grouptest.Join(t, extra, majority[1])
	write(3, append([]*grouptest.Node{extra}, nodes...)...)

	nw.Heal()
	all := append([]*grouptest.Node{extra}, nodes...)
	for _, n := range all {
		pgtest.WaitFor(t, 30*time.Second, n.Name+" to know "+extra.Name+" as active and "+majority[0].Name+" up", func() (bool, error) {
			m, err := member(ctx, n, extra.Name)
			if err != nil || m.State != "active" {
				return false, err
			}
			m, err = member(ctx, n, majority[0].Name)
			return m.State == "active" && (n == majority[0] || m.Live == membership.LiveUp), err
		})
	}
	// The refused node joins now, through the former minority.
	grouptest.Join(t, late, minority[0])
	all = append(all, late)
	write(4, all...)
	waitStreaming(t, all, time.Minute)
	grouptest.WaitQuiet(t, all, 2*time.Minute)
	grouptest.AssertConverged(t, all)
	for _, n := range all {
		if got := n.QueryInt(`SELECT count(*) FROM bdr.nodes WHERE state = 'active'`); got != int64(len(all)) {
			t.Errorf("%s has %d active nodes; want %d", n.Name, got, len(all))
		}
	}
}
