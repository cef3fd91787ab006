package decoder

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParkedRoundTrip(t *testing.T) {
	rel := &Relation{ID: 7, Schema: "public", Name: "t", ReplicaIdentity: IdentityDefault, Columns: []Column{
		{Name: "id", TypeOID: 23, TypeMod: -1, Key: true},
		{Name: "v", TypeOID: 25, TypeMod: -1},
		{Name: "b", TypeOID: 17, TypeMod: -1},
	}}
	other := &Relation{ID: 8, Schema: "s", Name: "u", ReplicaIdentity: IdentityFull, Columns: []Column{{Name: "x", TypeOID: 20, TypeMod: -1}}}
	changes := []Change{
		{Op: Insert, Rel: rel, New: Tuple{{Kind: Text, Data: []byte("1")}, {Kind: Text, Data: []byte("héllo \"q\"")}, {Kind: Null}}},
		{Op: Update, Rel: rel, Old: Tuple{{Kind: Text, Data: []byte("1")}, {Kind: Null}, {Kind: Null}},
			New: Tuple{{Kind: Text, Data: []byte("2")}, {Kind: Unchanged}, {Kind: Binary, Data: []byte{0, 1, 255}}}},
		{Op: Delete, Rel: other, Old: Tuple{{Kind: Text, Data: []byte{0xff, 'a'}}}},
		{Op: Truncate, Rels: []*Relation{rel, other}, Cascade: true, RestartIdentity: true},
	}
	txn := &Txn{Xid: 42, changes: newChangeLog(42, false)}
	for _, c := range changes {
		txn.changes.appendMem(c)
		txn.changes.count++
	}
	data, n, err := MarshalParked(txn)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(changes) {
		t.Errorf("count %d, want %d", n, len(changes))
	}
	if !strings.Contains(string(data), `"héllo \"q\""`) {
		t.Errorf("text values are not readable in %s", data)
	}
	env := Envelope{Xid: 42, CommitLSN: 100, EndLSN: 120, CommitTime: time.Unix(1700000000, 123000).UTC()}
	back, err := UnmarshalParked(env, data)
	if err != nil {
		t.Fatal(err)
	}
	if back.Xid != 42 || back.EndLSN != 120 || back.CommitLSN != 100 || !back.CommitTime.Equal(env.CommitTime) || back.Len() != len(changes) {
		t.Fatalf("envelope %+v", back)
	}
	i := 0
	err = back.Each(func(c *Change) error {
		want := changes[i]
		i++
		if c.Op != want.Op || !reflect.DeepEqual(c.Old, want.Old) || !reflect.DeepEqual(c.New, want.New) ||
			c.Cascade != want.Cascade || c.RestartIdentity != want.RestartIdentity {
			t.Errorf("change %d: got %+v, want %+v", i-1, c, want)
		}
		if want.Rel != nil && (c.Rel.Schema != want.Rel.Schema || c.Rel.Name != want.Rel.Name ||
			c.Rel.ReplicaIdentity != want.Rel.ReplicaIdentity || !reflect.DeepEqual(c.Rel.Columns, want.Rel.Columns)) {
			t.Errorf("change %d: relation %+v, want %+v", i-1, c.Rel, want.Rel)
		}
		if len(c.Rels) != len(want.Rels) {
			t.Errorf("change %d: %d relations, want %d", i-1, len(c.Rels), len(want.Rels))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestParkedMalformed(t *testing.T) {
	for _, data := range []string{
		``, `{}`, `{"v":2,"relations":[],"changes":[]}`,
		`{"v":1,"relations":[],"changes":[{"op":"INSERT","rel":0,"new":["1"]}]}`,
		`{"v":1,"relations":[{"schema":"s","name":"t","identity":"d","columns":[{"name":"a","type":23,"typmod":-1}]}],"changes":[{"op":"INSERT","rel":0,"new":["1","2"]}]}`,
		`{"v":1,"relations":[{"schema":"s","name":"t","identity":"d","columns":[{"name":"a","type":23,"typmod":-1}]}],"changes":[{"op":"MERGE","rel":0}]}`,
		`{"v":1,"relations":[{"schema":"s","name":"t","identity":"d","columns":[{"name":"a","type":23,"typmod":-1}]}],"changes":[{"op":"DELETE","rel":0}]}`,
		`{"v":1,"relations":[{"schema":"s","name":"t","identity":"d","columns":[{"name":"a","type":23,"typmod":-1}]}],"changes":[{"op":"INSERT","rel":0,"new":[{"binary":"%%"}]}]}`,
		`{"v":1,"relations":[{"schema":"s","name":"t","identity":"d","columns":[{"name":"a","type":23,"typmod":-1}]}],"changes":[{"op":"INSERT","rel":0,"new":[{}]}]}`,
		`{"v":1,"relations":[{"schema":"s","name":"t","identity":"","columns":[]}],"changes":[]}`,
	} {
		if _, err := UnmarshalParked(Envelope{}, []byte(data)); err == nil {
			t.Errorf("%s: no error", data)
		}
	}
}
