package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/catalog"
	"github.com/bdr-dev/bdr/internal/pgcluster"
	"github.com/bdr-dev/bdr/internal/proc"
)

// ApplyConfig configures the apply benchmark.
type ApplyConfig struct {
	Bdrd     string        // bdrd binary
	Scale    int           // pgbench scale
	Clients  int           // pgbench clients
	Duration time.Duration // pgbench run
	Dir      string        // parent directory for the servers ("" = temp)
	Progress io.Writer     // progress lines; nil = none
	// Conflicts, when set, makes nearly every transaction a conflict: after
	// the publisher's pgbench, this many pgbench transactions run on the
	// subscriber's databases (each client touching every branch and teller
	// there), so the publisher's later updates of those rows meet local
	// versions that are newer. bdrd detects, decides (the local version
	// wins) and records each; native logical replication overwrites.
	Conflicts int
}

// Validate checks the configuration.
func (c ApplyConfig) Validate() error {
	switch {
	case c.Bdrd == "":
		return errors.New("bench apply: the bdrd binary is required (--bdrd)")
	case c.Scale < 1 || c.Clients < 1 || c.Duration < time.Second:
		return errors.New("bench apply: scale and clients must be at least 1 and the duration at least 1s")
	case c.Conflicts < 0:
		return errors.New("bench apply: --conflicts must not be negative")
	}
	if _, err := os.Stat(c.Bdrd); err != nil {
		return fmt.Errorf("bench apply: bdrd binary: %w", err)
	}
	return nil
}

// ApplyResult is what the apply benchmark measured.
type ApplyResult struct {
	Transactions int64         `json:"transactions"`
	Rows         int64         `json:"rows"`
	Native       time.Duration `json:"native_catch_up_ns"`
	Bdrd         time.Duration `json:"bdrd_catch_up_ns"`
	BdrdPeakRSS  int64         `json:"bdrd_peak_rss_bytes"`
	// LocalTxns is how many pgbench transactions ran on the subscriber
	// (--conflicts); Conflicts how many conflicts bdrd recorded catching up.
	LocalTxns int64 `json:"local_transactions,omitempty"`
	Conflicts int64 `json:"conflicts,omitempty"`
}

// Ratio is bdrd's apply rate over native logical replication's.
func (r ApplyResult) Ratio() float64 { return r.Native.Seconds() / r.Bdrd.Seconds() }

// Report is the result as a table.
func (r ApplyResult) Report() string {
	rate := func(d time.Duration) string {
		return fmt.Sprintf("%10.0f txn/s %10.0f rows/s", float64(r.Transactions)/d.Seconds(), float64(r.Rows)/d.Seconds())
	}
	s := fmt.Sprintf(`catch-up of %d pgbench transactions (%d rows) written while replication was paused
  native logical replication  %8.2fs  %s
  bdrd                        %8.2fs  %s
  ratio bdrd/native: %.2f   bdrd peak RSS: %d MB
`, r.Transactions, r.Rows, r.Native.Seconds(), rate(r.Native), r.Bdrd.Seconds(), rate(r.Bdrd), r.Ratio(), r.BdrdPeakRSS>>20)
	if r.LocalTxns > 0 {
		s += fmt.Sprintf("  with %d local pgbench transactions on the subscriber after them: bdrd recorded %d conflicts\n",
			r.LocalTxns, r.Conflicts)
	}
	return s
}

// RunApply measures how fast bdrd and PostgreSQL's own logical replication
// catch up on the same changes: two servers on this machine; with both kinds
// of replication paused, pgbench runs on the publisher; then each catches up
// in turn, timed until a marker committed after pgbench is visible on the
// subscriber.
func RunApply(ctx context.Context, cfg ApplyConfig) (ApplyResult, error) {
	if err := cfg.Validate(); err != nil {
		return ApplyResult{}, err
	}
	say := func(format string, args ...any) {
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, "bench: "+format+"\n", args...)
		}
	}
	settings := map[string]string{"shared_buffers": "256MB", "max_wal_size": "4GB", "checkpoint_timeout": "30min"}
	say("starting two PostgreSQL servers")
	pub, err := pgcluster.Start(ctx, pgcluster.Options{Dir: cfg.Dir, Settings: settings})
	if err != nil {
		return ApplyResult{}, err
	}
	defer pub.Remove()
	sub, err := pgcluster.Start(ctx, pgcluster.Options{Dir: cfg.Dir, Settings: settings})
	if err != nil {
		return ApplyResult{}, err
	}
	defer sub.Remove()
	for _, db := range []struct {
		s    *pgcluster.Server
		name string
	}{{pub, "bench"}, {sub, "native"}, {sub, "bdr"}} {
		if err := db.s.CreateDatabase(ctx, db.name); err != nil {
			return ApplyResult{}, err
		}
	}

	say("loading pgbench scale %d on the publisher", cfg.Scale)
	if err := run(ctx, pub.Command(ctx, "pgbench", "-i", "-q", "-s", strconv.Itoa(cfg.Scale), "bench")); err != nil {
		return ApplyResult{}, err
	}
	if err := exec1(ctx, pub.DSN("bench"), `CREATE TABLE bench_marker (id int PRIMARY KEY)`); err != nil {
		return ApplyResult{}, err
	}

	// bdrd: the publisher's node, and the subscriber's joined through it,
	// which copies the data; then the subscriber's bdrd stops.
	dir, err := os.MkdirTemp(cfg.Dir, "bench-bdrd")
	if err != nil {
		return ApplyResult{}, err
	}
	defer os.RemoveAll(dir)
	p, err := startBdrd(ctx, cfg.Bdrd, "p", pub.DSN("bench"), filepath.Join(dir, "p"))
	if err != nil {
		return ApplyResult{}, err
	}
	defer p.stop()
	s, err := startBdrd(ctx, cfg.Bdrd, "s", sub.DSN("bdr"), filepath.Join(dir, "s"))
	if err != nil {
		return ApplyResult{}, err
	}
	defer s.stop()
	say("bdrd: init on the publisher, join of the subscriber")
	if _, err := p.client.Init(ctx); err != nil {
		return ApplyResult{}, err
	}
	if err := s.client.JoinAndWait(ctx, adminapi.JoinRequest{Via: p.admin}, 100*time.Millisecond, nil); err != nil {
		return ApplyResult{}, err
	}
	s.stop()

	// Native: a publication of the pgbench tables and a subscription that
	// copies them, then is disabled.
	say("native: subscription with initial copy")
	if err := exec1(ctx, pub.DSN("bench"), `CREATE PUBLICATION native_pub FOR TABLE pgbench_accounts, pgbench_branches,
		pgbench_tellers, pgbench_history, bench_marker`); err != nil {
		return ApplyResult{}, err
	}
	// The schema without bdr's triggers: the native database has no
	// schema bdr.
	schema, err := pub.Command(ctx, "pg_dump", "--schema-only", "--no-publications", "--exclude-schema=bdr", "bench").Output()
	if err != nil {
		return ApplyResult{}, fmt.Errorf("pg_dump: %w", err)
	}
	restore := sub.Command(ctx, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "native")
	restore.Stdin = strings.NewReader(catalog.FilterDump(string(schema), false))
	if out, err := restore.CombinedOutput(); err != nil {
		return ApplyResult{}, fmt.Errorf("psql: %w: %s", err, strings.TrimSpace(string(out)))
	}
	subscribe := fmt.Sprintf(`CREATE SUBSCRIPTION native_sub CONNECTION '%s' PUBLICATION native_pub`,
		strings.ReplaceAll(pub.DSN("bench"), "'", "''"))
	if err := exec1(ctx, sub.DSN("native"), subscribe); err != nil {
		return ApplyResult{}, err
	}
	if err := waitFor(ctx, sub.DSN("native"), `SELECT count(*) = 0 FROM pg_subscription_rel WHERE srsubstate <> 'r'`); err != nil {
		return ApplyResult{}, err
	}
	if err := exec1(ctx, sub.DSN("native"), `ALTER SUBSCRIPTION native_sub DISABLE`); err != nil {
		return ApplyResult{}, err
	}

	say("pgbench: %d clients for %s on the publisher, replication paused", cfg.Clients, cfg.Duration)
	out, err := output(ctx, pub.Command(ctx, "pgbench", "-n", "-c", strconv.Itoa(cfg.Clients), "-j", strconv.Itoa(min(cfg.Clients, 4)),
		"-T", strconv.Itoa(int(cfg.Duration.Seconds())), "bench"))
	if err != nil {
		return ApplyResult{}, err
	}
	var res ApplyResult
	m := regexp.MustCompile(`number of transactions actually processed: (\d+)`).FindStringSubmatch(out)
	if m == nil {
		return ApplyResult{}, fmt.Errorf("pgbench output has no transaction count:\n%s", out)
	}
	res.Transactions, _ = strconv.ParseInt(m[1], 10, 64)
	res.Rows = 4 * res.Transactions // three updates and one insert each
	if err := exec1(ctx, pub.DSN("bench"), `INSERT INTO bench_marker VALUES (1)`); err != nil {
		return ApplyResult{}, err
	}
	if cfg.Conflicts > 0 {
		say("pgbench: %d transactions on each subscriber database, newer than the publisher's", cfg.Conflicts)
		perClient := max(1, cfg.Conflicts/cfg.Clients)
		for _, db := range []string{"native", "bdr"} {
			if err := run(ctx, sub.Command(ctx, "pgbench", "-n", "-c", strconv.Itoa(cfg.Clients),
				"-t", strconv.Itoa(perClient), db)); err != nil {
				return ApplyResult{}, err
			}
		}
		res.LocalTxns = int64(perClient * cfg.Clients)
	}

	say("native: catching up")
	start := time.Now()
	if err := exec1(ctx, sub.DSN("native"), `ALTER SUBSCRIPTION native_sub ENABLE`); err != nil {
		return ApplyResult{}, err
	}
	if err := waitFor(ctx, sub.DSN("native"), `SELECT count(*) = 1 FROM bench_marker`); err != nil {
		return ApplyResult{}, err
	}
	res.Native = time.Since(start)
	if err := exec1(ctx, sub.DSN("native"), `ALTER SUBSCRIPTION native_sub DISABLE`); err != nil {
		return ApplyResult{}, err
	}

	say("bdrd: catching up")
	start = time.Now()
	s, err = startBdrd(ctx, cfg.Bdrd, "s", sub.DSN("bdr"), filepath.Join(dir, "s"))
	if err != nil {
		return ApplyResult{}, err
	}
	defer s.stop()
	if err := waitFor(ctx, sub.DSN("bdr"), `SELECT count(*) = 1 FROM bench_marker`); err != nil {
		return ApplyResult{}, err
	}
	res.Bdrd = time.Since(start)
	if res.BdrdPeakRSS, err = proc.PeakRSS(s.cmd.Process.Pid); err != nil {
		return ApplyResult{}, err
	}
	if cfg.Conflicts > 0 {
		if err := queryInt(ctx, sub.DSN("bdr"), `SELECT count(*) FROM bdr.conflict_history`, &res.Conflicts); err != nil {
			return ApplyResult{}, err
		}
	}
	return res, nil
}

// bdrdProc is a bdrd started by the benchmark.
type bdrdProc struct {
	cmd    *exec.Cmd
	done   chan struct{} // closed when the process has exited
	admin  string
	client *adminapi.Client
}

// freePort returns a free loopback TCP address.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// errPortTaken is bdrd exiting at start because one of the addresses it
// was to listen on was taken between freePort and its bind: the caller
// tries again with new ones.
var errPortTaken = errors.New("one of its addresses was taken")

// startBdrd starts bdrd with its admin API on loopback without a token
// (the benchmark is alone on this host) and its own gossip and consensus
// ports.
func startBdrd(ctx context.Context, bin, name, dsn, dataDir string) (*bdrdProc, error) {
	for attempt := 1; ; attempt++ {
		addrs, err := freePorts()
		if err != nil {
			return nil, err
		}
		b, err := startBdrdAt(ctx, bin, name, dsn, dataDir, addrs, nil)
		if !errors.Is(err, errPortTaken) || attempt == portAttempts {
			return b, err
		}
	}
}

// portAttempts is how many times a bdrd is started with new addresses
// when one was taken.
const portAttempts = 5

// freePorts returns three free loopback addresses (admin, gossip, raft).
func freePorts() ([3]string, error) {
	var addrs [3]string
	for i := range addrs {
		a, err := freePort()
		if err != nil {
			return addrs, err
		}
		addrs[i] = a
	}
	return addrs, nil
}

// startBdrdAt starts bdrd with its admin API, gossip and consensus on the
// given addresses, in that order, extra environment variables and extra
// flags.
func startBdrdAt(ctx context.Context, bin, name, dsn, dataDir string, addrs [3]string, env []string, extra ...string) (*bdrdProc, error) {
	admin := addrs[0]
	logf, err := os.Create(dataDir + ".log")
	if err != nil {
		return nil, err
	}
	args := []string{"--node-name", name, "--dsn", dsn, "--admin-listen", admin, "--admin-insecure-loopback",
		"--gossip-listen", addrs[1], "--raft-listen", addrs[2], "--data-dir", dataDir}
	cmd := exec.Command(bin, append(args, extra...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start bdrd: %w", err)
	}
	b := &bdrdProc{cmd: cmd, done: make(chan struct{}), admin: admin, client: adminapi.NewClient(admin, time.Minute)}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(b.done)
	}()
	for {
		if _, err := b.client.Info(ctx); err == nil {
			return b, nil
		}
		select {
		case <-b.done:
			if log, _ := os.ReadFile(dataDir + ".log"); bytes.Contains(log, []byte("address already in use")) {
				return nil, fmt.Errorf("bdrd %s exited at start: %w; see %s.log", name, errPortTaken, dataDir)
			}
			return nil, fmt.Errorf("bdrd %s exited at start; see %s.log", name, dataDir)
		case <-ctx.Done():
			b.stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop stops bdrd with SIGTERM, or SIGKILL after 30 s.
func (b *bdrdProc) stop() {
	select {
	case <-b.done:
		return
	default:
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(30 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.done
	}
}

func run(ctx context.Context, cmd *exec.Cmd) error {
	_, err := output(ctx, cmd)
	return err
}

func output(_ context.Context, cmd *exec.Cmd) (string, error) {
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %v: %s", filepath.Base(cmd.Path), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func exec1(ctx context.Context, dsn, sql string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", strings.Fields(sql)[0], err)
	}
	return nil
}

// waitFor polls a boolean query every 20 ms until it is true.
func waitFor(ctx context.Context, dsn, sql string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for {
		var ok bool
		if err := conn.QueryRow(ctx, sql).Scan(&ok); err != nil {
			return fmt.Errorf("wait: %w", err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
