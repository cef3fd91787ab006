package pgcluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options configures a server started by [Start].
type Options struct {
	// Dir is the parent directory under which a new temporary directory is
	// made for the server; "" means os.TempDir().
	Dir string
	// Port is the TCP port to listen on; 0 picks a free one.
	Port int
	// Settings are extra postgresql.conf settings; they override the
	// defaults. The port is set by Port, not here.
	Settings map[string]string
	// LogOutput receives the server log. When nil, the log goes to the file
	// postgres.log in the server's directory (see [Server.LogPath]).
	LogOutput io.Writer
	// StandbyOf, when set, is the connection string of a running primary:
	// instead of initdb, the data directory is copied from it with
	// pg_basebackup, and the server runs as its streaming-replication
	// standby (primary_conninfo is that connection string).
	StandbyOf string
}

// defaultSettings are the postgresql.conf settings every server gets.
func defaultSettings() map[string]string {
	return map[string]string{
		"listen_addresses":       "127.0.0.1",
		"wal_level":              "logical",
		"track_commit_timestamp": "on",
		"fsync":                  "off",
		"synchronous_commit":     "on",
		"full_page_writes":       "off",
		"max_replication_slots":  "64",
		"max_wal_senders":        "64",
		"max_connections":        "200",
		"shared_buffers":         "64MB",
		"max_wal_size":           "1GB",
		"logging_collector":      "off",
		"log_min_messages":       "warning",
		"wal_sender_timeout":     "60s",
		"autovacuum":             "on",
	}
}

// Server is a local PostgreSQL server started by [Start].
type Server struct {
	bin     string
	dir     string // temporary directory owned by the Server
	dataDir string
	sockDir string // separate short directory when dir is too long, else dir
	port    int
	logPath string // "" when opts.LogOutput is set
	logOut  io.Writer
	owner   owner
	baseCnf []byte // postgresql.conf as written by initdb

	mu  sync.Mutex
	run *run // current or last postmaster; nil before the first start
}

// maxSocketPath is the longest Unix socket path PostgreSQL accepts
// (sizeof(sun_path) - 1).
const maxSocketPath = 107

// Start initializes a new data directory and starts a postgres server on it,
// returning once the server accepts connections. The caller must call
// [Server.Remove] when done with it.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if _, ok := opts.Settings["port"]; ok {
		return nil, fmt.Errorf("start postgres: set the port with Options.Port, not Settings")
	}
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	own, err := serverOwner()
	if err != nil {
		return nil, err
	}
	parent, err := filepath.Abs(cmp.Or(opts.Dir, os.TempDir()))
	if err != nil {
		return nil, fmt.Errorf("make server dir: %w", err)
	}
	dir, err := os.MkdirTemp(parent, "pgc")
	if err != nil {
		return nil, fmt.Errorf("make server dir: %w", err)
	}
	s := &Server{bin: bin, dir: dir, dataDir: filepath.Join(dir, "data"), sockDir: dir, owner: own, logOut: opts.LogOutput}
	if err := s.setup(ctx, opts); err != nil {
		return nil, errors.Join(err, s.Remove())
	}
	return s, nil
}

func (s *Server) setup(ctx context.Context, opts Options) error {
	if err := os.Chmod(s.dir, 0o755); err != nil {
		return fmt.Errorf("chmod server dir: %w", err)
	}
	if err := s.owner.makeTraversable(s.dir); err != nil {
		return fmt.Errorf("make server dir traversable: %w", err)
	}
	if len(s.dir)+len("/.s.PGSQL.65535") > maxSocketPath {
		sock, err := os.MkdirTemp("/tmp", "pgs")
		if err != nil {
			return fmt.Errorf("make socket dir: %w", err)
		}
		s.sockDir = sock
		if err := os.Chmod(sock, 0o755); err != nil {
			return fmt.Errorf("chmod socket dir: %w", err)
		}
	}
	if err := os.Mkdir(s.dataDir, 0o700); err != nil {
		return fmt.Errorf("make data dir: %w", err)
	}
	for _, d := range []string{s.dir, s.sockDir} {
		if err := s.owner.chownAll(d); err != nil {
			return fmt.Errorf("chown server dir: %w", err)
		}
	}
	if s.logOut == nil {
		s.logPath = filepath.Join(s.dir, "postgres.log")
	}

	if opts.StandbyOf != "" {
		backup := s.owner.command(filepath.Join(s.bin, "pg_basebackup"), "-d", opts.StandbyOf, "-D", s.dataDir,
			"-R", "-X", "stream", "--no-sync", "--checkpoint=fast")
		backup.Dir = s.dir
		if out, err := backup.CombinedOutput(); err != nil {
			return fmt.Errorf("pg_basebackup: %w: %s", err, tail(out, 2000))
		}
	} else {
		initdb := s.owner.command(filepath.Join(s.bin, "initdb"), "-D", s.dataDir,
			"-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
		initdb.Dir = s.dir
		if out, err := initdb.CombinedOutput(); err != nil {
			return fmt.Errorf("initdb: %w: %s", err, tail(out, 2000))
		}
	}
	base, err := os.ReadFile(filepath.Join(s.dataDir, "postgresql.conf"))
	if err != nil {
		return fmt.Errorf("read postgresql.conf: %w", err)
	}
	s.baseCnf = base
	settings := defaultSettings()
	settings["unix_socket_directories"] = s.sockDir
	maps.Copy(settings, opts.Settings)

	// A free port picked here may be taken by someone else before the
	// server binds it, so retry with another one in that case.
	for attempt := 0; ; attempt++ {
		s.port = opts.Port
		if s.port == 0 {
			if s.port, err = freePort(); err != nil {
				return err
			}
		}
		settings["port"] = strconv.Itoa(s.port)
		if err := s.writeConf(settings); err != nil {
			return err
		}
		err = s.start(ctx)
		if err == nil || opts.Port != 0 || attempt >= 4 || !strings.Contains(err.Error(), "could not create any TCP/IP sockets") {
			return err
		}
	}
}

func (s *Server) writeConf(settings map[string]string) error {
	var b strings.Builder
	b.Write(s.baseCnf)
	b.WriteString("\n# added by pgcluster\n")
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		fmt.Fprintf(&b, "%s = %s\n", k, quoteConf(settings[k]))
	}
	path := filepath.Join(s.dataDir, "postgresql.conf")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write postgresql.conf: %w", err)
	}
	if s.owner.cred != nil {
		if err := os.Chown(path, s.owner.uid, s.owner.gid); err != nil {
			return fmt.Errorf("chown postgresql.conf: %w", err)
		}
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Port returns the TCP port the server listens on.
func (s *Server) Port() int { return s.port }

// Host returns the address the server listens on.
func (s *Server) Host() string { return "127.0.0.1" }

// SocketPath returns the server's Unix socket.
func (s *Server) SocketPath() string {
	return filepath.Join(s.sockDir, fmt.Sprintf(".s.PGSQL.%d", s.port))
}

// DataDir returns the server's data directory.
func (s *Server) DataDir() string { return s.dataDir }

// BinDir returns the directory of the PostgreSQL binaries the server uses.
func (s *Server) BinDir() string { return s.bin }

// LogPath returns the server log file, or "" when Options.LogOutput was set.
func (s *Server) LogPath() string { return s.logPath }

// DSN returns a keyword/value connection string for database db as the
// superuser postgres.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable", s.Host(), s.port, quoteConninfo(db))
}

// CreateDatabase creates database name.
func (s *Server) CreateDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", s.Host(), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// DropDatabase drops database name if it exists. It first drops the logical
// replication slots on it (terminating the walsenders using them), which
// would block the drop, then drops the database WITH (FORCE), terminating the
// sessions connected to it.
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", s.Host(), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	const slots = `SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL`
	const drop = `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1`
	for attempt := 0; ; attempt++ {
		_, err = conn.Exec(ctx, slots, name)
		if err == nil {
			_, err = conn.Exec(ctx, drop, name)
		}
		if err == nil || attempt == 4 {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drop slots of database %s: %w", name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err != nil {
		return fmt.Errorf("drop slots of database %s: %w", name, err)
	}
	var oid *uint32
	if err := conn.QueryRow(ctx, `SELECT oid FROM pg_database WHERE datname = $1`, name).Scan(&oid); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	sql := "DROP DATABASE IF EXISTS " + pgx.Identifier{name}.Sanitize() + " WITH (FORCE)"
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	if oid == nil {
		return nil
	}
	// Replication origins belong to the cluster, not to a database: bdrd
	// names those of a database bdr_<its oid>_<peer>. Left behind, they
	// would use up the server's origin slots (max_replication_slots).
	if _, err := conn.Exec(ctx, `SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin
		WHERE starts_with(roname, $1)`, fmt.Sprintf("bdr_%d_", *oid)); err != nil {
		return fmt.Errorf("drop the replication origins of database %s: %w", name, err)
	}
	return nil
}

// Command returns a command running the PostgreSQL client program name
// (pgbench, pg_dump, psql, ...) from the server's BinDir, with PGHOST, PGPORT
// and PGUSER pointing at the server. It runs as the calling user.
func (s *Server) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, name), args...)
	cmd.Env = append(os.Environ(),
		"PGHOST="+s.Host(),
		"PGPORT="+strconv.Itoa(s.port),
		"PGUSER=postgres",
		"PGSSLMODE=disable",
	)
	return cmd
}

// Remove stops the server if it is running and deletes its directories.
func (s *Server) Remove() error {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	err := errors.Join(s.Stop(ctx), os.RemoveAll(s.dir))
	if s.sockDir != s.dir {
		err = errors.Join(err, os.RemoveAll(s.sockDir))
	}
	if err != nil {
		return fmt.Errorf("remove server: %w", err)
	}
	return nil
}

// tail returns the last n bytes of b, trimmed.
func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}
