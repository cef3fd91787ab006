package apply

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/bdr-dev/bdr/decoder"
	"github.com/bdr-dev/bdr/internal/catalog"
	"github.com/bdr-dev/bdr/internal/pgerr"
)

// Stream states, as shown by bdrctl status and bdr.node_status.
const (
	StateConnecting = "connecting"
	StateStreaming  = "streaming"
	StateRetrying   = "retrying" // a transient error; retrying with backoff
	StateError      = "error"    // the same work keeps failing; needs the operator
	StateStopped    = "stopped"
)

// Supervision timings.
const (
	minBackoff = 250 * time.Millisecond
	maxBackoff = 30 * time.Second
	// DefaultErrorRetry is how long a stream in the error state waits
	// before trying again.
	DefaultErrorRetry = time.Minute
	// DefaultLockTimeout is how long an apply statement waits for a lock
	// held by a local session before the transaction is retried: the
	// stream never waits on a local session forever, and a deadlock with
	// one is broken by PostgreSQL within deadlock_timeout.
	DefaultLockTimeout = 30 * time.Second
	healthyRun         = 30 * time.Second
	permanentAfter     = 5 // failures at the same position before the error state
	relayItems         = 10000
	relayBytes         = 64 << 20
	decoderMemLimit    = 8 << 20
	spillDirName       = "spill"
	statusEveryApply   = time.Second
)

// Peer is a node this node streams changes from.
type Peer struct {
	Name   string
	NodeID int32
	DSN    string // how to reach the peer's PostgreSQL
}

// Local is this node.
type Local struct {
	Name   string
	NodeID int32
	DSN    string // the local PostgreSQL
}

// StreamStatus describes one incoming stream.
type StreamStatus struct {
	Peer       string    `json:"peer"`
	NodeID     int32     `json:"node_id"`
	State      string    `json:"state"`
	Since      time.Time `json:"since"`
	LagBytes   int64     `json:"lag_bytes"`
	LagSeconds float64   `json:"lag_seconds"`
	LastCommit time.Time `json:"last_applied_commit_time"`
	LastError  string    `json:"last_error,omitempty"`
	Paused     bool      `json:"paused,omitempty"`
	// Parked is how many transactions from the peer wait in bdr.apply_errors.
	Parked int64 `json:"parked"`
}

// stream is the supervised incoming stream from one peer.
type stream struct {
	peer        Peer
	local       Local
	dataDir     string
	binary      bool
	errorRetry  time.Duration
	lockTimeout time.Duration
	log         *slog.Logger
	met         *streamMetrics
	pause       *pauser
	mu          sync.Mutex
	state       string
	since       time.Time
	lastErr     string
	track       *tracker // of the current run, nil between runs
	failedAt    decoder.LSN
	failures    int
	wake        chan struct{} // cuts a backoff wait short (the peer is back)
	parked      atomic.Int64  // parked transactions, as the applier last counted them
	retryPark   chan struct{} // asks the applier to retry every parked transaction now
}

func (s *stream) setState(state string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != state {
		s.state, s.since = state, time.Now()
	}
	if err != nil {
		s.lastErr = err.Error()
	} else if state == StateStreaming {
		s.lastErr = ""
	}
	if state == StateStreaming {
		s.met.up.Set(1)
	} else {
		s.met.up.Set(0)
	}
}

func (s *stream) status() StreamStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := StreamStatus{Peer: s.peer.Name, NodeID: s.peer.NodeID, State: s.state, Since: s.since,
		LastError: s.lastErr, Paused: s.pause.isPaused(), Parked: s.parked.Load()}
	if s.track != nil {
		st.LagBytes, st.LagSeconds = s.track.lag(time.Now())
		st.LastCommit = s.track.last()
		s.met.lag.Set(st.LagSeconds)
		s.met.lagBytes.Set(float64(st.LagBytes))
	}
	return st
}

// supervise runs the stream until ctx ends, restarting it after failures.
func (s *stream) supervise(ctx context.Context) {
	backoff := minBackoff
	for {
		started := time.Now()
		err := s.runOnce(ctx)
		if ctx.Err() != nil {
			s.setState(StateStopped, nil)
			return
		}
		if time.Since(started) > healthyRun {
			backoff = minBackoff
		}
		class := pgerr.Classify(err)
		s.met.errors.WithLabelValues(class.String()).Inc()
		wait := backoff
		if s.permanent(class) {
			s.setState(StateError, err)
			s.log.Error("stream failed; will retry", "class", class.String(), "err", err, "retry_in", s.errorRetry)
			wait = s.errorRetry
		} else {
			s.setState(StateRetrying, err)
			s.log.Warn("stream interrupted; retrying", "class", class.String(), "err", err, "retry_in", backoff)
			backoff = min(backoff*2, maxBackoff)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			s.setState(StateStopped, nil)
			return
		case <-t.C:
		case <-s.wake:
			t.Stop()
			backoff = minBackoff
		}
	}
}

// retry cuts the current backoff wait short, if the stream is retrying
// after a transient failure (a stream in the error state keeps its wait:
// its cause is not the peer's absence).
func (s *stream) retry() {
	s.mu.Lock()
	retrying := s.state == StateRetrying
	s.mu.Unlock()
	if retrying {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// permanent decides whether a failure needs the operator: fatal errors do,
// and so does a conflict that keeps failing the same transaction. Lost
// connections never do: a peer that is down is retried until it is back.
func (s *stream) permanent(class pgerr.Class) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	var pos decoder.LSN
	if s.track != nil {
		pos, _ = s.track.position()
	}
	if pos == s.failedAt {
		s.failures++
	} else {
		s.failedAt, s.failures = pos, 1
	}
	return class == pgerr.Fatal || (class == pgerr.Conflict && s.failures >= permanentAfter)
}

// runOnce connects both sides and streams until an error.
func (s *stream) runOnce(ctx context.Context) (err error) {
	defer recoverTo(&err)
	s.setState(StateConnecting, nil)
	app, start, err := connectApplier(ctx, s.peer, s.local, s.lockTimeout)
	if err != nil {
		return err
	}
	defer func() { _ = app.conn.Close(context.Background()) }()

	rconn, err := connectReplication(ctx, s.peer.DSN, "bdr_"+s.local.Name)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", s.peer.Name, err)
	}
	defer func() { _ = rconn.Close(context.Background()) }()

	dec, err := decoder.New(decoder.Config{
		SpillDir:    filepath.Join(s.dataDir, spillDirName, s.peer.Name),
		MemLimit:    decoderMemLimit,
		SkipSchemas: []string{catalog.Schema},
		KeepTables:  replicatedTables(),
		Logger:      s.log,
	})
	if err != nil {
		return err
	}
	defer dec.Close()

	track := newTracker(start)
	rl := newRelay(relayItems, relayBytes)
	defer rl.drain()
	rcv := &receiver{peer: s.peer, local: s.local, binary: s.binary, conn: rconn, dec: dec, relay: rl, track: track, met: s.met, log: s.log}
	if err := rcv.start(ctx, start); err != nil {
		return err
	}
	app.log, app.met, app.relay, app.track, app.pause = s.log, s.met, rl, track, s.pause
	app.errorRetry, app.retryNow, app.parks.count = s.errorRetry, s.retryPark, &s.parked
	s.mu.Lock()
	s.track = track
	s.mu.Unlock()
	s.setState(StateStreaming, nil)
	s.log.Info("streaming", "from", start.String())

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) { defer recoverTo(&err); return rcv.run(gctx) })
	g.Go(func() (err error) { defer recoverTo(&err); return app.run(gctx) })
	return g.Wait()
}

// recoverTo turns a panic into an error so one bad stream cannot take the
// daemon down.
func recoverTo(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
	}
}

// replicatedTables names bdr's replicated tables as the decoder's
// KeepTables.
func replicatedTables() []string {
	var out []string
	for _, t := range catalog.ReplicatedTables() {
		out = append(out, catalog.Schema+"."+t)
	}
	return out
}
