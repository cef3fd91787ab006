package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bdr-dev/bdr/internal/pgcluster"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, 1)) }

// runBdrd runs bdrd with args and returns its exit status and stderr. It
// must be a case that makes bdrd exit (not one that starts it).
func runBdrd(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var stderr bytes.Buffer
	code := run(args, &stderr)
	return code, stderr.String()
}

func assertOneLine(t *testing.T, out string) {
	t.Helper()
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "bdrd: ") {
		t.Errorf("want one line starting with \"bdrd: \", got %q", out)
	}
}

// TestBadInput checks that every kind of bad input is refused with one clear
// line, a non-zero exit, and nothing created.
func TestBadInput(t *testing.T) {
	s := pgtest.Shared(t, 0)
	_, dsn := pgtest.NewDB(t, s)
	dir := t.TempDir()
	cfgFile := func(body string) string {
		p := filepath.Join(t.TempDir(), "bdrd.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	dataDir := filepath.Join(dir, "data")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown config key", []string{"--config", cfgFile("node_name: a\nbogus: 1\n")}, `unknown key "bogus"`},
		{"config not yaml", []string{"--config", cfgFile("node_name: [\n")}, "config"},
		{"missing config file", []string{"--config", filepath.Join(dir, "nope.yaml")}, "no such file"},
		{"no node name", []string{"--dsn", dsn, "--data-dir", dataDir}, "--node-name is required"},
		{"bad node name", []string{"--node-name", "Bad-Name", "--dsn", dsn, "--data-dir", dataDir}, "--node-name \"Bad-Name\" is invalid"},
		{"bad admin address", []string{"--node-name", "a", "--dsn", dsn, "--data-dir", dataDir, "--admin-listen", "nonsense"}, "--admin-listen \"nonsense\" is invalid"},
		{"bad log level", []string{"--node-name", "a", "--dsn", dsn, "--data-dir", dataDir, "--log-level", "loud"}, "--log-level"},
		{"bad dsn", []string{"--node-name", "a", "--dsn", "port=notanumber", "--data-dir", dataDir}, "--dsn is invalid"},
		{"no data dir", []string{"--node-name", "a", "--dsn", dsn}, "--data-dir is required"},
		{"admin API without a token", []string{"--node-name", "a", "--dsn", dsn, "--data-dir", dataDir, "--admin-listen", "0.0.0.0:7801"},
			"the admin API at 0.0.0.0:7801 needs --admin-token-file"},
		{"unreachable dsn", []string{"--node-name", "a", "--dsn", "host=127.0.0.1 port=1 user=postgres password=s3cret dbname=x",
			"--data-dir", dataDir, "--admin-insecure-loopback"}, "cannot connect to the local database"},
		{"unknown flag", []string{"--frobnicate"}, "flag provided but not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := runBdrd(t, tt.args...)
			if code == 0 {
				t.Fatalf("exit 0 for bad input; stderr %q", out)
			}
			if !strings.Contains(out, tt.want) {
				t.Errorf("stderr %q does not say %q", out, tt.want)
			}
			if strings.Contains(out, "s3cret") {
				t.Errorf("the password leaked into the message: %q", out)
			}
			if tt.name != "unknown flag" { // the flag package adds its usage
				assertOneLine(t, out)
			}
			if _, err := os.Stat(dataDir); err == nil {
				t.Errorf("data dir %s was created", dataDir)
			}
		})
	}
	// Nothing was installed in the database either.
	conn := pgtest.Conn(t, dsn)
	var schema bool
	if err := conn.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'bdr')`).Scan(&schema); err != nil || schema {
		t.Errorf("schema bdr exists after refused starts (%v)", err)
	}
}

// TestWrongServerSettings starts bdrd against a server that is not set up
// for logical replication: it refuses with one line per setting and its fix.
func TestWrongServerSettings(t *testing.T) {
	s := pgtest.Private(t, pgcluster.Options{Settings: map[string]string{
		"wal_level": "replica", "track_commit_timestamp": "off", "max_replication_slots": "2",
	}})
	_, dsn := pgtest.NewDB(t, s)
	dataDir := filepath.Join(t.TempDir(), "data")
	code, out := runBdrd(t, "--node-name", "a", "--dsn", dsn, "--data-dir", dataDir, "--admin-insecure-loopback")
	if code == 0 {
		t.Fatal("bdrd accepted a server without wal_level = logical")
	}
	for _, want := range []string{
		"wal_level is replica: set wal_level = logical",
		"track_commit_timestamp is off: set track_commit_timestamp = on",
		"max_replication_slots is 2: set max_replication_slots to at least",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(strings.TrimSpace(out), "\n"); n != 3 {
		t.Errorf("want a header and one line per wrong setting (4 lines), got:\n%s", out)
	}
	if _, err := os.Stat(dataDir); err == nil {
		t.Error("data dir created although bdrd refused to start")
	}
}
