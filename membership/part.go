package membership

import (
	"context"
	"fmt"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/catalog"
)

// Part removes node r.Name from the group, run on any other member: the
// group decides it through consensus (a minority side cannot), every member
// then drops its stream, slot and origin for the node, and the node itself,
// when it answers, stops replicating and drops its own slots.
func (s *Service) Part(ctx context.Context, r adminapi.PartRequest) (adminapi.PartResult, error) {
	if r.Name == s.cfg.NodeName {
		return adminapi.PartResult{}, adminapi.BadRequest("node %s cannot part itself: run bdrctl part %s against another member", r.Name, r.Name)
	}
	self, ok, err := s.local(ctx)
	if err != nil {
		return adminapi.PartResult{}, err
	}
	if !ok || self.State != catalog.StateActive {
		return adminapi.PartResult{}, adminapi.Conflict("node %s is not an active member of a group", s.cfg.NodeName)
	}
	n, err := s.part(ctx, r.Name, "parted by the operator through "+s.cfg.NodeName)
	if err != nil {
		return adminapi.PartResult{}, err
	}
	res := adminapi.PartResult{Name: r.Name}
	if err := s.client(n.AdminAddr).Leave(ctx); err != nil {
		s.log.Info("the parted node did not answer; the others drop its streams", "node", r.Name, "err", err)
		res.Unreachable = append(res.Unreachable, r.Name)
	} else {
		res.Done = append(res.Done, r.Name)
	}
	cons, _, _ := s.group()
	if cons != nil {
		for _, m := range cons.fsm.current().sorted() {
			if m.State == catalog.StateParted || m.Name == r.Name {
				continue
			}
			if l, ok := s.liveOf(m.Name); ok && l.State == LiveDown && m.Name != s.cfg.NodeName {
				res.Unreachable = append(res.Unreachable, m.Name)
			} else {
				res.Done = append(res.Done, m.Name)
			}
		}
	}
	s.log.Info("parted a node", "node", r.Name)
	return res, nil
}

// LeaveGroup parts this node from its own side (bdrctl leave): the group
// decides it through consensus, which needs a majority; then this node
// stops replicating and drops its slots and origins, and every member drops
// its own for this node. Refused while the group cannot decide: leaving
// alone would leave every member holding a slot for this node.
func (s *Service) LeaveGroup(ctx context.Context) (adminapi.PartResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	self, ok, err := s.local(ctx)
	if err != nil {
		return adminapi.PartResult{}, err
	}
	if !ok {
		return adminapi.PartResult{}, adminapi.Conflict("node %s is not a member of a group", s.cfg.NodeName)
	}
	if s.joining() {
		return adminapi.PartResult{}, adminapi.Conflict("node %s is joining; wait for the join to end (or run bdrctl part %s on a member)", s.cfg.NodeName, s.cfg.NodeName)
	}
	members, err := s.otherMembers(ctx)
	if err != nil {
		return adminapi.PartResult{}, err
	}
	res := adminapi.PartResult{Name: self.Name}
	for _, m := range members {
		res.Done = append(res.Done, m.Name)
	}
	if err := s.partSelf(ctx, members, "left through bdrctl leave", electionWait); err != nil {
		return adminapi.PartResult{}, fmt.Errorf("the group could not part node %s; it still replicates: %w", s.cfg.NodeName, err)
	}
	if err := s.leaveLocked(ctx); err != nil {
		return adminapi.PartResult{}, err
	}
	res.Done = append(res.Done, self.Name)
	s.log.Info("left the group through bdrctl leave")
	return res, nil
}

// part commits the part of node name.
func (s *Service) part(ctx context.Context, name, reason string) (groupNode, error) {
	n, err := s.propose(ctx, command{Op: opPart, Node: groupNode{Name: name}, Reason: reason})
	if isNotFound(err) {
		return groupNode{}, adminapi.NotFound("no node named %q in the group", name)
	}
	return n, err
}

// Leave makes this node stop all replication: asked by a member when the
// group parted this node (a node that was down at the time learns it this
// way when it comes back).
func (s *Service) Leave(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok, err := s.local(ctx); err != nil {
		return err
	} else if !ok {
		return adminapi.Conflict("node %s is not a member of a group", s.cfg.NodeName)
	}
	return s.leaveLocked(ctx)
}
