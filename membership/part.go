package membership

import (
	"context"
	"errors"
	"fmt"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/catalog"
	"github.com/bdr-dev/bdr/internal/state"
)

// Part removes node r.Name from the group, run on any other member: the
// node itself is told to leave when it answers, and every member that
// answers drops its streams, slot and origin for the node. Members that do
// not answer are listed in the result.
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
	nodes, err := catalog.Nodes(ctx, s.pool)
	if err != nil {
		return adminapi.PartResult{}, err
	}
	target, ok := findCurrent(nodes, r.Name)
	if !ok {
		return adminapi.PartResult{}, adminapi.NotFound("no node named %q in the group", r.Name)
	}
	res := adminapi.PartResult{Name: r.Name}
	if err := client(target.AdminAddr).Leave(ctx); err != nil {
		s.log.Warn("the parting node did not leave by itself; dropping its streams from here", "node", r.Name, "err", err)
		res.Unreachable = append(res.Unreachable, r.Name)
	} else {
		res.Done = append(res.Done, r.Name)
	}
	for _, n := range nodes {
		if !n.Current() || n.ID == target.ID {
			continue
		}
		if n.IsLocal {
			err = s.DropNode(ctx, adminapi.NameRequest(r))
		} else {
			err = client(n.AdminAddr).DropNode(ctx, r.Name)
		}
		if err != nil {
			s.log.Warn("member did not drop the parted node", "member", n.Name, "node", r.Name, "err", err)
			res.Unreachable = append(res.Unreachable, n.Name)
			continue
		}
		res.Done = append(res.Done, n.Name)
	}
	s.log.Info("parted a node", "node", r.Name, "unreachable", res.Unreachable)
	return res, nil
}

// DropNode makes this node forget node r.Name: the stream from it stops,
// the local slot it streams from and its origin are dropped, our slot on it
// is dropped when it answers, and it is marked parted.
func (s *Service) DropNode(ctx context.Context, r adminapi.NameRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.Name == s.cfg.NodeName {
		return adminapi.BadRequest("node %s cannot drop itself", r.Name)
	}
	nodes, err := catalog.Nodes(ctx, s.pool)
	if err != nil {
		return err
	}
	target, ok := findCurrent(nodes, r.Name)
	if !ok {
		return adminapi.NotFound("no node named %q in the group", r.Name)
	}
	if err := catalog.SetNodeState(ctx, s.pool, target.ID, catalog.StateParting); err != nil {
		return err
	}
	if err := s.syncStreams(ctx); err != nil { // returns once the stream has stopped
		return err
	}
	var errs []error
	if err := dropSlot(ctx, s.cfg.DSN, catalog.SlotName(target.Name)); err != nil {
		errs = append(errs, err)
	}
	if err := dropOrigin(ctx, s.pool, catalog.OriginName(target.Name)); err != nil {
		errs = append(errs, err)
	}
	if err := dropSlot(ctx, target.PublicDSN, catalog.SlotName(s.cfg.NodeName)); err != nil {
		s.log.Info("could not drop our slot on the parted node; it goes when the node leaves", "node", target.Name, "err", err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("drop node %s: %w", target.Name, err)
	}
	return catalog.SetNodeState(ctx, s.pool, target.ID, catalog.StateParted)
}

// Leave stops all replication of this node: streams stop, its slots and
// origins for every other node are dropped, and every node, this one
// included, is marked parted here. The data stays.
func (s *Service) Leave(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	self, ok, err := s.local(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return adminapi.Conflict("node %s is not a member of a group", s.cfg.NodeName)
	}
	if err := catalog.SetNodeState(ctx, s.pool, self.ID, catalog.StateParting); err != nil {
		return err
	}
	if err := s.syncStreams(ctx); err != nil {
		return err
	}
	nodes, err := catalog.Nodes(ctx, s.pool)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range nodes {
		if n.IsLocal || !n.Current() {
			continue
		}
		if err := dropSlot(ctx, s.cfg.DSN, catalog.SlotName(n.Name)); err != nil {
			errs = append(errs, err)
		}
		if err := dropOrigin(ctx, s.pool, catalog.OriginName(n.Name)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("leave: %w", err)
	}
	if _, err := s.pool.Exec(ctx, `UPDATE bdr.nodes SET state = 'parted', state_changed_at = now() WHERE state <> 'parted'`); err != nil {
		return fmt.Errorf("leave: %w", err)
	}
	for _, key := range []string{state.KeyIdentity, state.KeyJoin} {
		if err := s.store.Delete(key); err != nil {
			return err
		}
	}
	s.jmu.Lock()
	s.join = nil
	s.jmu.Unlock()
	s.log.Info("left the group")
	return nil
}
