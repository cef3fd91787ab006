package catalog

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// Node states in bdr.nodes.
const (
	StateJoining = "joining" // admitted; slots and data copy in progress
	StateActive  = "active"  // a full member
	StateParting = "parting" // being removed
	StateParted  = "parted"  // removed; its name may join again
)

// Node is one row of bdr.nodes.
type Node struct {
	ID             int32     `json:"id"`
	Name           string    `json:"name"`
	State          string    `json:"state"`
	IsLocal        bool      `json:"is_local"`
	PublicDSN      string    `json:"public_dsn"`
	AdminAddr      string    `json:"admin_addr"`
	GossipAddr     string    `json:"gossip_addr"`
	RaftAddr       string    `json:"raft_addr"`
	Reason         string    `json:"reason,omitempty"` // why it was parted
	CreatedAt      time.Time `json:"created_at"`
	StateChangedAt time.Time `json:"state_changed_at"`
}

// Current reports whether the node is a member now (not parted).
func (n Node) Current() bool { return n.State != StateParted }

// ReplName is bdr_<database oid>_<node>: the name of a database's slot for
// subscriber node and of its replication origin for provider node. Slots
// and origins belong to the server, not to a database; the oid keeps two
// bdr databases on one server (of one group or of two) apart.
func ReplName(dbOID uint32, node string) string {
	return "bdr_" + strconv.FormatUint(uint64(dbOID), 10) + "_" + node
}

// SlotName is the logical slot, in the provider's database, that
// subscriber streams from.
func SlotName(providerDB uint32, subscriber string) string { return ReplName(providerDB, subscriber) }

// OriginName is the replication origin, in the subscriber's database, of
// the changes that come from provider.
func OriginName(subscriberDB uint32, provider string) string { return ReplName(subscriberDB, provider) }

// CopyOriginName is the replication origin that session n of a join's
// parallel row copy binds in the joining database: bdr_<oid>__copy<n>,
// never a node's (node names start with a letter). The join drops it.
func CopyOriginName(dbOID uint32, n int) string {
	return CopyOriginPrefix(dbOID) + strconv.Itoa(n)
}

// CopyOriginPrefix begins the name of every origin CopyOriginName makes.
func CopyOriginPrefix(dbOID uint32) string { return ReplName(dbOID, "_copy") }

// DatabaseOID is the oid of the database db is connected to.
func DatabaseOID(ctx context.Context, db DB) (uint32, error) {
	var oid uint32
	if err := db.QueryRow(ctx, DatabaseOIDQuery).Scan(&oid); err != nil {
		return 0, fmt.Errorf("read the database oid: %w", err)
	}
	return oid, nil
}

// DatabaseOIDQuery returns the oid of the current database (it also runs on
// a replication connection).
const DatabaseOIDQuery = `SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()`

const nodeColumns = `node_id, node_name, state, is_local, public_dsn, admin_addr, gossip_addr, raft_addr,
	coalesce(reason, ''), created_at, state_changed_at`

func scanNode(row pgx.Row) (Node, error) {
	var n Node
	err := row.Scan(&n.ID, &n.Name, &n.State, &n.IsLocal, &n.PublicDSN, &n.AdminAddr, &n.GossipAddr, &n.RaftAddr,
		&n.Reason, &n.CreatedAt, &n.StateChangedAt)
	return n, err
}

// Nodes lists every node this node knows, parted ones included, by id.
func Nodes(ctx context.Context, db DB) ([]Node, error) {
	rows, err := db.Query(ctx, `SELECT `+nodeColumns+` FROM bdr.nodes ORDER BY node_id`)
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	nodes, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Node, error) { return scanNode(r) })
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	return nodes, nil
}

// LocalNode returns this node's own row; ok is false before init or join.
func LocalNode(ctx context.Context, db DB) (Node, bool, error) {
	n, err := scanNode(db.QueryRow(ctx, `SELECT `+nodeColumns+` FROM bdr.nodes
		WHERE is_local AND state <> 'parted'`))
	if errors.Is(err, pgx.ErrNoRows) {
		return Node{}, false, nil
	}
	if err != nil {
		return Node{}, false, fmt.Errorf("read local node: %w", err)
	}
	return n, true, nil
}

// UpsertNode records n, keyed by node id.
func UpsertNode(ctx context.Context, db DB, n Node) error {
	var reason *string
	if n.Reason != "" {
		reason = &n.Reason
	}
	_, err := db.Exec(ctx, `INSERT INTO bdr.nodes (node_id, node_name, state, is_local, public_dsn, admin_addr,
			gossip_addr, raft_addr, reason)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (node_id) DO UPDATE SET node_name = excluded.node_name,
			state = excluded.state, is_local = excluded.is_local, public_dsn = excluded.public_dsn,
			admin_addr = excluded.admin_addr, gossip_addr = excluded.gossip_addr, raft_addr = excluded.raft_addr,
			reason = excluded.reason,
			state_changed_at = CASE WHEN bdr.nodes.state = excluded.state THEN bdr.nodes.state_changed_at ELSE now() END
		WHERE (bdr.nodes.node_name, bdr.nodes.state, bdr.nodes.is_local, bdr.nodes.public_dsn, bdr.nodes.admin_addr,
			bdr.nodes.gossip_addr, bdr.nodes.raft_addr, bdr.nodes.reason)
			IS DISTINCT FROM (excluded.node_name, excluded.state, excluded.is_local, excluded.public_dsn,
			excluded.admin_addr, excluded.gossip_addr, excluded.raft_addr, excluded.reason)`,
		n.ID, n.Name, n.State, n.IsLocal, n.PublicDSN, n.AdminAddr, n.GossipAddr, n.RaftAddr, reason)
	if err != nil {
		return fmt.Errorf("record node %s: %w", n.Name, err)
	}
	return nil
}

// SetNodeState changes the state of node id.
func SetNodeState(ctx context.Context, db DB, id int32, state string) error {
	_, err := db.Exec(ctx, `UPDATE bdr.nodes SET state = $2, state_changed_at = now()
		WHERE node_id = $1 AND state <> $2`, id, state)
	if err != nil {
		return fmt.Errorf("set node %d %s: %w", id, state, err)
	}
	return nil
}

// DeleteNode removes node id from the catalog (used to undo a failed join).
func DeleteNode(ctx context.Context, db DB, id int32) error {
	if _, err := db.Exec(ctx, `DELETE FROM bdr.nodes WHERE node_id = $1`, id); err != nil {
		return fmt.Errorf("delete node %d: %w", id, err)
	}
	return nil
}
