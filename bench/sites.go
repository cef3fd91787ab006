package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/pgcluster"
)

// SitesConfig configures the benchmark against an existing group (real
// sites): pgbench from this host against one member, the lag heartbeat
// between every pair of members.
type SitesConfig struct {
	Admin    string // admin API address of a member
	Token    string // admin token ("" for none)
	Target   string // the member pgbench writes to; "" = the one at Admin
	Scale    int    // pgbench scale, for Init
	Clients  int
	Rate     int // pgbench transactions a second; 0 = as fast as it goes
	Duration time.Duration
	// Init creates the pgbench tables on every member and loads them on
	// the target (they replicate to the others), replacing any there.
	Init          bool
	Progress      io.Writer
	ProgressEvery time.Duration
}

// Validate checks the configuration and fills defaults.
func (c *SitesConfig) Validate() error {
	switch {
	case c.Admin == "":
		return errors.New("bench pgbench: --node ADDR (a member's admin API) is required")
	case c.Scale < 1 || c.Clients < 1 || c.Rate < 0:
		return errors.New("bench pgbench: --scale and --clients must be at least 1 and --rate not negative")
	case c.Duration < time.Second || c.Duration%time.Second != 0:
		return errors.New("bench pgbench: --duration must be a whole number of seconds, at least 1s")
	}
	if c.ProgressEvery <= 0 {
		c.ProgressEvery = 5 * time.Second
	}
	return nil
}

// SitesResult is what the benchmark against an existing group measured.
type SitesResult struct {
	Nodes       []string   `json:"nodes"`
	Target      string     `json:"target"`
	Scale       int        `json:"scale,omitempty"` // when loaded by this run
	Clients     int        `json:"clients"`
	Rate        int        `json:"rate,omitempty"`
	DurationSec float64    `json:"duration_s"`
	Started     time.Time  `json:"started"`
	Run         ModeResult `json:"run"`
}

// Report is the result as tables.
func (r SitesResult) Report() string {
	var b strings.Builder
	fmt.Fprintf(&b, "pgbench %d clients%s, %gs, from this host to %s; group: %s\n", r.Clients, rateText(r.Rate), r.DurationSec, r.Target, strings.Join(r.Nodes, ", "))
	b.WriteString("lag: heartbeat committed on each member every 100 ms, polled on each other member from this host;\n" +
		"both times on this host's clock, each corrected by half its connection's round trip (the members' clocks do not matter)\n\n")
	modeTable(&b, []ModeResult{r.Run})
	modeDetails(&b, []ModeResult{r.Run}, false)
	if len(r.Run.LagPairs) > 0 {
		b.WriteString("\n")
		tw := newTable(&b)
		fmt.Fprintln(tw, "FROM\tTO\tSAMPLES\tLAG P50 ms\tP99 ms\tMAX ms\tUNSEEN\t")
		for _, p := range r.Run.LagPairs {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%.1f\t%.1f\t%.1f\t%d\t\n", p.From, p.To, p.Samples, p.P50, p.P99, p.Max, p.Unseen)
		}
		_ = tw.Flush()
	}
	return b.String()
}

// RunSites runs pgbench from this host against a member of an existing
// group and measures the lag between every pair of members, with the
// members' DSNs as their bdrd advertise them (this host must reach them).
func RunSites(ctx context.Context, cfg SitesConfig) (SitesResult, error) {
	if err := cfg.Validate(); err != nil {
		return SitesResult{}, err
	}
	say := func(format string, args ...any) {
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, "bench: "+format+"\n", args...)
		}
	}
	pgbench, err := findPgbench()
	if err != nil {
		return SitesResult{}, err
	}
	st, err := adminapi.NewClient(cfg.Admin, 30*time.Second).WithToken(cfg.Token).Status(ctx, true)
	if err != nil {
		return SitesResult{}, fmt.Errorf("status of the group at %s: %w", cfg.Admin, err)
	}
	res := SitesResult{Target: cmp.Or(cfg.Target, st.Node.Name), Clients: cfg.Clients, Rate: cfg.Rate, DurationSec: cfg.Duration.Seconds(), Started: time.Now().UTC()}
	var nodes []hbNode
	target := -1
	for _, n := range st.Nodes {
		if n.State != "active" {
			continue
		}
		if n.Name == res.Target {
			target = len(nodes)
		}
		nodes = append(nodes, hbNode{site: len(nodes) + 1, name: n.Name, dsn: n.PublicDSN})
		res.Nodes = append(res.Nodes, n.Name)
	}
	switch {
	case target < 0:
		return res, fmt.Errorf("bench pgbench: %s is not an active member (members: %s)", res.Target, strings.Join(res.Nodes, ", "))
	case len(nodes) < 2:
		return res, errors.New("bench pgbench: the group has fewer than two active members")
	}
	if cfg.Init {
		res.Scale = cfg.Scale
		if err := initSites(ctx, pgbench, nodes, nodes[target], cfg.Scale, say); err != nil {
			return res, err
		}
	} else if err := execAll(ctx, nodes, `SELECT 1 FROM pgbench_branches LIMIT 1`); err != nil {
		return res, fmt.Errorf("the pgbench tables are missing (run with --init to create and load them): %w", err)
	}
	if err := execAll(ctx, nodes, heartbeatDDL); err != nil {
		return res, err
	}
	dir, err := os.MkdirTemp("", "bench-pgbench")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	mr := measurer{pgbench: pgbench, dir: dir, clients: cfg.Clients, rate: cfg.Rate, duration: cfg.Duration, every: cfg.ProgressEvery, progress: cfg.Progress}
	res.Run, err = mr.measure(ctx, measurement{mode: "pgbench", who: "this host -> " + res.Target,
		loads: []load{{site: nodes[target].site, dsn: nodes[target].dsn}}, hbFrom: nodes, hbTo: nodes, bdr: nodes})
	return res, err
}

// initSites makes the pgbench tables (empty, with their keys) on every
// member, since DDL does not replicate, then loads them on the target
// only: the rows replicate to the others, which it waits for.
func initSites(ctx context.Context, pgbench string, nodes []hbNode, target hbNode, scale int, say func(string, ...any)) error {
	for _, n := range nodes {
		say("init: pgbench tables on %s", n.name)
		if err := run(ctx, exec.CommandContext(ctx, pgbench, "-i", "-q", "-I", "dtp", "-s", strconv.Itoa(scale), n.dsn)); err != nil {
			return fmt.Errorf("init on %s: %w", n.name, err)
		}
	}
	say("init: loading scale %d on %s", scale, target.name)
	if err := run(ctx, exec.CommandContext(ctx, pgbench, "-i", "-q", "-I", "gv", "-s", strconv.Itoa(scale), target.dsn)); err != nil {
		return fmt.Errorf("init on %s: %w", target.name, err)
	}
	want := fmt.Sprintf(`SELECT count(*) = %d FROM pgbench_accounts`, scale*100000)
	for _, n := range nodes {
		say("init: waiting for the rows on %s", n.name)
		if err := waitFor(ctx, n.dsn, want); err != nil {
			return fmt.Errorf("init: rows on %s: %w", n.name, err)
		}
	}
	return nil
}

// findPgbench is the pgbench of the local PostgreSQL, else the one on PATH.
func findPgbench() (string, error) {
	if bin, err := pgcluster.BinDir(); err == nil {
		if p := filepath.Join(bin, "pgbench"); fileExists(p) {
			return p, nil
		}
	}
	p, err := exec.LookPath("pgbench")
	if err != nil {
		return "", errors.New("bench pgbench: pgbench not found (install PostgreSQL's client programs or set PG_BINDIR)")
	}
	return p, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
