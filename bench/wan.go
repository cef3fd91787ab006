package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/pgcluster"
)

// The modes of the WAN benchmark.
const (
	ModeSR       = "sr"       // client at site 1 writing to a streaming-replication primary at site 2
	ModeLocal    = "mm-local" // client at site 1 writing to its near multi-master node
	ModeBoth     = "mm-both"  // clients at every site writing to their near nodes at once
	ModeBaseline = "baseline" // one PostgreSQL, no replication, client local
)

// AllModes are the modes in the order they run and are reported.
var AllModes = []string{ModeSR, ModeBaseline, ModeLocal, ModeBoth}

// WANConfig configures the WAN benchmark.
type WANConfig struct {
	Bdrd     string        // bdrd binary
	Nodes    int           // sites of the multi-master group
	Shape    Shape         // what the links between sites do
	Scale    int           // pgbench scale
	Clients  int           // pgbench clients (at each site in mm-both)
	Rate     int           // pgbench transactions a second at each site; 0 = as fast as it goes
	Duration time.Duration // pgbench run of each mode
	Modes    []string      // which modes; nil = all
	Dir      string        // parent directory for the servers ("" = temp)
	Progress io.Writer     // progress lines; nil = none
	// ProgressEvery is the interval of progress lines during a run
	// (default 5 s).
	ProgressEvery time.Duration
	// SiteCPUs gives each site CPUs of its own, as if it were a machine of
	// its own: "auto" (or "") splits this machine's CPUs evenly between
	// the sites when cgroup v1 cpusets can be made and there are enough
	// CPUs, else every site shares them (with a note why); "off" shares
	// them; a list gives each site its cpuset, site 1 first, separated by
	// "/" ("0/1", "0-1/2-3"). The baseline runs on site 1's CPUs.
	SiteCPUs string
	// SiteWeight, with site CPUs, makes each site and bdrctl weigh as
	// much as that many other processes of this machine on the CPUs (a
	// cgroup v1 cpu group each): other work then runs on a site's CPUs
	// only when the site leaves room. 0: no weight.
	SiteWeight int
	// Rounds cuts the baseline's and mm-local's runs into that many
	// windows of Duration/Rounds, the two modes taking turns, so that
	// both meet the host alike (see rounds.go); 0: about 10 s windows, at
	// most 6. sr and mm-both run Duration in one go.
	Rounds int
	// Fsync makes every server flush its WAL at commit (fsync and
	// full_page_writes on, PostgreSQL's defaults); off, commits cost only
	// CPU, as in the tests. Off by default: the sites share this machine's
	// disk, where one site's flushes slow the others' (a coupling real
	// sites do not have).
	Fsync bool
}

// Validate checks the configuration and fills defaults.
func (c *WANConfig) Validate() error {
	switch {
	case c.Nodes < 2:
		return errors.New("bench wan: --nodes must be at least 2")
	case c.Nodes > 16:
		return errors.New("bench wan: --nodes must be at most 16")
	case c.Scale < 1 || c.Clients < 1 || c.Rate < 0:
		return errors.New("bench wan: --scale and --clients must be at least 1 and --rate not negative")
	case c.Duration < time.Second || c.Duration%time.Second != 0:
		return errors.New("bench wan: --duration must be a whole number of seconds, at least 1s")
	case c.SiteWeight < 0 || c.SiteWeight > 64:
		return errors.New("bench wan: --site-weight must be 0 to 64")
	case c.Shape.RTT < 0 || c.Shape.Jitter < 0 || c.Shape.Bandwidth < 0:
		return errors.New("bench wan: --rtt, --jitter and --bandwidth must not be negative")
	case c.Shape.RTT%time.Millisecond != 0 || c.Shape.Jitter%time.Millisecond != 0:
		return errors.New("bench wan: --rtt and --jitter must be whole milliseconds")
	case c.Shape.Jitter > c.Shape.oneWay():
		return errors.New("bench wan: --jitter must not exceed half the --rtt")
	}
	if c.Rounds < 0 {
		return errors.New("bench wan: --rounds must not be negative")
	}
	if c.Rounds == 0 {
		c.Rounds = autoRounds(c.Duration)
	}
	if w := c.Duration / time.Duration(c.Rounds); c.Rounds > 1 && (w < minWindow || w%time.Second != 0) {
		return fmt.Errorf("bench wan: --duration %s in %d rounds: each must be a whole number of seconds, at least %s", c.Duration, c.Rounds, minWindow)
	}
	if len(c.Modes) == 0 {
		c.Modes = AllModes
	}
	for _, m := range c.Modes {
		if !slices.Contains(AllModes, m) {
			return fmt.Errorf("bench wan: unknown mode %q (modes: %s)", m, strings.Join(AllModes, ", "))
		}
	}
	if c.ProgressEvery <= 0 {
		c.ProgressEvery = 5 * time.Second
	}
	switch c.SiteCPUs {
	case "":
		c.SiteCPUs = SiteCPUsAuto
	case SiteCPUsAuto, SiteCPUsOff:
	default:
		sets, err := parseSiteCPUs(c.SiteCPUs)
		if err != nil {
			return fmt.Errorf("bench wan: %w (or auto, off)", err)
		}
		if len(sets) != c.Nodes {
			return fmt.Errorf("bench wan: --site-cpus %s: %d cpusets for %d sites", c.SiteCPUs, len(sets), c.Nodes)
		}
	}
	if needsBdrd(c.Modes) {
		if c.Bdrd == "" {
			return errors.New("bench wan: the bdrd binary is required (--bdrd)")
		}
		if _, err := os.Stat(c.Bdrd); err != nil {
			return fmt.Errorf("bench wan: bdrd binary: %w", err)
		}
	}
	return nil
}

func needsBdrd(modes []string) bool {
	return slices.Contains(modes, ModeLocal) || slices.Contains(modes, ModeBoth)
}

// ModeResult is what one mode measured.
type ModeResult struct {
	Mode         string  `json:"mode"`
	Writers      string  `json:"writers"` // where the clients write, e.g. "site1 -> site2 (primary)"
	Transactions int64   `json:"transactions"`
	TPS          float64 `json:"tps"` // pgbench's, without connection time; summed over the sites
	Failed       int64   `json:"failed_transactions"`
	LatencyAvg   float64 `json:"latency_avg_ms"`
	LatencyP50   float64 `json:"latency_p50_ms"`
	LatencyP99   float64 `json:"latency_p99_ms"`
	// Lag is the replication lag over every measured pair, nil without
	// replication; LagPairs per writer and reader.
	Lag      *LagStats   `json:"lag,omitempty"`
	LagPairs []LagStats  `json:"lag_pairs,omitempty"`
	Lags     []LagPoint  `json:"lag_samples,omitempty"`
	PerSite  []SiteTPS   `json:"per_site,omitempty"`
	Links    []LinkBytes `json:"links,omitempty"`
	// Conflicts recorded during the run on each node (bdr.conflict_history),
	// nil for modes without bdr.
	Conflicts map[string]int64 `json:"conflicts,omitempty"`
	// CPU is what each site used of its CPUs while pgbench ran, when the
	// sites have CPUs of their own (and which).
	CPU *CPUUse `json:"cpu,omitempty"`
	// TPSSeries is the transactions finished in each second of the run.
	TPSSeries []int64 `json:"tps_series"`
	// RoundTPS is the TPS of each round, when the run was cut into rounds
	// (baseline and mm-local, see [WANConfig.Rounds]).
	RoundTPS []float64 `json:"round_tps,omitempty"`

	lat []time.Duration // every transaction's latency, sorted
}

// SiteTPS is one site's pgbench in a mode with clients at several sites.
type SiteTPS struct {
	Site string  `json:"site"`
	TPS  float64 `json:"tps"`
}

// TotalConflicts sums the conflicts over the nodes.
func (m ModeResult) TotalConflicts() int64 {
	var n int64
	for _, c := range m.Conflicts {
		n += c
	}
	return n
}

// WANResult is what the WAN benchmark measured.
type WANResult struct {
	Nodes       int       `json:"nodes"`
	RTTms       float64   `json:"rtt_ms"`
	JitterMs    float64   `json:"jitter_ms"`
	Bandwidth   int64     `json:"bandwidth_bits_per_s"` // 0 = unlimited
	Scale       int       `json:"scale"`
	Clients     int       `json:"clients"`
	Rate        int       `json:"rate,omitempty"`
	DurationSec float64   `json:"duration_s"`
	Started     time.Time `json:"started"`
	// SiteCPUs is the cpuset of each site, site 1 first (the baseline
	// runs on site 1's); none when the sites share the CPUs, and then
	// SiteCPUsNote says why.
	SiteCPUs     []string `json:"site_cpus,omitempty"`
	SiteCPUsNote string   `json:"site_cpus_note,omitempty"`
	// BdrctlCPUs is the cpuset of bdrctl (the links, the heartbeat):
	// every CPU but site 1's; "" for any.
	BdrctlCPUs string `json:"bdrctl_cpus,omitempty"`
	// SiteWeight is the weight the sites and bdrctl had (0: none), and
	// SiteWeightNote why none when one was asked for.
	SiteWeight     int    `json:"site_weight,omitempty"`
	SiteWeightNote string `json:"site_weight_note,omitempty"`
	// BdrctlProcs is GOMAXPROCS of the process that ran the benchmark
	// (bdrctl: the WAN links' proxies, the heartbeat).
	BdrctlProcs int `json:"bdrctl_gomaxprocs"`
	// Fsync says whether the servers flushed their WAL at commit.
	Fsync bool `json:"fsync"`
	// Rounds is how many turns the baseline and mm-local took (1: each ran
	// in one go; 0: they did not both run).
	Rounds int          `json:"rounds,omitempty"`
	Modes  []ModeResult `json:"modes"`
}

// Mode returns the result of mode, if it ran.
func (r WANResult) Mode(mode string) (ModeResult, bool) {
	for _, m := range r.Modes {
		if m.Mode == mode {
			return m, true
		}
	}
	return ModeResult{}, false
}

// wanRun is one run of the WAN benchmark.
type wanRun struct {
	cfg     WANConfig
	pgbench string   // the pgbench binary
	dir     string   // pgbench logs, bdrd data dirs
	cg      *cgroups // the sites' CPUs; nil when they share them
	// base is the baseline's server while it takes turns with mm-local
	// (nil otherwise).
	base *pgcluster.Server
}

func (r *wanRun) say(format string, args ...any) {
	if r.cfg.Progress != nil {
		fmt.Fprintf(r.cfg.Progress, "bench: "+format+"\n", args...)
	}
}

// serverSettings are the same for every server of every mode; with
// fsync, WAL is flushed at commit and pages are written whole after a
// checkpoint, as PostgreSQL does by default.
func serverSettings(fsync bool) map[string]string {
	s := map[string]string{"shared_buffers": "128MB", "max_wal_size": "2GB", "checkpoint_timeout": "30min"}
	if fsync {
		s["fsync"], s["full_page_writes"] = "on", "on"
	}
	return s
}

// RunWAN runs pgbench in each mode on servers of this machine whose sites
// reach each other only through emulated WAN links, and measures TPS,
// latency, replication lag, conflicts and the bytes on each link. Each
// site runs on CPUs of its own when cfg.SiteCPUs allows it; this process
// then runs in cgroups of its own until it returns (runs at once in one
// process share whichever placement came last). Every server, bdrd, proxy
// and cgroup it makes is gone when it returns, also when ctx is cancelled.
func RunWAN(ctx context.Context, cfg WANConfig) (_ WANResult, err error) {
	if err := cfg.Validate(); err != nil {
		return WANResult{}, err
	}
	bin, err := pgcluster.BinDir()
	if err != nil {
		return WANResult{}, err
	}
	dir, err := os.MkdirTemp(cfg.Dir, "bench-wan")
	if err != nil {
		return WANResult{}, err
	}
	defer os.RemoveAll(dir)
	r := &wanRun{cfg: cfg, pgbench: filepath.Join(bin, "pgbench"), dir: dir}
	res := WANResult{Nodes: cfg.Nodes, RTTms: ms(cfg.Shape.RTT), JitterMs: ms(cfg.Shape.Jitter), Bandwidth: cfg.Shape.Bandwidth,
		Scale: cfg.Scale, Clients: cfg.Clients, Rate: cfg.Rate, DurationSec: cfg.Duration.Seconds(), Started: time.Now().UTC(),
		BdrctlProcs: runtime.GOMAXPROCS(0), Fsync: cfg.Fsync}
	if slices.Contains(cfg.Modes, ModeBaseline) && slices.Contains(cfg.Modes, ModeLocal) {
		res.Rounds = cfg.Rounds
	}
	cpus, note, err := planSiteCPUs(cgroupBase, cfg.SiteCPUs, cfg.Nodes)
	if err != nil {
		return res, fmt.Errorf("bench wan: %w", err)
	}
	if cpus != nil {
		if r.cg, err = newCgroups(cgroupBase, cpus, cfg.SiteWeight); err != nil {
			if cfg.SiteCPUs != SiteCPUsAuto {
				return res, fmt.Errorf("bench wan: --site-cpus %s: %w", cfg.SiteCPUs, err)
			}
			cpus, note = nil, err.Error()
		}
	}
	if r.cg != nil {
		defer func() { err = errors.Join(err, r.cg.remove()) }()
		if len(r.cg.stale) > 0 {
			r.say("removed the cgroups of runs that died: %s", strings.Join(r.cg.stale, ", "))
		}
		if !r.cg.acct {
			r.say("note: %s is not writable: the sites' CPU use is not measured", filepath.Join(cgroupBase, "cpuacct"))
		}
		res.SiteWeight, res.BdrctlCPUs = r.cg.weight, r.cg.netCPUs
		if r.cg.weightErr != nil {
			res.SiteWeightNote = fmt.Sprintf("cgroup v1 cpu groups: %v", r.cg.weightErr)
			r.say("note: the sites have no weight against other work on this machine: %s", res.SiteWeightNote)
		}
	}
	res.SiteCPUs, res.SiteCPUsNote = cpus, note
	if cpus == nil && cfg.SiteCPUs == SiteCPUsAuto {
		r.say("note: the sites share this machine's CPUs (a site's work slows the others down): %s", note)
	}
	r.say("pgbench scale %d, %d clients%s, %s per mode; %d sites, links: %s; %s", cfg.Scale, cfg.Clients, rateText(cfg.Rate), cfg.Duration, cfg.Nodes, cfg.Shape, res.cpusText())
	for _, mode := range AllModes {
		if !slices.Contains(cfg.Modes, mode) {
			continue
		}
		var m []ModeResult
		var err error
		switch mode {
		case ModeSR:
			m, err = r.runSR(ctx)
		case ModeBaseline:
			if slices.Contains(cfg.Modes, ModeLocal) {
				// Measured in turns with mm-local, on the same group's run.
				r.say("baseline: one PostgreSQL, no replication (measured in turns with mm-local)")
				if r.base, err = r.startLoaded(ctx, 1); err != nil {
					return res, fmt.Errorf("%s: %w", mode, err)
				}
				defer func() { err = errors.Join(err, r.base.Remove()) }()
				continue
			}
			m, err = r.runBaseline(ctx)
		case ModeLocal:
			m, err = r.runGroup(ctx, slices.Contains(cfg.Modes, ModeLocal), slices.Contains(cfg.Modes, ModeBoth))
		case ModeBoth:
			if slices.Contains(cfg.Modes, ModeLocal) {
				continue // ran with mm-local on the same group
			}
			m, err = r.runGroup(ctx, false, true)
		}
		if err != nil {
			return res, fmt.Errorf("%s: %w", mode, err)
		}
		res.Modes = append(res.Modes, m...)
	}
	return res, nil
}

// runBaseline: one server, no replication, the client next to it.
func (r *wanRun) runBaseline(ctx context.Context) ([]ModeResult, error) {
	r.say("baseline: one PostgreSQL, no replication")
	s, err := r.startLoaded(ctx, 1)
	if err != nil {
		return nil, err
	}
	defer s.Remove()
	m, err := r.measure(ctx, baselineMeasurement(s))
	return []ModeResult{m}, err
}

// baselineMeasurement is the baseline's run on s.
func baselineMeasurement(s *pgcluster.Server) measurement {
	return measurement{mode: ModeBaseline, who: "site1 (no replication)",
		loads: []load{{site: 1, dsn: s.DSN("bench")}}, cpu: []cpuSite{{site: 1}}}
}

// startLoaded starts a server at site with database bench loaded by
// pgbench -i and the heartbeat table.
func (r *wanRun) startLoaded(ctx context.Context, site int) (*pgcluster.Server, error) {
	s, err := r.startServer(ctx, site, pgcluster.Options{})
	if err != nil {
		return nil, err
	}
	err = s.CreateDatabase(ctx, "bench")
	if err == nil {
		err = run(ctx, s.Command(ctx, "pgbench", "-i", "-q", "-s", strconv.Itoa(r.cfg.Scale), "bench"))
	}
	if err == nil {
		err = exec1(ctx, s.DSN("bench"), heartbeatDDL)
	}
	if err != nil {
		return nil, errors.Join(err, s.Remove())
	}
	return s, nil
}

// runSR: the primary at site 2, its standby at site 1 made with
// pg_basebackup through the WAN and streaming through it; the client at
// site 1 writes to the primary across the WAN.
func (r *wanRun) runSR(ctx context.Context) ([]ModeResult, error) {
	r.say("sr: primary at site 2, standby at site 1 (pg_basebackup and streaming through the WAN)")
	primary, err := r.startLoaded(ctx, 2)
	if err != nil {
		return nil, err
	}
	defer primary.Remove()
	w := newWAN(r.cfg.Shape)
	defer w.close()
	addr, err := w.addUnix(2, "postgres", primary.SocketPath())
	if err != nil {
		return nil, err
	}
	remote := proxyDSN(addr, "bench")
	standby, err := r.startServer(ctx, 1, pgcluster.Options{StandbyOf: proxyDSN(addr, "postgres") + " application_name=site1"})
	if err != nil {
		return nil, fmt.Errorf("standby: %w", err)
	}
	defer standby.Remove()
	if err := waitFor(ctx, primary.DSN("postgres"), `SELECT count(*) = 1 FROM pg_stat_replication WHERE state = 'streaming'`); err != nil {
		return nil, err
	}
	m, err := r.measure(ctx, measurement{mode: ModeSR, who: "site1 -> site2 (primary, across the WAN)",
		loads:  []load{{site: 1, dsn: remote}},
		hbFrom: []hbNode{{site: 2, name: "site2", dsn: primary.DSN("bench")}},
		hbTo:   []hbNode{{site: 1, name: "site1", dsn: standby.DSN("bench")}},
		wan:    w,
		cpu:    []cpuSite{{site: 1, role: "standby"}, {site: 2, role: "primary"}}})
	return []ModeResult{m}, err
}

// proxyDSN is the connection string of database db through a proxy.
func proxyDSN(addr, db string) string {
	host, port, _ := strings.Cut(addr, ":")
	return fmt.Sprintf("host=%s port=%s user=postgres dbname=%s sslmode=disable", host, port, db)
}

// site is one node of the multi-master group.
type site struct {
	n      int
	name   string
	server *pgcluster.Server
	bdrd   *bdrdProc
	admin  string // the admin API as the other sites reach it
}

// runGroup sets up the multi-master group, every site reaching the others
// only through the WAN, and runs mm-local and/or mm-both on it.
func (r *wanRun) runGroup(ctx context.Context, local, both bool) ([]ModeResult, error) {
	r.say("multi-master: %d sites, each with PostgreSQL and bdrd", r.cfg.Nodes)
	w := newWAN(r.cfg.Shape)
	var sites []*site
	// Every bdrd stops before the servers: a walsender waits at shutdown
	// for its receiver to confirm what it sent.
	defer func() {
		for _, s := range sites {
			if s.bdrd != nil {
				s.bdrd.stop()
			}
		}
		for _, s := range sites {
			if s.server != nil {
				_ = s.server.Remove()
			}
		}
		w.close()
	}()
	for i := range r.cfg.Nodes {
		s := &site{n: i + 1, name: fmt.Sprintf("site%d", i+1)}
		sites = append(sites, s)
		var err error
		if i == 0 {
			s.server, err = r.startLoaded(ctx, s.n)
		} else {
			s.server, err = r.startServer(ctx, s.n, pgcluster.Options{})
			if err == nil {
				err = s.server.CreateDatabase(ctx, "bench")
			}
		}
		if err != nil {
			return nil, err
		}
		if err := r.startSiteBdrd(ctx, w, s); err != nil {
			return nil, err
		}
	}
	r.say("bdrd: init at site1, %d join(s) through the WAN", len(sites)-1)
	if _, err := sites[0].bdrd.client.Init(ctx); err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	for _, s := range sites[1:] {
		if err := s.bdrd.client.JoinAndWait(ctx, adminapi.JoinRequest{Via: sites[0].admin}, 200*time.Millisecond, nil); err != nil {
			return nil, fmt.Errorf("join of %s: %w", s.name, err)
		}
	}
	if err := waitStreaming(ctx, sites[0].bdrd.client, len(sites)); err != nil {
		return nil, err
	}
	var nodes []hbNode
	var cpu []cpuSite
	for _, s := range sites {
		nodes = append(nodes, hbNode{site: s.n, name: s.name, dsn: s.server.DSN("bench")})
		cpu = append(cpu, cpuSite{site: s.n, bdrd: s.bdrd.cmd.Process.Pid})
	}
	// Each mode starts on a quiet group: neither the join's aftermath (the
	// joiner restamps the rows it copied, which its peers then receive)
	// nor a backlog of the previous mode counts in it.
	quiet := func() error {
		r.say("waiting for the group to be quiet (every slot confirmed up to the WAL's end)")
		return waitQuiet(ctx, nodes, max(2*time.Minute, 5*r.cfg.Duration))
	}
	var out []ModeResult
	if local {
		lm := measurement{mode: ModeLocal, who: "site1 -> site1 (near node)",
			loads: []load{{site: 1, dsn: nodes[0].dsn}}, hbFrom: nodes[:1], hbTo: nodes, wan: w, bdr: nodes, cpu: cpu}
		m, err := r.inRounds(ctx, lm, quiet)
		if err != nil {
			return nil, err
		}
		out = append(out, m...)
	}
	if both {
		if err := quiet(); err != nil {
			return nil, err
		}
		var loads []load
		var names []string
		for _, n := range nodes {
			loads = append(loads, load{site: n.site, dsn: n.dsn})
			names = append(names, fmt.Sprintf("%s -> %s", n.name, n.name))
		}
		m, err := r.measure(ctx, measurement{mode: ModeBoth, who: strings.Join(names, ", ") + " (near nodes, at once)",
			loads: loads, hbFrom: nodes, hbTo: nodes, wan: w, bdr: nodes, cpu: cpu})
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// inRounds measures mm-local (lm, after ready) and, when it takes turns
// with it, the baseline: cfg.Rounds windows each, the baseline's first in
// each round. It returns the baseline's result, if measured, then
// mm-local's.
func (r *wanRun) inRounds(ctx context.Context, lm measurement, ready func() error) ([]ModeResult, error) {
	rounds := r.cfg.Rounds
	if r.base == nil {
		rounds = 1 // nothing to take turns with
	}
	window := r.cfg.Duration / time.Duration(rounds)
	var base, local []ModeResult
	for i := range rounds {
		round := ""
		if rounds > 1 {
			round = fmt.Sprintf("round %d/%d", i+1, rounds)
		}
		if r.base != nil {
			bm := baselineMeasurement(r.base)
			bm.window, bm.round = window, round
			m, err := r.measure(ctx, bm)
			if err != nil {
				return nil, err
			}
			base = append(base, m)
		}
		if err := ready(); err != nil {
			return nil, err
		}
		lm.window, lm.round = window, round
		m, err := r.measure(ctx, lm)
		if err != nil {
			return nil, err
		}
		local = append(local, m)
	}
	var out []ModeResult
	if base != nil {
		out = append(out, mergeRounds(base, window))
	}
	return append(out, mergeRounds(local, window)), nil
}

// startSiteBdrd starts the site's bdrd, with proxies in front of its
// PostgreSQL, admin API, gossip and consensus, whose addresses it
// advertises: the other sites reach it only through them.
func (r *wanRun) startSiteBdrd(ctx context.Context, w *wan, s *site) error {
	pg, err := w.addUnix(s.n, "postgres", s.server.SocketPath())
	if err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		err = r.startSiteBdrdOnce(ctx, w, s, pg)
		if !errors.Is(err, errPortTaken) || attempt == portAttempts {
			break
		}
	}
	if err == nil && r.cg != nil {
		err = r.cg.place(s.n, s.bdrd.cmd.Process.Pid)
	}
	return err
}

// startSiteBdrdOnce starts the site's bdrd on free addresses, with proxies
// to them; when bdrd finds one taken (errPortTaken), the proxies go too.
func (r *wanRun) startSiteBdrdOnce(ctx context.Context, w *wan, s *site, pg string) error {
	listen, err := freePorts()
	if err != nil {
		return err
	}
	var proxies []string
	defer func() {
		if err != nil {
			w.drop(proxies...)
		}
	}()
	for i, svc := range []string{"admin", "gossip", "raft"} {
		var a string
		if a, err = w.add(s.n, svc, listen[i], svc == "gossip"); err != nil {
			return err
		}
		proxies = append(proxies, a)
	}
	s.admin = proxies[0]
	var env []string
	if r.cg != nil {
		// As on a machine with the site's CPUs: bdrd starts outside the
		// site's cpuset (it is moved in once it runs), and the Go runtime
		// would size itself to every CPU of this one.
		cpus, _ := parseCPUList(r.cg.siteCPUs(s.n))
		env = []string{fmt.Sprintf("GOMAXPROCS=%d", max(len(cpus), 1))}
	}
	s.bdrd, err = startBdrdAt(ctx, r.cfg.Bdrd, s.name, s.server.DSN("bench"), filepath.Join(r.dir, s.name), listen, env,
		"--public-dsn", proxyDSN(pg, "bench"), "--admin-advertise", s.admin,
		"--gossip-advertise", proxies[1], "--raft-advertise", proxies[2])
	return err
}

// startServer starts a PostgreSQL server of site, with the benchmark's
// settings, and moves it into the site's cgroups: the postmaster, then
// the processes it has forked so far; those it forks later (every
// connection's backend) are born there.
func (r *wanRun) startServer(ctx context.Context, site int, opts pgcluster.Options) (*pgcluster.Server, error) {
	opts.Dir, opts.Settings = r.cfg.Dir, serverSettings(r.cfg.Fsync)
	s, err := pgcluster.Start(ctx, opts)
	if err != nil || r.cg == nil {
		return s, err
	}
	if err := r.cg.placeTree(site, s.PID()); err != nil {
		return nil, errors.Join(err, s.Remove())
	}
	return s, nil
}

// waitStreaming waits until the group has all its n*(n-1) streams
// streaming and every member up (gossip crosses the WAN too), as the
// member at c sees them.
func waitStreaming(ctx context.Context, c *adminapi.Client, n int) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var last []string
	for {
		st, err := c.Status(ctx, true)
		if err == nil {
			last = last[:0]
			up := 0
			for _, s := range st.Streams {
				if s.State == "streaming" {
					up++
				} else {
					last = append(last, fmt.Sprintf("stream %s->%s %s %s", s.From, s.To, s.State, s.LastError))
				}
			}
			for _, m := range st.Nodes {
				if m.Live != "up" {
					last = append(last, fmt.Sprintf("member %s %q", m.Name, m.Live))
				}
			}
			if up == n*(n-1) && len(last) == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the group is not all up and streaming: %s (%v)", strings.Join(last, "; "), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitQuiet waits until, on every node, every logical slot has been
// confirmed up to where the WAL was when the wait began.
func waitQuiet(ctx context.Context, nodes []hbNode, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, n := range nodes {
		var end string
		conn, err := pgx.Connect(ctx, n.dsn)
		if err != nil {
			return fmt.Errorf("%s: %w", n.name, err)
		}
		err = conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&end)
		conn.Close(context.Background())
		if err != nil {
			return fmt.Errorf("%s: %w", n.name, err)
		}
		const behind = `SELECT count(*) = 0 FROM pg_replication_slots
			WHERE slot_type = 'logical' AND (confirmed_flush_lsn IS NULL OR confirmed_flush_lsn < '%s'::pg_lsn)`
		if err := waitFor(ctx, n.dsn, fmt.Sprintf(behind, end)); err != nil {
			return fmt.Errorf("waiting for the slots of %s to be confirmed up to %s: %w", n.name, end, err)
		}
	}
	return nil
}
