package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/catalog"
	"github.com/bdr-dev/bdr/internal/pgcluster"
	"github.com/bdr-dev/bdr/internal/proc"
)

// JoinConfig configures the join benchmark.
type JoinConfig struct {
	Bdrd     string    // bdrd binary
	Scale    int       // pgbench scale of the group's database
	Clients  int       // pgbench clients on each member during the join
	Rate     int       // pgbench transactions a second on each member (0: as fast as it goes)
	Dir      string    // parent directory for the servers ("" = temp)
	Progress io.Writer // progress lines; nil = none
	// CopyWorkers is the most sessions the measured join copies the rows
	// with (0: bdrd's --copy-workers).
	CopyWorkers int
}

// Validate checks the configuration.
func (c JoinConfig) Validate() error {
	switch {
	case c.Bdrd == "":
		return errors.New("bench join: the bdrd binary is required (--bdrd)")
	case c.Scale < 1 || c.Clients < 1 || c.Rate < 0 || c.CopyWorkers < 0:
		return errors.New("bench join: scale and clients must be at least 1, the rate and copy workers not negative")
	}
	if _, err := os.Stat(c.Bdrd); err != nil {
		return fmt.Errorf("bench join: bdrd binary: %w", err)
	}
	return nil
}

// JoinResult is what the join benchmark measured.
type JoinResult struct {
	DatabaseBytes   int64         `json:"database_bytes"`
	Join            time.Duration `json:"join_ns"`              // bdrctl join, admitted to caught up, under load
	Copy            time.Duration `json:"copy_ns"`              // of which the row copy
	CopySessions    int           `json:"copy_sessions"`        // in that many sessions
	DumpRestore     time.Duration `json:"dump_restore_ns"`      // pg_dump | psql, same servers, same load
	PgbenchTxns     int64         `json:"pgbench_transactions"` // committed on the members during the join
	JoinerPeakRSS   int64         `json:"joiner_bdrd_peak_rss_bytes"`
	CopiedRows      int64         `json:"copied_rows"`
	CopiedTextBytes int64         `json:"copied_bytes"`
	// JoinerConflicts is how many conflicts the joiner recorded while it
	// caught up (bdr.conflict_history).
	JoinerConflicts int64 `json:"joiner_conflicts"`
}

// Ratio is the join time over the dump and restore time.
func (r JoinResult) Ratio() float64 { return r.Join.Seconds() / r.DumpRestore.Seconds() }

// Report is the result as a table.
func (r JoinResult) Report() string {
	return fmt.Sprintf(`join of a third node onto a group holding %d MB, pgbench running on both members
  bdrctl join (admitted to caught up)  %8.2fs   (row copy %.2fs, %s: %d rows, %d MB of COPY text)
  pg_dump | psql                       %8.2fs
  ratio join/dump-restore: %.2f   joiner bdrd peak RSS: %d MB   pgbench transactions during the join: %d
  conflicts the joiner recorded while catching up: %d
`, r.DatabaseBytes>>20, r.Join.Seconds(), r.Copy.Seconds(), sessions(r.CopySessions), r.CopiedRows, r.CopiedTextBytes>>20,
		r.DumpRestore.Seconds(), r.Ratio(), r.JoinerPeakRSS>>20, r.PgbenchTxns, r.JoinerConflicts)
}

func sessions(n int) string {
	if n == 1 {
		return "1 session"
	}
	return fmt.Sprintf("%d sessions", n)
}

// RunJoin measures a join under write load against pg_dump | psql of
// the same database between the same servers: a group of two members
// (pgbench scale cfg.Scale, the second joined through the first), pgbench
// on both, a third node joins through the second; then, with pgbench still
// running, the second member's database is dumped and restored into a new
// database on the third node's server.
func RunJoin(ctx context.Context, cfg JoinConfig) (JoinResult, error) {
	if err := cfg.Validate(); err != nil {
		return JoinResult{}, err
	}
	say := func(format string, args ...any) {
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, "bench: "+format+"\n", args...)
		}
	}
	settings := map[string]string{"shared_buffers": "256MB", "max_wal_size": "8GB", "checkpoint_timeout": "30min",
		"maintenance_work_mem": "256MB"}
	say("starting three PostgreSQL servers")
	var servers [3]*pgcluster.Server
	for i := range servers {
		s, err := pgcluster.Start(ctx, pgcluster.Options{Dir: cfg.Dir, Settings: settings})
		if err != nil {
			return JoinResult{}, err
		}
		defer s.Remove()
		if err := s.CreateDatabase(ctx, "bench"); err != nil {
			return JoinResult{}, err
		}
		servers[i] = s
	}
	a, b, c := servers[0], servers[1], servers[2]
	if err := c.CreateDatabase(ctx, "restored"); err != nil {
		return JoinResult{}, err
	}

	say("loading pgbench scale %d on the first member", cfg.Scale)
	if err := run(ctx, a.Command(ctx, "pgbench", "-i", "-q", "-s", strconv.Itoa(cfg.Scale), "bench")); err != nil {
		return JoinResult{}, err
	}
	dir, err := os.MkdirTemp(cfg.Dir, "bench-bdrd")
	if err != nil {
		return JoinResult{}, err
	}
	defer os.RemoveAll(dir)
	var nodes [3]*bdrdProc
	for i, name := range []string{"a", "b", "c"} {
		n, err := startBdrd(ctx, cfg.Bdrd, name, servers[i].DSN("bench"), filepath.Join(dir, name))
		if err != nil {
			return JoinResult{}, err
		}
		defer n.stop()
		nodes[i] = n
	}
	say("bdrd: init on the first member, join of the second")
	if _, err := nodes[0].client.Init(ctx); err != nil {
		return JoinResult{}, err
	}
	if err := nodes[1].client.JoinAndWait(ctx, adminapi.JoinRequest{Via: nodes[0].admin}, 200*time.Millisecond, nil); err != nil {
		return JoinResult{}, fmt.Errorf("join of the second member: %w", err)
	}
	var res JoinResult
	if err := queryInt(ctx, b.DSN("bench"), `SELECT pg_database_size(current_database())`, &res.DatabaseBytes); err != nil {
		return JoinResult{}, err
	}

	say("pgbench: %d clients on each member (rate %d/s each, 0 = unlimited)", cfg.Clients, cfg.Rate)
	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var loadErr error
	before := make([]int64, 2)
	for i, s := range []*pgcluster.Server{a, b} {
		if err := queryInt(ctx, s.DSN("bench"), `SELECT count(*) FROM pgbench_history`, &before[i]); err != nil {
			return JoinResult{}, err
		}
		args := []string{"-n", "-c", strconv.Itoa(cfg.Clients), "-j", strconv.Itoa(min(cfg.Clients, 4)), "-T", "86400"}
		if cfg.Rate > 0 {
			args = append(args, "-R", strconv.Itoa(cfg.Rate))
		}
		wg.Go(func() {
			out, err := s.Command(lctx, "pgbench", append(args, "bench")...).CombinedOutput()
			if err != nil && lctx.Err() == nil {
				mu.Lock()
				loadErr = fmt.Errorf("pgbench: %v: %s", err, out)
				mu.Unlock()
			}
		})
	}
	time.Sleep(5 * time.Second)

	say("join of the third node through the second, under load")
	start := time.Now()
	var last adminapi.JoinProgress
	err = nodes[2].client.JoinAndWait(ctx, adminapi.JoinRequest{Via: nodes[1].admin, CopyWorkers: cfg.CopyWorkers}, 200*time.Millisecond, func(jp adminapi.JoinProgress) {
		if jp.Phase != last.Phase || (jp.Message != last.Message && jp.Phase != adminapi.PhaseCatchingUp) {
			say("join at %6.1fs: %s: %s", time.Since(start).Seconds(), jp.Phase, jp.Message)
		}
		last = jp
	})
	if err != nil {
		return JoinResult{}, fmt.Errorf("join of the third node: %w", err)
	}
	res.Join = time.Since(start)
	if b, err := os.ReadFile(filepath.Join(dir, "c.log")); err == nil {
		// The joiner's log outlives the benchmark's directory.
		keep := filepath.Join(os.TempDir(), "bench-join-joiner.log")
		if os.WriteFile(keep, b, 0o644) == nil {
			say("the joiner's bdrd log: %s", keep)
		}
	}
	if jp, err := nodes[2].client.JoinProgress(ctx); err == nil && jp.Copy != nil {
		for _, t := range jp.Copy.Tables {
			res.CopiedRows += t.Rows
			res.CopiedTextBytes += t.Bytes
		}
		res.Copy, res.CopySessions = copyTime(jp), jp.Copy.Sessions
	}
	if err := queryInt(ctx, c.DSN("bench"), `SELECT count(*) FROM bdr.conflict_history`, &res.JoinerConflicts); err != nil {
		return JoinResult{}, err
	}
	if res.JoinerPeakRSS, err = proc.PeakRSS(nodes[2].cmd.Process.Pid); err != nil {
		return JoinResult{}, err
	}
	for i, s := range []*pgcluster.Server{a, b} {
		var n int64
		if err := queryInt(ctx, s.DSN("bench"), `SELECT count(*) FROM pgbench_history`, &n); err != nil {
			return JoinResult{}, err
		}
		res.PgbenchTxns += n - before[i]
	}

	say("pg_dump | psql of the second member's database into a new one on the third server, under the same load")
	start = time.Now()
	// Plain SQL through psql, without bdr's triggers (the restored
	// database has no schema bdr): the same work as pg_dump -Fc |
	// pg_restore without -j.
	dump := b.Command(ctx, "pg_dump", "--exclude-schema=bdr", "--no-publications", "--no-owner", "bench")
	restore := c.Command(ctx, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "restored")
	dumpOut, err := dump.StdoutPipe()
	if err != nil {
		return JoinResult{}, err
	}
	restoreIn, err := restore.StdinPipe()
	if err != nil {
		return JoinResult{}, err
	}
	if err := restore.Start(); err != nil {
		return JoinResult{}, err
	}
	if err := dump.Start(); err != nil {
		_ = restoreIn.Close()
		_ = restore.Wait()
		return JoinResult{}, fmt.Errorf("pg_dump: %w", err)
	}
	copyErr := catalog.CopyDump(restoreIn, dumpOut, false)
	_ = restoreIn.Close()
	dumpErr, restoreErr := dump.Wait(), restore.Wait()
	switch {
	case dumpErr != nil:
		return JoinResult{}, fmt.Errorf("pg_dump: %w", dumpErr)
	case restoreErr != nil:
		return JoinResult{}, fmt.Errorf("psql: %w", restoreErr)
	case copyErr != nil:
		return JoinResult{}, fmt.Errorf("pg_dump | psql: %w", copyErr)
	}
	res.DumpRestore = time.Since(start)

	stopLoad()
	wg.Wait()
	if loadErr != nil {
		return JoinResult{}, loadErr
	}
	return res, nil
}

func queryInt(ctx context.Context, dsn, sql string, out *int64) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.QueryRow(ctx, sql).Scan(out)
}

// copyTime is how long the row copy of a join took, from its progress.
func copyTime(jp adminapi.JoinProgress) time.Duration {
	if jp.Copy == nil || !jp.Copy.Done {
		return 0
	}
	return jp.Copy.Finished.Sub(jp.Copy.Started)
}
