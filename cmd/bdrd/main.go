// Command bdrd is the bdr sidecar: it runs next to one PostgreSQL node,
// streams every peer's changes into it and serves the admin API that
// bdrctl talks to.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/bdr-dev/bdr/cmd/bdrd/daemon"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	cfg, err := daemon.ParseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "bdrd: %s\n", oneLine(err))
		return 2
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	d, err := daemon.Start(ctx, cfg, log)
	if err != nil {
		var se *daemon.SettingsError
		if errors.As(err, &se) {
			fmt.Fprintln(stderr, "bdrd: PostgreSQL is not set up for bdr:")
			for _, line := range strings.Split(se.Error(), "\n") {
				fmt.Fprintf(stderr, "bdrd:   %s\n", line)
			}
			return 1
		}
		fmt.Fprintf(stderr, "bdrd: %s\n", oneLine(err))
		return 1
	}
	select {
	case <-ctx.Done():
		log.Info("stopping")
		if err := d.Stop(); err != nil {
			fmt.Fprintf(stderr, "bdrd: %v\n", err)
			return 1
		}
		log.Info("stopped")
		return 0
	case <-d.Done():
		fmt.Fprintf(stderr, "bdrd: %v\n", d.Err())
		return 1
	}
}

// oneLine folds a multi-line error (pgconn lists every address it tried)
// into one line.
func oneLine(err error) string {
	lines := strings.Split(strings.TrimSpace(err.Error()), "\n")
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return strings.Join(lines, " ")
}
