package membership

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/catalog"
)

// Admit runs on the member a joiner goes through: it checks the name,
// allocates the node id, and records the joiner as joining on every member.
// Every member must be reachable.
func (s *Service) Admit(ctx context.Context, r adminapi.AdmitRequest) (adminapi.AdmitResponse, error) {
	if !NamePattern.MatchString(r.Name) {
		return adminapi.AdmitResponse{}, adminapi.BadRequest("node name %q is invalid: use 1-31 characters a-z, 0-9 and _, starting with a letter", r.Name)
	}
	if r.PublicDSN == "" || r.AdminAddr == "" {
		return adminapi.AdmitResponse{}, adminapi.BadRequest("a joining node must give its public dsn and admin address")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	self, ok, err := s.local(ctx)
	if err != nil {
		return adminapi.AdmitResponse{}, err
	}
	if !ok || self.State != catalog.StateActive {
		return adminapi.AdmitResponse{}, adminapi.Conflict("node %s is not an active member of a group", s.cfg.NodeName)
	}
	nodes, err := catalog.Nodes(ctx, s.pool)
	if err != nil {
		return adminapi.AdmitResponse{}, err
	}
	if n, ok := findCurrent(nodes, r.Name); ok {
		return adminapi.AdmitResponse{}, adminapi.Conflict("node name %q is already used by node %d (%s) in this group", r.Name, n.ID, n.State)
	}
	var members []catalog.Node
	for _, n := range nodes {
		if n.Current() {
			members = append(members, n)
		}
	}
	for _, n := range members {
		if n.IsLocal {
			continue
		}
		if _, err := client(n.AdminAddr).Info(ctx); err != nil {
			return adminapi.AdmitResponse{}, adminapi.Unavailable("member %s (%s) does not answer: %v; a node can join only while every member is up", n.Name, n.AdminAddr, err)
		}
	}
	if err := checkDSN(ctx, r.PublicDSN); err != nil {
		return adminapi.AdmitResponse{}, adminapi.BadRequest("cannot reach the joining node's database through its public dsn: %v", err)
	}

	id, err := nextNodeID(ctx, s.pool)
	if err != nil {
		return adminapi.AdmitResponse{}, err
	}
	joiner := catalog.Node{ID: id, Name: r.Name, State: catalog.StateJoining, PublicDSN: r.PublicDSN, AdminAddr: r.AdminAddr}
	if err := catalog.UpsertNode(ctx, s.pool, joiner); err != nil {
		return adminapi.AdmitResponse{}, err
	}
	var told []catalog.Node
	for _, n := range members {
		if n.IsLocal {
			continue
		}
		if err := client(n.AdminAddr).UpsertNode(ctx, toAPI(joiner)); err != nil {
			// Undo: nobody keeps a half-admitted node.
			for _, t := range told {
				_ = client(t.AdminAddr).DropNode(ctx, r.Name)
			}
			_ = catalog.DeleteNode(ctx, s.pool, id)
			return adminapi.AdmitResponse{}, fmt.Errorf("admit %s: tell %s: %w", r.Name, n.Name, err)
		}
		told = append(told, n)
	}
	resp := adminapi.AdmitResponse{NodeID: id}
	for _, n := range members {
		resp.Members = append(resp.Members, toAPI(n))
	}
	s.log.Info("admitted a joining node", "name", r.Name, "node_id", id)
	return resp, nil
}

func checkDSN(ctx context.Context, dsn string) error {
	ctx, cancel := context.WithTimeout(ctx, peerTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// UpsertNode records what a member says about another node, and starts or
// stops streams accordingly.
func (s *Service) UpsertNode(ctx context.Context, n adminapi.Node) error {
	if !NamePattern.MatchString(n.Name) || n.ID <= 0 {
		return adminapi.BadRequest("invalid node %q (id %d)", n.Name, n.ID)
	}
	switch n.State {
	case catalog.StateJoining, catalog.StateActive:
	default:
		return adminapi.BadRequest("invalid node state %q", n.State)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if n.Name == s.cfg.NodeName {
		return adminapi.Conflict("node %s cannot be told about itself", n.Name)
	}
	nodes, err := catalog.Nodes(ctx, s.pool)
	if err != nil {
		return err
	}
	for _, o := range nodes {
		if o.Current() && o.ID != n.ID && o.Name == n.Name {
			return adminapi.Conflict("node name %q is already used by node %d", n.Name, o.ID)
		}
		if o.ID == n.ID && (o.IsLocal || (o.Name != n.Name && o.Current())) {
			return adminapi.Conflict("node id %d is already used by node %s", n.ID, o.Name)
		}
	}
	if err := catalog.UpsertNode(ctx, s.pool, catalog.Node{ID: n.ID, Name: n.Name, State: n.State,
		PublicDSN: n.PublicDSN, AdminAddr: n.AdminAddr}); err != nil {
		return err
	}
	return s.syncStreams(ctx)
}

// Pause holds this node's appliers between transactions.
func (s *Service) Pause(ctx context.Context, r adminapi.PauseRequest) error {
	lease := time.Duration(r.LeaseMillis) * time.Millisecond
	if lease <= 0 || lease > 10*time.Minute {
		return adminapi.BadRequest("pause lease must be between 1 ms and 10 minutes")
	}
	return s.streams.Pause(ctx, lease)
}

// Resume releases this node's appliers.
func (s *Service) Resume(context.Context) error {
	s.streams.Resume()
	return nil
}

// WaitProcessed waits until the stream from r.Peer has processed
// everything its provider committed before r.LSN.
func (s *Service) WaitProcessed(ctx context.Context, r adminapi.WaitRequest) error {
	lsn, err := pglogrepl.ParseLSN(r.LSN)
	if err != nil {
		return adminapi.BadRequest("invalid lsn %q", r.LSN)
	}
	err = s.streams.WaitProcessed(ctx, r.Peer, uint64(lsn))
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return adminapi.NotFound("%v", err)
	}
	return err
}
