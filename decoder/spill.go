package decoder

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sync"
)

// Spill files live in the spill directory as
//
//	bdrspill-<token>.lock                 one per Decoder, flock'ed while in use
//	bdrspill-<token>-<xid>-<seq>.spill    one per spilled transaction
//
// where token is 16 random hex digits chosen by New. A Decoder holds an
// exclusive flock on its lock file until it and every transaction it
// spilled are closed, so New can tell the files of a crashed process
// (lock file unlocked or missing) from those of a live Decoder sharing the
// directory, and removes only the former.
var (
	spillFileRE = regexp.MustCompile(`^bdrspill-([0-9a-f]{16})-[0-9]+-[0-9]+\.spill$`)
	lockFileRE  = regexp.MustCompile(`^bdrspill-([0-9a-f]{16})\.lock$`)
)

const spillBufSize = 256 << 10

// spiller creates the spill files of one Decoder and lends its single
// write buffer to the transaction whose changes are arriving.
type spiller struct {
	dir   string
	log   *slog.Logger
	group *spillGroup
	seq   uint64
	w     *bufio.Writer // allocated on first use
	owner *changeLog    // the changeLog w writes to, if any
	done  bool
}

func newSpiller(dir string, log *slog.Logger) (*spiller, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spill dir: %w", err)
	}
	g, err := newSpillGroup(dir)
	if err != nil {
		return nil, err
	}
	n, err := removeStale(dir, g.token)
	if err != nil {
		_ = g.release()
		return nil, err
	}
	if n > 0 {
		log.Info("removed stale spill files", "dir", dir, "files", n)
	}
	return &spiller{dir: dir, log: log, group: g}, nil
}

// attach returns the writer for c, creating c's spill file on first use.
func (s *spiller) attach(c *changeLog) (*bufio.Writer, error) {
	if s.owner == c {
		return s.w, nil
	}
	if err := s.detach(s.owner); err != nil {
		return nil, err
	}
	if s.w == nil {
		s.w = bufio.NewWriterSize(nil, spillBufSize)
	}
	if c.file == nil {
		if err := s.create(c); err != nil {
			return nil, err
		}
		s.w.Reset(c.file.f)
		s.owner = c
		if _, err := s.w.WriteString(spillMagic); err != nil {
			return nil, fmt.Errorf("spill: write %s: %w", c.file.path, err)
		}
		return s.w, nil
	}
	s.w.Reset(c.file.f)
	s.owner = c
	return s.w, nil
}

// detach flushes c's buffered changes to its file and takes the writer back.
func (s *spiller) detach(c *changeLog) error {
	if c == nil || s.owner != c {
		return nil
	}
	s.owner = nil
	err := s.w.Flush()
	s.w.Reset(nil)
	if err != nil {
		return fmt.Errorf("spill: write %s: %w", c.file.path, err)
	}
	return nil
}

// forget takes the writer back from c, dropping what it buffered.
func (s *spiller) forget(c *changeLog) {
	if s.owner == c {
		s.owner = nil
		s.w.Reset(nil)
	}
}

func (s *spiller) create(c *changeLog) error {
	s.seq++
	name := fmt.Sprintf("bdrspill-%s-%d-%d.spill", s.group.token, c.top, s.seq)
	path := filepath.Join(s.dir, name)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("spill: %w", err)
	}
	s.group.acquire()
	c.file = &spillFile{path: path, f: f, group: s.group}
	s.log.Debug("spill file created", "xid", c.top, "streamed", c.streamed, "path", path, "mem_bytes", c.memBytes)
	return nil
}

// release drops the Decoder's hold on its lock file.
func (s *spiller) release() error {
	if s.done {
		return nil
	}
	s.done = true
	s.owner = nil
	s.w = nil
	return s.group.release()
}

// spillFile is one transaction's spill file, open for writing.
type spillFile struct {
	path  string
	f     *os.File
	group *spillGroup
}

func (f *spillFile) remove() error {
	err := errors.Join(f.f.Close(), os.Remove(f.path))
	return errors.Join(err, f.group.release())
}

// spillGroup is the lock file of one Decoder. It is held until the Decoder
// and every spill file it created are closed; spill files are closed by
// Txn.Close, possibly on another goroutine.
type spillGroup struct {
	dir, token string

	mu   sync.Mutex
	refs int
	lock *os.File
}

func newSpillGroup(dir string) (*spillGroup, error) {
	for range 5 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		token := hex.EncodeToString(b[:])
		path := filepath.Join(dir, "bdrspill-"+token+".lock")
		f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("spill lock: %w", err)
		}
		if err := lockFile(f); err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("spill lock %s: %w", path, err)
		}
		// Another process's New may have taken the file for stale between
		// our create and our lock, and removed it: then try a new token.
		if ok, err := samePath(f, path); err != nil || !ok {
			_ = f.Close()
			if err != nil {
				return nil, fmt.Errorf("spill lock %s: %w", path, err)
			}
			continue
		}
		return &spillGroup{dir: dir, token: token, refs: 1, lock: f}, nil
	}
	return nil, errors.New("spill lock: no free name")
}

func samePath(f *os.File, path string) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	pi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(fi, pi), nil
}

func (g *spillGroup) acquire() {
	g.mu.Lock()
	g.refs++
	g.mu.Unlock()
}

func (g *spillGroup) release() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.refs--
	if g.refs != 0 {
		return nil
	}
	path := filepath.Join(g.dir, "bdrspill-"+g.token+".lock")
	return errors.Join(os.Remove(path), g.lock.Close())
}

// removeStale removes the spill files and lock files of Decoders that are
// gone (their lock file is missing or unlocked), except those of own.
func removeStale(dir, own string) (int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("spill dir: %w", err)
	}
	files := make(map[string][]string) // token -> spill file names
	for _, e := range entries {
		if m := spillFileRE.FindStringSubmatch(e.Name()); m != nil {
			files[m[1]] = append(files[m[1]], e.Name())
		} else if m := lockFileRE.FindStringSubmatch(e.Name()); m != nil {
			if _, ok := files[m[1]]; !ok {
				files[m[1]] = nil
			}
		}
	}
	removed := 0
	var errs []error
	for token, names := range files {
		if token == own {
			continue
		}
		n, err := removeStaleGroup(dir, token, names)
		removed += n
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("remove stale spill files: %w", err)
	}
	return removed, nil
}

func removeStaleGroup(dir, token string, names []string) (int, error) {
	lockPath := filepath.Join(dir, "bdrspill-"+token+".lock")
	f, err := os.Open(lockPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Spill files without a lock file: their owner died while
		// releasing, or is gone; a live owner creates the lock file first.
	case err != nil:
		return 0, err
	default:
		defer f.Close()
		locked, err := tryLockFile(f)
		if err != nil {
			return 0, fmt.Errorf("lock %s: %w", lockPath, err)
		}
		if !locked {
			return 0, nil // a live Decoder owns these files
		}
	}
	removed := 0
	var errs []error
	for _, name := range names {
		err := os.Remove(filepath.Join(dir, name))
		if err == nil {
			removed++
		} else if !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if f != nil {
		if err := os.Remove(lockPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return removed, errors.Join(errs...)
}
