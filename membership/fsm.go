package membership

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/bdr-dev/bdr/internal/catalog"
)

// groupNode is one node in the group's replicated state.
type groupNode struct {
	ID         int32     `json:"id"`
	Name       string    `json:"name"`
	State      string    `json:"state"` // catalog.StateJoining, StateActive or StateParted
	PublicDSN  string    `json:"public_dsn"`
	AdminAddr  string    `json:"admin_addr"`
	GossipAddr string    `json:"gossip_addr"`
	RaftAddr   string    `json:"raft_addr"`
	Since      time.Time `json:"since"`
	Reason     string    `json:"reason,omitempty"` // why it was parted
	// Request is the id of the decision that last changed the node: a
	// proposal retried after the leader was lost mid-commit carries the same
	// id, and finds its decision already taken.
	Request string `json:"request,omitempty"`
}

// groupState is the state every member agrees on through consensus: the
// nodes (by name; a parted name stays until it joins again) and the next
// node id. Ids are never reused.
type groupState struct {
	NextID int32                `json:"next_id"`
	Nodes  map[string]groupNode `json:"nodes"`
}

func (s groupState) clone() groupState {
	return groupState{NextID: s.NextID, Nodes: maps.Clone(s.Nodes)}
}

// sorted returns the nodes by id.
func (s groupState) sorted() []groupNode {
	out := make([]groupNode, 0, len(s.Nodes))
	for _, n := range s.Nodes {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Operations of the group's state machine.
const (
	opAdmit    = "admit"    // a node joins: name checked, id allocated
	opActivate = "activate" // a joined node becomes a full member
	opPart     = "part"     // a node leaves the group
)

// command is one entry of the consensus log. Everything that changes the
// state is in it (At included), so every member computes the same state.
type command struct {
	Op     string    `json:"op"`
	Node   groupNode `json:"node"`
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
	// Request identifies the proposal; its retries carry the same one.
	Request string `json:"request,omitempty"`
}

// applyResult is what applying a command returns to its proposer.
type applyResult struct {
	Node groupNode
	Err  error
}

// apply computes the next state: a pure function of state and command.
func (s *groupState) apply(c command) applyResult {
	if s.Nodes == nil {
		s.Nodes = map[string]groupNode{}
	}
	if s.NextID == 0 {
		s.NextID = 1
	}
	name := c.Node.Name
	cur, exists := s.Nodes[name]
	if exists && c.Request != "" && cur.Request == c.Request {
		// A retry of a decision that was committed: its result again.
		return applyResult{Node: cur}
	}
	switch c.Op {
	case opAdmit:
		if !NamePattern.MatchString(name) {
			return applyResult{Err: fmt.Errorf("node name %q is invalid", name)}
		}
		if exists && cur.State != catalog.StateParted {
			return applyResult{Err: fmt.Errorf("node name %q is already used by node %d (%s) in this group", name, cur.ID, cur.State)}
		}
		n := c.Node
		n.ID, n.Since, n.Reason, n.Request = s.NextID, c.At, "", c.Request
		if n.State != catalog.StateActive {
			n.State = catalog.StateJoining
			// One join at a time: a joiner learns the members when it is
			// admitted and takes its snapshot from one of them, which
			// another joiner's data would not be part of yet.
			for _, o := range s.sorted() {
				if o.State == catalog.StateJoining {
					return applyResult{Err: fmt.Errorf("node %q (id %d) is joining the group; one join at a time: join %s once it is ready (or part it if its join was abandoned)",
						o.Name, o.ID, name)}
				}
			}
		}
		s.NextID++
		s.Nodes[name] = n
		return applyResult{Node: n}
	case opActivate:
		if !exists || cur.State == catalog.StateParted {
			return applyResult{Err: fmt.Errorf("no node named %q is joining", name)}
		}
		if cur.State != catalog.StateActive {
			cur.State, cur.Since, cur.Request = catalog.StateActive, c.At, c.Request
			s.Nodes[name] = cur
		}
		return applyResult{Node: cur}
	case opPart:
		if !exists || cur.State == catalog.StateParted {
			return applyResult{Err: fmt.Errorf("no node named %q in the group", name)}
		}
		cur.State, cur.Since, cur.Reason, cur.Request = catalog.StateParted, c.At, c.Reason, c.Request
		s.Nodes[name] = cur
		return applyResult{Node: cur}
	}
	return applyResult{Err: fmt.Errorf("unknown group operation %q", c.Op)}
}

// groupFSM is the raft state machine around groupState.
type groupFSM struct {
	mu      sync.Mutex
	state   groupState
	changed chan struct{} // signalled after every change
}

var _ raft.FSM = (*groupFSM)(nil)

// newGroupFSM returns an empty state machine that signals changed (which
// may be nil) after every change.
func newGroupFSM(changed chan struct{}) *groupFSM {
	if changed == nil {
		changed = make(chan struct{}, 1)
	}
	return &groupFSM{state: groupState{NextID: 1, Nodes: map[string]groupNode{}}, changed: changed}
}

func (f *groupFSM) Apply(l *raft.Log) any {
	var c command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		return applyResult{Err: fmt.Errorf("malformed group command: %w", err)}
	}
	f.mu.Lock()
	res := f.state.apply(c)
	f.mu.Unlock()
	signal(f.changed)
	return res
}

func (f *groupFSM) current() groupState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state.clone()
}

func (f *groupFSM) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{state: f.current()}, nil
}

func (f *groupFSM) Restore(r io.ReadCloser) error {
	defer r.Close()
	var s groupState
	if err := json.NewDecoder(r).Decode(&s); err != nil {
		return fmt.Errorf("restore group state: %w", err)
	}
	if s.Nodes == nil {
		s.Nodes = map[string]groupNode{}
	}
	f.mu.Lock()
	f.state = s
	f.mu.Unlock()
	signal(f.changed)
	return nil
}

type fsmSnapshot struct{ state groupState }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s.state); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
