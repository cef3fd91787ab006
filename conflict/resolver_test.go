package conflict

import (
	"testing"
	"time"
)

func TestDecideWith(t *testing.T) {
	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	v := func(d time.Duration, node int32) Version {
		return Version{Known: true, CommitTime: t0.Add(d), NodeID: node}
	}
	found := func(ver Version) Local { return Local{Found: true, Version: ver} }
	const ms = time.Millisecond
	tests := []struct {
		name     string
		r        Resolver
		op       Op
		local    Local
		remote   Version
		conflict bool
		res      Resolution
		apply    bool
		err      bool
	}{
		{"luw insert, remote later", ResolverLastUpdateWins, Insert, found(v(0, 1)), v(ms, 2), true, KeepRemote, true, false},
		{"fuw insert, remote later", ResolverFirstUpdateWins, Insert, found(v(0, 1)), v(ms, 2), true, FirstKeepLocal, false, false},
		{"fuw insert, remote earlier", ResolverFirstUpdateWins, Insert, found(v(ms, 1)), v(0, 2), true, FirstKeepRemote, true, false},
		{"fuw insert, tie to the lower remote node", ResolverFirstUpdateWins, Insert, found(v(0, 2)), v(0, 1), true, FirstKeepRemote, true, false},
		{"fuw insert, tie to the lower local node", ResolverFirstUpdateWins, Insert, found(v(0, 1)), v(0, 2), true, FirstKeepLocal, false, false},
		{"fuw insert, unknown local loses", ResolverFirstUpdateWins, Insert, found(Version{}), v(0, 2), true, FirstKeepRemote, true, false},
		{"keep_local insert", ResolverKeepLocal, Insert, found(v(0, 1)), v(ms, 2), true, LocalKept, false, false},
		{"apply_remote insert", ResolverApplyRemote, Insert, found(v(ms, 1)), v(0, 2), true, RemoteApplied, true, false},
		{"error insert", ResolverError, Insert, found(v(0, 1)), v(ms, 2), true, "", false, true},
		{"error on a new key: no conflict", ResolverError, Insert, Local{}, v(0, 2), false, "", true, false},
		{"keep_local update of a row another node wrote, even older", ResolverKeepLocal, Update, found(v(0, 1)), v(ms, 2), true, LocalKept, false, false},
		{"keep_local update of a row the same node wrote", ResolverKeepLocal, Update, Local{Found: true, Same: true, Version: v(ms, 2)}, v(0, 2), false, "", true, false},
		{"keep_local update of a row of unknown age", ResolverKeepLocal, Update, found(Version{}), v(0, 2), false, "", true, false},
		{"apply_remote update, local newer", ResolverApplyRemote, Update, found(v(ms, 1)), v(0, 2), true, RemoteApplied, true, false},
		{"apply_remote update, remote newer: no conflict", ResolverApplyRemote, Update, found(v(0, 1)), v(ms, 2), false, "", true, false},
		{"error update, local newer", ResolverError, Update, found(v(ms, 1)), v(0, 2), true, "", false, true},
		{"error update, remote newer: no conflict", ResolverError, Update, found(v(0, 1)), v(ms, 2), false, "", true, false},
		{"first_update_wins is not taken for updates", ResolverFirstUpdateWins, Update, found(v(ms, 1)), v(0, 2), true, KeepLocal, false, false},
		{"keep_local delete", ResolverKeepLocal, Delete, found(v(0, 1)), v(ms, 2), true, LocalKept, false, false},
		{"apply_remote delete", ResolverApplyRemote, Delete, found(v(ms, 1)), v(0, 2), true, RemoteApplied, true, false},
		{"error delete", ResolverError, Delete, found(v(ms, 1)), v(0, 2), true, "", false, true},
		{"error update_missing parks", ResolverError, Update, Local{}, v(0, 2), true, "", false, true},
		{"error delete_missing parks", ResolverError, Delete, Local{}, v(0, 2), true, "", false, true},
		{"keep_local is not taken for delete_missing", ResolverKeepLocal, Delete, Local{}, v(0, 2), true, Skip, false, false},
		{"unknown resolver reads as last_update_wins", "bogus", Insert, found(v(ms, 1)), v(0, 2), true, KeepLocal, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := DecideWith(tt.op, tt.local, tt.remote, func(Type) Resolver { return tt.r })
			if d.Conflict != tt.conflict || d.Resolution != tt.res || d.ApplyRemote != tt.apply || d.Error != tt.err {
				t.Fatalf("DecideWith = %+v, want conflict=%v %q apply=%v error=%v", d, tt.conflict, tt.res, tt.apply, tt.err)
			}
			if d.Conflict && d.Reason == "" {
				t.Fatal("conflict without a reason")
			}
		})
	}
	// Per type: the resolver of update_missing is not the one of update_update.
	byType := func(t Type) Resolver {
		if t == UpdateMissing {
			return ResolverError
		}
		return ResolverKeepLocal
	}
	if d := DecideWith(Update, Local{}, v(0, 2), byType); !d.Error || d.Type != UpdateMissing {
		t.Errorf("update_missing under error: %+v", d)
	}
	if d := DecideWith(Update, found(v(0, 1)), v(ms, 2), byType); d.Resolution != LocalKept {
		t.Errorf("update_update under keep_local: %+v", d)
	}
	d := DecideWith(Insert, found(v(0, 1)), v(ms, 2), func(Type) Resolver { return ResolverError })
	if got := ErrorMessage(d); got != "bdr: insert_insert conflict not resolved (resolver error): "+
		"local 2026-11-21 10:00:00.000000Z by node 1, remote 2026-11-21 10:00:00.001000Z by node 2" {
		t.Errorf("message %q", got)
	}
	for msg, want := range map[string]Type{
		ErrorMessage(d): InsertInsert,
		ErrorMessage(DecideWith(Delete, Local{}, v(0, 2), func(Type) Resolver { return ResolverError })): DeleteMissing,
		"bdr: bogus conflict not resolved (resolver error): x":                                           "",
		"bdr: 3 of 4 row changes applied without conflict":                                               "",
		"insert_insert conflict not resolved (resolver error)":                                           "",
	} {
		if got, ok := ErrorType(msg); got != want || ok != (want != "") {
			t.Errorf("ErrorType(%q) = %q, %v; want %q", msg, got, ok, want)
		}
	}
}

// TestResolversConverge checks, for every pair of versions two nodes hold
// of a key each inserted, what each node ends with once it has applied
// the other's insert: the same version under last_update_wins and
// first_update_wins (the earlier one under the latter), each its own under
// keep_local, each the other's under apply_remote. The same for
// concurrent updates under last_update_wins, where a node applies a newer
// update as an ordinary one and the other records the conflict, and under
// error, which parks the older update on the node holding the newer one.
func TestResolversConverge(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	versions := []Version{
		{Known: true, CommitTime: t0, NodeID: 1},
		{Known: true, CommitTime: t0, NodeID: 2},
		{Known: true, CommitTime: t0.Add(time.Microsecond), NodeID: 1},
		{Known: true, CommitTime: t0.Add(-time.Hour), NodeID: 9},
		{Known: true, CommitTime: t0.Add(time.Hour), NodeID: 3},
	}
	// after is the version a node holding local ends with when remote arrives.
	after := func(op Op, r Resolver, local, remote Version) (Version, Decision) {
		d := DecideWith(op, Local{Found: true, Version: local}, remote, func(Type) Resolver { return r })
		if d.ApplyRemote {
			return remote, d
		}
		return local, d
	}
	for i, a := range versions {
		for j, b := range versions {
			if i == j {
				continue
			}
			for _, r := range []Resolver{ResolverLastUpdateWins, ResolverFirstUpdateWins, ResolverKeepLocal, ResolverApplyRemote} {
				onA, _ := after(Insert, r, a, b)
				onB, _ := after(Insert, r, b, a)
				var want1, want2 Version
				switch r {
				case ResolverLastUpdateWins:
					want1 = a
					if b.Newer(a) {
						want1 = b
					}
					want2 = want1
				case ResolverFirstUpdateWins:
					want1 = a
					if b.Earlier(a) {
						want1 = b
					}
					want2 = want1
				case ResolverKeepLocal:
					want1, want2 = a, b
				case ResolverApplyRemote:
					want1, want2 = b, a
				}
				if onA != want1 || onB != want2 {
					t.Errorf("insert_insert under %s, %v and %v: the nodes end with %v and %v, want %v and %v", r, a, b, onA, onB, want1, want2)
				}
			}
			// Concurrent updates: the node holding the newer version parks the
			// older update under error; the other applies the newer one.
			onA, dA := after(Update, ResolverError, a, b)
			onB, dB := after(Update, ResolverError, b, a)
			if onA != onB || dA.Error == dB.Error {
				t.Errorf("update_update under error, %v and %v: %v (%+v) and %v (%+v), want the same version and one parked", a, b, onA, dA, onB, dB)
			}
		}
	}
}
