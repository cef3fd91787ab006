package apply

import (
	"sync"
	"time"

	"github.com/bdr-dev/bdr/decoder"
)

// tracker follows every received transaction until its local commit is
// flushed, and computes the position that may be confirmed to the provider:
// the end of the longest prefix of received transactions that are applied
// and flushed locally, or skipped (DESIGN rule 1: never confirm what was
// only received).
//
// The receiver calls received, the applier calls done and flushed; both read
// confirmable/lag. Safe for concurrent use.
type tracker struct {
	mu       sync.Mutex
	queue    []trackEntry // received and not yet confirmable, in stream order
	applied  int          // queue[:applied] are done (applied or skipped)
	flushLSN decoder.LSN  // local WAL flushed up to here
	confirm  decoder.LSN  // confirmable provider position

	serverEnd   decoder.LSN // provider's WAL end, from the latest message
	midTxn      bool        // the decoder is inside a transaction being received
	processed   decoder.LSN // end of the last transaction done
	lastCommit  time.Time   // commit time of the last transaction applied
	lastApplied time.Time   // when it was applied
	// horizon: every transaction the provider committed before this time
	// (its clock) is done here, give or take the commits in flight at a
	// keepalive (see horizonAt); zero until known.
	horizon time.Time
}

type trackEntry struct {
	end    decoder.LSN
	commit time.Time
	local  decoder.LSN // local commit position; 0 for skipped transactions
}

func newTracker(start decoder.LSN) *tracker {
	return &tracker{confirm: start, processed: start}
}

func (t *tracker) received(end decoder.LSN, commit time.Time) {
	t.mu.Lock()
	t.queue = append(t.queue, trackEntry{end: end, commit: commit})
	t.mu.Unlock()
}

// skip records a transaction that is skipped (filtered by origin, or
// empty) and done at once, when every transaction received before it is
// done too; it reports false, recording nothing, when some are still
// pending: the transaction must then go through the applier, in order.
func (t *tracker) skip(end decoder.LSN, commit time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.applied < len(t.queue) {
		return false
	}
	t.queue = append(t.queue, trackEntry{end: end, commit: commit})
	t.doneLocked(0, false)
	return true
}

// done marks the oldest pending transaction as applied with its local
// commit at or before local, or skipped when local is 0.
func (t *tracker) done(local decoder.LSN, applied bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.doneLocked(local, applied)
}

func (t *tracker) doneLocked(local decoder.LSN, applied bool) {
	if t.applied >= len(t.queue) {
		return
	}
	e := &t.queue[t.applied]
	e.local = local
	t.applied++
	t.processed = e.end
	if e.commit.After(t.horizon) {
		t.horizon = e.commit
	}
	if applied {
		t.lastCommit = e.commit
		t.lastApplied = time.Now()
	}
	t.advance()
}

// flushed records that local WAL is durable up to lsn.
func (t *tracker) flushed(lsn decoder.LSN) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if lsn > t.flushLSN {
		t.flushLSN = lsn
	}
	t.advance()
}

func (t *tracker) advance() {
	n := 0
	for n < t.applied && (t.queue[n].local == 0 || t.queue[n].local <= t.flushLSN) {
		if t.queue[n].end > t.confirm {
			t.confirm = t.queue[n].end
		}
		n++
	}
	if n > 0 {
		t.queue = append(t.queue[:0], t.queue[n:]...)
		t.applied -= n
	}
}

// unflushed reports whether applied transactions wait for a local flush.
func (t *tracker) unflushed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.applied > 0
}

// serverPosition records the provider's WAL end seen in a message, and
// whether the decoder is in the middle of a transaction after it.
func (t *tracker) serverPosition(end decoder.LSN, midTxn bool) {
	t.mu.Lock()
	if end > t.serverEnd {
		t.serverEnd = end
	}
	t.midTxn = midTxn
	t.mu.Unlock()
}

// keepalive records a keepalive sent at the provider's time at: when the
// stream has nothing pending and the decoder is between transactions, the
// provider's commits before it are done here (a logical walsender sends
// keepalives once it has sent what it decoded; a commit whose time was
// taken but whose record was not yet written may still come, hence the
// margin of the tombstone collection).
func (t *tracker) keepalive(at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.queue) == 0 && !t.midTxn && at.After(t.horizon) {
		t.horizon = at
	}
}

// horizonAt returns the horizon (see tracker.horizon).
func (t *tracker) horizonAt() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.horizon
}

// confirmable returns the position to confirm. When nothing received is
// pending and the decoder is between transactions, everything the provider
// sent up to serverEnd has been dealt with and is confirmable too.
func (t *tracker) confirmable(decoderIdle bool) decoder.LSN {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.queue) == 0 && decoderIdle && t.serverEnd > t.confirm {
		t.confirm = t.serverEnd
		if t.serverEnd > t.processed {
			t.processed = t.serverEnd
		}
	}
	return t.confirm
}

// lag returns how far behind the provider this stream is: bytes of WAL not
// yet processed, and the age of the oldest received transaction not applied.
func (t *tracker) lag(now time.Time) (bytes int64, seconds float64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.serverEnd > t.processed && (len(t.queue) > 0 || t.midTxn) {
		bytes = int64(t.serverEnd - t.processed)
	}
	if t.applied < len(t.queue) {
		if d := now.Sub(t.queue[t.applied].commit).Seconds(); d > 0 {
			seconds = d
		}
	}
	return bytes, seconds
}

// last returns the commit time of the last applied transaction.
func (t *tracker) last() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lastCommit
}

// position returns the end of the last transaction processed.
func (t *tracker) position() (decoder.LSN, time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.processed, t.lastCommit
}

// processedPast reports whether everything the provider committed before
// lsn has been applied or skipped: either a processed transaction ended at
// or after lsn, or the provider's stream is idle past it.
func (t *tracker) processedPast(lsn uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return uint64(t.processed) >= lsn || (len(t.queue) == 0 && uint64(t.confirm) >= lsn)
}
