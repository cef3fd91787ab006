package apply

import (
	"io"
	"time"
)

// A caught-up walsender writes every pgoutput message as soon as it is
// decoded, so a receiver that keeps up reads one small message per system
// call and wakes up for each: on PostgreSQL 15, where every peer sends back
// each transaction this node applied (to be dropped by origin), that cost
// more CPU in bdrd than the apply itself. coalescingReader waits a moment
// before reading again after a short read, so a trickle of messages is read
// in one go; a stream that is idle (the last read long ago) or busy (full
// reads) is read at once.
type coalescingReader struct {
	r    io.Reader
	wait time.Duration // how long to let data gather after a short read
	last time.Time     // end of the last short read; zero after a full one
}

const (
	// coalesceWait adds at most this much latency to a message, and only
	// while messages arrive faster than one per coalesceWait.
	coalesceWait = time.Millisecond
	// shortRead is a read that did not fill much of the buffer.
	shortRead = 2048
)

func (c *coalescingReader) Read(p []byte) (int, error) {
	if !c.last.IsZero() && len(p) > shortRead {
		if since := time.Since(c.last); since < c.wait {
			time.Sleep(c.wait - since)
		}
	}
	n, err := c.r.Read(p)
	if n < shortRead && n < len(p) {
		c.last = time.Now()
	} else {
		c.last = time.Time{}
	}
	return n, err
}
