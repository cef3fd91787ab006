package membership

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/apply"
	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/catalog"
	"github.com/bdr-dev/bdr/internal/groupkey"
	"github.com/bdr-dev/bdr/internal/state"
	"github.com/bdr-dev/bdr/replsets"
)

// joinTask is an admitted join, handed to Run.
type joinTask struct {
	via     adminapi.Info
	id      int32
	members []adminapi.Node
}

// Join checks that this node can join through r.Via, has it admitted, and
// hands the rest of the procedure (DESIGN "Join and part") to Run. Failures
// found before admission leave nothing behind.
func (s *Service) Join(ctx context.Context, r adminapi.JoinRequest) (adminapi.JoinProgress, error) {
	if r.Via == "" {
		return adminapi.JoinProgress{}, adminapi.BadRequest("join needs the admin address of a member (--via)")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if self, ok, err := s.local(ctx); err != nil {
		return adminapi.JoinProgress{}, err
	} else if ok {
		return adminapi.JoinProgress{}, adminapi.Conflict("node %s is already a member of a group (node id %d, %s)", self.Name, self.ID, self.State)
	}
	if s.joining() {
		return adminapi.JoinProgress{}, adminapi.Conflict("node %s is already joining", s.cfg.NodeName)
	}
	// The operator's token, valid on the via node too, admits us; after
	// that the group key's internal token serves.
	viaClient := adminapi.NewClient(r.Via, peerTimeout).WithToken(adminapi.TokenFromContext(ctx))
	if s.cfg.Dial != nil {
		viaClient = viaClient.WithDialer(s.cfg.Dial)
	}
	via, err := viaClient.Info(ctx)
	if err != nil {
		var e *adminapi.Error
		if errors.As(err, &e) {
			return adminapi.JoinProgress{}, fmt.Errorf("the via node refused: %w", err)
		}
		return adminapi.JoinProgress{}, adminapi.Unavailable("cannot reach the via node: %v", err)
	}
	if via.State != catalog.StateActive {
		return adminapi.JoinProgress{}, adminapi.Conflict("node %s at %s is not an active member of a group (%s)", via.Name, r.Via, via.State)
	}
	if tables, err := userTables(ctx, s.pool); err != nil {
		return adminapi.JoinProgress{}, err
	} else if len(tables) > 0 {
		return adminapi.JoinProgress{}, adminapi.Conflict("the database of node %s already holds user tables (%s); a joining node needs an empty database",
			s.cfg.NodeName, strings.Join(tables, ", "))
	}
	admit, err := viaClient.Admit(ctx, adminapi.AdmitRequest{Name: s.cfg.NodeName, PublicDSN: s.cfg.PublicDSN,
		AdminAddr: s.cfg.AdminAddr, GossipAddr: s.gossipAddr(), RaftAddr: s.raftAddr()})
	if err != nil {
		return adminapi.JoinProgress{}, err
	}
	key, err := groupkey.Parse(admit.GroupKey)
	if err != nil {
		return adminapi.JoinProgress{}, fmt.Errorf("admission through %s: %w", via.Name, err)
	}
	if err := groupkey.Write(s.cfg.KeyFile, key); err != nil {
		return adminapi.JoinProgress{}, err
	}
	var seeds []string
	for _, m := range admit.Members {
		seeds = append(seeds, m.GossipAddr)
	}
	if err := s.startGroup(key, false, seeds); err != nil {
		return adminapi.JoinProgress{}, err
	}
	now := time.Now()
	jp := adminapi.JoinProgress{Phase: adminapi.PhaseAdmitted, Started: now, Updated: now,
		Message: fmt.Sprintf("admitted as node %d through %s", admit.NodeID, via.Name)}
	s.setJoin(jp)
	s.tasks <- joinTask{via: via, id: admit.NodeID, members: admit.Members}
	return jp, nil
}

// userTables lists up to five tables outside the system schemas and bdr.
func userTables(ctx context.Context, db catalog.DB) ([]string, error) {
	rows, err := db.Query(ctx, `SELECT format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'bdr')
		  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
		ORDER BY 1 LIMIT 5`)
	if err != nil {
		return nil, fmt.Errorf("list user tables: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// JoinProgress reports the join of this node.
func (s *Service) JoinProgress(context.Context) (adminapi.JoinProgress, error) {
	s.jmu.Lock()
	defer s.jmu.Unlock()
	if s.join == nil {
		return adminapi.JoinProgress{}, adminapi.NotFound("node %s has not joined a group", s.cfg.NodeName)
	}
	return *s.join, nil
}

func (s *Service) setJoin(jp adminapi.JoinProgress) {
	jp.Updated = time.Now()
	s.jmu.Lock()
	s.join = &jp
	s.jmu.Unlock()
	if err := s.store.Put(state.KeyJoin, jp); err != nil {
		s.log.Warn("record join progress", "err", err)
	}
}

// joinState is the current join progress; zero when the node left the
// group meanwhile (leave clears it).
func (s *Service) joinState() adminapi.JoinProgress {
	s.jmu.Lock()
	defer s.jmu.Unlock()
	if s.join == nil {
		return adminapi.JoinProgress{}
	}
	return *s.join
}

func (s *Service) phase(phase, format string, args ...any) {
	jp := s.joinState()
	jp.Phase, jp.Message = phase, fmt.Sprintf(format, args...)
	s.setJoin(jp)
	s.log.Info("join", "phase", phase, "detail", jp.Message)
}

// runJoin carries out an admitted join; on failure it undoes what it did.
func (s *Service) runJoin(ctx context.Context, t joinTask) {
	j := &joiner{s: s, task: t}
	err := j.run(ctx)
	if err == nil {
		jp := s.joinState()
		jp.Phase, jp.Done, jp.Message = adminapi.PhaseReady, true, fmt.Sprintf("node %s (id %d) is a member of the group", s.cfg.NodeName, t.id)
		s.setJoin(jp)
		s.log.Info("joined the group", "node_id", t.id)
		return
	}
	s.log.Error("join failed; undoing it", "err", err)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if cerr := j.undo(cctx); cerr != nil {
		err = fmt.Errorf("%w (undo incomplete: %v)", err, cerr)
	}
	jp := s.joinState()
	jp.Phase, jp.Done, jp.Error = adminapi.PhaseFailed, true, err.Error()
	s.setJoin(jp)
}

// joiner is one run of the join procedure on the joining node.
type joiner struct {
	s    *Service
	task joinTask
	// what was created, for undo
	remoteSlots []adminapi.Node // members holding slot bdr_<self>
	copied      bool
}

func (j *joiner) run(ctx context.Context) error {
	s, via := j.s, j.task.via
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// 1. Follow the group's consensus log until it has this node: the
	// catalog then mirrors the group. Create the slots the members will
	// stream from (before the copy, so no local write is ever missed), then
	// slot bdr_<self> on every member but the via node.
	s.phase(adminapi.PhaseSlots, "following the group's decisions")
	if err := j.waitAdmitted(ctx); err != nil {
		return err
	}
	s.phase(adminapi.PhaseSlots, "creating replication slots")
	slotsAt := time.Now()
	if err := replsets.EnsureDefault(ctx, s.pool); err != nil {
		return err
	}
	if err := s.store.Put(state.KeyIdentity, state.Identity{Name: s.cfg.NodeName, NodeID: j.task.id}); err != nil {
		return err
	}
	for _, m := range j.task.members {
		if _, err := createSlot(ctx, s.cfg.DSN, m.Name); err != nil {
			return err
		}
	}
	start := map[string]pglogrepl.LSN{}
	for _, m := range j.task.members {
		if m.Name == via.Name {
			continue
		}
		lsn, err := createSlot(ctx, m.PublicDSN, s.cfg.NodeName)
		if err != nil {
			return fmt.Errorf("on %s: %w", m.Name, err)
		}
		j.remoteSlots = append(j.remoteSlots, m)
		start[m.Name] = lsn
	}

	// 2. Wait until the via node has applied every other member up to the
	// point where that member's slot for us starts.
	s.phase(adminapi.PhaseWaitVia, "waiting for %s to apply the other members up to our slots", via.Name)
	long := s.client(via.AdminAddr).WithTimeout(0)
	for name, lsn := range start {
		if err := long.WaitProcessed(ctx, name, lsn.String()); err != nil {
			return fmt.Errorf("wait for %s to apply %s up to %s: %w", via.Name, name, lsn, err)
		}
	}

	// 3. With the via node's appliers paused, take the snapshot and read the
	// via node's progress from every other member: they agree.
	s.phase(adminapi.PhaseSnapshot, "taking a snapshot of %s", via.Name)
	snap, err := j.snapshot(ctx, start)
	if err != nil {
		return err
	}
	defer snap.close()
	j.remoteSlots = append(j.remoteSlots, j.viaNode())

	// 4. Copy schema and data under that snapshot.
	s.phase(adminapi.PhaseCopying, "copying schema from %s", via.Name)
	viaDSN := j.viaNode().PublicDSN
	if err := copySchema(ctx, s.cfg.PGBinDir, viaDSN, snap.name, s.cfg.DSN); err != nil {
		return err
	}
	j.copied = true
	stamp := copyStamp{localOID: s.dbOID, via: via.Name, viaOID: snap.viaOID, progress: map[string]pglogrepl.LSN{via.Name: snap.lsn},
		after: slotsAt.Add(-restampMargin)}
	for name, lsn := range snap.progress {
		stamp.progress[name] = lsn
	}
	err = copyData(ctx, viaDSN, snap.name, s.cfg.DSN, stamp,
		func(msg string) { s.phase(adminapi.PhaseCopying, "%s", msg) })
	if err != nil {
		return err
	}
	snap.close()

	// 5. Start every member's stream to us where the via node's data ends,
	// and ours to every member: the group makes this node active (and a
	// voter), and every node's streams follow.
	s.phase(adminapi.PhaseStreams, "starting streams")
	for name, lsn := range snap.progress {
		if err := setOrigin(ctx, s.pool, catalog.OriginName(s.dbOID, name), lsn); err != nil {
			return err
		}
	}
	if _, err := s.propose(ctx, command{Op: opActivate, Node: groupNode{Name: s.cfg.NodeName}}); err != nil {
		return fmt.Errorf("activate: %w", err)
	}
	if err := j.waitActive(ctx); err != nil {
		return err
	}

	s.phase(adminapi.PhaseCatchingUp, "catching up")
	return j.waitCaughtUp(ctx)
}

func (j *joiner) viaNode() adminapi.Node {
	for _, m := range j.task.members {
		if m.Name == j.task.via.Name {
			return m
		}
	}
	return adminapi.Node{Name: j.task.via.Name, AdminAddr: j.task.via.AdminAddr}
}

// waitCaughtUp waits until every incoming stream is streaming with little lag.
func (j *joiner) waitCaughtUp(ctx context.Context) error {
	for {
		st := j.s.streams.Status()
		ready := len(st) == len(j.task.members)
		var behind []string
		for _, x := range st {
			if x.State != apply.StateStreaming || x.LagBytes > caughtUpLag {
				ready = false
				behind = append(behind, fmt.Sprintf("%s %s, %d bytes behind", x.Peer, x.State, x.LagBytes))
			}
		}
		if ready {
			return nil
		}
		j.s.phase(adminapi.PhaseCatchingUp, "catching up: %s", strings.Join(behind, "; "))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// undo removes what a failed join created: the group parts this node (so
// every member drops its slot and origin for it), and locally its slots,
// origins, catalog rows, consensus state and key go. Data already copied
// stays (it is reported).
func (j *joiner) undo(ctx context.Context) error {
	s := j.s
	var errs []error
	_ = s.client(j.task.via.AdminAddr).Resume(ctx)
	if _, err := s.part(ctx, s.cfg.NodeName, "join failed"); err != nil && !isNotFound(err) {
		errs = append(errs, fmt.Errorf("part the half-joined node: %w", err))
	}
	for _, m := range j.remoteSlots {
		if err := dropSlot(ctx, m.PublicDSN, s.cfg.NodeName); err != nil {
			errs = append(errs, fmt.Errorf("on %s: %w", m.Name, err))
		}
	}
	s.mu.Lock()
	err := s.leaveLocked(ctx)
	s.mu.Unlock()
	if err != nil {
		errs = append(errs, err)
	}
	if _, err := s.pool.Exec(ctx, `DELETE FROM bdr.nodes`); err != nil {
		errs = append(errs, err)
	}
	if j.copied {
		errs = append(errs, errors.New("the schema and data copied so far remain in the local database; recreate it empty before joining again"))
	}
	return errors.Join(errs...)
}

// waitAdmitted waits until the consensus log reached this node with its
// own admission, and mirrors it into the catalog.
func (j *joiner) waitAdmitted(ctx context.Context) error {
	return j.waitState(ctx, func(n groupNode) bool { return true })
}

// waitActive waits until this node is active in the group's state here.
func (j *joiner) waitActive(ctx context.Context) error {
	return j.waitState(ctx, func(n groupNode) bool { return n.State == catalog.StateActive })
}

func (j *joiner) waitState(ctx context.Context, ok func(groupNode) bool) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		if cons, _, _ := j.s.group(); cons != nil {
			if n, found := cons.fsm.current().Nodes[j.s.cfg.NodeName]; found && n.ID == j.task.id && ok(n) {
				return j.s.reconcile(ctx)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the group's decisions did not reach this node: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
