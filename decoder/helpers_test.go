package decoder

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// A small encoder for pgoutput protocol version 2 messages, following
// "Logical Replication Message Formats" in the PostgreSQL documentation.

var y2k = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func be16(b []byte, v uint16) []byte { return binary.BigEndian.AppendUint16(b, v) }
func be32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }
func be64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }
func cstr(b []byte, s string) []byte { return append(append(b, s...), 0) }
func pgTime(b []byte, ts time.Time) []byte {
	return be64(b, uint64(ts.Sub(y2k).Microseconds()))
}

// pg encodes the messages that carry an xid inside stream blocks: with
// stream set, they are encoded as sent inside a block, for xid.
type pg struct {
	stream bool
	xid    uint32
}

var top pg // outside stream blocks

func in(xid uint32) pg { return pg{stream: true, xid: xid} }

func (p pg) head(t byte) []byte {
	b := []byte{t}
	if p.stream {
		b = be32(b, p.xid)
	}
	return b
}

type col struct {
	name string
	key  bool
	oid  uint32
	mod  int32
}

func (p pg) relation(id uint32, schema, name string, ident byte, cols ...col) []byte {
	b := p.head('R')
	b = be32(b, id)
	b = cstr(b, schema)
	b = cstr(b, name)
	b = append(b, ident)
	b = be16(b, uint16(len(cols)))
	for _, c := range cols {
		var flags byte
		if c.key {
			flags = 1
		}
		b = append(b, flags)
		b = cstr(b, c.name)
		b = be32(b, c.oid)
		b = be32(b, uint32(c.mod))
	}
	return b
}

// val is one column of a tuple: kind 'n', 'u', 't' or 'b'.
type val struct {
	kind byte
	data string
}

func tx(s string) val  { return val{'t', s} }
func bin(s string) val { return val{'b', s} }

var (
	null  = val{kind: 'n'}
	toast = val{kind: 'u'}
)

func tupleData(b []byte, vals []val) []byte {
	b = be16(b, uint16(len(vals)))
	for _, v := range vals {
		b = append(b, v.kind)
		if v.kind == 't' || v.kind == 'b' {
			b = be32(b, uint32(len(v.data)))
			b = append(b, v.data...)
		}
	}
	return b
}

func (p pg) insert(rel uint32, vals ...val) []byte {
	b := be32(p.head('I'), rel)
	return tupleData(append(b, 'N'), vals)
}

// update encodes an update; oldKind 0 sends no old tuple.
func (p pg) update(rel uint32, oldKind byte, old, new []val) []byte {
	b := be32(p.head('U'), rel)
	if oldKind != 0 {
		b = tupleData(append(b, oldKind), old)
	}
	return tupleData(append(b, 'N'), new)
}

func (p pg) delete(rel uint32, kind byte, old ...val) []byte {
	b := be32(p.head('D'), rel)
	return tupleData(append(b, kind), old)
}

func (p pg) truncate(opts byte, rels ...uint32) []byte {
	b := be32(p.head('T'), uint32(len(rels)))
	b = append(b, opts)
	for _, r := range rels {
		b = be32(b, r)
	}
	return b
}

func (p pg) typ(oid uint32, schema, name string) []byte {
	return cstr(cstr(be32(p.head('Y'), oid), schema), name)
}

func (p pg) message(prefix, content string) []byte {
	b := append(p.head('M'), 1)
	b = cstr(be64(b, 0x1000), prefix)
	return append(be32(b, uint32(len(content))), content...)
}

func begin(xid uint32) []byte {
	b := be64([]byte{'B'}, 0x100)
	return be32(pgTime(b, y2k), xid)
}

func commitAt(lsn, end LSN, ts time.Time) []byte {
	b := be64([]byte{'C', 0}, uint64(lsn))
	return pgTime(be64(b, uint64(end)), ts)
}

func commit() []byte { return commitAt(0x100, 0x200, y2k) }

func origin(name string) []byte { return cstr(be64([]byte{'O'}, 0x50), name) }

func streamStart(xid uint32, first bool) []byte {
	b := be32([]byte{'S'}, xid)
	if first {
		return append(b, 1)
	}
	return append(b, 0)
}

func streamStop() []byte { return []byte{'E'} }

func streamCommitAt(xid uint32, lsn, end LSN, ts time.Time) []byte {
	b := be32([]byte{'c'}, xid)
	b = be64(append(b, 0), uint64(lsn))
	return pgTime(be64(b, uint64(end)), ts)
}

func streamCommit(xid uint32) []byte { return streamCommitAt(xid, 0x300, 0x400, y2k) }

func streamAbort(xid, sub uint32) []byte { return be32(be32([]byte{'A'}, xid), sub) }

// Fixtures: relation 1 public.t (id key int4, v text, b bytea, doc text),
// 2 bdr.node (id key), 3 public.u (id key).
var (
	relT    = top.relation(1, "public", "t", IdentityDefault, col{"id", true, 23, -1}, col{"v", false, 25, -1}, col{"b", false, 17, -1}, col{"doc", false, 25, -1})
	relNode = top.relation(2, "bdr", "node", IdentityDefault, col{"id", true, 23, -1})
	// relDelta is in a skipped schema but kept.
	relDelta = top.relation(4, "bdr", "delta", IdentityDefault, col{"name", true, 25, -1})
	relU     = top.relation(3, "public", "u", IdentityFull, col{"id", true, 23, -1})
)

func newTestDecoder(t testing.TB, cfg Config) *Decoder {
	t.Helper()
	if cfg.SpillDir == "" {
		cfg.SpillDir = t.TempDir()
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// feed decodes msgs and returns the completed transactions.
func feed(t testing.TB, d *Decoder, msgs ...[]byte) []*Txn {
	t.Helper()
	var txns []*Txn
	for i, m := range msgs {
		txn, err := d.Decode(m)
		if err != nil {
			t.Fatalf("message %d (%q): %v", i, m[0], err)
		}
		if txn != nil {
			txns = append(txns, txn)
			t.Cleanup(func() { _ = txn.Close() })
		}
	}
	return txns
}

// summary renders a transaction and its changes for comparison.
func summary(t testing.TB, txn *Txn) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "txn %d", txn.Xid)
	if txn.Origin != "" {
		fmt.Fprintf(&b, " origin=%s", txn.Origin)
	}
	if txn.Streamed {
		b.WriteString(" streamed")
	}
	b.WriteString(":")
	changes := changeStrings(t, txn)
	if len(changes) != txn.Len() {
		t.Errorf("txn %d: Len()=%d, Each delivered %d", txn.Xid, txn.Len(), len(changes))
	}
	for i, c := range changes {
		if i > 0 {
			b.WriteString(";")
		}
		b.WriteString(" " + c)
	}
	return b.String()
}

func changeStrings(t testing.TB, txn *Txn) []string {
	t.Helper()
	var out []string
	err := txn.Each(func(c *Change) error {
		out = append(out, fmtChange(c))
		return nil
	})
	if err != nil {
		t.Fatalf("Each: %v", err)
	}
	return out
}

func fmtChange(c *Change) string {
	switch c.Op {
	case Truncate:
		names := make([]string, len(c.Rels))
		for i, r := range c.Rels {
			names[i] = r.String()
		}
		s := "TRUNCATE " + strings.Join(names, ",")
		if c.Cascade {
			s += " cascade"
		}
		if c.RestartIdentity {
			s += " restart"
		}
		return s
	}
	s := c.Op.String() + " " + c.Rel.String()
	if c.Old != nil {
		s += " old=" + fmtTuple(c.Old)
	}
	if c.New != nil {
		s += " new=" + fmtTuple(c.New)
	}
	return s
}

func fmtTuple(t Tuple) string {
	parts := make([]string, len(t))
	for i, v := range t {
		switch v.Kind {
		case Null:
			parts[i] = "null"
		case Unchanged:
			parts[i] = "toast"
		case Text:
			parts[i] = string(v.Data)
		case Binary:
			parts[i] = fmt.Sprintf("0x%x", v.Data)
		default:
			parts[i] = fmt.Sprintf("?%c", v.Kind)
		}
	}
	return "(" + strings.Join(parts, ",") + ")"
}

// dirFiles lists the files in dir with the given suffix.
func dirFiles(t testing.TB, dir, suffix string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), suffix) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(out)
	return out
}
