package membership_test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

// bdrdBinary is built once by TestMain for the tests that SIGKILL bdrd.
var bdrdBinary string

func TestMain(m *testing.M) { os.Exit(grouptest.Main(m, 3, &bdrdBinary)) }

// member returns what node's own status says of the member named name.
func member(ctx context.Context, node *grouptest.Node, name string) (adminapi.Node, error) {
	st, err := node.Client().WithTimeout(5*time.Second).Status(ctx, false)
	if err != nil {
		return adminapi.Node{}, err
	}
	for _, n := range st.Nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return adminapi.Node{}, fmt.Errorf("%s does not list %s", node.Name, name)
}

// sighting is when one observer first showed a member in the wanted state
// on each surface: its status, bdr.node_status and its metrics.
type sighting struct {
	observer                 string
	status, catalog, metrics time.Duration // since the start; 0 = never
	suspect                  bool          // its status showed suspect first
	since                    time.Time     // the since-time its status gave
	err                      error
}

func (s sighting) last() time.Duration { return max(s.status, s.catalog, s.metrics) }

// watch polls every observer until all three surfaces show the member in
// state want, or timeout passes. start is when the change was caused.
func watch(observers []*grouptest.Node, name, want string, start time.Time, timeout time.Duration) []sighting {
	out := make([]sighting, len(observers))
	metric := regexp.MustCompile(`(?m)^bdr_member_state\{member="` + regexp.QuoteMeta(name) + `",node="[^"]*",state="` +
		regexp.QuoteMeta(want) + `"\} 1$`)
	var wg sync.WaitGroup
	for i, o := range observers {
		wg.Go(func() {
			s := &out[i]
			s.observer = o.Name
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			for s.status == 0 || s.catalog == 0 || s.metrics == 0 {
				if s.status == 0 {
					if m, err := member(ctx, o, name); err == nil {
						s.suspect = s.suspect || m.Live == "suspect"
						if m.Live == want {
							s.status, s.since = time.Since(start), m.LiveSince
						}
					}
				}
				if s.catalog == 0 {
					var state string
					err := pgtest.QueryRow(ctx, o.DSN, `SELECT coalesce(max(peer_state), '') FROM bdr.node_status WHERE peer = $1`,
						[]any{name}, &state)
					if err == nil && state == want {
						s.catalog = time.Since(start)
					}
				}
				if s.metrics == 0 {
					if page, err := scrape(ctx, o); err == nil && metric.MatchString(page) {
						s.metrics = time.Since(start)
					}
				}
				select {
				case <-ctx.Done():
					s.err = fmt.Errorf("%s: %s not shown %s on every surface within %s (status %s, bdr.node_status %s, metrics %s)",
						o.Name, name, want, timeout, s.status, s.catalog, s.metrics)
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		})
	}
	wg.Wait()
	return out
}

// scrape reads a node's metrics without failing the test.
func scrape(ctx context.Context, n *grouptest.Node) (string, error) {
	return n.Client().WithTimeout(5 * time.Second).Metrics(ctx)
}

// requireState fails the test unless every observer shows the member in
// state want within limit on all surfaces; it returns the slowest time.
func requireState(t *testing.T, observers []*grouptest.Node, name, want string, start time.Time, limit time.Duration, suspectFirst bool) time.Duration {
	t.Helper()
	var slowest time.Duration
	for _, s := range watch(observers, name, want, start, limit+20*time.Second) {
		if s.err != nil {
			t.Fatal(s.err)
		}
		if s.last() > limit {
			t.Errorf("%s showed %s %s after %s (status %s, bdr.node_status %s, metrics %s); want within %s",
				s.observer, name, want, s.last().Round(time.Millisecond), s.status, s.catalog, s.metrics, limit)
		}
		if suspectFirst && !s.suspect {
			t.Errorf("%s showed %s %s without showing it suspect first", s.observer, name, want)
		}
		if s.since.Before(start.Add(-time.Second)) || s.since.After(time.Now()) {
			t.Errorf("%s says %s is %s since %s; the change was at %s", s.observer, name, want, s.since, start)
		}
		slowest = max(slowest, s.last())
	}
	return slowest
}

// waitStreaming waits until every stream of the group is streaming.
func waitStreaming(t *testing.T, nodes []*grouptest.Node, timeout time.Duration) {
	t.Helper()
	want := len(nodes) * (len(nodes) - 1)
	pgtest.WaitFor(t, timeout, "every stream of the group streaming", func() (bool, error) {
		n := 0
		for _, node := range nodes {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			st, err := node.Client().Status(ctx, false)
			cancel()
			if err != nil {
				return false, nil
			}
			for _, s := range st.Streams {
				if s.State == "streaming" {
					n++
				}
			}
		}
		return n == want, nil
	})
}

// hasLine reports whether the node's log has a line containing all parts.
func hasLine(t *testing.T, n *grouptest.Node, parts ...string) bool {
	t.Helper()
	b, err := os.ReadFile(n.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			return true
		}
	}
	return false
}
