package membership_test

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgcluster"
	"github.com/bdr-dev/bdr/internal/pgtest"
	"github.com/bdr-dev/bdr/membership"
)

// retained is the WAL n keeps in its slot for peer, -1 without the slot.
func retained(t *testing.T, n *grouptest.Node, peer string) int64 {
	t.Helper()
	return n.QueryInt(`SELECT coalesce((SELECT coalesce(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn), 0)::bigint
		FROM pg_catalog.pg_replication_slots WHERE slot_name = bdr.repl_name($1)), -1)`, peer)
}

// fillWAL writes on n until its slot for peer keeps at least bytes of WAL.
func fillWAL(t *testing.T, n *grouptest.Node, peer string, bytes int64) {
	t.Helper()
	// Until the slot keeps bytes, or is gone: past 100% of the budget the
	// group may part the peer (and drop its slot) while this still writes.
	for r := retained(t, n, peer); r >= 0 && r < bytes; r = retained(t, n, peer) {
		n.Exec(`INSERT INTO pad (v) SELECT repeat(md5(g::text), 32) FROM generate_series(1, 2000) g`)
	}
}

// walDir is the size of n's server's WAL directory.
func walDir(t *testing.T, n *grouptest.Node) int64 {
	t.Helper()
	return n.QueryInt(`SELECT sum(size)::bigint FROM pg_catalog.pg_ls_waldir()`)
}

// budgetOf is what n's status says of the WAL it keeps for peer.
func budgetOf(ctx context.Context, n *grouptest.Node, peer string) (adminapi.WALBudget, error) {
	st, err := n.Client().Status(ctx, false)
	if err != nil {
		return adminapi.WALBudget{}, err
	}
	for _, b := range st.WAL {
		if b.Peer == peer {
			return b, nil
		}
	}
	return adminapi.WALBudget{}, nil
}

// metricValue reads one sample of the node's metrics; -1 when absent.
func metricValue(t *testing.T, n *grouptest.Node, name, labels string) float64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\{[^}]*` + regexp.QuoteMeta(labels) + `[^}]*\} (\S+)$`)
	m := re.FindStringSubmatch(n.Metrics())
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// waitBudget waits until n's status shows the WAL kept for peer in state.
func waitBudget(t *testing.T, n *grouptest.Node, peer, state string) adminapi.WALBudget {
	t.Helper()
	var b adminapi.WALBudget
	pgtest.WaitFor(t, 30*time.Second, n.Name+" to report the WAL kept for "+peer+" as "+state, func() (bool, error) {
		var err error
		b, err = budgetOf(context.Background(), n, peer)
		return b.State == state, err
	})
	return b
}

const budget = 96 << 20

// TestWALBudgetPart: with a 96 MB budget, writes while a peer is down make
// its slots keep WAL; at 80% the living nodes warn (status, log, metric), at
// 100% the group parts the peer, its slots go, and after a checkpoint the
// WAL directory shrinks. The parted node rejoins with a new empty database.
func TestWALBudgetPart(t *testing.T) {
	t.Parallel()
	small := pgcluster.Options{Settings: map[string]string{"max_wal_size": "32MB", "min_wal_size": "32MB"}}
	servers := []*pgcluster.Server{pgtest.Private(t, small), pgtest.Private(t, small), pgtest.Shared(t, 0)}
	opts := grouptest.Options{Bdrd: bdrdBinary, MaxPeerWAL: budget, OnWALBudget: "part"}
	nodes := grouptest.Group(t, servers, "wp", opts, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE pad (id bigserial PRIMARY KEY, v text)`)
	})
	a, b, victim := nodes[0], nodes[1], nodes[2]
	ctx := context.Background()

	victim.Kill()
	requireState(t, []*grouptest.Node{a, b}, victim.Name, membership.LiveDown, time.Now(), detectWithin, false)
	fillWAL(t, a, victim.Name, budget*85/100)
	peak := walDir(t, a)
	w := waitBudget(t, a, victim.Name, membership.BudgetWarning)
	t.Logf("warning at %.0f%% of the budget (%d bytes kept); WAL directory %d MB", 100*w.UsedRatio, w.RetainedBytes, peak>>20)
	if r := metricValue(t, a, "bdr_wal_budget_used_ratio", `peer="`+victim.Name+`"`); r < 0.8 || r >= 1 {
		t.Errorf("bdr_wal_budget_used_ratio for %s is %v; want 0.8..1", victim.Name, r)
	}
	if !hasLine(t, a, "WAL kept for a down peer", victim.Name) {
		t.Errorf("%s logged no warning about the WAL kept for %s", a.Name, victim.Name)
	}
	if st := victimState(t, a, victim.Name); st != "active" {
		t.Fatalf("%s is %s at 85%% of its budget; want active", victim.Name, st)
	}

	fillWAL(t, a, victim.Name, budget*11/10)
	for _, n := range []*grouptest.Node{a, b} {
		pgtest.WaitFor(t, 30*time.Second, n.Name+" to see "+victim.Name+" parted", func() (bool, error) {
			return victimState(t, n, victim.Name) == "parted", nil
		})
		reason := n.QueryText(`SELECT coalesce(reason, '') FROM bdr.nodes WHERE node_name = $1`, victim.Name)
		if !strings.Contains(reason, "WAL budget exceeded") {
			t.Errorf("%s gives the reason %q for parting %s", n.Name, reason, victim.Name)
		}
		pgtest.WaitFor(t, 30*time.Second, "the slot for "+victim.Name+" on "+n.Name+" to go", func() (bool, error) {
			return n.QueryInt(`SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = bdr.repl_name($1)`, victim.Name) == 0, nil
		})
	}
	if parts := metricValue(t, a, "bdr_wal_budget_parts_total", "") + metricValue(t, b, "bdr_wal_budget_parts_total", ""); parts < 1 {
		t.Errorf("bdr_wal_budget_parts_total on %s and %s adds up to %v; want 1 or more", a.Name, b.Name, parts)
	}
	// The living peer b still has to apply the writes (its slot on a keeps
	// their WAL until then); once it has, a checkpoint releases the WAL.
	before := walDir(t, a)
	grouptest.WaitQuiet(t, []*grouptest.Node{a, b}, 2*time.Minute)
	var after int64
	pgtest.WaitFor(t, 30*time.Second, "the WAL directory of "+a.Name+" to shrink after a checkpoint", func() (bool, error) {
		a.Exec(`CHECKPOINT`)
		a.Exec(`SELECT pg_catalog.pg_switch_wal()`)
		a.Exec(`CHECKPOINT`)
		after = walDir(t, a)
		return after < budget && after <= before*2/3, nil
	})
	t.Logf("WAL directory of %s: %d MB at 85%% of the budget, %d MB after the part, %d MB after a checkpoint", a.Name, peak>>20, before>>20, after>>20)

	// The parted node comes back: the group tells it to leave. Then it
	// joins again, with its database recreated empty.
	victim.Start()
	pgtest.WaitFor(t, 90*time.Second, victim.Name+" to leave", func() (bool, error) {
		info, err := victim.Client().Info(ctx)
		return info.State != "active", err
	})
	victim.Stop()
	if err := victim.Server.DropDatabase(ctx, victim.DB); err != nil {
		t.Fatal(err)
	}
	if err := victim.Server.CreateDatabase(ctx, victim.DB); err != nil {
		t.Fatal(err)
	}
	victim.Start()
	grouptest.Join(t, victim, b)
	a.Exec(`INSERT INTO pad (v) VALUES ('after the rejoin')`)
	grouptest.WaitQuiet(t, nodes, 2*time.Minute)
	grouptest.AssertConverged(t, nodes)
}

// TestWALBudgetAlert: with --on-wal-budget=alert the node over its budget
// reports it and keeps the peer; the peer comes back and catches up.
func TestWALBudgetAlert(t *testing.T) {
	t.Parallel()
	servers := []*pgcluster.Server{pgtest.Shared(t, 0), pgtest.Shared(t, 1), pgtest.Shared(t, 2)}
	const small = 32 << 20
	opts := grouptest.Options{Bdrd: bdrdBinary, MaxPeerWAL: small, OnWALBudget: "alert"}
	nodes := grouptest.Group(t, servers, "wa", opts, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE pad (id bigserial PRIMARY KEY, v text)`)
	})
	a, b, victim := nodes[0], nodes[1], nodes[2]

	victim.Kill()
	requireState(t, []*grouptest.Node{a, b}, victim.Name, membership.LiveDown, time.Now(), detectWithin, false)
	fillWAL(t, a, victim.Name, small*12/10)
	w := waitBudget(t, a, victim.Name, membership.BudgetOver)
	t.Logf("over the budget: %.0f%% (%d bytes kept)", 100*w.UsedRatio, w.RetainedBytes)
	if r := metricValue(t, a, "bdr_wal_budget_used_ratio", `peer="`+victim.Name+`"`); r < 1 {
		t.Errorf("bdr_wal_budget_used_ratio for %s is %v; want 1 or more", victim.Name, r)
	}
	time.Sleep(11 * time.Second) // two more checks of the budget
	for _, n := range []*grouptest.Node{a, b} {
		if st := victimState(t, n, victim.Name); st != "active" {
			t.Errorf("%s shows %s %s; with --on-wal-budget=alert it stays active", n.Name, victim.Name, st)
		}
		if n.QueryInt(`SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = bdr.repl_name($1)`, victim.Name) != 1 {
			t.Errorf("the slot for %s on %s is gone", victim.Name, n.Name)
		}
	}
	if !hasLine(t, a, "WAL kept for a down peer", victim.Name, "policy=alert") {
		t.Errorf("%s logged no alert about the WAL kept for %s", a.Name, victim.Name)
	}

	victim.Start()
	waitStreaming(t, nodes, time.Minute)
	grouptest.WaitQuiet(t, nodes, 2*time.Minute)
	grouptest.AssertConverged(t, nodes)
	waitBudget(t, a, victim.Name, membership.BudgetOK)
}

// victimState is the state n's catalog gives the node named name.
func victimState(t *testing.T, n *grouptest.Node, name string) string {
	t.Helper()
	return n.QueryText(`SELECT state FROM bdr.nodes WHERE node_name = $1 ORDER BY node_id DESC LIMIT 1`, name)
}
