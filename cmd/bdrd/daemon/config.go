package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/jackc/pgx/v5/pgconn"
	"gopkg.in/yaml.v3"

	"github.com/bdr-dev/bdr/apply"
	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/membership"
)

// Config is bdrd's configuration, from flags and an optional YAML file
// whose keys are the flag names with underscores.
//
// Config holds secrets (passwords in the DSNs, the admin token): it prints
// (fmt, slog, JSON) with them redacted.
type Config struct {
	NodeName       string
	DSN            string
	PublicDSN      string
	AdminListen    string
	AdminAdvertise string
	DataDir        string
	PGBinDir       string
	LogLevel       string
	Binary         bool
	ErrorRetry     time.Duration
	// ApplyLockTimeout bounds how long an apply statement waits for a
	// local lock before its transaction is retried.
	ApplyLockTimeout time.Duration
	// TombstoneEvery is how often the tombstones every peer has gone past
	// are removed.
	TombstoneEvery time.Duration

	GossipListen    string // gossip (TCP and UDP)
	GossipAdvertise string
	GossipKeyFile   string // the group key; default DataDir/group.key
	RaftListen      string // consensus (TCP, mutual TLS)
	RaftAdvertise   string
	MaxPeerWAL      ByteSize
	OnWALBudget     string // part or alert
	MaxClockSkew    time.Duration
	// CopyWorkers is the most sessions a join's row copy uses.
	CopyWorkers int

	// Network faults, for tests running bdrd in-process: the gossip
	// transport and the dialer of consensus and member-to-member calls.
	GossipTransport func(bind string) (memberlist.NodeAwareTransport, error)          `json:"-"`
	Dial            func(ctx context.Context, network, addr string) (net.Conn, error) `json:"-"`
	// Clock, for tests running bdrd in-process, is the wall clock gossip
	// shows the other members and compares their clocks to (a test skews
	// one node's clock with it); nil = time.Now.
	Clock func() time.Time `json:"-"`
	// AdminTokenFile holds the token the admin API requires (operator's).
	AdminTokenFile string
	// AdminInsecureLoopback lets the admin API on a loopback address run
	// without a token.
	AdminInsecureLoopback bool
	// AdminToken is the token read from AdminTokenFile by Validate (or set
	// directly); "" means the admin API requires none.
	AdminToken string `json:"-"`
}

// maxTokenSize bounds the admin token file.
const maxTokenSize = 4 << 10

// Default listen addresses.
const (
	DefaultAdminListen  = "127.0.0.1:7801"
	DefaultGossipListen = "0.0.0.0:7946"
	DefaultRaftListen   = "0.0.0.0:7947"
	DefaultMaxPeerWAL   = 16 << 30
)

// ParseArgs reads the command line, and the --config file if given; flags
// given on the command line win over the file.
func ParseArgs(args []string, stderr io.Writer) (Config, error) {
	var cfg Config
	var file string
	fs := flag.NewFlagSet("bdrd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&file, "config", "", "YAML config `file` (keys as the flags, with underscores)")
	fs.StringVar(&cfg.NodeName, "node-name", "", "this node's `name` in the group: [a-z][a-z0-9_]{0,30}")
	fs.StringVar(&cfg.DSN, "dsn", "", "connection string of the local PostgreSQL database to replicate")
	fs.StringVar(&cfg.PublicDSN, "public-dsn", "", "connection string peers use to reach that database (default: --dsn)")
	fs.StringVar(&cfg.AdminListen, "admin-listen", DefaultAdminListen, "`address` of the admin API and /metrics")
	fs.StringVar(&cfg.AdminAdvertise, "admin-advertise", "", "admin `address` other members use to reach this bdrd (default: --admin-listen)")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "`directory` for bdrd's own state (bdrd.db) and spill files")
	fs.StringVar(&cfg.PGBinDir, "pg-bindir", "", "`directory` of pg_dump, used by join (default: pg_config --bindir, then PATH)")
	fs.StringVar(&cfg.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.DurationVar(&cfg.ErrorRetry, "error-retry", apply.DefaultErrorRetry, "how long a stream in the error state waits before trying again")
	fs.DurationVar(&cfg.ApplyLockTimeout, "apply-lock-timeout", apply.DefaultLockTimeout, "how long applying a remote change waits for a lock held by a local session before it retries")
	fs.DurationVar(&cfg.TombstoneEvery, "tombstone-collect-every", apply.DefaultTombstoneEvery, "how often the tombstones of deleted rows that every peer has gone past are removed")
	fs.BoolVar(&cfg.Binary, "binary", false, "ask peers for column values in binary form (every replicated type needs binary I/O and must be the same type on all nodes)")
	fs.StringVar(&cfg.GossipListen, "gossip-listen", DefaultGossipListen, "`address` (TCP and UDP) of the encrypted gossip between members")
	fs.StringVar(&cfg.GossipAdvertise, "gossip-advertise", "", "gossip `address` other members use (default: --gossip-listen, or this host's address when that is 0.0.0.0)")
	fs.StringVar(&cfg.GossipKeyFile, "gossip-key-file", "", "`file` of the group key, made by bdrctl init and handed to joiners (default: DATA_DIR/group.key)")
	fs.StringVar(&cfg.RaftListen, "raft-listen", DefaultRaftListen, "`address` of the group's consensus traffic (mutual TLS from the group key)")
	fs.StringVar(&cfg.RaftAdvertise, "raft-advertise", "", "consensus `address` other members use (default: --raft-listen, or this host's name when that is 0.0.0.0)")
	cfg.MaxPeerWAL = DefaultMaxPeerWAL
	fs.Var(&cfg.MaxPeerWAL, "max-peer-wal", "WAL a slot may keep for a down peer (`size`, e.g. 16GB, 512MB) before --on-wal-budget acts; warned at 80%")
	fs.StringVar(&cfg.OnWALBudget, "on-wal-budget", "part", "when a down peer's slot keeps more WAL than --max-peer-wal: part (remove the peer through the group, releasing the WAL) or alert (keep it, only alert)")
	fs.DurationVar(&cfg.MaxClockSkew, "max-clock-skew", membership.DefaultMaxClockSkew, "how far a member's clock may be from this node's before it is flagged in status, logged and alerted on (last update wins is only as good as the clocks)")
	fs.IntVar(&cfg.CopyWorkers, "copy-workers", membership.DefaultCopyWorkers(), "the most sessions a join of this node copies the group's rows with, in parallel (1: one session, one transaction); a bdrctl join may ask for another number")
	fs.StringVar(&cfg.AdminTokenFile, "admin-token-file", "", "`file` holding the token every admin API call must present (bdrctl: $BDRCTL_TOKEN or --token-file)")
	fs.BoolVar(&cfg.AdminInsecureLoopback, "admin-insecure-loopback", false, "serve the admin API without a token on a loopback --admin-listen (anyone on this host can use it)")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if file != "" {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[strings.ReplaceAll(f.Name, "-", "_")] = true })
		if err := cfg.loadFile(file, set); err != nil {
			return Config{}, err
		}
	}
	return cfg, cfg.Validate()
}

// loadFile fills the fields not set on the command line from the YAML file.
func (c *Config) loadFile(path string, set map[string]bool) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	var raw map[string]any
	if err := yaml.NewDecoder(f).Decode(&raw); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config %s: %s", path, strings.Join(strings.Fields(err.Error()), " "))
	}
	var fromFile Config
	known := map[string]*string{
		"node_name": &fromFile.NodeName, "dsn": &fromFile.DSN, "public_dsn": &fromFile.PublicDSN,
		"admin_listen": &fromFile.AdminListen, "admin_advertise": &fromFile.AdminAdvertise,
		"data_dir": &fromFile.DataDir, "pg_bindir": &fromFile.PGBinDir, "log_level": &fromFile.LogLevel,
		"admin_token_file": &fromFile.AdminTokenFile,
		"gossip_listen":    &fromFile.GossipListen, "gossip_advertise": &fromFile.GossipAdvertise,
		"gossip_key_file": &fromFile.GossipKeyFile, "raft_listen": &fromFile.RaftListen,
		"raft_advertise": &fromFile.RaftAdvertise, "on_wal_budget": &fromFile.OnWALBudget,
	}
	bools := map[string]*bool{"binary": &c.Binary, "admin_insecure_loopback": &c.AdminInsecureLoopback}
	durations := map[string]*time.Duration{"error_retry": &c.ErrorRetry, "apply_lock_timeout": &c.ApplyLockTimeout, "max_clock_skew": &c.MaxClockSkew,
		"tombstone_collect_every": &c.TombstoneEvery}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "max_peer_wal" {
			v, ok := raw[k].(string)
			var size ByteSize
			if !ok || size.Set(v) != nil {
				return fmt.Errorf("config %s: max_peer_wal must be a size like 16GB", path)
			}
			if !set[k] {
				c.MaxPeerWAL = size
			}
			continue
		}
		if k == "copy_workers" {
			v, ok := raw[k].(int)
			if !ok {
				return fmt.Errorf("config %s: copy_workers must be a number", path)
			}
			if !set[k] {
				c.CopyWorkers = v
			}
			continue
		}
		if dst, ok := durations[k]; ok {
			v, ok := raw[k].(string)
			d, err := time.ParseDuration(v)
			if !ok || err != nil {
				return fmt.Errorf("config %s: %s must be a duration like 30s", path, k)
			}
			if !set[k] {
				*dst = d
			}
			continue
		}
		if dst, ok := bools[k]; ok {
			b, ok := raw[k].(bool)
			if !ok {
				return fmt.Errorf("config %s: %s must be true or false", path, k)
			}
			if !set[k] {
				*dst = b
			}
			continue
		}
		dst, ok := known[k]
		if !ok {
			return fmt.Errorf("config %s: unknown key %q (known: admin_advertise, admin_insecure_loopback, admin_listen, admin_token_file, apply_lock_timeout, binary, copy_workers, data_dir, dsn, error_retry, gossip_advertise, gossip_key_file, gossip_listen, log_level, max_clock_skew, max_peer_wal, node_name, on_wal_budget, pg_bindir, public_dsn, raft_advertise, raft_listen)", path, k)
		}
		v, ok := raw[k].(string)
		if !ok {
			return fmt.Errorf("config %s: %s must be a string", path, k)
		}
		*dst = v
	}
	fields := []struct {
		key       string
		dst, from *string
	}{
		{"node_name", &c.NodeName, &fromFile.NodeName},
		{"dsn", &c.DSN, &fromFile.DSN},
		{"public_dsn", &c.PublicDSN, &fromFile.PublicDSN},
		{"admin_listen", &c.AdminListen, &fromFile.AdminListen},
		{"admin_advertise", &c.AdminAdvertise, &fromFile.AdminAdvertise},
		{"data_dir", &c.DataDir, &fromFile.DataDir},
		{"pg_bindir", &c.PGBinDir, &fromFile.PGBinDir},
		{"log_level", &c.LogLevel, &fromFile.LogLevel},
		{"admin_token_file", &c.AdminTokenFile, &fromFile.AdminTokenFile},
		{"gossip_listen", &c.GossipListen, &fromFile.GossipListen},
		{"gossip_advertise", &c.GossipAdvertise, &fromFile.GossipAdvertise},
		{"gossip_key_file", &c.GossipKeyFile, &fromFile.GossipKeyFile},
		{"raft_listen", &c.RaftListen, &fromFile.RaftListen},
		{"raft_advertise", &c.RaftAdvertise, &fromFile.RaftAdvertise},
		{"on_wal_budget", &c.OnWALBudget, &fromFile.OnWALBudget},
	}
	for _, f := range fields {
		if !set[f.key] && *f.from != "" {
			*f.dst = *f.from
		}
	}
	return nil
}

// Validate checks the configuration and fills defaults.
func (c *Config) Validate() error {
	if c.NodeName == "" {
		return errors.New("--node-name is required")
	}
	if !membership.NamePattern.MatchString(c.NodeName) {
		return fmt.Errorf("--node-name %q is invalid: use 1-31 characters a-z, 0-9 and _, starting with a letter", c.NodeName)
	}
	if c.DSN == "" {
		return errors.New("--dsn is required")
	}
	if _, err := pgconn.ParseConfig(c.DSN); err != nil {
		return fmt.Errorf("--dsn is invalid: %s", membership.RedactDSN(err.Error()))
	}
	if c.PublicDSN == "" {
		c.PublicDSN = c.DSN
	} else if _, err := pgconn.ParseConfig(c.PublicDSN); err != nil {
		return fmt.Errorf("--public-dsn is invalid: %s", membership.RedactDSN(err.Error()))
	}
	if c.AdminListen == "" {
		c.AdminListen = DefaultAdminListen
	}
	if err := checkAdminAddr(c.AdminListen); err != nil {
		return fmt.Errorf("--admin-listen %q is invalid: %w", c.AdminListen, err)
	}
	if c.AdminAdvertise != "" {
		if err := checkAdminAddr(c.AdminAdvertise); err != nil {
			return fmt.Errorf("--admin-advertise %q is invalid: %w", c.AdminAdvertise, err)
		}
	}
	if c.DataDir == "" {
		return errors.New("--data-dir is required")
	}
	if c.ErrorRetry == 0 {
		c.ErrorRetry = apply.DefaultErrorRetry
	}
	if c.ErrorRetry < time.Second {
		return fmt.Errorf("--error-retry %s is invalid: at least 1s", c.ErrorRetry)
	}
	if c.TombstoneEvery == 0 {
		c.TombstoneEvery = apply.DefaultTombstoneEvery
	}
	if c.TombstoneEvery < 100*time.Millisecond {
		return fmt.Errorf("--tombstone-collect-every %s is invalid: at least 100ms", c.TombstoneEvery)
	}
	if c.ApplyLockTimeout == 0 {
		c.ApplyLockTimeout = apply.DefaultLockTimeout
	}
	if c.ApplyLockTimeout < 100*time.Millisecond {
		return fmt.Errorf("--apply-lock-timeout %s is invalid: at least 100ms", c.ApplyLockTimeout)
	}
	if c.CopyWorkers == 0 {
		c.CopyWorkers = membership.DefaultCopyWorkers()
	}
	if c.CopyWorkers < 1 || c.CopyWorkers > membership.MaxCopyWorkers {
		return fmt.Errorf("--copy-workers %d is invalid: want 1 to %d", c.CopyWorkers, membership.MaxCopyWorkers)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("--log-level %q is invalid: want debug, info, warn or error", c.LogLevel)
	}
	if err := c.validateGroup(); err != nil {
		return err
	}
	return c.loadToken()
}

// validateGroup checks the gossip, consensus and WAL budget settings.
func (c *Config) validateGroup() error {
	if c.GossipListen == "" {
		c.GossipListen = DefaultGossipListen
	}
	if c.RaftListen == "" {
		c.RaftListen = DefaultRaftListen
	}
	for _, a := range []struct{ flag, addr string }{
		{"--gossip-listen", c.GossipListen}, {"--gossip-advertise", c.GossipAdvertise},
		{"--raft-listen", c.RaftListen}, {"--raft-advertise", c.RaftAdvertise},
	} {
		if a.addr == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(a.addr); err != nil || port == "" {
			return fmt.Errorf("%s %q is invalid: want host:port", a.flag, a.addr)
		}
	}
	if c.RaftAdvertise == "" && unspecified(c.RaftListen) {
		host, err := os.Hostname()
		if err != nil {
			return errors.New("--raft-advertise is required when --raft-listen has no host")
		}
		_, port, _ := net.SplitHostPort(c.RaftListen)
		c.RaftAdvertise = net.JoinHostPort(host, port)
	}
	if c.GossipKeyFile == "" {
		c.GossipKeyFile = filepath.Join(c.DataDir, "group.key")
	}
	if c.MaxPeerWAL == 0 {
		c.MaxPeerWAL = DefaultMaxPeerWAL
	}
	if c.MaxPeerWAL < 0 {
		return errors.New("--max-peer-wal must be positive")
	}
	if c.MaxClockSkew == 0 {
		c.MaxClockSkew = membership.DefaultMaxClockSkew
	}
	if c.MaxClockSkew < time.Millisecond {
		return fmt.Errorf("--max-clock-skew %s is invalid: at least 1ms", c.MaxClockSkew)
	}
	switch c.OnWALBudget {
	case "":
		c.OnWALBudget = membership.OnWALBudgetPart
	case membership.OnWALBudgetPart, membership.OnWALBudgetAlert:
	default:
		return fmt.Errorf("--on-wal-budget %q is invalid: want part or alert", c.OnWALBudget)
	}
	return nil
}

// unspecified reports whether addr listens on every interface.
func unspecified(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return host == "" || (ip != nil && ip.IsUnspecified())
}

// ByteSize is a flag value in bytes, written like 16GB, 512MB or 1048576.
type ByteSize int64

func (b *ByteSize) String() string { return strconv.FormatInt(int64(*b), 10) }

// Set parses a size with an optional unit: B, kB/KB, MB, GB, TB (powers of 1024).
func (b *ByteSize) Set(s string) error {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.TrimSpace(s[i:])
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("size %q: want a number with an optional unit (kB, MB, GB, TB)", s)
	}
	shift := map[string]uint{"": 0, "B": 0, "KB": 10, "kB": 10, "K": 10, "MB": 20, "M": 20, "GB": 30, "G": 30, "TB": 40, "T": 40}
	sh, ok := shift[unit]
	if !ok {
		return fmt.Errorf("size %q: unknown unit %q", s, unit)
	}
	if n > (1<<62)>>sh {
		return fmt.Errorf("size %q is too large", s)
	}
	*b = ByteSize(n << sh)
	return nil
}

// checkAdminAddr accepts host:port and unix:/path/to.sock.
func checkAdminAddr(addr string) error {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if path == "" || len(path) > 107 {
			return errors.New("want unix:/path/to.sock with a path of 1-107 bytes")
		}
		return nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return errors.New("want host:port or unix:/path/to.sock")
	}
	return nil
}

// loadToken reads the admin token file into AdminToken, and refuses an
// admin API without a token that others than this host's users could reach.
// No message shows the token.
func (c *Config) loadToken() error {
	if c.AdminTokenFile != "" {
		tok, err := readToken(c.AdminTokenFile)
		if err != nil {
			return fmt.Errorf("--admin-token-file %s: %w", c.AdminTokenFile, err)
		}
		c.AdminToken = tok
	}
	if c.AdminToken != "" {
		if !validToken(c.AdminToken) {
			return errors.New("the admin token must be printable ASCII without spaces")
		}
		return nil
	}
	unix := strings.HasPrefix(c.AdminListen, "unix:")
	if unix || (c.AdminInsecureLoopback && adminapi.Loopback(c.AdminListen)) {
		return nil
	}
	return fmt.Errorf("the admin API at %s needs --admin-token-file (or --admin-insecure-loopback on a loopback address)", c.AdminListen)
}

// readToken reads a token file: at most maxTokenSize bytes, whitespace
// around the token ignored.
func readToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return "", pe.Err
		}
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenSize+1))
	if err != nil {
		return "", errors.New("cannot read it")
	}
	if len(b) > maxTokenSize {
		return "", errors.New("larger than 4 KiB; it should hold only the token")
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", errors.New("empty: it should hold the token")
	}
	if !validToken(tok) {
		return "", errors.New("the token must be printable ASCII without spaces (one line)")
	}
	return tok, nil
}

// validToken: a token goes into an HTTP header as is.
func validToken(tok string) bool {
	for i := 0; i < len(tok); i++ {
		if tok[i] <= ' ' || tok[i] > '~' {
			return false
		}
	}
	return true
}

// redacted is Config without its methods, for printing.
type redacted Config

// Format prints c (every verb, %v, %+v, %#v, %s...) with the admin token
// and DSN passwords replaced.
func (c Config) Format(f fmt.State, verb rune) {
	fmt.Fprintf(f, fmt.FormatString(f, verb), c.redact())
}

// LogValue logs c without its secrets.
func (c Config) LogValue() slog.Value { return slog.AnyValue(c.redact()) }

// MarshalJSON writes c without the admin token and with DSN passwords
// replaced.
func (c Config) MarshalJSON() ([]byte, error) { return json.Marshal(c.redact()) }

func (c Config) redact() redacted {
	r := redacted(c)
	r.DSN, r.PublicDSN = membership.RedactDSN(c.DSN), membership.RedactDSN(c.PublicDSN)
	if r.AdminToken != "" {
		r.AdminToken = "[redacted]"
	}
	return r
}
