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
	// UpdateUpdate: a remote UPDATE found the row changed by another node
	// since (its version is at least as new as the update).
	UpdateUpdate Type = "update_update"
	// UpdateDelete: a remote DELETE found the row changed by another node
	// since (the row was updated on one node while deleted on another).
	UpdateDelete Type = "update_delete"
	// UpdateMissing: a remote UPDATE found no row with its key.
	UpdateMissing Type = "update_missing"
	// DeleteMissing: a remote DELETE found no row with its key, and no
	// tombstone: the row never arrived here (it is inserted by a change
	// still on its way, which the tombstone the DELETE leaves will beat).
	DeleteMissing Type = "delete_missing"
)

// Conflict types told apart by tombstones (bdr.tombstones, the versions of
// deleted rows). Last update wins decides them whatever resolvers are set:
// they compare a remote change with a delete, or with a row whose change
// overtook its insert, and only comparing the versions makes every node
// end the same.
const (
	// DeleteDelete: a remote DELETE found its row already deleted here
	// (a tombstone).
	DeleteDelete Type = "delete_delete"
	// InsertUpdate: a remote INSERT found a row that an UPDATE of that
	// row, from another node, had inserted here before it: the update
	// overtook the insert on its way (three nodes or more).
	InsertUpdate Type = "insert_update"
	// InsertDelete: a remote INSERT found its key deleted here by a newer
	// DELETE (a tombstone): the delete overtook the insert, or the insert
	// was concurrent with it.
	InsertDelete Type = "insert_delete"
)

// Conflict types on other constraints than the replica identity.
const (
	// UniqueSecondary: a remote row collides with a different local row on
	// a unique index other than the replica identity.
	UniqueSecondary Type = "unique_secondary"
	// PKChange: a remote UPDATE changes the key to one a different local
	// row has.
	PKChange Type = "pk_change"
	// MultipleUnique: a remote row collides on several unique indexes at
	// once (with one or more local rows).
	MultipleUnique Type = "multiple_unique"
	// ForeignKeyOrphan: a remote row references a parent row that does not
	// exist locally, or a remote DELETE leaves local rows referencing it.
	// Apply does not enforce foreign keys (session_replication_role is
	// replica), so the change is applied, as on every other node, and
	// recorded.
	ForeignKeyOrphan Type = "foreign_key_orphan"
	// ExclusionViolation: a remote row violates an exclusion constraint;
	// the transaction is parked.
	ExclusionViolation Type = "exclusion_violation"
	// ApplyError: a remote transaction failed for another reason than a
	// conflict (a missing table, column or role, a type error); it is
	// parked.
	ApplyError Type = "apply_error"
)

// Resolution names what was done, as stored in conflict_history.resolution.
type Resolution string

// Resolutions.
const (
	KeepLocal  Resolution = "last_update_wins_keep_local"
	KeepRemote Resolution = "last_update_wins_keep_remote"
	// DeleteWins: a DELETE beat a concurrent UPDATE whatever the times
	// (before tombstones; no longer decided, kept for old records).
	DeleteWins Resolution = "delete_wins"
	// InsertMissing: a remote UPDATE found no row and no tombstone: its
	// INSERT had not arrived yet; the row is inserted as the update made
	// it (when the change carries every column).
	InsertMissing Resolution = "insert_missing_row"
	// Skip: the change had nothing to act on and was skipped.
	Skip Resolution = "skip_change"
	// ApplyAnyway: the change is applied although it breaks a constraint
	// apply does not enforce (a foreign key), as on every other node.
	ApplyAnyway Resolution = "apply_anyway"
	// Parked: the whole transaction is parked in bdr.apply_errors.
	Parked Resolution = "parked"
	// KeyChangeWins: a remote UPDATE that changed the key was applied over
	// a concurrent update of the row whatever the times (before
	// tombstones; no longer decided, kept for old records).
	KeyChangeWins Resolution = "key_change_wins"
	// KeyChangeInserted: a remote key change found no row under the old
	// key (deleted, or changed, concurrently); its row is inserted under
	// the new key, as on the nodes where it applied.
	KeyChangeInserted Resolution = "key_change_inserted"
)

// Op is the kind of remote change.
type Op int

// Remote change kinds.
const (
	Insert Op = iota + 1
	Update
	Delete
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

// Newer reports whether v beats o under last-update-wins: the later commit
// time wins (at microsecond precision, PostgreSQL's), equal times go to the
// higher node id.
func (v Version) Newer(o Version) bool {
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

// Local is what the applier found locally under the key of a remote change.
type Local struct {
	Found bool
	// Same: the local row was last written by the remote change's own node
	// (or earlier in the same remote transaction), so applying is not a
	// conflict whatever the times.
	Same    bool
	Version Version
}

// Decision is the outcome for one remote row change.
type Decision struct {
	// Conflict says whether a conflict happened and is recorded.
	Conflict   bool
	Type       Type
	Resolution Resolution
	// ApplyRemote says whether the remote change is applied.
	ApplyRemote bool
	// Error: the resolver is error; the change is not applied and its
	// transaction fails (SQLSTATE BR003, ErrorMessage) and is parked. No
	// Resolution: nothing is written to conflict_history.
	Error bool
	// Reason says which rule decided, with the versions compared.
	Reason string
}

// Decide is the rule for every remote row change (DESIGN rule 3), under
// last_update_wins: DecideWith with no resolvers set.
//
// A conflict is a remote change that meets a local row written by another
// node at the same time or later (the local row "changed since"), a remote
// INSERT whose key exists, or a change whose row is missing. The later
// commit wins, ties to the higher node id, DELETEs included: a delete is a
// version too, kept in a tombstone. Two nodes that see the same pair of versions
// always reach the same outcome, which is what makes the group converge.
//
// A remote change newer than a local version written elsewhere is applied
// without a record: it is the ordinary case of rows written on one node and
// changed later on another. When that pair was in fact concurrent, the node
// where the older change arrives last records it.
func Decide(op Op, local Local, remote Version) Decision {
	return DecideWith(op, local, remote, nil)
}

// DecideWith is Decide under the resolvers set: resolver gives the
// resolver of each conflict type (nil: last_update_wins for every type),
// Effective applies. The resolver changes what is done with a conflict
// and, for keep_local, what is one: a remote UPDATE or DELETE of a row
// last written by another node is a conflict under keep_local even when
// it is newer (see Resolver).
func DecideWith(op Op, local Local, remote Version, resolver func(Type) Resolver) Decision {
	res := func(t Type) Resolver {
		if resolver == nil {
			return ResolverLastUpdateWins
		}
		return Effective(t, resolver(t))
	}
	switch {
	case op == Insert && !local.Found:
		return Decision{ApplyRemote: true}
	case op == Insert:
		return Resolve(InsertInsert, res(InsertInsert), local.Version, remote)
	case !local.Found && op == Update:
		return missing(UpdateMissing, res(UpdateMissing), noRowUpdate)
	case !local.Found:
		return missing(DeleteMissing, res(DeleteMissing), noRowDelete)
	}
	t := UpdateUpdate
	if op == Delete {
		t = UpdateDelete
	}
	r := res(t)
	if local.Same || clean(r, local.Version, remote) {
		return Decision{ApplyRemote: true}
	}
	return changed(t, r, local.Version, remote)
}
