package apply

import (
	"context"
	"sync"
	"time"

	"github.com/bdr-dev/bdr/decoder"
)

// relay is the bounded buffer between a receiver and its applier, bounded
// by transaction count and by bytes held in memory. A single transaction
// larger than the byte bound is still admitted when the relay is empty.
type relay struct {
	maxItems int
	maxBytes int64

	mu     sync.Mutex
	items  []*decoder.Txn
	bytes  int64
	filled chan struct{} // signalled when items are added
	freed  chan struct{} // signalled when items are taken
}

func newRelay(maxItems int, maxBytes int64) *relay {
	return &relay{
		maxItems: maxItems,
		maxBytes: maxBytes,
		filled:   make(chan struct{}, 1),
		freed:    make(chan struct{}, 1),
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// put queues t, waiting up to wait for room. It reports false when the wait
// ran out (the caller then has a chance to send feedback and try again).
func (r *relay) put(ctx context.Context, t *decoder.Txn, wait time.Duration) (bool, error) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		r.mu.Lock()
		if len(r.items) == 0 || (len(r.items) < r.maxItems && r.bytes+t.Bytes() <= r.maxBytes) {
			r.items = append(r.items, t)
			r.bytes += t.Bytes()
			r.mu.Unlock()
			signal(r.filled)
			return true, nil
		}
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-timer.C:
			return false, nil
		case <-r.freed:
		}
	}
}

// take returns the oldest max transactions queued (all of them when max
// is 0), waiting up to wait for at least one; it returns nothing when the
// wait ran out.
func (r *relay) take(ctx context.Context, wait time.Duration, max int) ([]*decoder.Txn, error) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		r.mu.Lock()
		if len(r.items) > 0 {
			n := len(r.items)
			if max > 0 && n > max {
				n = max
			}
			items := r.items[:n:n]
			if r.items = r.items[n:]; len(r.items) == 0 {
				r.items, r.bytes = nil, 0
			} else {
				for _, t := range items {
					r.bytes -= t.Bytes()
				}
			}
			r.mu.Unlock()
			signal(r.freed)
			return items, nil
		}
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timer.C:
			return nil, nil
		case <-r.filled:
		}
	}
}

// drain closes and drops everything queued (on stream shutdown).
func (r *relay) drain() {
	r.mu.Lock()
	items := r.items
	r.items, r.bytes = nil, 0
	r.mu.Unlock()
	for _, t := range items {
		_ = t.Close()
	}
}
