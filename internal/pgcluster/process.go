package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

const (
	startTimeout = 30 * time.Second
	stopTimeout  = 60 * time.Second
	// childGrace is how long the children of a dead postmaster get to exit
	// on their own before they are killed: idle ones notice at once, busy
	// backends only when they next wait.
	childGrace = 3 * time.Second
	// killWait is how long killed children get to exit.
	killWait = 10 * time.Second
)

// run is one postmaster process and the goroutines that watch it.
//
// All processes of a server (postmaster and children) inherit the write end of
// the log pipe, so the log copier reaching EOF (logDone) means that every one
// of them has exited.
type run struct {
	proc    *os.Process
	exited  chan struct{} // closed once the postmaster has been waited for
	waitErr error         // set before exited is closed
	logR    *os.File
	logDone chan struct{} // closed once the log pipe is drained and closed
	tail    *tailBuffer
}

// start launches postgres on the data directory and waits until it accepts
// connections. On failure nothing is left running.
func (s *Server) start(ctx context.Context) error {
	sink := s.logOut
	var logFile *os.File
	if sink == nil {
		f, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("open server log: %w", err)
		}
		sink, logFile = f, f
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return errors.Join(fmt.Errorf("make log pipe: %w", err), closeFile(logFile))
	}
	cmd := s.owner.command(filepath.Join(s.bin, "postgres"), "-D", s.dataDir)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = pw, pw
	// Own process group: a ^C in the terminal reaches only the caller, whose
	// death then shuts the server down through the parent-death signal.
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	if err := cmd.Start(); err != nil {
		return errors.Join(fmt.Errorf("start postgres: %w", err), pw.Close(), pr.Close(), closeFile(logFile))
	}
	pw.Close()

	r := &run{
		proc:    cmd.Process,
		exited:  make(chan struct{}),
		logR:    pr,
		logDone: make(chan struct{}),
		tail:    &tailBuffer{max: 8 << 10},
	}
	go func() {
		r.waitErr = cmd.Wait()
		close(r.exited)
	}()
	go func() {
		defer close(r.logDone)
		copyLog(sink, r.tail, pr)
		pr.Close()
		closeFile(logFile)
	}()
	s.mu.Lock()
	s.run = r
	s.mu.Unlock()

	if err := s.waitReady(ctx, r); err != nil {
		return errors.Join(err, s.halt(r, syscall.SIGKILL))
	}
	return nil
}

func closeFile(f *os.File) error {
	if f == nil {
		return nil
	}
	return f.Close()
}

// copyLog copies the server log from r to sink and tail until EOF. It keeps
// draining r when sink fails, so that the server never blocks on its log.
func copyLog(sink io.Writer, tail *tailBuffer, r io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			tail.Write(buf[:n])
			if sink != nil {
				if _, werr := sink.Write(buf[:n]); werr != nil {
					sink = nil
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// waitReady polls the server until a connection succeeds, the postmaster
// exits, or startTimeout passes.
func (s *Server) waitReady(ctx context.Context, r *run) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var lastErr error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgconn.Connect(cctx, s.DSN("postgres"))
		ccancel()
		if err == nil {
			return conn.Close(ctx)
		}
		lastErr = err
		select {
		case <-r.exited:
			select {
			case <-r.logDone:
			case <-time.After(time.Second):
			}
			return fmt.Errorf("postgres on port %d exited during startup: %v; log tail:\n%s", s.port, r.waitErr, strings.TrimSpace(r.tail.String()))
		case <-ctx.Done():
			return fmt.Errorf("postgres on port %d not ready: %w (last error: %v); log tail:\n%s", s.port, ctx.Err(), lastErr, strings.TrimSpace(r.tail.String()))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// last returns the current or last postmaster, nil if never started.
func (s *Server) last() *run {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.run
}

// current returns the postmaster if it is running.
func (s *Server) current() *run {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.run == nil {
		return nil
	}
	select {
	case <-s.run.exited:
		return nil
	default:
		return s.run
	}
}

// Running reports whether the postmaster is running.
func (s *Server) Running() bool { return s.current() != nil }

// PID returns the process id of the running postmaster, 0 when it is not
// running. Every other process of the server is its child.
func (s *Server) PID() int {
	if r := s.current(); r != nil {
		return r.proc.Pid
	}
	return 0
}

// Stop shuts the server down with a fast shutdown (SIGINT) and waits until
// all its processes have exited. If ctx ends first, the server is killed and
// ctx's error returned. Stopping a server that is not running does nothing.
func (s *Server) Stop(ctx context.Context) error {
	return s.stop(ctx, syscall.SIGINT)
}

// ImmediateStop shuts the server down with an immediate shutdown (SIGQUIT):
// no checkpoint, crash recovery runs at the next start.
func (s *Server) ImmediateStop(ctx context.Context) error {
	return s.stop(ctx, syscall.SIGQUIT)
}

// Kill crashes the server: it sends SIGKILL to the postmaster and waits until
// the postmaster and, after they notice its death, all its children have
// exited (children still alive after 3 s are killed too). Crash recovery
// runs at the next start.
func (s *Server) Kill() error {
	r := s.last()
	if r == nil {
		return nil
	}
	return s.halt(r, syscall.SIGKILL)
}

// Restart starts the server again on the same data directory and port,
// stopping it first (fast shutdown) if it is running.
func (s *Server) Restart(ctx context.Context) error {
	if err := s.Stop(ctx); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	if err := s.start(ctx); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	return nil
}

func (s *Server) stop(ctx context.Context, sig syscall.Signal) error {
	r := s.last()
	if r == nil {
		return nil
	}
	select {
	case <-r.exited: // already stopped, or exited on its own
		return s.waitChildren(r)
	default:
	}
	if err := r.proc.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal postgres: %w", err)
	}
	select {
	case <-r.exited:
		return s.waitChildren(r)
	case <-ctx.Done():
		return errors.Join(fmt.Errorf("stop postgres: %w", ctx.Err()), s.halt(r, syscall.SIGKILL))
	}
}

// halt sends sig to the postmaster and waits for all processes to exit.
func (s *Server) halt(r *run, sig syscall.Signal) error {
	if err := r.proc.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal postgres: %w", err)
	}
	<-r.exited
	return s.waitChildren(r)
}

// waitChildren waits until the children of an exited postmaster are gone,
// killing them if they outlive childGrace.
func (s *Server) waitChildren(r *run) error {
	select {
	case <-r.logDone:
		return nil
	case <-time.After(childGrace):
	}
	for _, pid := range s.processes() {
		_ = syscall.Kill(pid, syscall.SIGKILL) // best effort: it may be gone already
	}
	select {
	case <-r.logDone:
		return nil
	case <-time.After(killWait):
		r.logR.Close()
		return fmt.Errorf("processes of postgres %d did not exit", r.proc.Pid)
	}
}

// processes returns the processes whose working directory is the data
// directory: postgres processes chdir there.
func (s *Server) processes() []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	dataDir := s.dataDir
	if resolved, err := filepath.EvalSymlinks(dataDir); err == nil {
		dataDir = resolved
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd")); err == nil && cwd == dataDir {
			pids = append(pids, pid)
		}
	}
	return pids
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
