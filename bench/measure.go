package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// load is one pgbench: the clients at site writing to dsn.
type load struct {
	site int
	dsn  string
}

// measurement is what to run and watch in one mode.
type measurement struct {
	mode  string
	who   string // where the clients write, for the report
	loads []load
	// The heartbeat: written on each of hbFrom, read on each of hbTo.
	hbFrom []hbNode
	hbTo   []hbNode
	wan    *wan     // whose links are counted; nil for none
	bdr    []hbNode // nodes whose conflicts are counted; nil for none
	cpu    []cpuSite
	// window, when set, is how long pgbench runs (else the measurer's
	// duration), and round names the window in progress lines ("round
	// 2/6").
	window time.Duration
	round  string
}

// name is the measurement in progress lines.
func (m measurement) name() string {
	if m.round == "" {
		return m.mode
	}
	return m.mode + " (" + m.round + ")"
}

// measurer runs one measurement; shared by the WAN benchmark and the one
// against an existing group.
type measurer struct {
	pgbench  string
	dir      string
	clients  int
	rate     int // pgbench -R, at each site; 0 = unlimited
	duration time.Duration
	every    time.Duration
	progress io.Writer
	// cg are the sites' cgroups: each pgbench goes into its site's, and
	// the sites' CPU is measured; nil when the sites share the CPUs.
	cg *cgroups
}

// drainFor is how long the heartbeat readers get after a load of d to
// see the last heartbeats: replication may be far behind when the load
// ends.
func drainFor(d time.Duration) time.Duration { return max(time.Minute, 3*d) }

func (r *wanRun) measure(ctx context.Context, m measurement) (ModeResult, error) {
	if err := settle(ctx, m); err != nil {
		return ModeResult{Mode: m.mode}, err
	}
	mr := measurer{pgbench: r.pgbench, dir: r.dir, clients: r.cfg.Clients, rate: r.cfg.Rate, duration: r.cfg.Duration,
		every: r.cfg.ProgressEvery, progress: r.cfg.Progress, cg: r.cg}
	if m.window > 0 {
		mr.duration = m.window
	}
	return mr.measure(ctx, m)
}

// settle starts a mode of the WAN benchmark the way every other starts:
// the pgbench tables of each server it writes to vacuumed (pgbench -n does
// not), and every server it writes to or replicates through checkpointed,
// so that no mode pays for the previous one's dead rows, nor gets a
// checkpoint (and its full-page writes) in the middle of its run by luck.
// Not done against an existing group (bench pgbench): that is the
// operator's database.
func settle(ctx context.Context, m measurement) error {
	seen := map[string]bool{}
	for _, l := range m.loads {
		if seen[l.dsn] {
			continue
		}
		seen[l.dsn] = true
		if err := exec1(ctx, l.dsn, `VACUUM (ANALYZE) pgbench_branches, pgbench_tellers, pgbench_accounts`); err != nil {
			return fmt.Errorf("%s: before the run: %w", m.mode, err)
		}
	}
	for _, n := range m.bdr {
		seen[n.dsn] = true
	}
	for dsn := range seen {
		if err := exec1(ctx, dsn, `CHECKPOINT`); err != nil {
			return fmt.Errorf("%s: before the run: %w", m.mode, err)
		}
	}
	return nil
}

func (mr measurer) say(format string, args ...any) {
	if mr.progress != nil {
		fmt.Fprintf(mr.progress, "bench: "+format+"\n", args...)
	}
}

// measure runs pgbench for each load with the heartbeat going, then
// waits until the readers have seen the last heartbeat (so that the next
// measurement starts on caught-up nodes), and collects the results.
func (mr measurer) measure(ctx context.Context, m measurement) (ModeResult, error) {
	res := ModeResult{Mode: m.mode, Writers: m.who}
	conflictsBefore, err := countConflicts(ctx, m.bdr)
	if err != nil {
		return res, err
	}
	var linksBefore []LinkBytes
	if m.wan != nil {
		linksBefore = m.wan.links()
	}
	mr.say("%s: pgbench %d clients for %s: %s", m.name(), mr.clients, mr.duration, m.who)
	start := time.Now()
	hb := newHeartbeat(start)
	loadDone := make(chan struct{})
	hbDone := make(chan error, 1)
	hctx, stopHeartbeat := context.WithCancel(ctx)
	defer stopHeartbeat()
	if len(m.hbFrom) > 0 {
		go func() { hbDone <- hb.run(hctx, loadDone, m.hbFrom, m.hbTo, drainFor(mr.duration)) }()
	} else {
		hbDone <- nil
	}
	logs, err := os.MkdirTemp(mr.dir, m.mode)
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(logs)
	var runs []*pgbenchRun
	var startErr error
	cpu := startCPU(mr.cg, m.cpu)
	for _, l := range m.loads {
		pr, err := startPgbench(ctx, mr.pgbench, l.site, l.dsn, mr.clients, mr.rate, mr.duration, logs)
		if err != nil {
			startErr = err
			break
		}
		runs = append(runs, pr)
		if mr.cg != nil {
			// At once: its threads and connections follow in a few ms.
			if err := mr.cg.place(l.site, pr.cmd.Process.Pid); err != nil {
				startErr = err
				_ = pr.cmd.Process.Kill()
				break
			}
		}
	}
	stopProgress := mr.showProgress(m.name(), start, runs, hb, len(m.hbFrom) > 0)
	var results []pgbenchResult
	var errs []error
	for _, pr := range runs {
		pres, err := pr.wait(ctx)
		errs = append(errs, err)
		results = append(results, pres)
	}
	stopProgress()
	pgbenchCPU := map[int]time.Duration{}
	for _, pr := range runs {
		pgbenchCPU[pr.site] += pr.cpu()
	}
	res.CPU = cpu.stop(pgbenchCPU)
	close(loadDone)
	if len(m.hbFrom) > 0 {
		mr.say("%s: load done, waiting for the last heartbeats to replicate", m.name())
	}
	errs = append(errs, startErr, <-hbDone)
	if err := errors.Join(errs...); err != nil {
		return res, err
	}

	var lat []time.Duration
	for i, pres := range results {
		res.TPS += pres.TPS
		res.Failed += pres.Failed
		lat = append(lat, pres.Latencies...)
		for s, n := range pres.PerSecond {
			for len(res.TPSSeries) <= s {
				res.TPSSeries = append(res.TPSSeries, 0)
			}
			res.TPSSeries[s] += n
		}
		if len(results) > 1 {
			res.PerSite = append(res.PerSite, SiteTPS{Site: fmt.Sprintf("site%d", runs[i].site), TPS: pres.TPS})
		}
	}
	slices.Sort(lat)
	res.lat = lat
	res.Transactions = int64(len(lat))
	res.LatencyAvg, res.LatencyP50, res.LatencyP99 = ms(mean(lat)), ms(percentile(lat, 50)), ms(percentile(lat, 99))
	if len(m.hbFrom) > 0 {
		all, pairs, points := hb.results()
		res.Lag, res.LagPairs, res.Lags = &all, pairs, points
	}
	if m.wan != nil {
		res.Links = linkDelta(linksBefore, m.wan.links())
	}
	if m.bdr != nil {
		after, err := countConflicts(ctx, m.bdr)
		if err != nil {
			return res, err
		}
		res.Conflicts = map[string]int64{}
		for name, n := range after {
			res.Conflicts[name] = n - conflictsBefore[name]
		}
	}
	return res, nil
}

// showProgress prints a line every mr.every until the returned function is
// called: elapsed time, current TPS and the latest lag.
func (mr measurer) showProgress(mode string, start time.Time, runs []*pgbenchRun, hb *heartbeat, lag bool) func() {
	if mr.progress == nil {
		return func() {}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(mr.every)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			var tps float64
			for _, r := range runs {
				tps += r.currentTPS()
			}
			line := fmt.Sprintf("%s: %3.0fs/%.0fs  %8.1f tps", mode, time.Since(start).Seconds(), mr.duration.Seconds(), tps)
			if lag {
				line += fmt.Sprintf("  lag %6.1f ms", ms(hb.current()))
			}
			mr.say("%s", line)
		}
	}()
	return func() { close(stop); <-done }
}

// countConflicts counts bdr.conflict_history on each node.
func countConflicts(ctx context.Context, nodes []hbNode) (map[string]int64, error) {
	out := map[string]int64{}
	for _, n := range nodes {
		var c int64
		if err := queryInt(ctx, n.dsn, `SELECT count(*) FROM bdr.conflict_history`, &c); err != nil {
			return nil, fmt.Errorf("conflicts on %s: %w", n.name, err)
		}
		out[n.name] = c
	}
	return out, nil
}

// linkDelta is the traffic between two snapshots of the links.
func linkDelta(before, after []LinkBytes) []LinkBytes {
	out := make([]LinkBytes, 0, len(after))
	for _, a := range after {
		for _, b := range before {
			if b.Name == a.Name {
				a.Sent -= b.Sent
				a.Replies -= b.Replies
			}
		}
		out = append(out, a)
	}
	return out
}

// execAll runs sql on every node.
func execAll(ctx context.Context, nodes []hbNode, sql string) error {
	for _, n := range nodes {
		conn, err := pgx.Connect(ctx, n.dsn)
		if err != nil {
			return fmt.Errorf("%s: %w", n.name, err)
		}
		_, err = conn.Exec(ctx, sql)
		conn.Close(context.Background())
		if err != nil {
			return fmt.Errorf("%s: %s: %w", n.name, strings.Fields(sql)[0], err)
		}
	}
	return nil
}
