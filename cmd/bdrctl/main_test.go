package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgcluster"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, 3)) }

func bdrctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// mustFail runs bdrctl expecting a failure reported in one line with want.
func mustFail(t *testing.T, want string, args ...string) {
	t.Helper()
	code, _, stderr := bdrctl(t, args...)
	if code != 1 {
		t.Errorf("bdrctl %v: exit %d, want 1 (stderr %q)", args, code, stderr)
	}
	if lines := strings.Split(strings.TrimSpace(stderr), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "bdrctl: ") {
		t.Errorf("bdrctl %v: want one line starting with \"bdrctl: \", got %q", args, stderr)
	}
	if !strings.Contains(stderr, want) {
		t.Errorf("bdrctl %v: %q does not say %q", args, stderr, want)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{{}, {"frobnicate"}, {"part"}, {"join"}, {"status", "extra"}, {"--bogus", "status"}, {"status", "--token-file"},
		{"join", "--via", "127.0.0.1:1", "--copy-workers", "-1"}} {
		if code, _, stderr := bdrctl(t, args...); code != 2 || !strings.Contains(stderr, "usage: bdrctl") {
			t.Errorf("bdrctl %v: exit %d, stderr %q; want usage and exit 2", args, code, stderr)
		}
	}
}

func servers(t *testing.T) []*pgcluster.Server {
	return []*pgcluster.Server{pgtest.Shared(t, 0), pgtest.Shared(t, 1), pgtest.Shared(t, 2)}
}

// leftovers lists what a node's name left behind on a server: slots and
// origins named after it, on any database.
func leftovers(t *testing.T, dsn, name string) []string {
	t.Helper()
	return pgtest.Strings(t, dsn, `
		SELECT 'slot ' || slot_name FROM pg_replication_slots WHERE slot_name ~ ('^bdr_[0-9]+_' || $1 || '$')
		UNION ALL SELECT 'origin ' || roname FROM pg_replication_origin WHERE roname ~ ('^bdr_[0-9]+_' || $1 || '$')`, name)
}

// TestBadAdminInput: failures of init, join and part are one clear line, a
// non-zero exit, and leave nothing behind.
func TestBadAdminInput(t *testing.T) {
	t.Parallel()
	srv := servers(t)
	nodes := grouptest.Group(t, srv[:2], "bad", grouptest.Options{}, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE t (id int PRIMARY KEY)`)
	})
	a, b := nodes[0], nodes[1]
	loner := grouptest.NewNode(t, srv[2], pgtest.UniqueName(t, "loner"), grouptest.Options{})
	dup := grouptest.NewNode(t, srv[2], a.Name, grouptest.Options{}) // same name as a member

	mustFail(t, "is unreachable", "--node", "127.0.0.1:1", "status")
	mustFail(t, "cannot reach the via node", "--node", loner.Admin, "--token-file", loner.TokenFile, "join", "--via", "127.0.0.1:1")
	mustFail(t, "already used by node", "--node", dup.Admin, "--token-file", dup.TokenFile, "join", "--via", a.Admin)
	mustFail(t, "already used by node", "--node", dup.Admin, "--token-file", dup.TokenFile, "join", "--via", b.Admin)
	mustFail(t, `no node named "ghost"`, "--node", a.Admin, "--token-file", a.TokenFile, "part", "ghost")
	mustFail(t, "cannot part itself", "--node", a.Admin, "--token-file", a.TokenFile, "part", a.Name)
	mustFail(t, "already a member", "--node", a.Admin, "--token-file", a.TokenFile, "init")
	mustFail(t, "already a member", "--node", b.Admin, "--token-file", b.TokenFile, "join", "--via", a.Admin)
	mustFail(t, "not an active member", "--node", loner.Admin, "--token-file", loner.TokenFile, "join", "--via", dup.Admin)
	mustFail(t, "copy workers 33: want 1 to 32", "--node", loner.Admin, "--token-file", loner.TokenFile, "join", "--via", a.Admin, "--copy-workers", "33")

	// Nothing half-created: the refused nodes hold no catalog rows, slots
	// or origins, and the members know only each other.
	for _, n := range []*grouptest.Node{loner, dup} {
		if c := n.QueryInt(`SELECT count(*) FROM bdr.nodes`); c != 0 {
			t.Errorf("%s: %d catalog rows after a refused join", n.Name, c)
		}
		if c := n.QueryInt(`SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`); c != 0 {
			t.Errorf("%s: %d slots after a refused join", n.Name, c)
		}
	}
	for _, n := range nodes {
		if c := n.QueryInt(`SELECT count(*) FROM bdr.nodes`); c != 2 {
			t.Errorf("%s knows %d nodes, want 2", n.Name, c)
		}
	}
	if l := leftovers(t, loner.DSN, loner.Name); len(l) != 0 {
		t.Errorf("leftovers of %s: %v", loner.Name, l)
	}
	// The group still works.
	a.Exec(`INSERT INTO t VALUES (1)`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	grouptest.AssertConverged(t, nodes)
}

// TestStatusAndPart: status shows every stream; part of a live node removes
// its streams, slots and origins everywhere and marks it parted.
func TestStatusAndPart(t *testing.T) {
	t.Parallel()
	srv := servers(t)
	nodes := grouptest.Group(t, srv, "part", grouptest.Options{}, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE t (id int PRIMARY KEY, v text)`)
	})
	a, b, c := nodes[0], nodes[1], nodes[2]
	a.Exec(`INSERT INTO t VALUES (1, 'before')`)
	grouptest.WaitQuiet(t, nodes, time.Minute)

	var st adminapi.Status
	pgtest.WaitFor(t, time.Minute, "six streaming streams", func() (bool, error) {
		code, out, stderr := bdrctl(t, "--node", b.Admin, "--token-file", b.TokenFile, "status", "--json")
		if code != 0 {
			t.Fatalf("status: %s", stderr)
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("status --json: %v\n%s", err, out)
		}
		streaming := 0
		for _, s := range st.Streams {
			if s.State == "streaming" {
				streaming++
			}
		}
		compared := 0
		for _, n := range st.Nodes {
			if n.ClockSkewSeconds != nil {
				compared++
			}
		}
		return len(st.Nodes) == 3 && streaming == 6 && compared == 2, nil
	})
	// Real peers on one machine share its clock: skew about 0, under the bound.
	for _, n := range st.Nodes {
		switch {
		case n.Name == b.Name && n.ClockSkewSeconds != nil:
			t.Errorf("b shows a clock skew for itself: %v", *n.ClockSkewSeconds)
		case n.Name != b.Name && (math.Abs(*n.ClockSkewSeconds) > 0.05 || n.ClockSkewOver):
			t.Errorf("b sees %s's clock %+.4fs (over %v); want about 0, under the bound", n.Name, *n.ClockSkewSeconds, n.ClockSkewOver)
		case n.Name != b.Name:
			t.Logf("b sees %s's clock %+.4fs (error at most %.4fs)", n.Name, *n.ClockSkewSeconds, n.ClockSkewErrorSeconds)
		}
	}
	code, out, _ := bdrctl(t, "--node", a.Admin, "--token-file", a.TokenFile, "status")
	if code != 0 || !strings.Contains(out, "FROM") || !strings.Contains(out, c.Name) || !strings.Contains(out, "CLOCK SKEW") ||
		strings.Contains(out, "OVER") || strings.Contains(out, "WARNING") {
		t.Errorf("status output:\n%s", out)
	}
	// --local: a's own view, every member with its liveness, no probing.
	code, out, stderr := bdrctl(t, "--node", a.Admin, "--token-file", a.TokenFile, "status", "--local", "--json")
	var local adminapi.Status
	if code != 0 || json.Unmarshal([]byte(out), &local) != nil {
		t.Fatalf("status --local: exit %d\n%s%s", code, out, stderr)
	}
	if len(local.Nodes) != 3 {
		t.Errorf("status --local lists %d nodes; want 3", len(local.Nodes))
	}
	for _, n := range local.Nodes {
		if n.Reachable != nil || (n.Name != a.Name && n.Live != "up") {
			t.Errorf("status --local: %s reachable=%v live=%q; want not probed, up", n.Name, n.Reachable, n.Live)
		}
	}
	// checksum asks every member, with the same token.
	if code, out, stderr := bdrctl(t, "--node", a.Admin, "--token-file", a.TokenFile, "checksum"); code != 0 ||
		!strings.Contains(out, "all 3 members are identical") {
		t.Errorf("checksum: exit %d\n%s%s", code, out, stderr)
	}

	code, out, stderr = bdrctl(t, "--node", a.Admin, "--token-file", a.TokenFile, "part", c.Name)
	if code != 0 {
		t.Fatalf("part: %s", stderr)
	}
	if !strings.Contains(out, "parted") {
		t.Errorf("part output: %q", out)
	}
	for _, n := range nodes {
		if l := leftovers(t, n.DSN, c.Name); len(l) != 0 {
			t.Errorf("%s still has %v", n.Name, l)
		}
		if n != c {
			if got := n.QueryInt(`SELECT count(*) FROM bdr.nodes WHERE node_name = $1 AND state = 'parted'`, c.Name); got != 1 {
				t.Errorf("%s does not show %s parted", n.Name, c.Name)
			}
		}
	}
	for _, name := range []string{a.Name, b.Name} {
		if l := leftovers(t, c.DSN, name); len(l) != 0 {
			t.Errorf("the parted node still has %v", l)
		}
	}
	if got := c.QueryInt(`SELECT count(*) FROM bdr.nodes WHERE state <> 'parted'`); got != 0 {
		t.Errorf("the parted node still lists %d current members", got)
	}
	mustFail(t, `no node named "`+c.Name+`"`, "--node", b.Admin, "--token-file", b.TokenFile, "part", c.Name)

	// The rest of the group goes on; the parted node no longer gets changes.
	b.Exec(`INSERT INTO t VALUES (2, 'after')`)
	grouptest.WaitQuiet(t, nodes[:2], time.Minute)
	grouptest.AssertConverged(t, nodes[:2])
	time.Sleep(500 * time.Millisecond)
	if got := c.QueryInt(`SELECT count(*) FROM t`); got != 1 {
		t.Errorf("the parted node has %d rows, want 1 (nothing after the part)", got)
	}
}

func TestBenchFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "wan", "--bandwidth", "fast"}, `--bandwidth "fast"`},
		{[]string{"bench", "wan", "--rtt", "10.5ms"}, "--rtt and --jitter must be whole milliseconds"},
		{[]string{"bench", "wan", "--rtt", "10ms", "--jitter", "20ms"}, "--jitter must not exceed half the --rtt"},
		{[]string{"bench", "wan", "--nodes", "1"}, "--nodes must be at least 2"},
		{[]string{"bench", "wan", "--modes", "sr,async"}, `unknown mode "async"`},
		{[]string{"bench", "wan", "--duration", "1500ms"}, "--duration must be a whole number of seconds"},
		{[]string{"bench", "wan", "--bdrd", "/nonexistent/bdrd"}, "bdrd binary"},
		{[]string{"bench", "wan", "extra"}, "takes no arguments"},
		{[]string{"bench", "wan", "--site-cpus", "0/x"}, `cpu list "x"`},
		{[]string{"bench", "wan", "--site-cpus", "0-1"}, "1 cpusets for 2 sites"},
		{[]string{"bench", "wan", "--site-weight", "-1"}, "--site-weight must be 0 to 64"},
		{[]string{"bench", "wan", "--gomaxprocs", "-1"}, "--gomaxprocs must not be negative"},
		{[]string{"bench", "wan", "--rounds", "-1"}, "--rounds must not be negative"},
		{[]string{"bench", "wan", "--duration", "10s", "--rounds", "3"}, "--duration 10s in 3 rounds: each must be a whole number of seconds"},
		{[]string{"bench", "pgbench", "--clients", "0"}, "--scale and --clients must be at least 1"},
		{[]string{"bench", "frob"}, "apply, join, wan or pgbench"},
	} {
		code, _, stderr := bdrctl(t, c.args...)
		first, _, _ := strings.Cut(stderr, "\n")
		if code != 2 || !strings.HasPrefix(first, "bdrctl: ") || !strings.Contains(first, c.want) {
			t.Errorf("bdrctl %v: exit %d, first line %q; want exit 2 and a line saying %q", c.args, code, first, c.want)
		}
	}
}

// TestPrintStatusClockSkew: a member's clock skew is shown signed, with a
// marker and a warning line past the bound; unknown skew is "-".
func TestPrintStatusClockSkew(t *testing.T) {
	skew := func(v float64) *float64 { return &v }
	st := adminapi.Status{Node: adminapi.Info{Name: "a", ID: 1, State: "active"}, Leader: "a", ClockSkewBoundSeconds: 0.5,
		Nodes: []adminapi.Node{
			{Name: "a", ID: 1, State: "active", Live: "up"},
			{Name: "b", ID: 2, State: "active", Live: "up", ClockSkewSeconds: skew(-3.0123), ClockSkewOver: true},
			{Name: "c", ID: 3, State: "active", Live: "up", ClockSkewSeconds: skew(0.0021)},
		}}
	var out bytes.Buffer
	printStatus(&out, st)
	rows := map[string]string{}
	for _, line := range strings.Split(out.String(), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			rows[f[0]] = line
		}
	}
	for name, want := range map[string]string{"a": " - ", "b": "-3.012s OVER", "c": "+0.002s"} {
		if !strings.Contains(rows[name], want) || (name != "b" && strings.Contains(rows[name], "OVER")) {
			t.Errorf("row of %s: %q; want %q", name, rows[name], want)
		}
	}
	if !strings.Contains(out.String(), "WARNING: clocks differ from a's by more than 500ms (--max-clock-skew): b -3.012s;") {
		t.Errorf("no warning line for b:\n%s", out.String())
	}
	st.Nodes[1].ClockSkewOver = false
	out.Reset()
	printStatus(&out, st)
	if strings.Contains(out.String(), "WARNING") || strings.Contains(out.String(), "OVER") {
		t.Errorf("a warning without a member over the bound:\n%s", out.String())
	}
}
