// Package daemon wires bdrd together: configuration, logger, metrics
// registry, the local database checks, the apply manager, the membership
// service and the admin API. It holds no replication logic. It is a package
// (not main) so tests and benchmarks run sidecars in-process.
//
// Concurrency: Start returns a running Daemon; Stop may be called from any
// goroutine, once.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/bdr-dev/bdr/apply"
	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/catalog"
	"github.com/bdr-dev/bdr/internal/state"
	"github.com/bdr-dev/bdr/membership"
)

// Version is bdrd's version.
const Version = "0.1.0"

// SettingsError lists the server settings bdrd cannot run with.
type SettingsError struct{ Problems []catalog.Problem }

func (e *SettingsError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Daemon is a running bdrd.
type Daemon struct {
	addr   string
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// Start checks the local database, prepares the bdr schema and starts the
// streams and the admin API. It returns once the admin API listens.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("node", cfg.NodeName)

	if err := checkDatabase(ctx, cfg.DSN); err != nil {
		return nil, err
	}
	store, err := state.Open(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = store.Close()
		}
	}()
	if err := checkIdentity(ctx, store, cfg); err != nil {
		return nil, err
	}
	pool, err := pgxpool.New(ctx, cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("connect to the local database: %s", membership.RedactDSN(err.Error()))
	}
	defer func() {
		if !ok {
			pool.Close()
		}
	}()

	ln, err := adminapi.Listen(cfg.AdminListen)
	if err != nil {
		return nil, fmt.Errorf("admin api: %w", err)
	}
	addr := ln.Addr().String()
	advertise := cfg.AdminAdvertise
	if advertise == "" {
		advertise = addr
	}

	reg := prometheus.NewRegistry()
	// Every series says which node it is from.
	wrapped := prometheus.WrapRegistererWith(prometheus.Labels{"node": cfg.NodeName}, reg)
	wrapped.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mgr, err := apply.New(apply.Config{
		Local:          apply.Local{Name: cfg.NodeName, DSN: cfg.DSN},
		DataDir:        cfg.DataDir,
		Binary:         cfg.Binary,
		ErrorRetry:     cfg.ErrorRetry,
		LockTimeout:    cfg.ApplyLockTimeout,
		TombstoneEvery: cfg.TombstoneEvery,
		Logger:         log,
		Registry:       wrapped,
		WriteStatus: func(ctx context.Context, s []catalog.StreamStatus) error {
			return catalog.WriteStreamStatus(ctx, pool, s)
		},
	})
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	svc, err := membership.New(membership.Config{
		NodeName: cfg.NodeName, DSN: cfg.DSN, PublicDSN: cfg.PublicDSN, AdminAddr: advertise,
		PGBinDir: pgBinDir(cfg.PGBinDir), Version: Version, DataDir: cfg.DataDir,
		GossipListen: cfg.GossipListen, GossipAdvertise: cfg.GossipAdvertise,
		RaftListen: cfg.RaftListen, RaftAdvertise: cfg.RaftAdvertise, KeyFile: cfg.GossipKeyFile,
		MaxPeerWAL: int64(cfg.MaxPeerWAL), OnWALBudget: cfg.OnWALBudget, MaxClockSkew: cfg.MaxClockSkew,
		Logger: log, Registry: wrapped, Clock: cfg.Clock,
		GossipTransport: cfg.GossipTransport, Dial: cfg.Dial, JoinStepDelay: joinStepDelay(),
		CopyWorkers: cfg.CopyWorkers, CopyPart: copyPart(),
	}, pool, store, mgr)
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	srv := adminapi.NewServer(addr, adminapi.NewHandler(svc, promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}), log,
		adminapi.Auth{Operator: cfg.AdminToken, Internal: svc.InternalToken, Open: cfg.AdminToken == ""}))

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d := &Daemon{addr: addr, cancel: cancel, done: make(chan struct{})}
	g, gctx := errgroup.WithContext(runCtx)
	g.Go(func() error { return mgr.Run(gctx) })
	g.Go(func() error { return svc.Run(gctx) })
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("admin api: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		return srv.Shutdown(sctx)
	})
	go func() {
		d.err = g.Wait()
		pool.Close()
		_ = store.Close()
		close(d.done)
	}()
	ok = true
	log.Info("bdrd started", "admin", addr, "version", Version)
	return d, nil
}

// AdminAddr is the address the admin API listens on.
func (d *Daemon) AdminAddr() string { return d.addr }

// Stop stops the daemon and waits for it.
func (d *Daemon) Stop() error {
	d.cancel()
	<-d.done
	return d.err
}

// Done is closed when the daemon has stopped (by Stop or by a failure).
func (d *Daemon) Done() <-chan struct{} { return d.done }

// Err is the error the daemon stopped with, after Done.
func (d *Daemon) Err() error { return d.err }

// checkDatabase connects, checks the server settings and installs or
// upgrades the bdr schema.
func checkDatabase(ctx context.Context, dsn string) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, dsn)
	if err != nil {
		return fmt.Errorf("cannot connect to the local database: %s", membership.RedactDSN(err.Error()))
	}
	defer func() { _ = conn.Close(context.Background()) }()
	_, problems, err := catalog.CheckServer(cctx, conn)
	if err != nil {
		return err
	}
	if len(problems) > 0 {
		return &SettingsError{Problems: problems}
	}
	return catalog.Migrate(cctx, conn)
}

// checkIdentity refuses a data dir or database that belongs to another node.
func checkIdentity(ctx context.Context, store *state.Store, cfg Config) error {
	var id state.Identity
	ok, err := store.Get(state.KeyIdentity, &id)
	if err != nil {
		return err
	}
	if ok && id.Name != cfg.NodeName {
		return fmt.Errorf("data dir %s belongs to node %q, not %q", cfg.DataDir, id.Name, cfg.NodeName)
	}
	conn, err := pgx.Connect(ctx, cfg.DSN)
	if err != nil {
		return fmt.Errorf("cannot connect to the local database: %s", membership.RedactDSN(err.Error()))
	}
	defer func() { _ = conn.Close(context.Background()) }()
	local, ok, err := catalog.LocalNode(ctx, conn)
	if err != nil {
		return err
	}
	if ok && local.Name != cfg.NodeName {
		return fmt.Errorf("the database belongs to node %q, not %q", local.Name, cfg.NodeName)
	}
	return nil
}

// pgBinDir finds pg_dump: the flag, pg_config --bindir, or PATH.
func pgBinDir(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		return strings.TrimSpace(string(out))
	}
	if p, err := exec.LookPath("pg_dump"); err == nil {
		return filepath.Dir(p)
	}
	return ""
}

// joinStepDelay is a fault-injection aid for tests, from
// $BDRD_TEST_JOIN_STEP_DELAY: how long a join lingers at the start of each
// of its phases, so that a test can kill a process in a given phase.
func joinStepDelay() time.Duration {
	d, _ := time.ParseDuration(os.Getenv("BDRD_TEST_JOIN_STEP_DELAY"))
	return d
}

// copyPart is, for tests, from $BDRD_TEST_COPY_PART (bytes): the least a
// session of a join's row copy takes at a time, lowered so that a small
// database is copied in parallel. 0: membership.DefaultCopyPart.
func copyPart() int64 {
	n, _ := strconv.ParseInt(os.Getenv("BDRD_TEST_COPY_PART"), 10, 64)
	return max(n, 0)
}
