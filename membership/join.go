package membership

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/catalog"
	"github.com/bdr-dev/bdr/internal/groupkey"
	"github.com/bdr-dev/bdr/internal/state"
	"github.com/bdr-dev/bdr/replsets"
)

// activateWait is how long a join that copied its data waits for a leader
// to make it active.
const activateWait = time.Minute

// joinTask is an admitted join, handed to Run.
type joinTask struct {
	via     adminapi.Info
	id      int32
	members []adminapi.Node
	replace bool // drop the user objects of the local database first
	workers int  // the most sessions the row copy uses
}

// copiedMark records that a join began copying the group's data into the
// local database (state.KeyCopied): until that join succeeds, what the
// database holds is a copy a later join may replace without --force.
type copiedMark struct {
	Via string    `json:"via"`
	At  time.Time `json:"at"`
}

// Join checks that this node can join through r.Via, has it admitted, and
// hands the rest of the procedure (DESIGN "Join and part") to Run. Failures
// found before admission leave nothing behind.
func (s *Service) Join(ctx context.Context, r adminapi.JoinRequest) (adminapi.JoinProgress, error) {
	if r.Via == "" {
		return adminapi.JoinProgress{}, adminapi.BadRequest("join needs the admin address of a member (--via)")
	}
	if r.CopyWorkers < 0 || r.CopyWorkers > MaxCopyWorkers {
		return adminapi.JoinProgress{}, adminapi.BadRequest("copy workers %d: want 1 to %d", r.CopyWorkers, MaxCopyWorkers)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.joining() {
		return adminapi.JoinProgress{}, adminapi.Conflict("node %s is already joining", s.cfg.NodeName)
	}
	if self, ok, err := s.local(ctx); err != nil {
		return adminapi.JoinProgress{}, err
	} else if ok && self.State == catalog.StateJoining {
		// A join that bdrd did not finish (it restarted, or its undo
		// failed): undo it, then join afresh.
		if err := s.undoStaleJoin(ctx); err != nil {
			return adminapi.JoinProgress{}, adminapi.Unavailable("node %s is half-joined and undoing that failed: %v", s.cfg.NodeName, err)
		}
	} else if ok {
		return adminapi.JoinProgress{}, adminapi.Conflict("node %s is already a member of a group (node id %d, %s)", self.Name, self.ID, self.State)
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
	tables, err := userTables(ctx, s.pool)
	if err != nil {
		return adminapi.JoinProgress{}, err
	}
	replace, why := r.Force, "--force"
	if len(tables) > 0 && !replace {
		if why, err = s.replaceable(ctx); err != nil {
			return adminapi.JoinProgress{}, err
		}
		if why == "" {
			return adminapi.JoinProgress{}, adminapi.Conflict("the database of node %s already holds user tables (%s); a joining node needs an empty database (--force replaces them with the group's)",
				s.cfg.NodeName, strings.Join(tables, ", "))
		}
		replace = true
	}
	admit, err := viaClient.WithTimeout(admitTimeout).Admit(ctx, adminapi.AdmitRequest{Name: s.cfg.NodeName, PublicDSN: s.cfg.PublicDSN,
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
	s.setSelfID(admit.NodeID)
	var seeds []string
	for _, m := range admit.Members {
		seeds = append(seeds, m.GossipAddr)
	}
	if err := s.startGroup(key, false, seeds); err != nil {
		return adminapi.JoinProgress{}, err
	}
	now := time.Now()
	msg := fmt.Sprintf("admitted as node %d through %s", admit.NodeID, via.Name)
	if len(tables) > 0 {
		msg += fmt.Sprintf("; the user tables here (%s) will be replaced by the group's (%s)", strings.Join(tables, ", "), why)
	}
	jp := adminapi.JoinProgress{Phase: adminapi.PhaseAdmitted, Started: now, Updated: now, Message: msg}
	t := joinTask{via: via, id: admit.NodeID, members: admit.Members, replace: replace,
		workers: cmp.Or(r.CopyWorkers, s.cfg.CopyWorkers, DefaultCopyWorkers())}
	if err := s.store.Put(state.KeyJoinTask, t.record()); err != nil {
		return adminapi.JoinProgress{}, err
	}
	s.setJoin(jp)
	s.tasks <- t
	return jp, nil
}

// replaceable says why the user tables of the local database may be
// replaced by the group's without --force: a join began copying them, or
// this node was a member (a parted node rejoins). "" when neither holds.
func (s *Service) replaceable(ctx context.Context) (string, error) {
	var mark copiedMark
	if ok, err := s.store.Get(state.KeyCopied, &mark); err != nil {
		return "", err
	} else if ok {
		return fmt.Sprintf("copied from %s by a join that did not finish, %s", mark.Via, mark.At.Format(time.RFC3339)), nil
	}
	var name string
	var at time.Time
	err := s.pool.QueryRow(ctx, `SELECT node_name, state_changed_at FROM bdr.nodes
		WHERE is_local AND state = 'parted' ORDER BY state_changed_at DESC LIMIT 1`).Scan(&name, &at)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read local node: %w", err)
	}
	return fmt.Sprintf("left from when this database was member %s, parted %s", name, at.Format(time.RFC3339)), nil
}

// joinRecord is a join task as kept in the state store (state.KeyJoinTask),
// so that a join bdrd did not finish can be undone after a restart.
type joinRecord struct {
	Via     adminapi.Info   `json:"via"`
	ID      int32           `json:"id"`
	Members []adminapi.Node `json:"members"`
}

func (t joinTask) record() joinRecord { return joinRecord{Via: t.via, ID: t.id, Members: t.members} }

// undoStaleJoin undoes a join that this bdrd began and did not finish: the
// group parts this node, every member drops what it made for it, and the
// local catalog, consensus state and key go. The data a copy committed
// stays until the next join replaces it (state.KeyCopied).
func (s *Service) undoStaleJoin(ctx context.Context) error {
	var rec joinRecord
	if ok, err := s.store.Get(state.KeyJoinTask, &rec); err != nil {
		return err
	} else if !ok {
		// Admitted by an older bdrd: the members are in the catalog.
		if rec.Members, err = s.otherMembers(ctx); err != nil {
			return err
		}
	}
	s.log.Info("undoing a join bdrd did not finish")
	if rec.ID != 0 {
		s.setSelfID(rec.ID)
	}
	if cons, _, _ := s.group(); cons == nil {
		// bdrd stopped before it recorded its identity: follow the group
		// again, to take part in the decision and to be let in by members.
		key, ok, err := groupkey.Read(s.cfg.KeyFile)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("the group key of the half-joined node is missing (%s): run bdrctl part %s on a member", s.cfg.KeyFile, s.cfg.NodeName)
		}
		var seeds []string
		for _, m := range rec.Members {
			seeds = append(seeds, m.GossipAddr)
		}
		if err := s.startGroup(key, false, seeds); err != nil {
			return err
		}
	}
	j := &joiner{s: s, task: joinTask{via: rec.Via, id: rec.ID, members: rec.Members}, remoteSlots: rec.Members}
	return j.undoLocked(ctx)
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

// setCopyProgress records the row copy's progress. It only lives in
// memory: reported a few times a second, it is not worth a write of the
// state store each time (the phases are).
func (s *Service) setCopyProgress(cp adminapi.CopyProgress) {
	s.jmu.Lock()
	defer s.jmu.Unlock()
	if s.join != nil {
		s.join.Copy, s.join.Updated = &cp, time.Now()
	}
}

// otherMembers are the current members of the group but this node, from
// the catalog.
func (s *Service) otherMembers(ctx context.Context) ([]adminapi.Node, error) {
	nodes, err := catalog.Nodes(ctx, s.pool)
	if err != nil {
		return nil, err
	}
	var out []adminapi.Node
	for _, n := range nodes {
		if !n.IsLocal && n.Current() {
			out = append(out, toAPI(n))
		}
	}
	return out, nil
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
	changed := jp.Phase != phase
	jp.Phase, jp.Message = phase, fmt.Sprintf(format, args...)
	s.setJoin(jp)
	s.log.Info("join", "phase", phase, "detail", jp.Message)
	if changed && s.cfg.JoinStepDelay > 0 {
		time.Sleep(s.cfg.JoinStepDelay)
	}
}

// runJoin carries out an admitted join; on failure it undoes what it did.
func (s *Service) runJoin(ctx context.Context, t joinTask) {
	j := &joiner{s: s, task: t}
	err := j.run(ctx)
	if err == nil {
		jp := s.joinState()
		jp.Phase, jp.Done, jp.Message = adminapi.PhaseReady, true, fmt.Sprintf("node %s (id %d) is a member of the group", s.cfg.NodeName, t.id)
		s.setJoin(jp)
		for _, key := range []string{state.KeyJoinTask, state.KeyCopied} {
			if err := s.store.Delete(key); err != nil {
				s.log.Warn("forget the finished join", "err", err)
			}
		}
		s.log.Info("joined the group", "node_id", t.id)
		return
	}
	if ctx.Err() != nil {
		// bdrd is stopping: the join is undone when it starts again (as
		// after a crash), not now, which would hold the stop up to minutes.
		// The recorded progress stays unfinished: that is what makes the
		// next start undo it.
		s.log.Warn("join interrupted by bdrd stopping; it is undone when bdrd starts again", "err", err)
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
	s.phase(adminapi.PhaseCopying, "copying from %s", via.Name)
	viaDSN := j.viaNode().PublicDSN
	stamp := copyStamp{localOID: s.dbOID, via: via.Name, viaOID: snap.viaOID, progress: map[string]pglogrepl.LSN{via.Name: snap.lsn},
		after: slotsAt.Add(-restampMargin)}
	for name, lsn := range snap.progress {
		stamp.progress[name] = lsn
	}
	// From here on the database may hold the group's data: a later join
	// may replace it (see Join).
	if err := s.store.Put(state.KeyCopied, copiedMark{Via: via.Name, At: time.Now()}); err != nil {
		return err
	}
	copyEnd, err := copyAll(ctx, copyJob{binDir: s.cfg.PGBinDir, viaDSN: viaDSN, snapshot: snap.name, localDSN: s.cfg.DSN,
		stamp: stamp, replace: j.task.replace, workers: j.task.workers, minPart: cmp.Or(s.cfg.CopyPart, DefaultCopyPart),
		phase:    func(msg string) { s.phase(adminapi.PhaseCopying, "%s", msg) },
		progress: s.setCopyProgress})
	if err != nil {
		return err
	}
	snap.close()
	s.phase(adminapi.PhaseCopying, "moving our slots past the copy")
	if err := skipCopy(ctx, s.pool, s.dbOID, j.task.members, copyEnd); err != nil {
		// Only costs the members streaming the copy, to drop it.
		s.log.Warn("join: the members will stream the copy back", "err", err)
	}

	// 5. Start every member's stream to us where the via node's data ends,
	// and ours to every member: the group makes this node active (and a
	// voter), and every node's streams follow.
	s.phase(adminapi.PhaseStreams, "starting streams")
	for name, lsn := range snap.progress {
		if err := setOrigin(ctx, s.pool, catalog.OriginName(s.dbOID, name), lsn); err != nil {
			return err
		}
	}
	// The copy is done: worth waiting out an election for.
	if _, err := s.proposeWithin(ctx, command{Op: opActivate, Node: groupNode{Name: s.cfg.NodeName}}, activateWait); err != nil {
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

// waitCaughtUp waits until this node has applied every member's changes
// up to where that member's WAL was once the streams started: what the
// group had written while this node joined. (A lag read from the streams
// alone says nothing before a stream has heard from its provider.)
func (j *joiner) waitCaughtUp(ctx context.Context) error {
	targets := map[string]pglogrepl.LSN{}
	for _, m := range j.task.members {
		lsn, err := currentLSN(ctx, m.PublicDSN)
		if err != nil {
			return fmt.Errorf("catch up with %s: %w", m.Name, err)
		}
		targets[m.Name] = lsn
	}
	for _, m := range j.task.members {
		lsn := targets[m.Name]
		j.s.phase(adminapi.PhaseCatchingUp, "catching up: applying the changes of %s up to %s", m.Name, lsn)
		if err := j.s.streams.WaitProcessed(ctx, m.Name, uint64(lsn)); err != nil {
			return fmt.Errorf("catch up with %s: %w", m.Name, err)
		}
	}
	return nil
}

// currentLSN is the current WAL position of the server of dsn.
func currentLSN(ctx context.Context, dsn string) (pglogrepl.LSN, error) {
	cctx, cancel := context.WithTimeout(ctx, peerTimeout)
	defer cancel()
	conn, err := pgx.Connect(cctx, dsn)
	if err != nil {
		return 0, err
	}
	defer func() { _ = conn.Close(context.Background()) }()
	var lsn string
	if err := conn.QueryRow(cctx, `SELECT pg_catalog.pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		return 0, err
	}
	return pglogrepl.ParseLSN(lsn)
}

// undo removes what a failed join created: the group parts this node (so
// every member drops its slot and origin for it), and locally its slots,
// origins, catalog rows, consensus state and key go. Data already copied
// stays (it is reported).
func (j *joiner) undo(ctx context.Context) error {
	j.s.mu.Lock()
	defer j.s.mu.Unlock()
	return j.undoLocked(ctx)
}

// undoLocked is undo with s.mu held. Until the group has parted this node
// nothing local goes (a later bdrctl join retries the undo); after that,
// every member drops what it holds for the node by itself (its reconcile
// retries until it can), and the slots made for this join are dropped here
// too where reachable.
func (j *joiner) undoLocked(ctx context.Context) error {
	s := j.s
	if j.task.via.AdminAddr != "" {
		_ = s.client(j.task.via.AdminAddr).Resume(ctx) // else the pause lease ends it
	}
	// Undoing is worth waiting out an election for.
	if err := s.partSelf(ctx, j.task.members, "join failed", activateWait); err != nil {
		return fmt.Errorf("the group could not part the half-joined node (run bdrctl join again, or bdrctl part %s on a member): %w", s.cfg.NodeName, err)
	}
	for _, m := range j.remoteSlots {
		if err := dropSlot(ctx, m.PublicDSN, s.cfg.NodeName); err != nil {
			s.log.Info("could not drop our slot on a member; it drops it as the group parted us", "member", m.Name, "err", err)
		}
	}
	if err := s.leaveLocked(ctx); err != nil {
		return err
	}
	if _, err := s.pool.Exec(ctx, `DELETE FROM bdr.nodes`); err != nil {
		return err
	}
	return s.store.Delete(state.KeyJoinTask)
}

// partSelf has the group part this node: through consensus when it runs
// here, else through whichever member leads. While the group changes
// leader (a busy machine, a member restarting) no member may take it: it
// tries again for up to wait (a node already parted counts as done, so a
// retry of a part that did commit is harmless).
func (s *Service) partSelf(ctx context.Context, members []adminapi.Node, reason string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := s.partSelfOnce(ctx, members, reason)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (s *Service) partSelfOnce(ctx context.Context, members []adminapi.Node, reason string) error {
	var last error
	if cons, _, _ := s.group(); cons != nil {
		_, err := s.part(ctx, s.cfg.NodeName, reason)
		if err == nil || isNotFound(err) {
			return nil
		}
		last = err
	}
	for _, m := range members {
		if m.Name == s.cfg.NodeName {
			continue
		}
		_, err := s.client(m.AdminAddr).Propose(ctx, adminapi.ProposeRequest{Op: opPart, Node: adminapi.Node{Name: s.cfg.NodeName}, Reason: reason})
		if err == nil || isNotFound(err) {
			return nil
		}
		last = err
	}
	if last == nil {
		last = errors.New("no member to ask")
	}
	return last
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
