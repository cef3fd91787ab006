package daemon

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"gopkg.in/yaml.v3"

	"github.com/bdr-dev/bdr/apply"
	"github.com/bdr-dev/bdr/membership"
)

// Config is bdrd's configuration, from flags and an optional YAML file
// whose keys are the flag names with underscores.
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
}

// DefaultAdminListen is where the admin API listens unless told otherwise.
const DefaultAdminListen = "127.0.0.1:7801"

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
	fs.StringVar(&cfg.PGBinDir, "pg-bindir", "", "`directory` of pg_dump and psql, used by join (default: pg_config --bindir, then PATH)")
	fs.StringVar(&cfg.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.DurationVar(&cfg.ErrorRetry, "error-retry", apply.DefaultErrorRetry, "how long a stream in the error state waits before trying again")
	fs.BoolVar(&cfg.Binary, "binary", false, "ask peers for column values in binary form (every replicated type needs binary I/O and must be the same type on all nodes)")
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
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "error_retry" {
			v, ok := raw[k].(string)
			d, err := time.ParseDuration(v)
			if !ok || err != nil {
				return fmt.Errorf("config %s: error_retry must be a duration like 30s", path)
			}
			if !set[k] {
				c.ErrorRetry = d
			}
			continue
		}
		if k == "binary" {
			b, ok := raw[k].(bool)
			if !ok {
				return fmt.Errorf("config %s: binary must be true or false", path)
			}
			if !set[k] {
				c.Binary = b
			}
			continue
		}
		dst, ok := known[k]
		if !ok {
			return fmt.Errorf("config %s: unknown key %q (known: admin_advertise, admin_listen, binary, data_dir, dsn, error_retry, log_level, node_name, pg_bindir, public_dsn)", path, k)
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
	if _, _, err := net.SplitHostPort(c.AdminListen); err != nil {
		return fmt.Errorf("--admin-listen %q is invalid: want host:port", c.AdminListen)
	}
	if c.AdminAdvertise != "" {
		if _, _, err := net.SplitHostPort(c.AdminAdvertise); err != nil {
			return fmt.Errorf("--admin-advertise %q is invalid: want host:port", c.AdminAdvertise)
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
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("--log-level %q is invalid: want debug, info, warn or error", c.LogLevel)
	}
	return nil
}
