package pgcluster

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// BinDir returns the directory holding the PostgreSQL server binaries:
// $PG_BINDIR if set, else the output of "pg_config --bindir". It checks that
// the directory contains a postgres executable.
func BinDir() (string, error) {
	dir := os.Getenv("PG_BINDIR")
	source := "$PG_BINDIR"
	if dir == "" {
		out, err := exec.Command("pg_config", "--bindir").Output()
		if err != nil {
			return "", fmt.Errorf("find postgresql binaries: PG_BINDIR is not set and pg_config --bindir failed: %w", err)
		}
		dir = strings.TrimSpace(string(out))
		source = "pg_config --bindir"
	}
	if _, err := os.Stat(filepath.Join(dir, "postgres")); err != nil {
		return "", fmt.Errorf("find postgresql binaries: no postgres in %s (from %s): %w", dir, source, err)
	}
	return dir, nil
}

// owner is the OS user server processes run as. When the caller is not root
// it is the caller and cred is nil.
type owner struct {
	uid, gid int
	cred     *syscall.Credential
}

// serverOwner returns the "postgres" OS user when running as root, else the
// current user.
func serverOwner() (owner, error) {
	if os.Geteuid() != 0 {
		return owner{uid: os.Geteuid(), gid: os.Getegid()}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return owner{}, fmt.Errorf("running as root needs a postgres os user: %w", err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return owner{}, fmt.Errorf("uid of postgres: %w", err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return owner{}, fmt.Errorf("gid of postgres: %w", err)
	}
	return owner{
		uid:  uid,
		gid:  gid,
		cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)},
	}, nil
}

// chownAll gives the tree at dir to the owner, when running as root.
func (o owner) chownAll(dir string) error {
	if o.cred == nil {
		return nil
	}
	return filepath.WalkDir(dir, func(path string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, o.uid, o.gid)
	})
}

// makeTraversable adds the search permission for others to dir and each of
// its ancestors that lack it, so that the postgres user can reach a data
// directory created by root (for example under a testing.T.TempDir, which is
// 0700). It does nothing when not running as root.
func (o owner) makeTraversable(dir string) error {
	if o.cred == nil {
		return nil
	}
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o001); err != nil {
				return err
			}
		}
		if filepath.Dir(d) == d {
			return nil
		}
	}
}

// command returns a command for a server binary (initdb, postgres) that runs
// as the owner, with PG* variables removed from its environment.
func (o owner) command(bin string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: o.cred}
	return cmd
}

// quoteConf quotes a value for postgresql.conf.
func quoteConf(v string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(v, `\`, `\\`), "'", "''") + "'"
}

// quoteConninfo quotes a value for a keyword/value connection string when
// needed.
func quoteConninfo(v string) string {
	if v != "" && !strings.ContainsAny(v, ` '\`) {
		return v
	}
	return "'" + strings.ReplaceAll(strings.ReplaceAll(v, `\`, `\\`), "'", `\'`) + "'"
}
