package pgtest_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/pgcluster"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, 2)) }

func TestParallelDatabases(t *testing.T) {
	for _, server := range []int{0, 0, 1} {
		t.Run("server", func(t *testing.T) {
			t.Parallel()
			s := pgtest.Shared(t, server)
			_, dsn := pgtest.NewDB(t, s)
			pgtest.Exec(t, dsn, `CREATE TABLE t (id int PRIMARY KEY, v text)`)
			pgtest.Exec(t, dsn, `INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, $1::int) g`, 100)
			var n int
			if err := pgtest.Conn(t, dsn).QueryRow(t.Context(), `SELECT count(*) FROM t`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 100 {
				t.Fatalf("count = %d, want 100", n)
			}
		})
	}
}

func TestUniqueName(t *testing.T) {
	valid := regexp.MustCompile(`^[a-z][a-z0-9_]{0,30}$`)
	seen := map[string]bool{}
	for _, prefix := range []string{"node", "", "9lives", "Node-A", strings.Repeat("long", 20)} {
		for range 3 {
			name := pgtest.UniqueName(t, prefix)
			if !valid.MatchString(name) {
				t.Errorf("UniqueName(%q) = %q: not a valid name", prefix, name)
			}
			if seen[name] {
				t.Errorf("UniqueName(%q) = %q: already returned", prefix, name)
			}
			seen[name] = true
		}
	}
}

func TestPrivateSurvivesCrashes(t *testing.T) {
	// A long parent dir: the Unix socket must go elsewhere, and the dir,
	// 0700 like every t.TempDir, must become traversable by postgres.
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	s := pgtest.Private(t, pgcluster.Options{Dir: dir, Settings: map[string]string{"max_connections": "20"}})
	_, dsn := pgtest.NewDB(t, s)
	pgtest.Exec(t, dsn, `CREATE TABLE t (id int PRIMARY KEY)`)
	ctx := t.Context()

	steps := []struct {
		name string
		stop func() error
	}{
		{"kill", s.Kill},
		{"immediate", func() error { return s.ImmediateStop(ctx) }},
		{"fast", func() error { return s.Stop(ctx) }},
	}
	for i, step := range steps {
		pgtest.Exec(t, dsn, `INSERT INTO t VALUES ($1)`, i)
		port := s.Port()
		if err := step.stop(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if s.Running() {
			t.Fatalf("%s: still running", step.name)
		}
		if err := s.Restart(ctx); err != nil {
			t.Fatalf("restart after %s: %v", step.name, err)
		}
		if s.Port() != port {
			t.Fatalf("port changed from %d to %d", port, s.Port())
		}
		var n int
		if err := pgtest.Conn(t, dsn).QueryRow(ctx, `SELECT count(*) FROM t`).Scan(&n); err != nil {
			t.Fatalf("after %s: %v", step.name, err)
		}
		if n != i+1 {
			t.Fatalf("after %s: %d rows, want %d", step.name, n, i+1)
		}
	}
}

func TestStartFailureShowsLog(t *testing.T) {
	if _, err := pgcluster.BinDir(); err != nil {
		t.Skip(err)
	}
	start := time.Now()
	s, err := pgcluster.Start(t.Context(), pgcluster.Options{Dir: t.TempDir(), Settings: map[string]string{"shared_buffers": "lots"}})
	if err == nil {
		s.Remove()
		t.Fatal("server started with a bad setting")
	}
	if !strings.Contains(err.Error(), "shared_buffers") {
		t.Errorf("error does not show the log: %v", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("failure took %s, want fail fast", d)
	}
}

func TestCommand(t *testing.T) {
	t.Parallel()
	s := pgtest.Shared(t, 1)
	name, _ := pgtest.NewDB(t, s)
	out, err := s.Command(t.Context(), "psql", "-XAtc", "SELECT current_database()", name).CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v: %s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != name {
		t.Fatalf("psql printed %q, want %q", got, name)
	}
}

func TestWaitFor(t *testing.T) {
	t.Parallel()
	start := time.Now()
	pgtest.WaitFor(t, 5*time.Second, "100ms to pass", func() (bool, error) {
		return time.Since(start) > 100*time.Millisecond, nil
	})
}

func TestDropDatabaseWithSlot(t *testing.T) {
	t.Parallel()
	s := pgtest.Shared(t, 0)
	name, dsn := pgtest.NewDB(t, s)
	slot := pgtest.UniqueName(t, "slot")
	pgtest.Exec(t, dsn, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := s.DropDatabase(ctx, name); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := pgtest.Conn(t, s.DSN("postgres")).QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("slot %s survived its database", slot)
	}
}
