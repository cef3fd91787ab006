package pgtest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/pgcluster"
)

// startTimeout bounds starting (initdb and startup) one server.
const startTimeout = 2 * time.Minute

// sharedSet is what Main started for the package.
type sharedSet struct {
	servers []*pgcluster.Server
	logs    []*os.File
	skip    string // why tests needing a server are skipped; "" if they are not
	err     error  // why the servers could not be started
}

// shared is set once by Main before the tests run.
var shared atomic.Pointer[sharedSet]

// Main starts n shared servers in parallel, runs the tests and removes the
// servers. Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, 2)) }
//
// Failing to start the servers fails every test that asks for one with
// [Shared]; tests that do not use a server still run.
func Main(m *testing.M, n int) int {
	if Fuzzing() {
		return m.Run() // fuzz targets need no server; every worker runs this
	}
	set := startShared(n)
	shared.Store(set)
	if set.err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", set.err)
	}
	code := m.Run()

	var wg sync.WaitGroup
	errs := make([]error, len(set.servers))
	for i, s := range set.servers {
		if s == nil {
			continue
		}
		wg.Go(func() { errs[i] = s.Remove() })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	for i, f := range set.logs {
		if f == nil {
			continue
		}
		f.Close()
		if _, leaked := leakedSecret(f.Name()); leaked {
			fmt.Fprintf(os.Stderr, "pgtest: the log of shared server %d shows a password, token or key the tests handed out\n", i)
			code = 1
		}
		if code == 0 {
			os.Remove(f.Name())
		} else {
			fmt.Fprintf(os.Stderr, "pgtest: log of shared server %d: %s\n", i, f.Name())
		}
	}
	return code
}

// Fuzzing reports whether the test binary runs for go test -fuzz, as the
// coordinator or as one of its workers: a TestMain then skips expensive
// setup the fuzz targets do not use.
func Fuzzing() bool {
	if !flag.Parsed() {
		flag.Parse()
	}
	fuzz, worker := flag.Lookup("test.fuzz"), flag.Lookup("test.fuzzworker")
	return fuzz != nil && fuzz.Value.String() != "" || worker != nil && worker.Value.String() == "true"
}

func startShared(n int) *sharedSet {
	set := &sharedSet{servers: make([]*pgcluster.Server, n), logs: make([]*os.File, n)}
	if _, err := pgcluster.BinDir(); err != nil {
		set.skip = fmt.Sprintf("no PostgreSQL binaries: %v", err)
		return set
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			f, err := os.CreateTemp("", fmt.Sprintf("pgtest-shared%d-*.log", i))
			if err != nil {
				errs[i] = fmt.Errorf("create log of shared server %d: %w", i, err)
				return
			}
			set.logs[i] = f
			s, err := pgcluster.Start(ctx, pgcluster.Options{LogOutput: f})
			if err != nil {
				errs[i] = fmt.Errorf("start shared server %d: %w", i, err)
				return
			}
			set.servers[i] = s
		})
	}
	wg.Wait()
	set.err = errors.Join(errs...)
	return set
}

// Shared returns the i-th server started by [Main]. It skips the test when
// PostgreSQL binaries cannot be found and fails it when the servers could not
// be started. Shared servers must stay up: tests that stop or crash a server
// use [Private].
func Shared(t testing.TB, i int) *pgcluster.Server {
	t.Helper()
	set := shared.Load()
	switch {
	case set == nil:
		t.Fatal("pgtest.Shared: the package's TestMain must call pgtest.Main")
	case set.skip != "":
		t.Skip(set.skip)
	case set.err != nil:
		t.Fatalf("shared servers did not start: %v", set.err)
	case i < 0 || i >= len(set.servers):
		t.Fatalf("pgtest.Shared(%d): pgtest.Main started %d servers", i, len(set.servers))
	}
	s := set.servers[i]
	if !s.Running() {
		t.Fatalf("shared server %d (port %d) is not running; log: %s", i, s.Port(), set.logs[i].Name())
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log of shared server %d (port %d): %s", i, s.Port(), set.logs[i].Name())
		}
	})
	return s
}

// Private starts a server for this test alone, for tests that stop, crash or
// restart it; it is removed when the test ends. Unless opts.LogOutput is set,
// its log goes to a file whose path is printed if the test fails.
func Private(t testing.TB, opts pgcluster.Options) *pgcluster.Server {
	t.Helper()
	if _, err := pgcluster.BinDir(); err != nil {
		t.Skipf("no PostgreSQL binaries: %v", err)
	}
	var logFile *os.File
	if opts.LogOutput == nil {
		f, err := os.CreateTemp("", "pgtest-private-*.log")
		if err != nil {
			t.Fatalf("create server log: %v", err)
		}
		logFile, opts.LogOutput = f, f
	}
	closeLog := func() {
		if logFile == nil {
			return
		}
		logFile.Close()
		if _, leaked := leakedSecret(logFile.Name()); leaked {
			t.Errorf("the log of a private server shows a password, token or key the tests handed out")
		}
		if t.Failed() {
			t.Logf("log of private server: %s", logFile.Name())
		} else {
			os.Remove(logFile.Name())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	s, err := pgcluster.Start(ctx, opts)
	if err != nil {
		t.Cleanup(closeLog)
		t.Fatalf("start private server: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Remove(); err != nil {
			t.Errorf("remove private server: %v", err)
		}
		closeLog()
	})
	return s
}
