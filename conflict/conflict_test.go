package conflict

import (
	"testing"
	"time"
)

func TestResolve(t *testing.T) {
	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	v := func(d time.Duration, node int32) Version {
		return Version{Known: true, CommitTime: t0.Add(d), NodeID: node}
	}
	tests := []struct {
		name   string
		typ    Type
		local  Version
		remote Version
		want   Resolution
		apply  bool
	}{
		{"remote later wins", UpdateUpdate, v(0, 2), v(time.Millisecond, 1), KeepRemote, true},
		{"local later wins", UpdateUpdate, v(time.Millisecond, 1), v(0, 2), KeepLocal, false},
		{"tie goes to higher remote node", InsertInsert, v(0, 1), v(0, 2), KeepRemote, true},
		{"tie goes to higher local node", InsertInsert, v(0, 3), v(0, 2), KeepLocal, false},
		{"sub-microsecond differences tie", InsertInsert, v(0, 3), v(300*time.Nanosecond, 2), KeepLocal, false},
		{"unknown local loses", UpdateUpdate, Version{}, v(0, 1), KeepRemote, true},
		{"delete wins even when older", UpdateDelete, v(time.Second, 1), v(0, 2), DeleteWins, true},
		{"update of missing row skipped", UpdateMissing, Version{}, v(0, 1), Skip, false},
		{"delete of missing row skipped", DeleteMissing, Version{}, v(0, 1), Skip, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Resolve(tt.typ, tt.local, tt.remote)
			if d.Resolution != tt.want || d.ApplyRemote != tt.apply {
				t.Fatalf("Resolve = %+v, want %s apply=%v", d, tt.want, tt.apply)
			}
			if d.Reason == "" {
				t.Fatal("decision has no reason")
			}
		})
	}
}

// TestResolveSymmetric checks the property convergence rests on: for two
// distinct versions exactly one side wins whichever node evaluates it.
func TestResolveSymmetric(t *testing.T) {
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
			if i == j || (!a.Known && !b.Known) {
				continue
			}
			ab := Resolve(UpdateUpdate, a, b).ApplyRemote // on a node holding a, b arrives
			ba := Resolve(UpdateUpdate, b, a).ApplyRemote // on a node holding b, a arrives
			if ab == ba {
				t.Errorf("versions %v and %v: both nodes chose the same side (%v), they would diverge", a, b, ab)
			}
		}
	}
}
