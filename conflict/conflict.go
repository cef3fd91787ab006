package conflict

import (
	"fmt"
	"time"
)

// Type names a kind of conflict, as stored in conflict_history.conflict_type.
type Type string

// Conflict types detected on the replica identity.
const (
	// InsertInsert: a remote INSERT found a local row with the same key.
	InsertInsert Type = "insert_insert"
	// UpdateUpdate: a remote UPDATE found the row last written by another node.
	UpdateUpdate Type = "update_update"
	// UpdateDelete: a remote DELETE found the row last written by another node
	// (the row was updated on one node while deleted on another).
	UpdateDelete Type = "update_delete"
	// UpdateMissing: a remote UPDATE found no row with its key.
	UpdateMissing Type = "update_missing"
	// DeleteMissing: a remote DELETE found no row with its key.
	DeleteMissing Type = "delete_missing"
)

// Resolution names what was done, as stored in conflict_history.resolution.
type Resolution string

// Resolutions.
const (
	KeepLocal  Resolution = "last_update_wins_keep_local"
	KeepRemote Resolution = "last_update_wins_keep_remote"
	// DeleteWins: a DELETE beats a concurrent UPDATE whatever the times.
	DeleteWins Resolution = "delete_wins"
	// Skip: the change had nothing to act on and was skipped.
	Skip Resolution = "skip_change"
)

// Version identifies one version of a row: who committed it and when, both
// as seen by the origin node (rule 1 keeps the origin's commit time).
type Version struct {
	// Known is false when the local version's commit time is not available
	// (row older than track_commit_timestamp, or its xid already truncated).
	// An unknown version is older than any known one.
	Known      bool
	CommitTime time.Time
	NodeID     int32
}

// newer reports whether v beats o under last-update-wins: the later commit
// time wins, equal times go to the higher node id.
func (v Version) newer(o Version) bool {
	switch {
	case !v.Known:
		return false
	case !o.Known:
		return true
	}
	vt, ot := v.CommitTime.UnixMicro(), o.CommitTime.UnixMicro()
	if vt != ot {
		return vt > ot
	}
	return v.NodeID > o.NodeID
}

func (v Version) String() string {
	if !v.Known {
		return "unknown commit time"
	}
	return fmt.Sprintf("%s by node %d", v.CommitTime.UTC().Format("2006-01-02 15:04:05.000000Z"), v.NodeID)
}

// Decision is the outcome of a conflict.
type Decision struct {
	Resolution Resolution
	// ApplyRemote says whether the remote change is applied (in full, on the
	// local row) or skipped.
	ApplyRemote bool
	// Reason says which rule decided, with the two versions compared.
	Reason string
}

// Resolve decides a conflict of type t between the local row version (zero
// Version when the row is missing) and the remote change.
//
// Two nodes that see the same pair of versions always reach the same winner,
// which is what makes the group converge.
func Resolve(t Type, local, remote Version) Decision {
	switch t {
	case UpdateMissing:
		return Decision{Resolution: Skip, Reason: "no local row with this key; the update has nothing to change"}
	case DeleteMissing:
		return Decision{Resolution: Skip, Reason: "no local row with this key; already deleted"}
	case UpdateDelete:
		// Without tombstones the node that deleted the row cannot compare
		// times when the update reaches it (it finds no row and skips it),
		// so the only outcome every node can agree on is that the delete wins.
		return Decision{Resolution: DeleteWins, ApplyRemote: true,
			Reason: fmt.Sprintf("delete wins over a concurrent update (local %s, remote delete %s)", local, remote)}
	}
	if remote.newer(local) {
		return Decision{Resolution: KeepRemote, ApplyRemote: true,
			Reason: fmt.Sprintf("remote %s is newer than local %s", remote, local)}
	}
	return Decision{Resolution: KeepLocal,
		Reason: fmt.Sprintf("local %s is newer than or ties with remote %s", local, remote)}
}

// Record is one row of bdr.conflict_history.
type Record struct {
	LocalNodeID    int32
	LocalNodeName  string
	RemoteNodeID   int32
	RemoteNodeName string
	Schema, Table  string
	Type           Type
	Decision       Decision
	// LocalTuple is the local row as jsonb text, nil when there is none.
	LocalTuple []byte
	// Local is the version of the local row, zero when there is none.
	Local            Version
	RemoteXid        uint32
	RemoteCommitTime time.Time
	RemoteCommitLSN  string
}
