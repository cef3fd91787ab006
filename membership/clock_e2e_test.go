package membership_test

import (
	"context"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

// TestClockSkew runs a group of three in-process bdrds, b's clock 3 s
// ahead (the wall clock its gossip shows and compares with): a's status,
// metrics and log show b +3 s over the bound and c, whose clock is right,
// under it, and so does bdr.node_status; b's show a -3 s.
func TestClockSkew(t *testing.T) {
	t.Parallel()
	const offset, tolerance = 3 * time.Second, 200 * time.Millisecond
	skewed := grouptest.Options{Clock: func() time.Time { return time.Now().Add(offset) }}
	a := grouptest.NewNode(t, pgtest.Shared(t, 0), pgtest.UniqueName(t, "cska"), grouptest.Options{})
	b := grouptest.NewNode(t, pgtest.Shared(t, 1), pgtest.UniqueName(t, "cskb"), skewed)
	c := grouptest.NewNode(t, pgtest.Shared(t, 2), pgtest.UniqueName(t, "cskc"), grouptest.Options{})
	nodes := []*grouptest.Node{a, b, c}
	t.Cleanup(func() {
		for _, n := range nodes {
			n.Stop()
		}
	})
	grouptest.Init(t, a)
	a.Exec(`CREATE TABLE kv (k int PRIMARY KEY, v text)`)
	grouptest.Join(t, b, a)
	grouptest.Join(t, c, a)

	skewOf := func(st adminapi.Status, name string) *adminapi.Node {
		for i, n := range st.Nodes {
			if n.Name == name {
				return &st.Nodes[i]
			}
		}
		return nil
	}
	ctx := context.Background()
	var st adminapi.Status
	pgtest.WaitFor(t, time.Minute, "a to compare clocks with b and c, b with a", func() (bool, error) {
		var err error
		if st, err = a.Client().Status(ctx, true); err != nil {
			return false, nil
		}
		bst, err := b.Client().Status(ctx, false)
		if err != nil {
			return false, nil
		}
		return skewOf(st, b.Name).ClockSkewSeconds != nil && skewOf(st, c.Name).ClockSkewSeconds != nil &&
			skewOf(bst, a.Name).ClockSkewSeconds != nil, nil
	})
	if st.ClockSkewBoundSeconds != 1 {
		t.Errorf("status: bound %vs; want the default 1s", st.ClockSkewBoundSeconds)
	}
	if self := skewOf(st, a.Name); self.ClockSkewSeconds != nil {
		t.Errorf("a shows a clock skew for itself: %v", *self.ClockSkewSeconds)
	}
	bst, err := b.Client().Status(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		observer, of string
		node         *adminapi.Node
		want         time.Duration
		over         bool
	}{
		{a.Name, b.Name, skewOf(st, b.Name), offset, true},
		{a.Name, c.Name, skewOf(st, c.Name), 0, false},
		{b.Name, a.Name, skewOf(bst, a.Name), -offset, true},
	} {
		got := time.Duration(*w.node.ClockSkewSeconds * float64(time.Second))
		t.Logf("status of %s: %s's clock %+.4fs (error at most %.4fs, over %v)", w.observer, w.of,
			*w.node.ClockSkewSeconds, w.node.ClockSkewErrorSeconds, w.node.ClockSkewOver)
		if (got-w.want).Abs() > tolerance || w.node.ClockSkewOver != w.over {
			t.Errorf("status of %s: %s's clock %s, over %v; want %s ± %s, over %v", w.observer, w.of, got, w.node.ClockSkewOver,
				w.want, tolerance, w.over)
		}
	}

	for _, w := range []struct {
		n    *grouptest.Node
		peer string
		want time.Duration
	}{{a, b.Name, offset}, {a, c.Name, 0}, {b, a.Name, -offset}} {
		page := w.n.Metrics()
		m := regexp.MustCompile(`(?m)^bdr_clock_skew_seconds\{node="` + w.n.Name + `",peer="` + w.peer + `"\} (\S+)$`).FindStringSubmatch(page)
		if m == nil {
			t.Errorf("%s exports no bdr_clock_skew_seconds for %s", w.n.Name, w.peer)
			continue
		}
		v, err := strconv.ParseFloat(m[1], 64)
		if err != nil || (time.Duration(v*float64(time.Second))-w.want).Abs() > tolerance {
			t.Errorf("%s: bdr_clock_skew_seconds{peer=%q} = %s; want %s ± %s", w.n.Name, w.peer, m[1], w.want, tolerance)
		}
		if !strings.Contains(page, `bdr_clock_skew_bound_seconds{node="`+w.n.Name+`"} 1`+"\n") {
			t.Errorf("%s does not export the bound of 1s", w.n.Name)
		}
	}

	for _, w := range []struct {
		n    *grouptest.Node
		peer string
		want time.Duration
	}{{a, b.Name, offset}, {a, c.Name, 0}, {b, a.Name, -offset}} {
		pgtest.WaitFor(t, 30*time.Second, w.n.Name+"'s bdr.node_status to show "+w.peer+"'s clock skew", func() (bool, error) {
			var skews []float64
			err := pgtest.QueryRow(ctx, w.n.DSN, `SELECT array_agg(coalesce(peer_clock_skew_seconds, 'NaN')) FROM bdr.node_status WHERE peer = $1`,
				[]any{w.peer}, &skews)
			if err != nil || len(skews) != 2 {
				return false, err
			}
			for _, v := range skews {
				if (time.Duration(v*float64(time.Second)) - w.want).Abs() > tolerance {
					return false, nil
				}
			}
			return true, nil
		})
	}

	// One warning per member over the bound, none for c; a few probes more
	// do not repeat it.
	time.Sleep(3 * time.Second)
	for _, w := range []struct {
		n       *grouptest.Node
		of      string
		lines   int
		negated bool
	}{{a, b.Name, 1, false}, {b, a.Name, 1, true}, {a, c.Name, 0, false}, {c, b.Name, 1, false}} {
		lines := logLines(t, w.n, "level=WARN", "member clock skew over the bound", "member="+w.of+" ")
		if len(lines) != w.lines {
			t.Errorf("%s logged %s over the bound %d times; want %d: %q", w.n.Name, w.of, len(lines), w.lines, lines)
		}
		for _, l := range lines {
			if strings.Contains(l, "skew=-") != w.negated {
				t.Errorf("%s logged %s's skew with the wrong sign: %s", w.n.Name, w.of, l)
			}
		}
	}

	a.Exec(`INSERT INTO kv VALUES (1, 'a')`)
	b.Exec(`INSERT INTO kv VALUES (2, 'b')`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	grouptest.AssertConverged(t, nodes)
}

// logLines are the lines of the node's log holding every part.
func logLines(t *testing.T, n *grouptest.Node, parts ...string) []string {
	t.Helper()
	b, err := os.ReadFile(n.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}
