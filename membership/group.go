package membership

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/catalog"
	"github.com/bdr-dev/bdr/internal/state"
)

// electionWait is how long a decision waits for a leader before it is
// refused: long enough to ride out an election (timeouts of 500 ms), short
// enough that a minority answers an operator promptly.
const electionWait = 4 * time.Second

// majorityWait is how long a decision waits for a leader while this node
// sees a majority of the members up (or not yet met by gossip: a member
// that just joined): an election there will end, but under load it can
// outlast electionWait (CI saw a join refused with 4 of 5 members up, and
// one with the second member of two not met yet). A node that sees only a
// minority still answers after electionWait.
const majorityWait = 30 * time.Second

// propose commits a group decision through consensus: applied here when
// this node leads, forwarded to the leader otherwise. Without a leader (a
// minority side of a partition, or no group) it fails with a clear reason
// after waiting electionWait for one, or majorityWait while a majority of
// the members is seen up.
func (s *Service) propose(ctx context.Context, cmd command) (groupNode, error) {
	return s.proposeWithin(ctx, cmd, electionWait)
}

// proposeWithin is propose waiting up to wait for a reachable leader, and
// up to majorityWait while this node sees a majority of the members up.
func (s *Service) proposeWithin(ctx context.Context, cmd command, wait time.Duration) (groupNode, error) {
	if cmd.At.IsZero() {
		cmd.At = time.Now()
	}
	if cmd.Request == "" {
		cmd.Request = rand.Text()
	}
	start := time.Now()
	for {
		n, retry, err := s.proposeOnce(ctx, cmd)
		waited := time.Since(start)
		if !retry || waited > wait && (waited > majorityWait || !s.seesMajority()) {
			return n, err
		}
		select {
		case <-ctx.Done():
			return n, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// proposeOnce is one attempt of propose; retry says the failure was the
// lack of a reachable leader, which an election may cure.
func (s *Service) proposeOnce(ctx context.Context, cmd command) (groupNode, bool, error) {
	cons, _, _ := s.group()
	if cons == nil {
		return groupNode{}, false, adminapi.Conflict("node %s is not a member of a group", s.cfg.NodeName)
	}
	if cons.isLeader() {
		n, err := cons.apply(cmd)
		if err != nil && !errors.Is(err, errNoLeader) {
			return n, false, adminapi.Conflict("%v", err)
		}
		if err == nil {
			signal(s.changed)
			return n, false, nil
		}
	}
	leader := cons.leader()
	if leader == "" || leader == s.cfg.NodeName {
		return groupNode{}, true, s.noQuorum("")
	}
	ln, ok := cons.fsm.current().Nodes[leader]
	if !ok {
		return groupNode{}, true, s.noQuorum("")
	}
	n, err := s.client(ln.AdminAddr).Propose(ctx, adminapi.ProposeRequest{Op: cmd.Op, Node: groupToAPI(cmd.Node), Reason: cmd.Reason, Request: cmd.Request})
	if err != nil {
		var e *adminapi.Error
		if errors.As(err, &e) {
			// The leader we knew stepped down, or lost its majority.
			return groupNode{}, e.Status == http.StatusServiceUnavailable, err
		}
		return groupNode{}, true, s.noQuorum(fmt.Sprintf("cannot reach the group's leader %s (%v)", leader, err))
	}
	return apiToGroup(n), false, nil
}

func apiToGroup(n adminapi.Node) groupNode {
	return groupNode{ID: n.ID, Name: n.Name, State: n.State, PublicDSN: n.PublicDSN, AdminAddr: n.AdminAddr,
		GossipAddr: n.GossipAddr, RaftAddr: n.RaftAddr, Since: n.Since, Reason: n.Reason}
}

// seesMajority says whether more than half of the members may be up: seen
// up, or not met by gossip yet (a member that just joined is down until
// gossip meets it; one that went silent is down for sure).
func (s *Service) seesMajority() bool {
	up, unmet, total := s.liveCount()
	return 2*(up+unmet) > total
}

// liveCount is how many members are seen up, and not met yet, of how many.
func (s *Service) liveCount() (up, unmet, total int) {
	s.gmu.Lock()
	defer s.gmu.Unlock()
	for _, l := range s.lives {
		total++
		switch {
		case l.State == LiveUp || l.State == LiveDBDown:
			up++
		case l.neverSeen:
			unmet++
		}
	}
	return up, unmet, total
}

// noQuorum explains why a decision cannot be taken here; why, when set,
// is what failed.
func (s *Service) noQuorum(why string) error {
	up, _, total := s.liveCount()
	if why != "" {
		why = "; " + why
	}
	return adminapi.Unavailable("no quorum: node %s sees %d of %d members%s; the group's decisions (joins, parts) need a majority, so a minority side of a partition cannot take them",
		s.cfg.NodeName, up, total, why)
}

// Propose is the admin API entry for decisions forwarded by other members:
// only the leader takes them.
func (s *Service) Propose(ctx context.Context, r adminapi.ProposeRequest) (adminapi.Node, error) {
	switch r.Op {
	case opAdmit, opActivate, opPart:
	default:
		return adminapi.Node{}, adminapi.BadRequest("unknown group operation %q", r.Op)
	}
	if !NamePattern.MatchString(r.Node.Name) {
		return adminapi.Node{}, adminapi.BadRequest("invalid node name %q", r.Node.Name)
	}
	cons, _, _ := s.group()
	if cons == nil || !cons.isLeader() {
		return adminapi.Node{}, adminapi.Unavailable("node %s is not the group's leader", s.cfg.NodeName)
	}
	n, err := cons.apply(command{Op: r.Op, Node: apiToGroup(r.Node), Reason: r.Reason, At: time.Now(), Request: r.Request})
	if err != nil {
		if errors.Is(err, errNoLeader) {
			return adminapi.Node{}, s.noQuorum("")
		}
		return adminapi.Node{}, adminapi.Conflict("%v", err)
	}
	signal(s.changed)
	return groupToAPI(n), nil
}

// reconcileLoop applies the group's state to this node whenever it changes.
func (s *Service) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(reconcileMax)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.changed:
		case <-t.C:
		}
		if err := s.reconcile(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("apply the group's state", "err", err)
		}
	}
}

// reconcile makes this node follow the group's state: the catalog mirrors
// it, streams follow the catalog, parted nodes are cleaned up here, and on
// the leader the consensus configuration follows the members (joining
// nodes follow the log, active ones vote, parted ones are removed).
func (s *Service) reconcile(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reconcileLocked(ctx)
}

// reconcileLocked is reconcile with s.mu held.
func (s *Service) reconcileLocked(ctx context.Context) error {
	cons, _, _ := s.group()
	if cons == nil {
		return nil
	}
	st := cons.fsm.current()
	if len(st.Nodes) == 0 {
		return nil // the log has not reached this node yet
	}
	before, err := catalog.Nodes(ctx, s.pool)
	if err != nil {
		return err
	}
	was := map[int32]catalog.Node{}
	for _, n := range before {
		was[n.ID] = n
	}
	// The group's state keeps the newest node of each name: a row here of
	// an earlier node of that name (parted, then admitted again) is history.
	inGroup := map[int32]bool{}
	for _, n := range st.Nodes {
		inGroup[n.ID] = true
	}
	for _, n := range before {
		// This node itself is not history: while consensus replays the log
		// after a restart, the state may not have it yet; marking it parted
		// here would hide its part, when the log gets there, from the leave
		// below (TestPartDeadNode: a parted node back from the dead kept
		// its slots and origins).
		if n.IsLocal && n.ID == s.getSelfID() {
			continue
		}
		if !inGroup[n.ID] && n.State != catalog.StateParted {
			if err := catalog.SetNodeState(ctx, s.pool, n.ID, catalog.StateParted); err != nil {
				return err
			}
		}
	}
	var parted []groupNode
	for _, n := range st.sorted() {
		row := catalog.Node{ID: n.ID, Name: n.Name, State: n.State, IsLocal: n.Name == s.cfg.NodeName,
			PublicDSN: n.PublicDSN, AdminAddr: n.AdminAddr, GossipAddr: n.GossipAddr, RaftAddr: n.RaftAddr, Reason: n.Reason}
		if n.State == catalog.StateParted {
			if old, ok := was[n.ID]; ok && old.State == catalog.StateParted {
				continue
			}
			parted = append(parted, n)
			row.State = catalog.StateParting // until cleaned up
		}
		if err := catalog.UpsertNode(ctx, s.pool, row); err != nil {
			return err
		}
	}
	if err := s.syncStreams(ctx); err != nil {
		return err
	}
	for _, n := range parted {
		if n.Name == s.cfg.NodeName {
			if n.ID != s.getSelfID() {
				// An earlier incarnation of this node, seen while
				// consensus replays the group's history.
				if err := catalog.SetNodeState(ctx, s.pool, n.ID, catalog.StateParted); err != nil {
					return err
				}
				continue
			}
			s.log.Info("this node was parted from the group", "reason", n.Reason)
			return s.leaveLocked(ctx)
		}
		if err := s.cleanupParted(ctx, n); err != nil {
			return err
		}
	}
	if cons.isLeader() {
		s.followMembers(cons, st)
	}
	return nil
}

// cleanupParted drops what this node keeps for a parted node: its stream
// (already stopped by syncStreams), the slot it streamed from here, its
// origin, and this node's slot on it when it answers.
func (s *Service) cleanupParted(ctx context.Context, n groupNode) error {
	var errs []error
	if err := dropSlot(ctx, s.cfg.DSN, n.Name); err != nil {
		errs = append(errs, err)
	}
	if err := dropOrigin(ctx, s.pool, catalog.OriginName(s.dbOID, n.Name)); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up parted node %s: %w", n.Name, err)
	}
	if err := dropSlot(ctx, n.PublicDSN, s.cfg.NodeName); err != nil {
		s.log.Info("could not drop our slot on the parted node; it goes when the node leaves", "node", n.Name, "err", err)
	}
	s.log.Info("parted node cleaned up", "node", n.Name, "reason", n.Reason)
	return catalog.SetNodeState(ctx, s.pool, n.ID, catalog.StateParted)
}

// followMembers makes the consensus configuration follow the group: the
// leader adds joining nodes as nonvoters, promotes active ones and removes
// parted ones.
func (s *Service) followMembers(cons *consensus, st groupState) {
	servers, err := cons.servers()
	if err != nil {
		return
	}
	for _, n := range st.sorted() {
		voter, present := servers[n.Name]
		var err error
		switch {
		case n.State == catalog.StateParted && present:
			err = cons.remove(n.Name)
		case n.State == catalog.StateJoining && !present:
			err = cons.setVoter(n.Name, n.RaftAddr, false)
		case n.State == catalog.StateActive && !voter:
			err = cons.setVoter(n.Name, n.RaftAddr, true)
		}
		if err != nil {
			s.log.Warn("update the consensus configuration", "node", n.Name, "err", err)
		}
	}
}

// leaveLocked stops all replication of this node (s.mu held): streams stop,
// its slots and origins for every other node are dropped, every node is
// marked parted here, and consensus and gossip stop. The data stays.
func (s *Service) leaveLocked(ctx context.Context) error {
	if err := s.streams.SetPeers(ctx, 0, nil); err != nil {
		return err
	}
	nodes, err := catalog.Nodes(ctx, s.pool)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range nodes {
		if n.IsLocal {
			continue
		}
		if err := dropSlot(ctx, s.cfg.DSN, n.Name); err != nil {
			errs = append(errs, err)
		}
		if err := dropOrigin(ctx, s.pool, catalog.OriginName(s.dbOID, n.Name)); err != nil {
			errs = append(errs, err)
		}
	}
	// Those of a join's copy that bdrd did not finish.
	if err := dropCopyOrigins(ctx, s.pool, s.dbOID); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("leave: %w", err)
	}
	if _, err := s.pool.Exec(ctx, `UPDATE bdr.nodes SET state = 'parted', state_changed_at = now() WHERE state <> 'parted'`); err != nil {
		return fmt.Errorf("leave: %w", err)
	}
	// The last join's report stays: a join that failed and was undone
	// reports its failure until the next one.
	if err := s.store.Delete(state.KeyIdentity); err != nil {
		return err
	}
	s.setSelfID(0)
	// Consensus runs on its own goroutines, never in here: stopping it is
	// safe. The group key and the consensus state go: a later join starts
	// afresh.
	s.stopGroup()
	if err := os.Remove(s.cfg.KeyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(filepath.Join(s.cfg.DataDir, "raft")); err != nil {
		errs = append(errs, err)
	}
	s.log.Info("left the group")
	return errors.Join(errs...)
}
