package pgtest

import (
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/pgcluster"
	"github.com/jackc/pgx/v5"
)

// opTimeout bounds one helper operation (connect, create, drop, exec).
const opTimeout = time.Minute

// names numbers the names made by UniqueName.
var names atomic.Uint64

// maxName is the longest name UniqueName returns.
const maxName = 31

// UniqueName returns a name unique within the test process, made of prefix
// (lowercased, other characters than [a-z0-9_] replaced by '_', truncated)
// and a counter, matching [a-z][a-z0-9_]{0,30}. Use it for objects that are
// server-wide, like databases, roles and replication slots.
func UniqueName(t testing.TB, prefix string) string {
	t.Helper()
	suffix := "_" + strconv.FormatUint(names.Add(1), 36)
	var b strings.Builder
	for _, r := range strings.ToLower(prefix) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	p := b.String()
	if p == "" || p[0] < 'a' || p[0] > 'z' {
		p = "n" + p
	}
	if room := maxName - len(suffix); len(p) > room {
		p = p[:room]
	}
	return p + suffix
}

// NewDB creates a fresh database on s and returns its name and DSN. The
// database is dropped when the test ends, with its replication slots and
// WITH (FORCE), unless the server is no longer running.
func NewDB(t testing.TB, s *pgcluster.Server) (name, dsn string) {
	t.Helper()
	name = UniqueName(t, "db")
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := s.CreateDatabase(ctx, name); err != nil {
		t.Fatalf("new database: %v", err)
	}
	t.Cleanup(func() {
		if !s.Running() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if err := s.DropDatabase(ctx, name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return name, s.DSN(name)
}

// Conn connects to dsn; the connection is closed when the test ends.
func Conn(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to %q: %v", dsn, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		conn.Close(ctx)
	})
	return conn
}

// withConn runs fn on a new connection to dsn, failing the test when it
// cannot connect or fn fails.
func withConn(t testing.TB, dsn, sql string, fn func(ctx context.Context, conn *pgx.Conn) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to %q: %v", dsn, err)
	}
	defer conn.Close(ctx)
	if err := fn(ctx, conn); err != nil {
		t.Fatalf("%q: %v", sql, err)
	}
}

// Exec runs sql with args on a new connection to dsn and fails the test on
// error.
func Exec(t testing.TB, dsn, sql string, args ...any) {
	t.Helper()
	withConn(t, dsn, sql, func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, sql, args...)
		return err
	})
}

// Scan runs a query returning one row on a new connection to dsn and scans
// it into dest, failing the test on error.
func Scan(t testing.TB, dsn, sql string, args []any, dest ...any) {
	t.Helper()
	withConn(t, dsn, sql, func(ctx context.Context, conn *pgx.Conn) error {
		return conn.QueryRow(ctx, sql, args...).Scan(dest...)
	})
}

// QueryRow runs a query returning one row on a new connection to dsn and
// scans it into dest; unlike Scan it returns the error, for polling from
// goroutines other than the test's.
func QueryRow(ctx context.Context, dsn, sql string, args []any, dest ...any) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return conn.QueryRow(ctx, sql, args...).Scan(dest...)
}

// WaitFor polls cond until it returns true, failing the test if that does
// not happen within timeout. An error from cond does not stop the polling
// (the condition may depend on something not there yet); the last one is
// reported on failure. what describes the condition for the failure message.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	wait := 10 * time.Millisecond
	var lastErr error
	for {
		ok, err := cond()
		if ok && err == nil {
			return
		}
		if err != nil {
			lastErr = err
		}
		if time.Now().After(deadline) {
			took := time.Since(start).Round(time.Millisecond)
			dump := dumpGoroutines(t)
			if lastErr != nil {
				t.Fatalf("timed out after %s waiting for %s (last error: %v)%s", took, what, lastErr, dump)
			}
			t.Fatalf("timed out after %s waiting for %s%s", took, what, dump)
		}
		time.Sleep(wait)
		wait = min(2*wait, 250*time.Millisecond)
	}
}

// dumpGoroutines writes the stacks of every goroutine of the test process
// (in-process bdrd included) to a file, so that a wait that timed out can be
// explained afterwards; it returns a note naming the file.
func dumpGoroutines(t testing.TB) string {
	f, err := os.CreateTemp("", "bdr-goroutines-*.txt")
	if err != nil {
		return ""
	}
	defer f.Close()
	fmt.Fprintf(f, "%s at %s\n\n", t.Name(), time.Now().Format(time.RFC3339Nano))
	if err := pprof.Lookup("goroutine").WriteTo(f, 2); err != nil {
		return ""
	}
	return "; goroutines: " + f.Name()
}

// Strings runs a query returning one text column on a new connection to dsn
// and returns its rows, failing the test on error.
func Strings(t testing.TB, dsn, sql string, args ...any) []string {
	t.Helper()
	var out []string
	withConn(t, dsn, sql, func(ctx context.Context, conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, sql, args...)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	return out
}
