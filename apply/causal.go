package apply

import (
	"context"
	"sync"
	"time"

	"github.com/bdr-dev/bdr/decoder"
)

// Causal order across streams.
//
// Node A inserts a row; B applies the insert, then changes the row. C gets
// both from two streams, which race: B's change may come first, find no
// row and be skipped for good, then A's insert arrives. To prevent that,
// each transaction an applier of B commits for peer A carries a logical
// message saying "A's transaction ending at X is applied" (stmtApplied);
// the decoder of C's stream from B hands it out as a dependency, and C's
// applier for B applies nothing that follows it in B's stream before C's
// own stream from A has processed A up to X. Dependencies on C itself are
// satisfied by definition, those on a node C does not stream from (parted)
// are ignored, and the wait is bounded (Config.CausalWait), so that a
// dead or stuck stream from A never stalls the stream from B: past the
// bound the applier goes on, and until the stream from A reaches what was
// waited for, it does not wait for A again (one timeout per episode).

// DefaultCausalWait bounds how long a stream waits for another stream of
// the node to apply what its peer had applied before a transaction.
const DefaultCausalWait = 30 * time.Second

// causalPoll is how often a waiting applier looks again without a wake-up
// (the stream waited for restarted and has a new tracker, a pause began).
const causalPoll = 50 * time.Millisecond

// causality knows the streams of this node by peer node id. Safe for
// concurrent use.
type causality struct {
	bound time.Duration

	mu      sync.Mutex
	local   int32
	streams map[int32]*stream
}

func newCausality(bound time.Duration) *causality {
	return &causality{bound: bound, streams: map[int32]*stream{}}
}

// set records the streams this node runs, as local node local.
func (c *causality) set(local int32, running map[string]*running) {
	streams := make(map[int32]*stream, len(running))
	for _, r := range running {
		streams[r.s.peer.NodeID] = r.s
	}
	c.mu.Lock()
	c.local, c.streams = local, streams
	c.mu.Unlock()
}

// reached reports whether dep is satisfied: this node's stream from
// dep.Node has processed dep.Node's transactions up to dep.LSN, or dep
// does not concern this node's streams (relevant false: dep.Node is this
// node or not one it streams from). When it is not, wake (nil while that
// stream is not running) is closed when the stream moves on.
func (c *causality) reached(dep decoder.Dependency) (ok, relevant bool, wake <-chan struct{}) {
	c.mu.Lock()
	s := c.streams[dep.Node]
	self := dep.Node == c.local
	c.mu.Unlock()
	if s == nil || self {
		return true, false, nil
	}
	s.mu.Lock()
	t := s.track
	s.mu.Unlock()
	if t == nil {
		return false, true, nil
	}
	ok, wake = t.reached(dep.LSN)
	return ok, true, wake
}

// satisfied reports whether every dependency of deps is satisfied now
// (all are when c is nil).
func (c *causality) satisfied(deps []decoder.Dependency) bool {
	if c == nil {
		return true
	}
	for _, d := range deps {
		if ok, _, _ := c.reached(d); !ok {
			return false
		}
	}
	return true
}

// depState is an applier's dependencies not yet known satisfied, and its
// episodes: per node, the position whose wait ran out; no wait for that
// node until its stream gets there.
type depState struct {
	pending []decoder.Dependency
	gaveUp  map[int32]decoder.LSN
}

// note adds the dependencies of a transaction, the newest per node.
func (s *depState) note(deps []decoder.Dependency) {
next:
	for _, d := range deps {
		for i := range s.pending {
			if s.pending[i].Node == d.Node {
				s.pending[i].LSN = max(s.pending[i].LSN, d.LSN)
				continue next
			}
		}
		s.pending = append(s.pending, d)
	}
}

// awaitDeps waits, before the next transaction of b is sent, until the
// dependencies noted so far are satisfied, or the bound runs out. The
// transactions of b in flight are committed first, so the applier waits
// holding no lock.
func (a *applier) awaitDeps(ctx context.Context, b *batch) error {
	if len(a.deps.pending) == 0 || a.causal == nil {
		a.deps.pending = a.deps.pending[:0]
		return nil
	}
	waiting := a.deps.pending[:0]
	for _, d := range a.deps.pending {
		ok, relevant, _ := a.causal.reached(d)
		if gave, on := a.deps.gaveUp[d.Node]; on {
			if ok || !relevant {
				a.endEpisode(d.Node)
			} else if r, _, _ := a.causal.reached(decoder.Dependency{Node: d.Node, LSN: gave}); r {
				a.endEpisode(d.Node)
			} else {
				continue // the wait for this node ran out: not again in this episode
			}
		}
		if !ok {
			waiting = append(waiting, d)
		}
	}
	a.deps.pending = waiting
	if len(waiting) == 0 {
		return nil
	}
	if err := b.sync(ctx); err != nil {
		return err
	}
	a.met.causalWaits.Inc()
	deadline := time.Now().Add(a.causal.bound)
	for _, d := range waiting {
		if err := a.awaitDep(ctx, d, deadline); err != nil {
			return err
		}
	}
	a.deps.pending = a.deps.pending[:0]
	return nil
}

// awaitDep waits until dep is satisfied or the deadline passes; a pause
// gets in meanwhile (the stream waited for may be paused too).
func (a *applier) awaitDep(ctx context.Context, dep decoder.Dependency, deadline time.Time) error {
	start := time.Now()
	for {
		ok, _, wake := a.causal.reached(dep)
		if ok {
			a.log.Debug("causal wait over", "node_id", dep.Node, "lsn", dep.LSN.String(), "waited", time.Since(start))
			return nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			a.met.causalTimeouts.Inc()
			if a.deps.gaveUp == nil {
				a.deps.gaveUp = map[int32]decoder.LSN{}
			}
			a.deps.gaveUp[dep.Node] = dep.LSN
			a.log.Warn("causal wait ran out: applying without waiting for that node until this node's stream from it gets there",
				"node_id", dep.Node, "lsn", dep.LSN.String(), "waited", time.Since(start))
			return nil
		}
		if err := a.pause.yield(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake: // nil while the stream is not running
		case <-time.After(min(left, causalPoll)):
		}
	}
}

func (a *applier) endEpisode(node int32) {
	delete(a.deps.gaveUp, node)
	a.log.Info("causal waits for node resume: this node's stream from it got past the wait that ran out", "node_id", node)
}
