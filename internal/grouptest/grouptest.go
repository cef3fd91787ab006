// Package grouptest runs bdr groups for integration tests: a database per
// node on the servers of internal/pgtest, a bdrd per node (in-process, or
// as a subprocess that can be SIGKILLed), init and joins, and the checks
// every test ends with: wait until the group is quiet, then compare per-table
// checksums of all nodes.
//
// Helpers that fail the test must be called from the test's goroutine. A
// Node is not safe for concurrent Start/Stop.
package grouptest

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/cmd/bdrd/daemon"
	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/checksum"
	"github.com/bdr-dev/bdr/internal/groupkey"
	"github.com/bdr-dev/bdr/internal/pgcluster"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

// Node is one database with its bdrd.
type Node struct {
	t       testing.TB
	Name    string
	Server  *pgcluster.Server
	DB      string
	DSN     string
	DataDir string
	Admin   string // admin API address
	Gossip  string // gossip address
	Raft    string // consensus address
	LogPath string
	Options Options
	// Token is the operator's admin token; TokenFile holds it, for
	// bdrd's --admin-token-file and bdrctl's --token-file.
	Token     string
	TokenFile string

	mu   sync.Mutex
	d    *daemon.Daemon
	proc *exec.Cmd
	log  *os.File
}

// Options are how a node's bdrd runs.
type Options struct {
	// Bdrd is the bdrd executable: bdrd runs as a subprocess (that can be
	// SIGKILLed). Empty runs bdrd in-process.
	Bdrd string
	// BinaryValues asks peers for column values in binary form.
	BinaryValues bool
	// ErrorRetry is how long a stream in the error state waits; 0 is bdrd's default.
	ErrorRetry time.Duration
	// ApplyLockTimeout bounds an apply statement's wait for a local lock; 0 is bdrd's default.
	ApplyLockTimeout time.Duration
	// TombstoneEvery is bdrd's --tombstone-collect-every (0: bdrd's default).
	TombstoneEvery time.Duration
	// Token is the operator's admin token. Empty uses SharedToken: nodes
	// that join each other need the same one (a join passes the operator's
	// token on to the member it goes through).
	Token string
	// MaxPeerWAL and OnWALBudget set the WAL budget (0 and "": bdrd's defaults).
	MaxPeerWAL  int64
	OnWALBudget string
	// Net, when set, carries the node's gossip, consensus and member-to-
	// member traffic, so a test can partition it (in-process bdrd only).
	Net *Network
	// Env is added to a subprocess bdrd's environment.
	Env []string
	// MaxClockSkew is bdrd's --max-clock-skew (0: bdrd's default).
	MaxClockSkew time.Duration
	// Clock, when set, is the wall clock the node's gossip shows the other
	// members, so a test can skew one node's clock (in-process bdrd only).
	Clock func() time.Time
}

// SharedToken is a random admin token that every node of this test binary
// uses unless Options.Token says otherwise.
func SharedToken() string { return sharedToken() }

var sharedToken = sync.OnceValue(func() string {
	tok := rand.Text()
	pgtest.RecordSecret(tok)
	return tok
})

// recordKey records a group key file's key and the internal token made
// from it as secrets no log may show.
func recordKey(b []byte) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return
	}
	pgtest.RecordSecret(string(b))
	if k, err := groupkey.Parse(string(b)); err == nil {
		pgtest.RecordSecret(k.InternalToken())
	}
}

// NewNode creates a database on s and starts a bdrd named name for it.
func NewNode(t testing.TB, s *pgcluster.Server, name string, opts Options) *Node {
	t.Helper()
	db, dsn := pgtest.NewDB(t, s)
	// The test servers trust local connections; the password is there to
	// check that no log line ever shows it.
	password := "pw-" + rand.Text()
	pgtest.RecordSecret(password)
	dsn += " password=" + password
	dir := t.TempDir()
	n := &Node{t: t, Name: name, Server: s, DB: db, DSN: dsn, DataDir: filepath.Join(dir, "data"),
		LogPath: filepath.Join(dir, "bdrd.log"), Options: opts, Admin: freeAddr(t),
		Gossip: freeAddr(t), Raft: freeAddr(t),
		Token: opts.Token, TokenFile: filepath.Join(dir, "admin.token")}
	if n.Token == "" {
		n.Token = SharedToken()
	}
	pgtest.RecordSecret(n.Token)
	if opts.Net != nil {
		opts.Net.register(name, n.Admin, n.Gossip, n.Raft)
	}
	if err := os.WriteFile(n.TokenFile, []byte(n.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	n.log = f
	keyFile := filepath.Join(n.DataDir, "group.key")
	var key []byte
	t.Cleanup(func() {
		key, _ = os.ReadFile(keyFile) // before the node may remove it
		recordKey(key)
		n.Stop()
		if t.Failed() {
			t.Logf("bdrd log of %s: %s\n%s", n.Name, n.LogPath, tailFile(n.LogPath, 6000))
		}
		_ = f.Close()
		n.checkSecrets(password, string(bytes.TrimSpace(key)))
	})
	n.Start()
	return n
}

var (
	handedMu sync.Mutex
	handed   = map[int]bool{} // ports freeAddr handed out
)

// freeAddr returns a loopback address whose port is free for TCP and UDP.
// Ports come from below the kernel's ephemeral range (32768 and up), so
// outgoing connections cannot take them between now and the bind.
//
// A port is handed out once per process: a node binds its gossip port only
// when it joins, long after it got it, and another node must not get the
// same one meanwhile.
func freeAddr(t testing.TB) string {
	for range 100 {
		port := 20000 + mrand.IntN(12000)
		handedMu.Lock()
		taken := handed[port]
		handed[port] = true
		handedMu.Unlock()
		if taken {
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return addr
	}
	t.Fatal("no free port")
	return ""
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// checkSecrets fails the test when the node's log shows its database
// password, its admin token or the group key.
func (n *Node) checkSecrets(password, key string) {
	b, err := os.ReadFile(n.LogPath)
	if err != nil {
		n.t.Errorf("read log of %s: %v", n.Name, err)
		return
	}
	for what, secret := range map[string]string{"database password": password, "admin token": n.Token, "group key": key} {
		if secret != "" && bytes.Contains(b, []byte(secret)) {
			n.t.Errorf("the log of %s shows its %s (%s)", n.Name, what, n.LogPath)
		}
	}
}

// Config is the bdrd configuration of the node.
func (n *Node) Config() daemon.Config {
	cfg := daemon.Config{NodeName: n.Name, DSN: n.DSN, AdminListen: n.Admin, DataDir: n.DataDir, LogLevel: "info",
		Binary: n.Options.BinaryValues, ErrorRetry: n.Options.ErrorRetry, ApplyLockTimeout: n.Options.ApplyLockTimeout, TombstoneEvery: n.Options.TombstoneEvery,
		AdminTokenFile: n.TokenFile, GossipListen: n.Gossip, RaftListen: n.Raft, MaxPeerWAL: daemon.ByteSize(n.Options.MaxPeerWAL),
		OnWALBudget: n.Options.OnWALBudget, MaxClockSkew: n.Options.MaxClockSkew, Clock: n.Options.Clock}
	if n.Options.Net != nil {
		cfg.GossipTransport, cfg.Dial = n.Options.Net.Transport(n.Name), n.Options.Net.Dialer(n.Name)
	}
	return cfg
}

// Args are the bdrd command line flags of the node.
func (n *Node) Args() []string {
	args := []string{"--node-name", n.Name, "--dsn", n.DSN, "--admin-listen", n.Admin, "--admin-token-file", n.TokenFile,
		"--data-dir", n.DataDir, "--log-level", "info"}
	if n.Options.BinaryValues {
		args = append(args, "--binary")
	}
	if n.Options.ErrorRetry != 0 {
		args = append(args, "--error-retry", n.Options.ErrorRetry.String())
	}
	if n.Options.TombstoneEvery != 0 {
		args = append(args, "--tombstone-collect-every", n.Options.TombstoneEvery.String())
	}
	if n.Options.ApplyLockTimeout != 0 {
		args = append(args, "--apply-lock-timeout", n.Options.ApplyLockTimeout.String())
	}
	args = append(args, "--gossip-listen", n.Gossip, "--raft-listen", n.Raft)
	if n.Options.MaxPeerWAL != 0 {
		args = append(args, "--max-peer-wal", fmt.Sprint(n.Options.MaxPeerWAL))
	}
	if n.Options.OnWALBudget != "" {
		args = append(args, "--on-wal-budget", n.Options.OnWALBudget)
	}
	if n.Options.MaxClockSkew != 0 {
		args = append(args, "--max-clock-skew", n.Options.MaxClockSkew.String())
	}
	return args
}

// Start starts the node's bdrd and waits until its admin API answers.
func (n *Node) Start() {
	n.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.d != nil || n.proc != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if n.Options.Bdrd == "" {
		log := slog.New(slog.NewTextHandler(n.log, &slog.HandlerOptions{Level: slog.LevelInfo}))
		d, err := daemon.Start(ctx, n.Config(), log)
		if err != nil {
			n.t.Fatalf("start bdrd %s: %v", n.Name, err)
		}
		n.d = d
		return
	}
	if n.Options.Clock != nil {
		n.t.Fatalf("bdrd %s: Options.Clock needs an in-process bdrd", n.Name)
	}
	cmd := exec.Command(n.Options.Bdrd, n.Args()...)
	cmd.Env = append(os.Environ(), n.Options.Env...)
	cmd.Stdout, cmd.Stderr = n.log, n.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("start bdrd %s: %v", n.Name, err)
	}
	n.proc = cmd
	for {
		if _, err := n.Client().Info(ctx); err == nil {
			return
		}
		if ctx.Err() != nil {
			n.t.Fatalf("bdrd %s did not come up: %s", n.Name, tailFile(n.LogPath, 2000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops the node's bdrd cleanly (SIGTERM for a subprocess).
func (n *Node) Stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.d != nil {
		if err := n.d.Stop(); err != nil {
			n.t.Logf("stop bdrd %s: %v", n.Name, err)
		}
		n.d = nil
	}
	if n.proc != nil {
		_ = n.proc.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- n.proc.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = n.proc.Process.Kill()
			<-done
			n.t.Errorf("bdrd %s did not stop on SIGTERM within 30s", n.Name)
		}
		n.proc = nil
	}
}

// Kill SIGKILLs the node's bdrd subprocess.
func (n *Node) Kill() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == nil {
		n.t.Fatalf("Kill needs a subprocess bdrd")
	}
	_ = n.proc.Process.Kill()
	_ = n.proc.Wait()
	n.proc = nil
}

// PID is the bdrd subprocess id, 0 in-process.
func (n *Node) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == nil {
		return 0
	}
	return n.proc.Process.Pid
}

// Client talks to the node's bdrd with the node's admin token.
func (n *Node) Client() *adminapi.Client {
	return adminapi.NewClient(n.Admin, time.Minute).WithToken(n.Token)
}

// Exec runs sql on the node's database.
func (n *Node) Exec(sql string, args ...any) {
	n.t.Helper()
	pgtest.Exec(n.t, n.DSN, sql, args...)
}

// QueryInt runs a query returning one integer.
func (n *Node) QueryInt(sql string, args ...any) int64 {
	n.t.Helper()
	var v int64
	pgtest.Scan(n.t, n.DSN, sql, args, &v)
	return v
}

// QueryText runs a query returning one text value.
func (n *Node) QueryText(sql string, args ...any) string {
	n.t.Helper()
	return queryText(n.t, n.DSN, sql, args...)
}

// Init makes n the first member of a new group.
func Init(t testing.TB, n *Node) {
	t.Helper()
	if _, err := n.Client().Init(context.Background()); err != nil {
		t.Fatalf("init %s: %v", n.Name, err)
	}
}

// Join joins n through via and waits until it is ready.
func Join(t testing.TB, n, via *Node) {
	t.Helper()
	if err := JoinErr(n, via); err != nil {
		t.Fatalf("join %s via %s: %v", n.Name, via.Name, err)
	}
}

// JoinErr joins n through via, waits until it is ready and returns any failure.
func JoinErr(n, via *Node) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return n.Client().JoinAndWait(ctx, adminapi.JoinRequest{Via: via.Admin}, 50*time.Millisecond, nil)
}

// Group starts a group of bdrd nodes, one per server, named prefix_a,
// prefix_b...: setup runs on the first node after init (create tables, load
// data), then the others join through the first.
func Group(t testing.TB, servers []*pgcluster.Server, prefix string, opts Options, setup func(first *Node)) []*Node {
	t.Helper()
	nodes := make([]*Node, len(servers))
	for i, s := range servers {
		nodes[i] = NewNode(t, s, pgtest.UniqueName(t, fmt.Sprintf("%s%c", prefix, 'a'+i)), opts)
	}
	Init(t, nodes[0])
	if setup != nil {
		setup(nodes[0])
	}
	for _, n := range nodes[1:] {
		Join(t, n, nodes[0])
	}
	// Stop every bdrd before any database is dropped.
	t.Cleanup(func() {
		for _, n := range nodes {
			n.Stop()
		}
	})
	return nodes
}

// WaitQuiet waits until every node has applied and flushed everything every
// other node had written when WaitQuiet was called: for each provider P its
// slot for each subscriber S is confirmed past P's WAL position at the start.
// It does so twice: what a node applied while the others waited for it is
// in its WAL after the first targets, and goes back to the others (who drop
// it by origin, writing nothing).
func WaitQuiet(t testing.TB, nodes []*Node, timeout time.Duration) {
	t.Helper()
	waitApplied(t, nodes, timeout)
	waitApplied(t, nodes, timeout)
}

func waitApplied(t testing.TB, nodes []*Node, timeout time.Duration) {
	t.Helper()
	targets := make([]string, len(nodes))
	for i, p := range nodes {
		targets[i] = queryText(t, p.DSN, `SELECT pg_catalog.pg_current_wal_lsn()::text`)
	}
	for i, p := range nodes {
		for _, s := range nodes {
			if s == p {
				continue
			}
			pgtest.WaitFor(t, timeout, fmt.Sprintf("%s to apply %s up to %s", s.Name, p.Name, targets[i]), func() (bool, error) {
				ok := queryText(t, p.DSN, `SELECT coalesce(confirmed_flush_lsn >= $2::text::pg_lsn, false)::text
					FROM pg_catalog.pg_replication_slots WHERE slot_name = bdr.repl_name($1)`, s.Name, targets[i])
				return ok == "true", nil
			})
		}
	}
}

func queryText(t testing.TB, dsn, sql string, args ...any) string {
	t.Helper()
	var v string
	pgtest.Scan(t, dsn, sql, args, &v)
	return v
}

// Checksums returns the per-table checksums of n's database.
func Checksums(t testing.TB, n *Node) map[string]checksum.Sum {
	t.Helper()
	conn := pgtest.Conn(t, n.DSN)
	sums, err := checksum.Tables(context.Background(), conn)
	if err != nil {
		t.Fatalf("checksums of %s: %v", n.Name, err)
	}
	return sums
}

// AssertConverged fails the test unless every node has the same tables
// with the same checksums as the first.
func AssertConverged(t testing.TB, nodes []*Node) {
	t.Helper()
	first := Checksums(t, nodes[0])
	if len(first) == 0 {
		t.Fatalf("%s has no tables to compare", nodes[0].Name)
	}
	for _, n := range nodes[1:] {
		if diff := checksum.Diff(first, Checksums(t, n)); len(diff) > 0 {
			t.Fatalf("%s and %s differ:\n%s", nodes[0].Name, n.Name, strings.Join(diff, "\n"))
		}
	}
}

// BuildBdrd builds the bdrd binary into dir, for tests that run it as a
// subprocess. Call it from TestMain.
func BuildBdrd(dir string) (string, error) {
	out := filepath.Join(dir, "bdrd")
	cmd := exec.Command("go", "build", "-o", out, "github.com/bdr-dev/bdr/cmd/bdrd")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build bdrd: %v: %s", err, b)
	}
	return out, nil
}

// Metrics returns the node's /metrics page.
func (n *Node) Metrics() string {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	page, err := n.Client().Metrics(ctx)
	if err != nil {
		n.t.Fatalf("scrape %s: %v", n.Name, err)
	}
	return page
}

// Main is pgtest.Main for packages that also run bdrd as a subprocess: it
// builds bdrd into a temporary directory first and sets *bdrd to its path
// (not when fuzzing: fuzz targets need neither).
func Main(m *testing.M, servers int, bdrd *string) int {
	if pgtest.Fuzzing() {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "bdrd-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if *bdrd, err = BuildBdrd(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return pgtest.Main(m, servers)
}
