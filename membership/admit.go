package membership

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/catalog"
)

// Admit runs on the member a joiner goes through: the group decides,
// through consensus, on the name and the node id, and records the joiner as
// joining; the joiner gets the members and the group key.
func (s *Service) Admit(ctx context.Context, r adminapi.AdmitRequest) (adminapi.AdmitResponse, error) {
	if !NamePattern.MatchString(r.Name) {
		return adminapi.AdmitResponse{}, adminapi.BadRequest("node name %q is invalid: use 1-31 characters a-z, 0-9 and _, starting with a letter", r.Name)
	}
	if r.PublicDSN == "" || r.AdminAddr == "" || r.GossipAddr == "" || r.RaftAddr == "" {
		return adminapi.AdmitResponse{}, adminapi.BadRequest("a joining node must give its public dsn and its admin, gossip and consensus addresses")
	}
	self, ok, err := s.local(ctx)
	if err != nil {
		return adminapi.AdmitResponse{}, err
	}
	cons, _, key := s.group()
	if !ok || self.State != catalog.StateActive || cons == nil {
		return adminapi.AdmitResponse{}, adminapi.Conflict("node %s is not an active member of a group", s.cfg.NodeName)
	}
	if err := checkDSN(ctx, r.PublicDSN); err != nil {
		return adminapi.AdmitResponse{}, adminapi.BadRequest("cannot reach the joining node's database through its public dsn: %s", RedactDSN(err.Error()))
	}
	n, err := s.propose(ctx, command{Op: opAdmit, Node: groupNode{Name: r.Name, PublicDSN: r.PublicDSN,
		AdminAddr: r.AdminAddr, GossipAddr: r.GossipAddr, RaftAddr: r.RaftAddr}})
	if err != nil {
		return adminapi.AdmitResponse{}, err
	}
	resp := adminapi.AdmitResponse{NodeID: n.ID, GroupKey: key.String()}
	for _, m := range cons.fsm.current().sorted() {
		if m.State != catalog.StateParted && m.Name != r.Name {
			resp.Members = append(resp.Members, groupToAPI(m))
		}
	}
	s.log.Info("admitted a joining node", "name", r.Name, "node_id", n.ID)
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

// isNotFound tells a decision refused because the node is unknown.
func isNotFound(err error) bool {
	return err != nil && strings.Contains(err.Error(), "no node named")
}
