package decoder

import (
	"errors"
	"unsafe"
)

// Approximate in-memory cost of the parts of a change, for Txn.Bytes.
const (
	changeOverhead = int64(unsafe.Sizeof(Change{}))
	valueOverhead  = int64(unsafe.Sizeof(Value{}))
	pointerSize    = int64(unsafe.Sizeof((*Relation)(nil)))
	mapEntryCost   = 16 // per entry of the small per-transaction maps
	chunkLen       = 256
)

var errTxnClosed = errors.New("txn closed")

// changeLog holds the changes of one transaction: in memory while they fit
// under the memory limit, then (and always for streamed transactions) in a
// spill file. The decoder goroutine appends; once the transaction is
// handed out the log is read-only until close.
type changeLog struct {
	count    int   // changes Each will deliver
	memBytes int64 // approximate memory held

	top      uint32 // xid of the top-level transaction
	streamed bool
	chunks   [][]Change // in-memory changes, chunkLen per chunk
	closed   bool

	// Spilled transactions only.
	file    *spillFile
	rels    []*Relation          // relation table; records hold indexes into it
	relIdx  map[*Relation]uint64 // inverse of rels
	subs    map[uint32]int       // changes per subtransaction (not counting top)
	aborted map[uint32]bool      // aborted subtransactions, skipped by Each
}

func newChangeLog(top uint32, streamed bool) *changeLog {
	return &changeLog{top: top, streamed: streamed}
}

// add appends a change made by subtransaction sub (top for the
// transaction itself). Values of ch may alias a message: they are copied.
func (c *changeLog) add(ch *Change, sub uint32, sp *spiller, memLimit int64) error {
	if c.aborted[sub] {
		return nil
	}
	if c.file == nil && !c.streamed {
		size := changeSize(ch)
		if c.memBytes+size <= memLimit {
			c.appendMem(detached(ch))
			c.memBytes += size
			c.count++
			return nil
		}
	}
	w, err := sp.attach(c)
	if err != nil {
		return err
	}
	if c.chunks != nil {
		// The transaction outgrew the memory limit: move what it has.
		for _, chunk := range c.chunks {
			for i := range chunk {
				if err := c.write(w, &chunk[i], c.top); err != nil {
					return err
				}
			}
		}
		c.chunks = nil
	}
	if err := c.write(w, ch, sub); err != nil {
		return err
	}
	c.count++
	if sub != c.top {
		if c.subs == nil {
			c.subs = make(map[uint32]int)
		}
		c.subs[sub]++
	}
	c.memBytes = c.spilledBytes()
	return nil
}

// appendMem adds a change to the in-memory chunks. The first chunk grows
// with append from nothing, so a small transaction holds a small slice;
// further chunks are allocated at chunkLen.
func (c *changeLog) appendMem(ch Change) {
	n := len(c.chunks)
	switch {
	case n == 0:
		c.chunks = [][]Change{nil}
		n = 1
	case len(c.chunks[n-1]) == chunkLen:
		c.chunks = append(c.chunks, make([]Change, 0, chunkLen))
		n++
	}
	c.chunks[n-1] = append(c.chunks[n-1], ch)
}

// abortSub discards the changes of an aborted subtransaction.
func (c *changeLog) abortSub(sub uint32) {
	if c.aborted == nil {
		c.aborted = make(map[uint32]bool)
	}
	c.aborted[sub] = true
	c.count -= c.subs[sub]
	delete(c.subs, sub)
	if c.file != nil {
		c.memBytes = c.spilledBytes()
	}
}

// dropAll discards every change so far (the transaction turned out to be
// filtered); later changes are not added by the decoder.
func (c *changeLog) dropAll() error {
	var err error
	if c.file != nil {
		err = c.file.remove()
		c.file = nil
	}
	c.chunks, c.rels, c.relIdx, c.subs = nil, nil, nil, nil
	c.count, c.memBytes = 0, 0
	return err
}

func (c *changeLog) close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	return c.dropAll()
}

func (c *changeLog) each(fn func(*Change) error) error {
	if c.closed {
		return errTxnClosed
	}
	if c.file != nil {
		return c.eachSpilled(fn)
	}
	for _, chunk := range c.chunks {
		for i := range chunk {
			if err := fn(&chunk[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// relIndex returns r's index in the relation table, adding it if new.
func (c *changeLog) relIndex(r *Relation) uint64 {
	if i, ok := c.relIdx[r]; ok {
		return i
	}
	if c.relIdx == nil {
		c.relIdx = make(map[*Relation]uint64)
	}
	i := uint64(len(c.rels))
	c.rels = append(c.rels, r)
	c.relIdx[r] = i
	return i
}

// spilledBytes is what a spilled transaction keeps in memory.
func (c *changeLog) spilledBytes() int64 {
	return int64(len(c.rels))*(pointerSize+mapEntryCost) +
		int64(len(c.subs)+len(c.aborted))*mapEntryCost
}

// changeSize is the approximate memory a change takes once detached.
func changeSize(ch *Change) int64 {
	n := changeOverhead + int64(len(ch.Rels))*pointerSize
	for _, t := range [2]Tuple{ch.Old, ch.New} {
		n += int64(len(t)) * valueOverhead
		for _, v := range t {
			n += int64(len(v.Data))
		}
	}
	return n
}
