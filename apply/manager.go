package apply

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bdr-dev/bdr/internal/catalog"
)

// Config configures a Manager.
type Config struct {
	Local   Local  // the node id is given by SetPeers
	DataDir string // spill files go under DataDir/spill
	// Binary asks providers for column values in binary (send/recv) form
	// instead of text: cheaper to convert, but every replicated type must
	// have binary I/O and be the same type on both sides.
	Binary bool
	// ErrorRetry is how long a stream in the error state waits before
	// trying again; 0 means DefaultErrorRetry.
	ErrorRetry time.Duration
	// LockTimeout bounds how long an apply statement waits for a local
	// lock (lock_timeout); the transaction is then retried. 0 means
	// DefaultLockTimeout.
	LockTimeout time.Duration
	// TombstoneEvery is how often the tombstones every peer has gone past
	// are removed (collectTombstones); 0 means DefaultTombstoneEvery.
	TombstoneEvery time.Duration
	Logger         *slog.Logger
	Registry       prometheus.Registerer
	// WriteStatus publishes stream status into the catalog; nil disables it.
	WriteStatus func(ctx context.Context, s []catalog.StreamStatus) error
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case c.Local.Name == "":
		return errors.New("apply: local node name is required")
	case c.Local.DSN == "":
		return errors.New("apply: local dsn is required")
	case c.DataDir == "":
		return errors.New("apply: data dir is required")
	}
	return nil
}

// Manager runs one supervised stream per peer.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	met   *metrics
	pause *pauser
	reqs  chan setRequest

	mu      sync.Mutex
	streams map[string]*running
	pauseT  *time.Timer
}

type running struct {
	s      *stream
	cancel context.CancelFunc
	done   chan struct{}
}

type setRequest struct {
	localID int32
	peers   []Peer
	done    chan struct{}
}

// New returns a Manager; call Run to start it.
func New(cfg Config) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{
		cfg:     cfg,
		log:     log,
		met:     newMetrics(cfg.Registry),
		pause:   newPauser(),
		reqs:    make(chan setRequest),
		streams: map[string]*running{},
	}, nil
}

// Run owns every stream: it starts and stops them as SetPeers asks and
// publishes their status, until ctx ends; then it stops them all.
func (m *Manager) Run(ctx context.Context) error {
	tick := time.NewTicker(statusEveryApply)
	defer tick.Stop()
	tomb := time.NewTicker(cmp.Or(m.cfg.TombstoneEvery, DefaultTombstoneEvery))
	defer tomb.Stop()
	var last []catalog.StreamStatus
	for {
		select {
		case <-ctx.Done():
			m.reconcile(ctx, 0, nil)
			return nil
		case r := <-m.reqs:
			m.reconcile(ctx, r.localID, r.peers)
			close(r.done)
		case <-tick.C:
			last = m.publish(ctx, last)
		case <-tomb.C:
			if err := m.collectTombstones(ctx); err != nil {
				m.log.Warn("removing tombstones", "err", err)
			}
		}
	}
}

// SetPeers makes the running streams exactly those from peers, applied as
// local node localID, and returns once streams no longer wanted have
// stopped (so their origins are free).
func (m *Manager) SetPeers(ctx context.Context, localID int32, peers []Peer) error {
	r := setRequest{localID: localID, peers: peers, done: make(chan struct{})}
	select {
	case m.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *Manager) reconcile(ctx context.Context, localID int32, peers []Peer) {
	want := map[string]Peer{}
	for _, p := range peers {
		want[p.Name] = p
	}
	local := m.cfg.Local
	local.NodeID = localID
	m.mu.Lock()
	var stop []*running
	for name, r := range m.streams {
		if p, ok := want[name]; !ok || !reflect.DeepEqual(p, r.s.peer) || r.s.local != local {
			stop = append(stop, r)
			delete(m.streams, name)
		}
	}
	m.mu.Unlock()
	for _, r := range stop {
		r.cancel()
		<-r.done
		if _, ok := want[r.s.peer.Name]; !ok {
			m.met.forget(r.s.peer.Name)
		}
	}
	if ctx.Err() != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, p := range want {
		if _, ok := m.streams[name]; ok {
			continue
		}
		s := &stream{
			peer: p, local: local, dataDir: m.cfg.DataDir, binary: m.cfg.Binary,
			errorRetry: cmp.Or(m.cfg.ErrorRetry, DefaultErrorRetry), lockTimeout: cmp.Or(m.cfg.LockTimeout, DefaultLockTimeout),
			log: m.log.With("peer", p.Name), met: m.met.stream(p.Name), pause: m.pause,
			wake: make(chan struct{}, 1), retryPark: make(chan struct{}, 1),
		}
		s.setState(StateConnecting, nil)
		sctx, cancel := context.WithCancel(ctx)
		r := &running{s: s, cancel: cancel, done: make(chan struct{})}
		m.streams[name] = r
		go func() {
			defer close(r.done)
			s.supervise(sctx)
		}()
	}
}

// Retry makes the stream from peer, if it is waiting to retry after a lost
// connection, try again now: membership calls it when the peer is seen up
// again, so a stream does not sit out a long backoff.
func (m *Manager) Retry(peer string) {
	m.mu.Lock()
	r, ok := m.streams[peer]
	m.mu.Unlock()
	if ok {
		r.s.retry()
	}
}

// RetryParked makes the stream from peer retry every transaction it has
// parked now, instead of at their next retry time.
func (m *Manager) RetryParked(peer string) error {
	m.mu.Lock()
	r, ok := m.streams[peer]
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("no stream from %s on this node", peer)
	}
	select {
	case r.s.retryPark <- struct{}{}:
	default: // one is already asked for
	}
	return nil
}

// Status returns the status of every stream, by peer name.
func (m *Manager) Status() []StreamStatus {
	m.mu.Lock()
	out := make([]StreamStatus, 0, len(m.streams))
	for _, r := range m.streams {
		out = append(out, r.s.status())
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Peer < out[j].Peer })
	return out
}

func (m *Manager) publish(ctx context.Context, last []catalog.StreamStatus) []catalog.StreamStatus {
	var cur []catalog.StreamStatus
	for _, s := range m.Status() {
		cur = append(cur, catalog.StreamStatus{Peer: s.Peer, State: s.State, LagBytes: s.LagBytes,
			LagSeconds: s.LagSeconds, LastCommitTime: s.LastCommit, LastError: s.LastError, Parked: s.Parked})
	}
	if m.cfg.WriteStatus == nil || reflect.DeepEqual(cur, last) {
		return last
	}
	if err := m.cfg.WriteStatus(ctx, cur); err != nil {
		m.log.Debug("publish stream status", "err", err)
		return last
	}
	return cur
}

// Pause holds every applier between transactions, for at most lease, and
// returns once none is applying. Resume ends it earlier.
func (m *Manager) Pause(ctx context.Context, lease time.Duration) error {
	gen, err := m.pause.pause(ctx)
	if err != nil {
		return fmt.Errorf("pause appliers: %w", err)
	}
	m.mu.Lock()
	if m.pauseT != nil {
		m.pauseT.Stop()
	}
	m.pauseT = time.AfterFunc(lease, func() { m.pause.resume(gen) })
	m.mu.Unlock()
	return nil
}

// Resume ends a pause.
func (m *Manager) Resume() {
	m.mu.Lock()
	if m.pauseT != nil {
		m.pauseT.Stop()
		m.pauseT = nil
	}
	m.mu.Unlock()
	m.pause.resume(m.pause.generation())
}

// WaitProcessed waits until the stream from peer has processed (applied or
// skipped) everything up to lsn on the peer.
func (m *Manager) WaitProcessed(ctx context.Context, peer string, lsn uint64) error {
	for {
		m.mu.Lock()
		r, ok := m.streams[peer]
		m.mu.Unlock()
		if !ok {
			return fmt.Errorf("no stream from %s", peer)
		}
		r.s.mu.Lock()
		t := r.s.track
		r.s.mu.Unlock()
		if t != nil {
			if t.processedPast(lsn) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
