package daemon

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/membership"
)

func TestParseArgs(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "bdrd.yaml")
	if err := os.WriteFile(file, []byte(`
node_name: tokyo
dsn: host=127.0.0.1 dbname=app
data_dir: /var/lib/bdrd
admin_listen: 127.0.0.1:7900
admin_insecure_loopback: true
log_level: debug
raft_listen: 127.0.0.1:7947
max_peer_wal: 512MB
on_wal_budget: alert
max_clock_skew: 250ms
apply_lock_timeout: 5s
copy_workers: 2
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseArgs([]string{"--config", file, "--admin-listen", "127.0.0.1:7999"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{NodeName: "tokyo", DSN: "host=127.0.0.1 dbname=app", PublicDSN: "host=127.0.0.1 dbname=app",
		AdminListen: "127.0.0.1:7999", DataDir: "/var/lib/bdrd", LogLevel: "debug", ErrorRetry: time.Minute,
		AdminInsecureLoopback: true, GossipListen: DefaultGossipListen, GossipKeyFile: "/var/lib/bdrd/group.key",
		RaftListen: "127.0.0.1:7947", MaxPeerWAL: 512 << 20, OnWALBudget: "alert", MaxClockSkew: 250 * time.Millisecond,
		ApplyLockTimeout: 5 * time.Second, TombstoneEvery: 30 * time.Second, CopyWorkers: 2}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("ParseArgs =\n%+v\nwant (the flag wins over the file, public dsn defaults to dsn)\n%+v", cfg, want)
	}
	cfg, err = ParseArgs([]string{"--node-name", "a", "--dsn", "dbname=x", "--data-dir", dir, "--admin-insecure-loopback"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AdminListen != DefaultAdminListen || cfg.LogLevel != "info" || cfg.MaxPeerWAL != 16<<30 ||
		cfg.OnWALBudget != "part" || cfg.RaftAdvertise == "" || cfg.MaxClockSkew != time.Second || cfg.CopyWorkers != membership.DefaultCopyWorkers() {
		t.Fatalf("defaults: %+v", cfg)
	}
	if _, err := ParseArgs([]string{"--config", file, "--log-level", "loud"}, io.Discard); err == nil {
		t.Fatal("a bad flag value over a good file was accepted")
	}
	for _, bad := range [][]string{{"--max-peer-wal", "lots"}, {"--max-peer-wal", "5PB"}, {"--on-wal-budget", "ignore"},
		{"--raft-listen", "nowhere"}, {"--max-clock-skew", "soon"}, {"--max-clock-skew", "-1s"}, {"--max-clock-skew", "1us"},
		{"--copy-workers", "-1"}, {"--copy-workers", "33"}} {
		if _, err := ParseArgs(append([]string{"--config", file}, bad...), io.Discard); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	var size ByteSize
	for in, want := range map[string]ByteSize{"16GB": 16 << 30, "512 MB": 512 << 20, "1048576": 1 << 20, "2kB": 2048} {
		if err := size.Set(in); err != nil || size != want {
			t.Errorf("ByteSize(%q) = %d, %v; want %d", in, size, err, want)
		}
	}
}

// TestAdminToken: the admin API needs a token unless it is a Unix socket,
// or loopback with --admin-insecure-loopback; the token never shows.
func TestAdminToken(t *testing.T) {
	dir := t.TempDir()
	file := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const secret = "s3cret-admin-token"
	good := file("token", "\n  "+secret+"\n")
	base := []string{"--node-name", "a", "--dsn", "dbname=x", "--data-dir", dir}
	tests := []struct {
		name  string
		args  []string
		token string // want, when there is no error
		err   string // want in the error
	}{
		{"token file", []string{"--admin-token-file", good}, secret, ""},
		{"token file on every interface", []string{"--admin-token-file", good, "--admin-listen", "0.0.0.0:7801"}, secret, ""},
		{"token file and the loopback flag", []string{"--admin-token-file", good, "--admin-insecure-loopback"}, secret, ""},
		{"token file in the config file", []string{"--config", file("tok.yaml", "admin_token_file: "+good+"\n")}, secret, ""},
		{"unix socket", []string{"--admin-listen", "unix:" + filepath.Join(dir, "a.sock")}, "", ""},
		{"loopback flag", []string{"--admin-insecure-loopback"}, "", ""},
		{"loopback flag, localhost", []string{"--admin-insecure-loopback", "--admin-listen", "localhost:7801"}, "", ""},
		{"loopback flag, ipv6", []string{"--admin-insecure-loopback", "--admin-listen", "[::1]:7801"}, "", ""},
		{"loopback flag in the config file", []string{"--config", file("lo.yaml", "admin_insecure_loopback: true\n")}, "", ""},
		{"nothing", nil, "", "the admin API at 127.0.0.1:7801 needs --admin-token-file (or --admin-insecure-loopback on a loopback address)"},
		{"loopback flag on every interface", []string{"--admin-insecure-loopback", "--admin-listen", "0.0.0.0:7801"}, "",
			"the admin API at 0.0.0.0:7801 needs --admin-token-file"},
		{"loopback flag, empty host", []string{"--admin-insecure-loopback", "--admin-listen", ":7801"}, "", "the admin API at :7801 needs"},
		{"loopback flag, another host", []string{"--admin-insecure-loopback", "--admin-listen", "10.1.2.3:7801"}, "", "needs --admin-token-file"},
		{"missing token file", []string{"--admin-token-file", filepath.Join(dir, "nope")}, "", "--admin-token-file " + filepath.Join(dir, "nope") + ": no such file"},
		{"empty token file", []string{"--admin-token-file", file("empty", " \n\t\n")}, "", "empty"},
		{"huge token file", []string{"--admin-token-file", file("huge", strings.Repeat("x", 4097))}, "", "larger than 4 KiB"},
		{"two-line token file", []string{"--admin-token-file", file("two", secret+"\n"+secret+"\n")}, "", "printable ASCII"},
		{"bad loopback flag in the config file", []string{"--config", file("bad.yaml", "admin_insecure_loopback: yes please\n")}, "",
			"admin_insecure_loopback must be true or false"},
		{"empty unix path", []string{"--admin-listen", "unix:"}, "", `--admin-listen "unix:" is invalid`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseArgs(append(append([]string{}, base...), tt.args...), io.Discard)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "\n") {
					t.Errorf("error %q shows the token or spans lines", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.AdminToken != tt.token {
				t.Errorf("AdminToken = %q, want %q", cfg.AdminToken, tt.token)
			}
		})
	}
	if len(strings.Repeat("x", maxTokenSize)) != 4096 {
		t.Fatal("the limit is 4 KiB")
	}
	if _, err := ParseArgs(append(base, "--admin-token-file", file("max", strings.Repeat("x", 4096))), io.Discard); err != nil {
		t.Errorf("a token of exactly 4 KiB: %v", err)
	}
}

// TestConfigRedacted: printing or logging a Config shows neither the admin
// token nor DSN passwords.
func TestConfigRedacted(t *testing.T) {
	cfg := Config{NodeName: "tokyo", DSN: "host=db password=pg-s3cret dbname=app",
		PublicDSN: "postgres://bdr:url-s3cret@db/app", AdminListen: DefaultAdminListen, AdminToken: "tok-s3cret"}
	var out bytes.Buffer
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%d", "%x", "%T"} {
		fmt.Fprintf(&out, verb+"\n", cfg)
		fmt.Fprintf(&out, verb+"\n", &cfg)
	}
	slog.New(slog.NewTextHandler(&out, nil)).Info("config", "cfg", cfg)
	slog.New(slog.NewJSONHandler(&out, nil)).Info("config", "cfg", cfg)
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out.Write(b)
	if s := out.String(); strings.Contains(s, "s3cret") {
		t.Errorf("a secret shows:\n%s", s)
	}
	if s := out.String(); !strings.Contains(s, "tokyo") || !strings.Contains(s, "[redacted]") {
		t.Errorf("the config does not show:\n%s", s)
	}
}
