package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/bdr-dev/bdr/bench"
)

// benchWAN runs `bdrctl bench wan`.
func benchWAN(ctx context.Context, fs *flag.FlagSet, args []string, bdrd, dir *string, asJSON *bool, stdout, stderr io.Writer) error {
	cfg := bench.WANConfig{Progress: stderr}
	fs.IntVar(&cfg.Nodes, "nodes", 2, "sites of the multi-master group")
	fs.DurationVar(&cfg.Shape.RTT, "rtt", 77*time.Millisecond, "round trip between sites (each direction gets half)")
	fs.DurationVar(&cfg.Shape.Jitter, "jitter", 0, "jitter on each direction's delay (+/-)")
	bandwidth := fs.String("bandwidth", "160mbit", "bandwidth of each link, each way (e.g. 160mbit, 1gbit; 0: unlimited)")
	fs.IntVar(&cfg.Scale, "scale", 10, "pgbench scale")
	fs.IntVar(&cfg.Clients, "clients", 10, "pgbench clients (at each site in mm-both)")
	fs.IntVar(&cfg.Rate, "rate", 0, "pgbench transactions a second at each site, pgbench -R (0: as fast as it goes); latencies then include waiting for the schedule")
	fs.DurationVar(&cfg.Duration, "duration", 60*time.Second, "pgbench duration of each mode")
	modes := fs.String("modes", strings.Join(bench.AllModes, ","), "modes to run, comma separated")
	out := fs.String("out", "", "directory for a Markdown report, charts and the JSON result")
	seed := fs.Bool("compare-seed", false, "also print the figures next to PGECons 2016's Tokyo-Singapore ones")
	fs.StringVar(&cfg.SiteCPUs, "site-cpus", bench.SiteCPUsAuto, "CPUs of each site, as if each were a machine of its own (cgroup v1 cpusets): auto (split this machine's CPUs, when cgroups allow), off (shared), or a cpuset per site separated by / (0/1, 0-1/2-3); the baseline runs on site 1's")
	fs.IntVar(&cfg.SiteWeight, "site-weight", 10, "with site CPUs, each site and bdrctl weigh as much as this many other processes of the machine on the CPUs (cgroup v1 cpu.shares; 0: no weight)")
	fs.IntVar(&cfg.Rounds, "rounds", 0, "baseline and mm-local take turns in this many rounds of --duration/rounds each, so that both meet the machine alike (0: rounds of about 10s, at most 6)")
	fs.BoolVar(&cfg.Fsync, "fsync", false, "servers flush their WAL at commit (fsync and full_page_writes on, PostgreSQL's defaults); off, commits cost CPU only: the sites share this machine's disk, and one site's flushes would slow the others'")
	procs := fs.Int("gomaxprocs", 1, "GOMAXPROCS of bdrctl, which runs the WAN links and the heartbeat (0: every CPU)")
	if err := parse(fs, args[1:], 0); err != nil {
		return err
	}
	if *procs < 0 {
		return usageError{"--gomaxprocs must not be negative"}
	}
	// The links' proxies hand every chunk between goroutines: spread over
	// every CPU, the Go scheduler's hand-offs between threads cost several
	// times the CPU the links need (on a 2-CPU machine, 30-45% of a CPU
	// against 10-18% on one thread), CPU the sites lose.
	if *procs > 0 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(*procs))
	}
	bw, err := bench.ParseBandwidth(*bandwidth)
	if err != nil {
		return usageError{"--" + err.Error()}
	}
	cfg.Shape.Bandwidth = bw
	cfg.Modes = nil
	for _, m := range strings.Split(*modes, ",") {
		if m = strings.TrimSpace(m); m != "" {
			cfg.Modes = append(cfg.Modes, m)
		}
	}
	cfg.Bdrd, cfg.Dir = *bdrd, *dir
	if err := cfg.Validate(); err != nil {
		return usageError{err.Error()}
	}
	res, err := bench.RunWAN(ctx, cfg)
	if err != nil {
		return err
	}
	js, err := json.MarshalIndent(map[string]any{"result": res, "targets": res.Targets()}, "", "  ")
	if err != nil {
		return err
	}
	if *out != "" {
		if err := res.WriteReport(*out, "bdrctl bench wan "+strings.Join(args[1:], " "), js); err != nil {
			return fmt.Errorf("report in %s: %w", *out, err)
		}
		fmt.Fprintf(stderr, "bench: report in %s/report.md\n", *out)
	}
	if *asJSON {
		_, err = fmt.Fprintf(stdout, "%s\n", js)
		return err
	}
	report := res.Report()
	if *seed {
		report += "\n" + res.CompareSeed()
	}
	_, err = io.WriteString(stdout, report)
	return err
}

// benchSites runs `bdrctl bench pgbench` against an existing group.
func benchSites(ctx context.Context, fs *flag.FlagSet, args []string, asJSON *bool, stdout, stderr io.Writer) error {
	cfg := bench.SitesConfig{Progress: stderr}
	fs.StringVar(&cfg.Admin, "node", defaultNode(), "admin address of a member")
	tokenFile := fs.String("token-file", os.Getenv("BDRCTL_TOKEN_FILE"), "file holding the admin token")
	fs.StringVar(&cfg.Target, "target", "", "member pgbench writes to (default: the one at --node)")
	fs.IntVar(&cfg.Clients, "clients", 10, "pgbench clients")
	fs.IntVar(&cfg.Rate, "rate", 0, "pgbench transactions a second, pgbench -R (0: as fast as it goes); latencies then include waiting for the schedule")
	fs.DurationVar(&cfg.Duration, "duration", 60*time.Second, "pgbench duration")
	fs.BoolVar(&cfg.Init, "init", false, "create the pgbench tables on every member and load them through the target (replaces them)")
	fs.IntVar(&cfg.Scale, "scale", 10, "pgbench scale, with --init")
	out := fs.String("out", "", "directory for a Markdown report, a chart and the JSON result")
	if err := parse(fs, args[1:], 0); err != nil {
		return err
	}
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "token-file" })
	tok, err := adminToken(*tokenFile, explicit)
	if err != nil {
		return err
	}
	cfg.Token = tok
	if err := cfg.Validate(); err != nil {
		return usageError{err.Error()}
	}
	res, err := bench.RunSites(ctx, cfg)
	if unauthorized(err) {
		return tokenError{cfg.Admin}
	}
	if err != nil {
		return err
	}
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if *out != "" {
		if err := res.WriteReport(*out, "bdrctl bench pgbench "+strings.Join(args[1:], " "), js); err != nil {
			return fmt.Errorf("report in %s: %w", *out, err)
		}
		fmt.Fprintf(stderr, "bench: report in %s/report.md\n", *out)
	}
	if *asJSON {
		_, err = fmt.Fprintf(stdout, "%s\n", js)
		return err
	}
	_, err = io.WriteString(stdout, res.Report())
	return err
}
