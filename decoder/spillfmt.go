package decoder

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// Spill file format. After the 8-byte magic, one record per change:
//
//	op      byte    Op
//	flags   byte    flagOld|flagNew|flagCascade|flagRestartIdentity
//	subxid  uint32  little endian: the (sub)transaction that made the change
//	size    uvarint length of body, so aborted subtransactions are skipped unread
//	body:
//	  insert/update/delete: rel uvarint, [old tuple], [new tuple]
//	  truncate:             n uvarint, n × rel uvarint
//	tuple:  ncols uvarint, then per column kind byte ('n','u','t','b'),
//	        and for 't' and 'b': len uvarint, data
//
// rel is an index into the transaction's relation table, kept in memory.
const spillMagic = "BDRSPL01"

const (
	flagOld = 1 << iota
	flagNew
	flagCascade
	flagRestartIdentity
)

const maxRecord = 1 << 36 // sanity bound on a record's body

func (c *changeLog) write(w *bufio.Writer, ch *Change, sub uint32) error {
	var flags byte
	var size int
	var rel uint64
	if ch.Op == Truncate {
		if ch.Cascade {
			flags |= flagCascade
		}
		if ch.RestartIdentity {
			flags |= flagRestartIdentity
		}
		size = uvarintLen(uint64(len(ch.Rels)))
		for _, r := range ch.Rels {
			size += uvarintLen(c.relIndex(r))
		}
	} else {
		rel = c.relIndex(ch.Rel)
		size = uvarintLen(rel)
		if ch.Old != nil {
			flags |= flagOld
			size += tupleLen(ch.Old)
		}
		if ch.New != nil {
			flags |= flagNew
			size += tupleLen(ch.New)
		}
	}
	b := w.AvailableBuffer()
	b = append(b, byte(ch.Op), flags)
	b = binary.LittleEndian.AppendUint32(b, sub)
	b = binary.AppendUvarint(b, uint64(size))
	if ch.Op == Truncate {
		b = binary.AppendUvarint(b, uint64(len(ch.Rels)))
		for _, r := range ch.Rels {
			b = binary.AppendUvarint(b, c.relIndex(r))
		}
	} else {
		b = binary.AppendUvarint(b, rel)
	}
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("spill: write %s: %w", c.file.path, err)
	}
	for _, t := range [2]Tuple{ch.Old, ch.New} {
		if t == nil {
			continue
		}
		if err := writeTuple(w, t); err != nil {
			return fmt.Errorf("spill: write %s: %w", c.file.path, err)
		}
	}
	return nil
}

func writeTuple(w *bufio.Writer, t Tuple) error {
	b := binary.AppendUvarint(w.AvailableBuffer(), uint64(len(t)))
	for _, v := range t {
		b = append(b, byte(v.Kind))
		if v.Kind != Text && v.Kind != Binary {
			continue
		}
		b = binary.AppendUvarint(b, uint64(len(v.Data)))
		if len(v.Data) > 256 {
			// Large values go straight through; only small ones are
			// gathered into the buffer.
			if _, err := w.Write(b); err != nil {
				return err
			}
			if _, err := w.Write(v.Data); err != nil {
				return err
			}
			b = w.AvailableBuffer()
			continue
		}
		b = append(b, v.Data...)
	}
	_, err := w.Write(b)
	return err
}

func tupleLen(t Tuple) int {
	n := uvarintLen(uint64(len(t)))
	for _, v := range t {
		n++
		if v.Kind == Text || v.Kind == Binary {
			n += uvarintLen(uint64(len(v.Data))) + len(v.Data)
		}
	}
	return n
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// eachSpilled reads the spill file change by change. The Change, its
// tuples and their data are reused from one call of fn to the next.
func (c *changeLog) eachSpilled(fn func(*Change) error) error {
	f, err := os.Open(c.file.path)
	if err != nil {
		return fmt.Errorf("read spilled txn %d: %w", c.top, err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 64<<10)
	rd := spillReader{rels: c.rels}
	var magic [len(spillMagic)]byte
	if _, err := io.ReadFull(r, magic[:]); err != nil || string(magic[:]) != spillMagic {
		return fmt.Errorf("read spilled txn %d: %s: bad header", c.top, c.file.path)
	}
	n := 0
	for {
		var hdr [6]byte
		if _, err := io.ReadFull(r, hdr[:]); err == io.EOF {
			break
		} else if err != nil {
			return fmt.Errorf("read spilled txn %d: %s: %w", c.top, c.file.path, err)
		}
		size, err := binary.ReadUvarint(r)
		if err == nil && size > maxRecord {
			err = errors.New("record too large")
		}
		if err != nil {
			return fmt.Errorf("read spilled txn %d: %s: %w", c.top, c.file.path, err)
		}
		if c.aborted[binary.LittleEndian.Uint32(hdr[2:])] {
			if _, err := r.Discard(int(size)); err != nil {
				return fmt.Errorf("read spilled txn %d: %s: %w", c.top, c.file.path, err)
			}
			continue
		}
		if cap(rd.buf) < int(size) {
			rd.buf = make([]byte, size)
		}
		rd.buf = rd.buf[:size]
		if _, err := io.ReadFull(r, rd.buf); err != nil {
			return fmt.Errorf("read spilled txn %d: %s: %w", c.top, c.file.path, err)
		}
		if err := rd.decode(Op(hdr[0]), hdr[1]); err != nil {
			return fmt.Errorf("read spilled txn %d: %s: record %d: %w", c.top, c.file.path, n, err)
		}
		n++
		if err := fn(&rd.ch); err != nil {
			return err
		}
	}
	if n != c.count {
		return fmt.Errorf("read spilled txn %d: %s: %d changes, want %d", c.top, c.file.path, n, c.count)
	}
	return nil
}

// spillReader decodes records into reused storage.
type spillReader struct {
	rels     []*Relation
	buf      []byte // current record body
	pos      int
	ch       Change
	old, new Tuple
	trunc    []*Relation
}

var errCorrupt = errors.New("corrupt record")

func (rd *spillReader) decode(op Op, flags byte) error {
	rd.pos = 0
	rd.ch = Change{Op: op}
	switch op {
	case Insert, Update, Delete:
		rel, err := rd.rel()
		if err != nil {
			return err
		}
		rd.ch.Rel = rel
		if flags&flagOld != 0 {
			if rd.old, err = rd.tuple(rd.old[:0]); err != nil {
				return err
			}
			rd.ch.Old = nonNil(rd.old)
		}
		if flags&flagNew != 0 {
			if rd.new, err = rd.tuple(rd.new[:0]); err != nil {
				return err
			}
			rd.ch.New = nonNil(rd.new)
		}
	case Truncate:
		n, err := rd.uvarint()
		if err != nil || n > uint64(len(rd.buf)) {
			return errCorrupt
		}
		rd.trunc = rd.trunc[:0]
		for range n {
			rel, err := rd.rel()
			if err != nil {
				return err
			}
			rd.trunc = append(rd.trunc, rel)
		}
		rd.ch.Rels = rd.trunc
		rd.ch.Cascade = flags&flagCascade != 0
		rd.ch.RestartIdentity = flags&flagRestartIdentity != 0
	default:
		return errCorrupt
	}
	if rd.pos != len(rd.buf) {
		return errCorrupt
	}
	return nil
}

func (rd *spillReader) uvarint() (uint64, error) {
	v, n := binary.Uvarint(rd.buf[rd.pos:])
	if n <= 0 {
		return 0, errCorrupt
	}
	rd.pos += n
	return v, nil
}

func (rd *spillReader) rel() (*Relation, error) {
	i, err := rd.uvarint()
	if err != nil || i >= uint64(len(rd.rels)) {
		return nil, errCorrupt
	}
	return rd.rels[i], nil
}

func (rd *spillReader) tuple(t Tuple) (Tuple, error) {
	n, err := rd.uvarint()
	if err != nil || n > uint64(len(rd.buf)) {
		return nil, errCorrupt
	}
	for range n {
		if rd.pos >= len(rd.buf) {
			return nil, errCorrupt
		}
		v := Value{Kind: Kind(rd.buf[rd.pos])}
		rd.pos++
		switch v.Kind {
		case Null, Unchanged:
		case Text, Binary:
			l, err := rd.uvarint()
			if err != nil || l > uint64(len(rd.buf)-rd.pos) {
				return nil, errCorrupt
			}
			end := rd.pos + int(l)
			v.Data = rd.buf[rd.pos:end:end]
			rd.pos = end
		default:
			return nil, errCorrupt
		}
		t = append(t, v)
	}
	return t, nil
}

// nonNil keeps a zero-column tuple distinguishable from an absent one.
func nonNil(t Tuple) Tuple {
	if t == nil {
		return Tuple{}
	}
	return t
}
