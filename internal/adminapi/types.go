package adminapi

import (
	"fmt"
	"net/http"
	"time"

	"github.com/bdr-dev/bdr/internal/checksum"
)

// Error is an admin API error: an HTTP status and a one-line message.
type Error struct {
	Status  int    `json:"-"`
	Message string `json:"error"`
}

func (e *Error) Error() string { return e.Message }

// Errorf returns an *Error with status.
func Errorf(status int, format string, args ...any) error {
	return &Error{Status: status, Message: fmt.Sprintf(format, args...)}
}

// Common error constructors.
func BadRequest(format string, args ...any) error {
	return Errorf(http.StatusBadRequest, format, args...)
}
func NotFound(format string, args ...any) error { return Errorf(http.StatusNotFound, format, args...) }
func Conflict(format string, args ...any) error { return Errorf(http.StatusConflict, format, args...) }
func Unavailable(format string, args ...any) error {
	return Errorf(http.StatusServiceUnavailable, format, args...)
}

// Node describes a member of the group.
type Node struct {
	ID         int32     `json:"id"`
	Name       string    `json:"name"`
	State      string    `json:"state"`
	PublicDSN  string    `json:"public_dsn"`
	AdminAddr  string    `json:"admin_addr"`
	GossipAddr string    `json:"gossip_addr,omitempty"`
	RaftAddr   string    `json:"raft_addr,omitempty"`
	Since      time.Time `json:"since,omitempty"`
	Reason     string    `json:"reason,omitempty"` // why it was parted
	// Live is set in status answers: up, suspect, down or db-down, as gossip
	// sees it from the answering node, since LiveSince.
	Live      string    `json:"live,omitempty"`
	LiveSince time.Time `json:"live_since,omitempty"`
	// Reachable is set in status answers: whether this node's bdrd answered.
	Reachable *bool `json:"reachable,omitempty"`
	// ClockSkewSeconds is set in status answers once gossip has compared
	// the member's clock with the answering node's: the member's clock minus
	// the answering node's, within ClockSkewErrorSeconds (half the round
	// trip of the probe). ClockSkewOver: over Status.ClockSkewBoundSeconds.
	ClockSkewSeconds      *float64 `json:"clock_skew_seconds,omitempty"`
	ClockSkewErrorSeconds float64  `json:"clock_skew_error_seconds,omitempty"`
	ClockSkewOver         bool     `json:"clock_skew_over,omitempty"`
}

// Info is what a bdrd says about itself.
type Info struct {
	Name       string `json:"name"`
	ID         int32  `json:"id"` // 0 before init or join
	State      string `json:"state"`
	PublicDSN  string `json:"public_dsn"`
	AdminAddr  string `json:"admin_addr"`
	GossipAddr string `json:"gossip_addr"`
	RaftAddr   string `json:"raft_addr"`
	Version    string `json:"version"`
}

// Stream describes one replication stream, From -> To.
type Stream struct {
	From       string    `json:"from"`
	To         string    `json:"to"`
	State      string    `json:"state"`
	Since      time.Time `json:"since,omitempty"`
	LagBytes   int64     `json:"lag_bytes"`
	LagSeconds float64   `json:"lag_seconds"`
	LastCommit time.Time `json:"last_applied_commit_time,omitempty"`
	LastError  string    `json:"last_error,omitempty"`
	Paused     bool      `json:"paused,omitempty"`
	// Parked is how many transactions from From wait in To's bdr.apply_errors.
	Parked int64 `json:"parked"`
}

// Status is the answer to GET /v1/status.
type Status struct {
	Node      Info          `json:"node"`
	Nodes     []Node        `json:"nodes"`
	Streams   []Stream      `json:"streams"`
	Join      *JoinProgress `json:"join,omitempty"`
	Conflicts int64         `json:"conflicts"`
	// Unreachable lists members whose streams could not be read.
	Unreachable []string `json:"unreachable,omitempty"`
	// Leader is the node leading the group's consensus, "" when none is
	// known (no quorum here).
	Leader string `json:"leader"`
	// WAL is what the slots of peers keep on this node, against the budget.
	WAL []WALBudget `json:"wal,omitempty"`
	// ClockSkewBoundSeconds is the answering node's --max-clock-skew.
	ClockSkewBoundSeconds float64 `json:"clock_skew_bound_seconds,omitempty"`
}

// WALBudget is the WAL one peer's slot keeps on a node.
type WALBudget struct {
	Peer          string  `json:"peer"`
	RetainedBytes int64   `json:"retained_bytes"`
	BudgetBytes   int64   `json:"budget_bytes"`
	UsedRatio     float64 `json:"used_ratio"`
	State         string  `json:"state"` // ok, warning (80%, peer down), over (100%, peer down)
}

// ProposeRequest asks the group's leader to commit a decision (internal):
// Op is admit, activate or part.
type ProposeRequest struct {
	Op     string `json:"op"`
	Node   Node   `json:"node"`
	Reason string `json:"reason,omitempty"`
	// Request identifies the proposal: a retry carries the same id and is
	// answered with the decision already taken, if it was.
	Request string `json:"request,omitempty"`
}

// JoinRequest asks a node to join the group through Via (a member's admin address).
type JoinRequest struct {
	Via string `json:"via"`
	// Force replaces the user tables (and every other user object) of the
	// joining node's database with the group's; without it a database that
	// holds user tables is refused (unless they are left from this node's
	// own earlier membership or failed join).
	Force bool `json:"force,omitempty"`
	// CopyWorkers is the most sessions the row copy may use (0: the
	// joining bdrd's --copy-workers). One copies in a single transaction.
	CopyWorkers int `json:"copy_workers,omitempty"`
}

// Join phases, in order.
const (
	PhaseAdmitted   = "admitted"
	PhaseSlots      = "creating slots"
	PhaseWaitVia    = "waiting for the via node"
	PhaseSnapshot   = "snapshot"
	PhaseCopying    = "copying"
	PhaseStreams    = "starting streams"
	PhaseCatchingUp = "catching up"
	PhaseReady      = "ready"
	PhaseFailed     = "failed"
)

// JoinProgress reports a join.
type JoinProgress struct {
	Phase   string    `json:"phase"`
	Message string    `json:"message,omitempty"`
	Error   string    `json:"error,omitempty"`
	Done    bool      `json:"done"`
	Started time.Time `json:"started"`
	Updated time.Time `json:"updated"`
	// Copy is the data copy, once it started.
	Copy *CopyProgress `json:"copy,omitempty"`
}

// CopyProgress reports the data copy of a join, table by table.
type CopyProgress struct {
	Started time.Time `json:"started"`
	// Sessions is how many sessions copy the rows (in parallel when more
	// than one).
	Sessions int             `json:"sessions,omitempty"`
	Tables   []TableProgress `json:"tables"`
	// ETASeconds estimates the time left of the row copy from the via
	// node's statistics; absent while unknown.
	ETASeconds *float64 `json:"eta_seconds,omitempty"`
	Done       bool     `json:"done"` // every row copied (indexes and constraints may still be building)
	// Finished is when the last row was copied.
	Finished time.Time `json:"finished,omitzero"`
}

// TableProgress is the copy of one table.
type TableProgress struct {
	Name  string `json:"name"`
	Rows  int64  `json:"rows"`
	Bytes int64  `json:"bytes"` // COPY text bytes
	// EstimatedRows comes from the via node's statistics (0: unknown).
	EstimatedRows int64 `json:"estimated_rows"`
	Done          bool  `json:"done"`
}

// PartRequest asks to remove node Name from the group.
type PartRequest struct {
	Name string `json:"name"`
}

// PartResult reports a part.
type PartResult struct {
	Name        string   `json:"name"`
	Done        []string `json:"done"`                  // members that dropped the node
	Unreachable []string `json:"unreachable,omitempty"` // members to clean up when they return
}

// AdmitRequest is a joiner's request to a member (internal).
type AdmitRequest struct {
	Name       string `json:"name"`
	PublicDSN  string `json:"public_dsn"`
	AdminAddr  string `json:"admin_addr"`
	GossipAddr string `json:"gossip_addr"`
	RaftAddr   string `json:"raft_addr"`
}

// AdmitResponse gives the joiner its id, the members and the group key
// (internal; the key is secret).
type AdmitResponse struct {
	NodeID   int32  `json:"node_id"`
	Members  []Node `json:"members"`
	GroupKey string `json:"group_key"`
}

// PauseRequest pauses a node's appliers for at most LeaseMillis (internal).
type PauseRequest struct {
	LeaseMillis int64 `json:"lease_ms"`
}

// WaitRequest waits until the stream from Peer processed everything before
// LSN (internal).
type WaitRequest struct {
	Peer string `json:"peer"`
	LSN  string `json:"lsn"`
}

// Checksums is the answer to GET /v1/checksums.
type Checksums struct {
	Node   string                  `json:"node"`
	Tables map[string]checksum.Sum `json:"tables"`
}

// ApplyError is a transaction parked in bdr.apply_errors: it could not be
// applied, and the stream went on without it.
type ApplyError struct {
	ID          int64      `json:"id"`
	Origin      string     `json:"origin"`
	OriginID    int32      `json:"origin_id"`
	Xid         int64      `json:"remote_xid"`
	CommitLSN   string     `json:"remote_commit_lsn"`
	CommitTime  time.Time  `json:"remote_commit_time"`
	Tables      []string   `json:"tables"`
	Changes     int        `json:"change_count"`
	SQLState    string     `json:"sqlstate,omitempty"`
	Error       string     `json:"error"`
	State       string     `json:"state"` // parked, applied, discarded
	Attempts    int        `json:"attempts"`
	ParkedAt    time.Time  `json:"parked_at"`
	LastAttempt time.Time  `json:"last_attempt_at"`
	NextRetry   *time.Time `json:"next_retry_at,omitempty"`
	ResolvedAt  *time.Time `json:"resolved_at,omitempty"`
	ResolvedBy  string     `json:"resolved_by,omitempty"`
}

// ApplyErrors is the answer to GET /v1/errors.
type ApplyErrors struct {
	Node   string       `json:"node"`
	Errors []ApplyError `json:"errors"`
}

// Actions on a parked transaction (POST /v1/errors).
const (
	ErrorRetry   = "retry"   // apply it now
	ErrorDiscard = "discard" // give it up; the row stays, marked discarded
)

// ErrorActionRequest is the body of POST /v1/errors.
type ErrorActionRequest struct {
	ID     int64  `json:"id"`
	Action string `json:"action"`
}
