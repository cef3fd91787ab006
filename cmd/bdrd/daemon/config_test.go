package daemon

import (
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestParseArgs(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "bdrd.yaml")
	if err := os.WriteFile(file, []byte(`
node_name: tokyo
dsn: host=127.0.0.1 dbname=app
data_dir: /var/lib/bdrd
admin_listen: 127.0.0.1:7900
log_level: debug
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseArgs([]string{"--config", file, "--admin-listen", "127.0.0.1:7999"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{NodeName: "tokyo", DSN: "host=127.0.0.1 dbname=app", PublicDSN: "host=127.0.0.1 dbname=app",
		AdminListen: "127.0.0.1:7999", DataDir: "/var/lib/bdrd", LogLevel: "debug", ErrorRetry: time.Minute}
	if cfg != want {
		t.Fatalf("ParseArgs =\n%+v\nwant (the flag wins over the file, public dsn defaults to dsn)\n%+v", cfg, want)
	}
	cfg, err = ParseArgs([]string{"--node-name", "a", "--dsn", "dbname=x", "--data-dir", dir}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AdminListen != DefaultAdminListen || cfg.LogLevel != "info" {
		t.Fatalf("defaults: %+v", cfg)
	}
	if _, err := ParseArgs([]string{"--config", file, "--log-level", "loud"}, io.Discard); err == nil {
		t.Fatal("a bad flag value over a good file was accepted")
	}
}
