package decoder

import (
	"fmt"

	"github.com/jackc/pglogrepl"
)

// target finds the transaction a row change belongs to and the xid of the
// (sub)transaction that made it.
func (d *Decoder) target(op string, msgXid uint32) (*Txn, uint32, error) {
	if d.block != nil {
		return d.block, msgXid, nil
	}
	if d.cur != nil {
		return d.cur, d.cur.Xid, nil
	}
	return nil, 0, protoErrorf("decode %s: outside a transaction", op)
}

// relationFor looks a relation up by id. It reports keep=false when the
// change must be dropped: filtered transaction or skipped schema.
func (d *Decoder) relationFor(txn *Txn, id uint32) (rel *Relation, keep bool, err error) {
	rel = d.rels[id]
	if rel == nil {
		return nil, false, protoErrorf("unknown relation id %d", id)
	}
	return rel, !txn.Filtered() && !d.skipped(rel), nil
}

func (d *Decoder) insert(m *pglogrepl.InsertMessageV2) error {
	txn, sub, err := d.target("insert", m.Xid)
	if err != nil {
		return err
	}
	ch, keep, err := d.rowChange(txn, Insert, m.RelationID, nil, m.Tuple)
	if err == nil && keep {
		err = d.add(txn, ch, sub)
	}
	if err != nil {
		return fmt.Errorf("decode insert in txn %d: %w", txn.Xid, err)
	}
	return nil
}

func (d *Decoder) update(m *pglogrepl.UpdateMessageV2) error {
	txn, sub, err := d.target("update", m.Xid)
	if err != nil {
		return err
	}
	ch, keep, err := d.rowChange(txn, Update, m.RelationID, m.OldTuple, m.NewTuple)
	if err == nil && keep {
		err = d.add(txn, ch, sub)
	}
	if err != nil {
		return fmt.Errorf("decode update in txn %d: %w", txn.Xid, err)
	}
	return nil
}

func (d *Decoder) delete(m *pglogrepl.DeleteMessageV2) error {
	txn, sub, err := d.target("delete", m.Xid)
	if err != nil {
		return err
	}
	ch, keep, err := d.rowChange(txn, Delete, m.RelationID, m.OldTuple, nil)
	if err == nil && keep {
		err = d.add(txn, ch, sub)
	}
	if err != nil {
		return fmt.Errorf("decode delete in txn %d: %w", txn.Xid, err)
	}
	return nil
}

func (d *Decoder) truncate(m *pglogrepl.TruncateMessageV2) error {
	txn, sub, err := d.target("truncate", m.Xid)
	if err != nil {
		return err
	}
	ch := &Change{
		Op:              Truncate,
		Cascade:         m.Option&pglogrepl.TruncateOptionCascade != 0,
		RestartIdentity: m.Option&pglogrepl.TruncateOptionRestartIdentity != 0,
	}
	for _, id := range m.RelationIDs {
		rel, keep, err := d.relationFor(txn, id)
		if err != nil {
			return fmt.Errorf("decode truncate in txn %d: %w", txn.Xid, err)
		}
		if keep {
			ch.Rels = append(ch.Rels, rel)
		}
	}
	if len(ch.Rels) == 0 {
		return nil
	}
	if err := d.add(txn, ch, sub); err != nil {
		return fmt.Errorf("decode truncate in txn %d: %w", txn.Xid, err)
	}
	return nil
}

// rowChange builds an insert, update or delete. Its tuples point into the
// parsed message; add copies them before anything keeps them.
func (d *Decoder) rowChange(txn *Txn, op Op, relID uint32, old, new *pglogrepl.TupleData) (*Change, bool, error) {
	rel, keep, err := d.relationFor(txn, relID)
	if err != nil || !keep {
		return nil, false, err
	}
	ch := &Change{Op: op, Rel: rel}
	if old != nil {
		if ch.Old, err = tuple(rel, old); err != nil {
			return nil, false, fmt.Errorf("old tuple: %w", err)
		}
	}
	if new != nil {
		if ch.New, err = tuple(rel, new); err != nil {
			return nil, false, fmt.Errorf("new tuple: %w", err)
		}
	}
	return ch, true, nil
}

// add stores a change in its transaction, spilling as needed.
func (d *Decoder) add(txn *Txn, ch *Change, sub uint32) error {
	return txn.changes.add(ch, sub, d.spill, d.memLimit)
}

// tuple converts a pgoutput tuple; the values share the message's data.
func tuple(rel *Relation, td *pglogrepl.TupleData) (Tuple, error) {
	if len(td.Columns) != len(rel.Columns) {
		return nil, protoErrorf("relation %s has %d columns, tuple has %d", rel, len(rel.Columns), len(td.Columns))
	}
	t := make(Tuple, len(td.Columns))
	for i, c := range td.Columns {
		switch k := Kind(c.DataType); k {
		case Null, Unchanged:
			t[i].Kind = k
		case Text, Binary:
			t[i] = Value{Kind: k, Data: c.Data}
		default:
			return nil, protoErrorf("column %s: unknown value kind %q", rel.Columns[i].Name, c.DataType)
		}
	}
	return t, nil
}

// detached returns a copy of ch whose tuple data lives in one allocation
// owned by the copy, so that nothing it holds aliases a message buffer.
func detached(ch *Change) Change {
	c := *ch
	n, vals := 0, len(ch.Old)+len(ch.New)
	for _, t := range [2]Tuple{ch.Old, ch.New} {
		for _, v := range t {
			n += len(v.Data)
		}
	}
	if vals == 0 {
		if ch.Rels != nil {
			c.Rels = append([]*Relation(nil), ch.Rels...)
		}
		return c
	}
	arena := make([]byte, 0, n)
	values := make([]Value, vals)
	cp := func(t Tuple) Tuple {
		if t == nil {
			return nil
		}
		out := values[:len(t):len(t)]
		values = values[len(t):]
		for i, v := range t {
			out[i].Kind = v.Kind
			if v.Kind == Text || v.Kind == Binary {
				start := len(arena)
				arena = append(arena, v.Data...)
				out[i].Data = arena[start:len(arena):len(arena)]
			}
		}
		return out
	}
	c.Old, c.New = cp(ch.Old), cp(ch.New)
	return c
}

// skipped reports whether the changes of rel are dropped by
// Config.SkipSchemas (and not kept by Config.KeepTables).
func (d *Decoder) skipped(rel *Relation) bool {
	return d.skip[rel.Schema] && !d.keep[rel.Schema+"."+rel.Name]
}
