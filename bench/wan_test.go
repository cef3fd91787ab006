package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/pgcluster"
)

// bdrdBinary is bdrd built once for the package's tests.
var bdrdBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "bench-test-bdrd")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "bdrd")
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("the tests build bdrd with go: %w", err)
	}
	cmd := exec.Command(goBin, "build", "-o", bin, "github.com/bdr-dev/bdr/cmd/bdrd")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build bdrd: %v: %s", err, out)
	}
	return bin, nil
})

func TestMain(m *testing.M) {
	code := m.Run()
	if bin, err := bdrdBinary(); err == nil {
		os.RemoveAll(filepath.Dir(bin))
	}
	os.Exit(code)
}

func bdrd(t *testing.T) string {
	t.Helper()
	bin, err := bdrdBinary()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// leftovers lists the processes whose command line names dir (postgres
// -D, bdrd --data-dir, pgbench's logs) and whether this process holds
// more open files than before (proxies, relays, connections).
func leftovers(t *testing.T, dir string, fdsBefore int) []string {
	t.Helper()
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), dir) {
			out = append(out, strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	// Connections close asynchronously in places (the proxies' links).
	deadline := time.Now().Add(5 * time.Second)
	for openFDs(t) > fdsBefore+2 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if n := openFDs(t); n > fdsBefore+2 {
		var what []string
		fds, _ := os.ReadDir("/proc/self/fd")
		for _, fd := range fds {
			target, _ := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
			what = append(what, fd.Name()+"="+target)
		}
		out = append(out, fmt.Sprintf("%d open files, %d before: %s", n, fdsBefore, strings.Join(what, " ")))
	}
	return out
}

func openFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// TestWAN runs every mode briefly over a 10 ms round trip, every site
// sharing the CPUs, and checks the figures are sane: replication lag above
// the one-way delay, the remote writer's latency above the round trip,
// conflicts only with writers at both sites, bytes on the links; and that
// nothing is left running. TestWANSiteCPUs runs with CPUs of their own.
func TestWAN(t *testing.T) {
	dir := t.TempDir()
	fds := openFDs(t)
	cfg := WANConfig{Bdrd: bdrd(t), Nodes: 2, Shape: Shape{RTT: 10 * time.Millisecond, Bandwidth: 100e6},
		Scale: 1, Clients: 2, Rate: 100, Duration: 4 * time.Second, Rounds: 2, Dir: dir, Progress: testWriter{t, time.Now()}, ProgressEvery: time.Second,
		SiteCPUs: SiteCPUsOff}
	res, err := RunWAN(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s\n%s", res.Report(), res.CompareSeed())
	if left := leftovers(t, dir, fds); len(left) > 0 {
		t.Errorf("left behind: %q", left)
	}
	if len(res.Modes) != 4 {
		t.Fatalf("%d modes, want 4", len(res.Modes))
	}
	if res.SiteCPUs != nil || !strings.Contains(res.Report(), "CPUs: shared by every site (--site-cpus off)") {
		t.Errorf("site CPUs %q with --site-cpus off; report:\n%s", res.SiteCPUs, res.Report())
	}
	oneWay := 5.0
	for _, m := range res.Modes {
		if m.TPS <= 0 || m.Transactions <= 0 || m.Failed != 0 || len(m.TPSSeries) < 3 {
			t.Errorf("%s: tps %.1f, %d transactions, %d failed, %d seconds of series", m.Mode, m.TPS, m.Transactions, m.Failed, len(m.TPSSeries))
		}
		if m.LatencyP50 <= 0 || m.LatencyP99 < m.LatencyP50 || m.LatencyAvg <= 0 {
			t.Errorf("%s: latency avg %.2f p50 %.2f p99 %.2f", m.Mode, m.LatencyAvg, m.LatencyP50, m.LatencyP99)
		}
		if m.CPU != nil {
			t.Errorf("%s: CPU figures %+v with the CPUs shared", m.Mode, m.CPU)
		}
		if m.Mode == ModeBaseline {
			if m.Lag != nil || m.Conflicts != nil || m.Links != nil {
				t.Errorf("baseline has replication figures: %+v", m)
			}
			continue
		}
		if m.Lag == nil || m.Lag.Samples < 10 || m.Lag.Unseen != 0 {
			t.Errorf("%s: lag %+v, want samples of every heartbeat", m.Mode, m.Lag)
		} else if m.Lag.P50 < oneWay || m.Lag.Max < m.Lag.P99 || m.Lag.P99 < m.Lag.P50 {
			t.Errorf("%s: lag p50 %.1f p99 %.1f max %.1f ms, want p50 above the one-way delay %.0f ms", m.Mode, m.Lag.P50, m.Lag.P99, m.Lag.Max, oneWay)
		}
		var pgBytes int64
		for _, l := range m.Links {
			if l.Service == "postgres" {
				pgBytes += l.Sent + l.Replies
			}
		}
		if pgBytes < 10000 {
			t.Errorf("%s: %d bytes through the PostgreSQL links: %+v", m.Mode, pgBytes, m.Links)
		}
	}
	// Baseline and mm-local took turns in two rounds of 2 s; the others ran 4 s at once.
	if rr := res.RoundRatios(); len(rr) != 2 || !strings.Contains(res.Report(), "by round") {
		t.Errorf("mm-local / baseline by round: %v, want 2 rounds; report:\n%s", rr, res.Report())
	}
	if local, _ := res.Mode(ModeLocal); len(local.Lags) == 0 || local.Lags[len(local.Lags)-1].At < 2 {
		t.Errorf("mm-local's lag samples do not reach into its second round: %v", local.Lags)
	}
	if both, _ := res.Mode(ModeBoth); both.RoundTPS != nil {
		t.Errorf("mm-both ran in rounds: %v", both.RoundTPS)
	}
	if sr, _ := res.Mode(ModeSR); sr.LatencyP50 < 10 || sr.Conflicts != nil {
		t.Errorf("sr: latency p50 %.1f ms, want above the 10 ms round trip; conflicts %v", sr.LatencyP50, sr.Conflicts)
	}
	if local, _ := res.Mode(ModeLocal); local.Conflicts == nil || local.TotalConflicts() != 0 {
		t.Errorf("mm-local: conflicts %v, want 0 on each node", local.Conflicts)
	}
	if both, _ := res.Mode(ModeBoth); both.TotalConflicts() == 0 || len(both.PerSite) != 2 || len(both.LagPairs) != 2 {
		t.Errorf("mm-both: %d conflicts (want some: both sites update the one branch row), per site %v, lag pairs %v",
			both.TotalConflicts(), both.PerSite, both.LagPairs)
	}

	out := t.TempDir()
	if err := res.WriteReport(out, "bdrctl bench wan (test)", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"report.md", "result.json", "sr.png", "baseline.png", "mm-local.png", "mm-both.png"} {
		if fi, err := os.Stat(filepath.Join(out, f)); err != nil || fi.Size() == 0 {
			t.Errorf("report file %s: %v", f, err)
		}
	}
}

// TestWANInterrupt stops a run in the middle of mm-local, as Ctrl-C does:
// it returns at once and nothing is left running.
func TestWANInterrupt(t *testing.T) {
	dir := t.TempDir()
	fds := openFDs(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &cancelOn{t: t, marker: "mm-local:   1s", cancel: cancel}
	cfg := WANConfig{Bdrd: bdrd(t), Nodes: 2, Shape: Shape{RTT: 10 * time.Millisecond}, Scale: 1, Clients: 2,
		Duration: time.Minute, Modes: []string{ModeLocal}, Dir: dir, Progress: w, ProgressEvery: time.Second}
	start := time.Now()
	_, err := RunWAN(ctx, cfg)
	if err == nil || ctx.Err() == nil {
		t.Fatalf("RunWAN: %v, want it stopped by the cancellation", err)
	}
	if took := time.Since(start); took > 50*time.Second {
		t.Errorf("took %s to stop", took)
	}
	if left := leftovers(t, dir, fds); len(left) > 0 {
		t.Errorf("left behind: %q", left)
	}
	if left := ownCgroups(t); len(left) > 0 {
		t.Errorf("cgroups left behind: %q", left)
	}
}

// cancelOn cancels when a progress line contains marker.
type cancelOn struct {
	t      *testing.T
	marker string
	cancel func()
}

func (c *cancelOn) Write(p []byte) (int, error) {
	c.t.Logf("%s", strings.TrimSpace(string(p)))
	if strings.Contains(string(p), c.marker) {
		c.cancel()
	}
	return len(p), nil
}

// testWriter logs progress lines with the time since start.
type testWriter struct {
	t     *testing.T
	start time.Time
}

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%5.1fs %s", time.Since(w.start).Seconds(), strings.TrimSpace(string(p)))
	return len(p), nil
}

// TestSites runs the benchmark against an existing group of two members
// (here on this machine): it loads pgbench through one, runs it, and
// measures the lag both ways.
func TestSites(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	var admins []string
	for _, name := range []string{"tokyo", "singapore"} {
		s, err := pgcluster.Start(ctx, pgcluster.Options{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Remove()
		if err := s.CreateDatabase(ctx, "app"); err != nil {
			t.Fatal(err)
		}
		b, err := startBdrd(ctx, bdrd(t), name, s.DSN("app"), filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		defer b.stop()
		if len(admins) == 0 {
			_, err = b.client.Init(ctx)
		} else {
			err = b.client.JoinAndWait(ctx, adminapi.JoinRequest{Via: admins[0]}, 100*time.Millisecond, nil)
		}
		if err != nil {
			t.Fatal(err)
		}
		admins = append(admins, b.admin)
	}
	res, err := RunSites(ctx, SitesConfig{Admin: admins[1], Target: "tokyo", Init: true, Scale: 1, Clients: 2, Rate: 50,
		Duration: 2 * time.Second, Progress: testWriter{t, time.Now()}, ProgressEvery: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", res.Report())
	if res.Target != "tokyo" || len(res.Nodes) != 2 || res.Run.TPS <= 0 || res.Run.Transactions == 0 {
		t.Errorf("result %+v", res)
	}
	if len(res.Run.LagPairs) != 2 {
		t.Fatalf("lag pairs %+v, want both ways", res.Run.LagPairs)
	}
	for _, p := range res.Run.LagPairs {
		if p.Samples < 10 || p.Unseen != 0 || p.P50 <= 0 {
			t.Errorf("lag %s -> %s: %+v", p.From, p.To, p)
		}
	}
	if res.Run.Conflicts == nil || res.Run.TotalConflicts() != 0 {
		t.Errorf("conflicts %v, want none with one writer", res.Run.Conflicts)
	}
	out := t.TempDir()
	if err := res.WriteReport(out, "bdrctl bench pgbench (test)", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"report.md", "result.json", "pgbench.png"} {
		if fi, err := os.Stat(filepath.Join(out, f)); err != nil || fi.Size() == 0 {
			t.Errorf("report file %s: %v", f, err)
		}
	}
	if _, err := RunSites(ctx, SitesConfig{Admin: admins[0], Target: "osaka", Scale: 1, Clients: 1, Duration: time.Second}); err == nil ||
		!strings.Contains(err.Error(), "not an active member") {
		t.Errorf("unknown target: %v", err)
	}
}
