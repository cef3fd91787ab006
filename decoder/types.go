package decoder

import (
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// LSN is a PostgreSQL WAL position.
type LSN = pglogrepl.LSN

// Kind says how a column value arrived in a tuple.
type Kind uint8

// Column value kinds, as pgoutput sends them.
const (
	Null      Kind = 'n' // SQL NULL
	Unchanged Kind = 'u' // unchanged TOASTed value: the value was not sent and must not be overwritten
	Text      Kind = 't' // text representation in Data
	Binary    Kind = 'b' // binary (send/recv) representation in Data
)

// Value is one column of a tuple.
type Value struct {
	Kind Kind
	Data []byte
}

// Tuple is a row image, one Value per column of the relation, in relation order.
type Tuple []Value

// Column describes one column of a published relation, as the provider sent it.
type Column struct {
	Name    string
	TypeOID uint32
	TypeMod int32
	Key     bool // part of the replica identity
}

// Replica identity settings (pg_class.relreplident).
const (
	IdentityDefault = 'd'
	IdentityNothing = 'n'
	IdentityFull    = 'f'
	IdentityIndex   = 'i'
)

// Relation is the provider's description of a table. A Relation is immutable:
// every Relation message from the provider produces a new value, so a Change
// always carries the description that was current when it was decoded.
type Relation struct {
	ID              uint32
	Schema          string
	Name            string
	ReplicaIdentity byte
	Columns         []Column
}

// KeyColumns returns the positions of the replica identity columns.
func (r *Relation) KeyColumns() []int {
	var keys []int
	for i, c := range r.Columns {
		if c.Key {
			keys = append(keys, i)
		}
	}
	return keys
}

// String is the qualified name, for logs and errors.
func (r *Relation) String() string { return r.Schema + "." + r.Name }

// Op is the kind of a row change.
type Op uint8

// Row change kinds.
const (
	Insert Op = iota + 1
	Update
	Delete
	Truncate
)

func (o Op) String() string {
	switch o {
	case Insert:
		return "INSERT"
	case Update:
		return "UPDATE"
	case Delete:
		return "DELETE"
	case Truncate:
		return "TRUNCATE"
	}
	return fmt.Sprintf("Op(%d)", uint8(o))
}

// Change is one decoded row change of a transaction.
//
//   - Insert: New is the row.
//   - Update: New is the new row (columns of kind Unchanged were not sent);
//     Old is the old key (or the whole old row with REPLICA IDENTITY FULL)
//     when the provider sent it, which it does when the key changed; nil otherwise.
//   - Delete: Old is the old key (or the whole old row with REPLICA IDENTITY FULL).
//   - Truncate: Rels are the truncated relations.
type Change struct {
	Op              Op
	Rel             *Relation
	Old             Tuple
	New             Tuple
	Rels            []*Relation
	Cascade         bool
	RestartIdentity bool
}

// Txn is one committed transaction of the provider.
//
// A Txn whose Origin is not empty was itself replicated into the provider
// from another node; the decoder drops its changes (DESIGN rule 2) and hands
// out only the envelope, so the stream can still account for its position.
type Txn struct {
	Xid        uint32
	CommitLSN  LSN // LSN of the commit record
	EndLSN     LSN // end of the commit record: the position to resume after
	CommitTime time.Time
	Origin     string // replication origin name of the provider's transaction, "" for local ones
	Streamed   bool   // arrived as a streamed in-progress transaction

	changes *changeLog
}

// Filtered reports whether the decoder dropped this transaction's changes
// because it originated elsewhere.
func (t *Txn) Filtered() bool { return t.Origin != "" }

// Len is the number of changes.
func (t *Txn) Len() int {
	if t.changes == nil {
		return 0
	}
	return t.changes.count
}

// Bytes is the approximate memory the changes take while held in memory;
// for a spilled transaction it is the in-memory part only.
func (t *Txn) Bytes() int64 {
	if t.changes == nil {
		return 0
	}
	return t.changes.memBytes
}

// Each calls fn for every change in order. It may be called more than once.
// A Change passed to fn must not be retained after fn returns when the
// transaction was spilled to disk.
func (t *Txn) Each(fn func(*Change) error) error {
	if t.changes == nil {
		return nil
	}
	return t.changes.each(fn)
}

// Close releases the transaction's spill file, if any. It is safe to call
// more than once.
func (t *Txn) Close() error {
	if t.changes == nil {
		return nil
	}
	return t.changes.close()
}
