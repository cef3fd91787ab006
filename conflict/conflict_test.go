package conflict

import (
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	v := func(d time.Duration, node int32) Version {
		return Version{Known: true, CommitTime: t0.Add(d), NodeID: node}
	}
	found := func(ver Version) Local { return Local{Found: true, Version: ver} }
	tests := []struct {
		name     string
		op       Op
		local    Local
		remote   Version
		conflict bool
		typ      Type
		res      Resolution
		apply    bool
	}{
		{"insert of a new key", Insert, Local{}, v(0, 1), false, "", "", true},
		{"insert_insert, remote later", Insert, found(v(0, 2)), v(time.Millisecond, 1), true, InsertInsert, KeepRemote, true},
		{"insert_insert, local later", Insert, found(v(time.Millisecond, 1)), v(0, 2), true, InsertInsert, KeepLocal, false},
		{"insert_insert, tie to higher remote node", Insert, found(v(0, 1)), v(0, 2), true, InsertInsert, KeepRemote, true},
		{"insert_insert, tie to higher local node", Insert, found(v(0, 3)), v(0, 2), true, InsertInsert, KeepLocal, false},
		{"sub-microsecond differences tie", Insert, found(v(0, 3)), v(300*time.Nanosecond, 2), true, InsertInsert, KeepLocal, false},
		{"update of a row from the same node", Update, Local{Found: true, Same: true, Version: v(time.Hour, 1)}, v(0, 2), false, "", "", true},
		{"update of an older row from elsewhere", Update, found(v(0, 3)), v(time.Second, 2), false, "", "", true},
		{"update of a row of unknown age", Update, found(Version{}), v(0, 2), false, "", "", true},
		{"update_update, local changed since", Update, found(v(time.Second, 3)), v(0, 2), true, UpdateUpdate, KeepLocal, false},
		{"update_update, tie", Update, found(v(0, 3)), v(0, 2), true, UpdateUpdate, KeepLocal, false},
		{"update_missing", Update, Local{}, v(0, 1), true, UpdateMissing, Skip, false},
		{"delete of an older row from elsewhere", Delete, found(v(0, 3)), v(time.Second, 2), false, "", "", true},
		{"update_delete: the newer update stays", Delete, found(v(time.Second, 1)), v(0, 2), true, UpdateDelete, KeepLocal, false},
		{"delete_missing", Delete, Local{}, v(0, 1), true, DeleteMissing, Skip, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Decide(tt.op, tt.local, tt.remote)
			if d.Conflict != tt.conflict || d.Type != tt.typ || d.Resolution != tt.res || d.ApplyRemote != tt.apply {
				t.Fatalf("Decide = %+v, want conflict=%v %s %s apply=%v", d, tt.conflict, tt.typ, tt.res, tt.apply)
			}
			if d.Conflict && d.Reason == "" {
				t.Fatal("conflict without a reason")
			}
		})
	}
}

// TestDecideConverges checks the property convergence rests on: when two
// nodes hold the two versions of a row, each applying the other's, they end
// with the same version.
func TestDecideConverges(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	versions := []Version{
		{},
		{Known: true, CommitTime: t0, NodeID: 1},
		{Known: true, CommitTime: t0, NodeID: 2},
		{Known: true, CommitTime: t0.Add(time.Microsecond), NodeID: 1},
		{Known: true, CommitTime: t0.Add(-time.Hour), NodeID: 9},
	}
	for i, a := range versions {
		for j, b := range versions {
			if i == j || !a.Known || !b.Known {
				continue // a remote change always has a known commit time
			}
			ab := Decide(Update, Local{Found: true, Version: a}, b).ApplyRemote // node holding a receives b
			ba := Decide(Update, Local{Found: true, Version: b}, a).ApplyRemote // node holding b receives a
			if ab == ba {
				t.Errorf("versions %v and %v: both nodes took the same side (%v), they would diverge", a, b, ab)
			}
		}
	}
}
