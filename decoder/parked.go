package decoder

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// A parked transaction is a remote transaction that could not be applied,
// kept whole in bdr.apply_errors until it can be (or an operator discards
// it). Its changes are stored as JSON that an operator can read: text
// values are JSON strings; values that are not valid UTF-8 text, and
// binary ones, are base64.
//
//	{"v": 1,
//	 "relations": [{"schema": "public", "name": "t", "identity": "d",
//	                "columns": [{"name": "id", "type": 23, "typmod": -1, "key": true}, ...]}],
//	 "changes": [{"op": "INSERT", "rel": 0, "new": ["1", null, {"unchanged": true}, {"binary": "AAE="}]},
//	             {"op": "TRUNCATE", "rels": [0], "cascade": false, "restart_identity": false}]}

const parkedVersion = 1

type parkedTxn struct {
	V         int            `json:"v"`
	Relations []parkedRel    `json:"relations"`
	Changes   []parkedChange `json:"changes"`
	relIdx    map[*Relation]int
}

type parkedRel struct {
	Schema   string         `json:"schema"`
	Name     string         `json:"name"`
	Identity string         `json:"identity"`
	Columns  []parkedColumn `json:"columns"`
}

type parkedColumn struct {
	Name   string `json:"name"`
	Type   uint32 `json:"type"`
	TypMod int32  `json:"typmod"`
	Key    bool   `json:"key,omitempty"`
}

type parkedChange struct {
	Op              string            `json:"op"`
	Rel             *int              `json:"rel,omitempty"`
	Old             []json.RawMessage `json:"old,omitempty"`
	New             []json.RawMessage `json:"new,omitempty"`
	Rels            []int             `json:"rels,omitempty"`
	Cascade         bool              `json:"cascade,omitempty"`
	RestartIdentity bool              `json:"restart_identity,omitempty"`
}

// parkedValue is a value that is not plain text.
type parkedValue struct {
	Unchanged bool    `json:"unchanged,omitempty"`
	Binary    *string `json:"binary,omitempty"` // binary (send/recv) form, base64
	Bytes     *string `json:"bytes,omitempty"`  // text form that is not UTF-8, base64
}

// MarshalParked returns the changes of t in the parked form, and how many
// there are.
func MarshalParked(t *Txn) ([]byte, int, error) {
	p := parkedTxn{V: parkedVersion, Relations: []parkedRel{}, Changes: []parkedChange{}, relIdx: map[*Relation]int{}}
	err := t.Each(func(c *Change) error {
		pc := parkedChange{Op: c.Op.String()}
		if c.Op == Truncate {
			pc.Cascade, pc.RestartIdentity = c.Cascade, c.RestartIdentity
			for _, r := range c.Rels {
				pc.Rels = append(pc.Rels, p.rel(r))
			}
		} else {
			i := p.rel(c.Rel)
			pc.Rel = &i
			pc.Old, pc.New = parkTuple(c.Old), parkTuple(c.New)
		}
		p.Changes = append(p.Changes, pc)
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("read the changes of txn %d: %w", t.Xid, err)
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, 0, err
	}
	return b, len(p.Changes), nil
}

func (p *parkedTxn) rel(r *Relation) int {
	if i, ok := p.relIdx[r]; ok {
		return i
	}
	pr := parkedRel{Schema: r.Schema, Name: r.Name, Identity: string(rune(r.ReplicaIdentity)), Columns: []parkedColumn{}}
	for _, c := range r.Columns {
		pr.Columns = append(pr.Columns, parkedColumn{Name: c.Name, Type: c.TypeOID, TypMod: c.TypeMod, Key: c.Key})
	}
	p.Relations = append(p.Relations, pr)
	p.relIdx[r] = len(p.Relations) - 1
	return len(p.Relations) - 1
}

func parkTuple(t Tuple) []json.RawMessage {
	if t == nil {
		return nil
	}
	out := make([]json.RawMessage, len(t))
	for i, v := range t {
		var x any
		switch {
		case v.Kind == Null:
			x = nil
		case v.Kind == Unchanged:
			x = parkedValue{Unchanged: true}
		case v.Kind == Binary:
			s := base64.StdEncoding.EncodeToString(v.Data)
			x = parkedValue{Binary: &s}
		case utf8.Valid(v.Data):
			x = string(v.Data)
		default:
			s := base64.StdEncoding.EncodeToString(v.Data)
			x = parkedValue{Bytes: &s}
		}
		out[i], _ = json.Marshal(x) // strings, nil and parkedValue always marshal
	}
	return out
}

// Envelope is what identifies a parked transaction in its provider's stream.
type Envelope struct {
	Xid        uint32
	CommitLSN  LSN
	EndLSN     LSN
	CommitTime time.Time
}

// UnmarshalParked rebuilds a transaction from its parked form, held in
// memory.
func UnmarshalParked(env Envelope, data []byte) (*Txn, error) {
	var p parkedTxn
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("parked transaction: %w", err)
	}
	if p.V != parkedVersion {
		return nil, fmt.Errorf("parked transaction: format version %d is not %d", p.V, parkedVersion)
	}
	rels := make([]*Relation, len(p.Relations))
	for i, pr := range p.Relations {
		if len(pr.Identity) != 1 {
			return nil, fmt.Errorf("parked transaction: relation %s.%s: bad replica identity %q", pr.Schema, pr.Name, pr.Identity)
		}
		r := &Relation{ID: uint32(i + 1), Schema: pr.Schema, Name: pr.Name, ReplicaIdentity: pr.Identity[0]}
		for _, c := range pr.Columns {
			r.Columns = append(r.Columns, Column{Name: c.Name, TypeOID: c.Type, TypeMod: c.TypMod, Key: c.Key})
		}
		rels[i] = r
	}
	relAt := func(i int) (*Relation, error) {
		if i < 0 || i >= len(rels) {
			return nil, fmt.Errorf("parked transaction: relation %d of %d", i, len(rels))
		}
		return rels[i], nil
	}
	t := &Txn{Xid: env.Xid, CommitLSN: env.CommitLSN, EndLSN: env.EndLSN, CommitTime: env.CommitTime,
		changes: newChangeLog(env.Xid, false)}
	for n, pc := range p.Changes {
		c := Change{Cascade: pc.Cascade, RestartIdentity: pc.RestartIdentity}
		switch pc.Op {
		case "INSERT":
			c.Op = Insert
		case "UPDATE":
			c.Op = Update
		case "DELETE":
			c.Op = Delete
		case "TRUNCATE":
			c.Op = Truncate
		default:
			return nil, fmt.Errorf("parked transaction: change %d: unknown op %q", n, pc.Op)
		}
		var err error
		if c.Op == Truncate {
			for _, i := range pc.Rels {
				r, err := relAt(i)
				if err != nil {
					return nil, err
				}
				c.Rels = append(c.Rels, r)
			}
		} else {
			if pc.Rel == nil {
				return nil, fmt.Errorf("parked transaction: change %d has no relation", n)
			}
			if c.Rel, err = relAt(*pc.Rel); err != nil {
				return nil, err
			}
			if c.Old, err = unparkTuple(pc.Old, len(c.Rel.Columns)); err != nil {
				return nil, fmt.Errorf("parked transaction: change %d: old: %w", n, err)
			}
			if c.New, err = unparkTuple(pc.New, len(c.Rel.Columns)); err != nil {
				return nil, fmt.Errorf("parked transaction: change %d: new: %w", n, err)
			}
			if (c.Op == Insert || c.Op == Update) && c.New == nil || c.Op == Delete && c.Old == nil {
				return nil, fmt.Errorf("parked transaction: change %d: %s without its row", n, c.Op)
			}
		}
		t.changes.appendMem(c)
		t.changes.count++
	}
	return t, nil
}

func unparkTuple(vals []json.RawMessage, columns int) (Tuple, error) {
	if vals == nil {
		return nil, nil
	}
	if len(vals) != columns {
		return nil, fmt.Errorf("%d values for %d columns", len(vals), columns)
	}
	t := make(Tuple, len(vals))
	for i, raw := range vals {
		var s *string
		if err := json.Unmarshal(raw, &s); err == nil {
			if s == nil {
				t[i] = Value{Kind: Null}
			} else {
				t[i] = Value{Kind: Text, Data: []byte(*s)}
			}
			continue
		}
		var v parkedValue
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, fmt.Errorf("value %d: %w", i, err)
		}
		var err error
		switch {
		case v.Unchanged:
			t[i] = Value{Kind: Unchanged}
		case v.Binary != nil:
			t[i].Kind = Binary
			t[i].Data, err = base64.StdEncoding.DecodeString(*v.Binary)
		case v.Bytes != nil:
			t[i].Kind = Text
			t[i].Data, err = base64.StdEncoding.DecodeString(*v.Bytes)
		default:
			err = errors.New("empty value")
		}
		if err != nil {
			return nil, fmt.Errorf("value %d: %w", i, err)
		}
	}
	return t, nil
}
