package membership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/bdr-dev/bdr/apply"
	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/catalog"
	"github.com/bdr-dev/bdr/internal/groupkey"
	"github.com/bdr-dev/bdr/internal/pgerr"
	"github.com/bdr-dev/bdr/internal/state"
	"github.com/bdr-dev/bdr/replsets"
)

// NamePattern is what a node name must look like: it becomes part of slot
// and origin names.
var NamePattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,30}$`)

// Timeouts and periods.
const (
	peerTimeout   = 10 * time.Second
	admitTimeout  = majorityWait + peerTimeout // the via node may wait majorityWait for a leader
	pauseLease    = time.Minute
	dropAttempts  = 20
	livenessEvery = 500 * time.Millisecond
	healthEvery   = time.Second
	reconcileMax  = 2 * time.Second // reconcile at least this often
	rejoinEvery   = 3 * time.Second // gossip with members seen down
)

// WAL budget policies.
const (
	OnWALBudgetPart  = "part"
	OnWALBudgetAlert = "alert"
)

// Config configures a Service.
type Config struct {
	NodeName  string
	DSN       string // local PostgreSQL, the replicated database
	PublicDSN string // how peers reach the local PostgreSQL
	AdminAddr string // how peers reach this bdrd's admin API
	PGBinDir  string // where pg_dump is, for the join's schema copy
	// CopyWorkers is the most sessions a join's row copy uses, unless the
	// join asks otherwise (adminapi.JoinRequest.CopyWorkers); 0 means
	// DefaultCopyWorkers().
	CopyWorkers int
	// CopyPart is the least a session of the row copy takes at a time, and
	// half the least a database is for a parallel copy; 0 means
	// DefaultCopyPart. Tests lower it to copy small databases in parallel.
	CopyPart int64
	// JoinStepDelay, for tests only, makes a join linger at the start of
	// each phase.
	JoinStepDelay time.Duration
	Version       string
	DataDir       string // raft state lives in DataDir/raft

	GossipListen    string // host:port, TCP and UDP
	GossipAdvertise string // "" = GossipListen
	RaftListen      string
	RaftAdvertise   string // "" = RaftListen
	KeyFile         string // the group key; written at init and join

	MaxPeerWAL  int64  // bytes of WAL a slot may keep for a down peer
	OnWALBudget string // OnWALBudgetPart or OnWALBudgetAlert
	// MaxClockSkew is how far a member's clock may be from this node's
	// before it is flagged in status, logged and alerted on.
	MaxClockSkew time.Duration

	Logger   *slog.Logger
	Registry prometheus.Registerer

	// Network faults, for tests: a gossip transport and a dialer for the
	// consensus and admin traffic. Nil means the real network.
	GossipTransport func(bind string) (memberlist.NodeAwareTransport, error)
	Dial            func(ctx context.Context, network, addr string) (net.Conn, error)
	// Clock, for tests, is the wall clock gossip shows the members and
	// compares their clocks to; nil = time.Now.
	Clock func() time.Time
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case !NamePattern.MatchString(c.NodeName):
		return fmt.Errorf("node name %q is invalid: use 1-31 characters a-z, 0-9 and _, starting with a letter", c.NodeName)
	case c.DSN == "":
		return errors.New("dsn is required")
	case c.PublicDSN == "":
		return errors.New("public dsn is required")
	case c.AdminAddr == "":
		return errors.New("admin address is required")
	case c.DataDir == "" || c.KeyFile == "":
		return errors.New("data dir and key file are required")
	case c.GossipListen == "" || c.RaftListen == "":
		return errors.New("gossip and consensus listen addresses are required")
	case c.MaxPeerWAL <= 0:
		return errors.New("the WAL budget per peer must be positive")
	case c.OnWALBudget != OnWALBudgetPart && c.OnWALBudget != OnWALBudgetAlert:
		return fmt.Errorf("WAL budget policy %q: want part or alert", c.OnWALBudget)
	case c.MaxClockSkew <= 0:
		return errors.New("the clock skew bound must be positive")
	case c.CopyWorkers < 0 || c.CopyWorkers > MaxCopyWorkers:
		return fmt.Errorf("copy workers %d: want 1 to %d", c.CopyWorkers, MaxCopyWorkers)
	case c.CopyPart < 0:
		return errors.New("the copy part size must be positive")
	}
	return nil
}

// Streams is what membership needs from the apply manager.
type Streams interface {
	SetPeers(ctx context.Context, localID int32, peers []apply.Peer) error
	Status() []apply.StreamStatus
	Pause(ctx context.Context, lease time.Duration) error
	Resume()
	WaitProcessed(ctx context.Context, peer string, lsn uint64) error
	Retry(peer string)
	RetryParked(peer string) error
}

var _ Streams = (*apply.Manager)(nil)

// Service carries out the group's membership for one node: init, admission
// of joiners, the join itself, part and leave, decided through consensus;
// gossip for liveness; the WAL budget. It implements the admin API backend.
type Service struct {
	cfg     Config
	pool    *pgxpool.Pool
	dbOID   uint32 // of the local database: names its slots and origins
	store   *state.Store
	streams Streams
	log     *slog.Logger
	met     *metrics
	tasks   chan joinTask

	// mu serializes the procedures that change this node's catalog.
	mu sync.Mutex

	gmu     sync.Mutex
	key     groupkey.Key // nil before init or join
	cons    *consensus
	gsp     *gossip
	changed chan struct{} // the group changed: reconcile now
	dbUp    bool
	lives   map[string]liveness
	budget  map[string]walUse

	jmu  sync.Mutex
	join *adminapi.JoinProgress
	// staleJoin: bdrd restarted in the middle of a join, which Run undoes.
	staleJoin bool
	// selfID is this node's id in the group (gmu), 0 when not a member:
	// a parted node of the same name with another id is an earlier
	// incarnation, not this node.
	selfID int32
}

var _ adminapi.Backend = (*Service)(nil)

// New returns a Service; call Run to start its background work.
func New(cfg Config, pool *pgxpool.Pool, store *state.Store, streams Streams) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Service{cfg: cfg, pool: pool, store: store, streams: streams, log: log,
		met: newMetrics(cfg.Registry, cfg.MaxClockSkew), tasks: make(chan joinTask, 1), changed: make(chan struct{}, 1),
		dbUp: true, lives: map[string]liveness{}, budget: map[string]walUse{}}
	ctx, cancel := context.WithTimeout(context.Background(), peerTimeout)
	defer cancel()
	oid, err := catalog.DatabaseOID(ctx, pool)
	if err != nil {
		return nil, err
	}
	s.dbOID = oid
	var jp adminapi.JoinProgress
	if ok, err := store.Get(state.KeyJoin, &jp); err != nil {
		return nil, err
	} else if ok {
		if !jp.Done {
			// bdrd stopped in the middle of a join: Run undoes it.
			jp.Phase, jp.Done = adminapi.PhaseFailed, true
			jp.Error = "bdrd restarted during the join, which is undone; run bdrctl join again"
			s.staleJoin = true
		}
		s.join = &jp
	}
	return s, nil
}

// Run rejoins the group when this node is a member, then reconciles the
// catalog and the streams with the group's decisions, follows liveness and
// the WAL budget, and carries out joins handed to it, until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	if err := s.resumeRetrying(ctx); err != nil {
		return err
	}
	defer s.stopGroup()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { s.reconcileLoop(ctx); return nil })
	g.Go(func() error { s.livenessLoop(ctx); return nil })
	g.Go(func() error { s.walBudgetLoop(ctx); return nil })
	if s.staleJoin {
		g.Go(func() error {
			s.mu.Lock()
			defer s.mu.Unlock()
			if self, ok, err := s.local(ctx); err == nil && ok && self.State == catalog.StateActive {
				// The group made it a member before bdrd stopped: its
				// streams catch up as any member's do.
				jp := s.joinState()
				jp.Phase, jp.Error = adminapi.PhaseReady, ""
				jp.Message = fmt.Sprintf("node %s (id %d) is a member of the group (bdrd restarted while it caught up)", self.Name, self.ID)
				s.setJoin(jp)
				return nil
			}
			if err := s.undoStaleJoin(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("could not undo the join bdrd did not finish; bdrctl join will try again", "err", err)
			}
			return nil
		})
	}
	g.Go(func() error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case t := <-s.tasks:
				s.runJoin(ctx, t)
			}
		}
	})
	return g.Wait()
}

// resumeRetrying is resume, again after a failure that may pass (the
// database restarting or going away while bdrd starts), so that bdrd
// waits for its database instead of exiting.
func (s *Service) resumeRetrying(ctx context.Context) error {
	wait := 250 * time.Millisecond
	for {
		err := s.resume(ctx)
		if err == nil || ctx.Err() != nil || pgerr.Classify(err) != pgerr.Retryable {
			return err
		}
		s.log.Warn("starting: the database is unavailable; retrying", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// resume starts consensus and gossip again after a restart of a member.
func (s *Service) resume(ctx context.Context) error {
	var id state.Identity
	ok, err := s.store.Get(state.KeyIdentity, &id)
	if err != nil || !ok {
		return s.syncStreams(ctx) // not a member: no streams
	}
	s.setSelfID(id.NodeID)
	key, ok, err := groupkey.Read(s.cfg.KeyFile)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("node %s is a member but its group key %s is missing; restore it from another member", s.cfg.NodeName, s.cfg.KeyFile)
	}
	nodes, err := catalog.Nodes(ctx, s.pool)
	if err != nil {
		return err
	}
	var seeds []string
	for _, n := range nodes {
		if !n.IsLocal && n.Current() && n.GossipAddr != "" {
			seeds = append(seeds, n.GossipAddr)
		}
	}
	if err := s.startGroup(key, false, seeds); err != nil {
		return err
	}
	return s.syncStreams(ctx)
}

// startGroup starts consensus (bootstrapping a new group when asked) and
// gossip, and keeps the key.
func (s *Service) startGroup(key groupkey.Key, bootstrap bool, seeds []string) error {
	if cons, _, _ := s.group(); cons != nil {
		return nil
	}
	// Callers are serialized (init and join hold s.mu, resume runs first);
	// gmu is not held here because gossip asks for this node's metadata,
	// which takes it, while it starts.
	cons, err := openConsensus(consensusConfig{Name: s.cfg.NodeName, Dir: filepath.Join(s.cfg.DataDir, "raft"),
		Bind: s.cfg.RaftListen, Advertise: s.cfg.RaftAdvertise, Key: key, Logger: s.log, Dial: s.cfg.Dial,
		Changed: s.changed})
	if err != nil {
		return err
	}
	if bootstrap {
		if err := cons.bootstrap(s.cfg.NodeName); err != nil {
			cons.close()
			return err
		}
	}
	gc := gossipConfig{Name: s.cfg.NodeName, Bind: s.cfg.GossipListen, Advertise: s.cfg.GossipAdvertise,
		Key: key.GossipKey(), Meta: s.meta, Logger: s.log, MaxSkew: s.cfg.MaxClockSkew, Now: s.cfg.Clock}
	if s.cfg.GossipTransport != nil {
		if gc.Transport, err = s.cfg.GossipTransport(s.cfg.GossipListen); err != nil {
			cons.close()
			return err
		}
	}
	gsp, err := startGossip(gc)
	if err != nil {
		cons.close()
		return err
	}
	s.gmu.Lock()
	s.key, s.cons, s.gsp = key, cons, gsp
	s.gmu.Unlock()
	gsp.update() // now with this node's id and state
	if err := gsp.join(seeds); err != nil {
		s.log.Info("no member answered gossip yet", "err", err)
	}
	return nil
}

// stopGroup stops gossip and consensus.
func (s *Service) stopGroup() {
	s.gmu.Lock()
	defer s.gmu.Unlock()
	if s.gsp != nil {
		s.gsp.shutdown()
		s.gsp = nil
	}
	if s.cons != nil {
		s.cons.close()
		s.cons = nil
	}
}

func (s *Service) setSelfID(id int32) {
	s.gmu.Lock()
	s.selfID = id
	s.gmu.Unlock()
}

func (s *Service) getSelfID() int32 {
	s.gmu.Lock()
	defer s.gmu.Unlock()
	return s.selfID
}

// group returns the running consensus and gossip, nil before init or join.
func (s *Service) group() (*consensus, *gossip, groupkey.Key) {
	s.gmu.Lock()
	defer s.gmu.Unlock()
	return s.cons, s.gsp, s.key
}

// meta is what this node gossips about itself.
func (s *Service) meta() memberMeta {
	m := memberMeta{Name: s.cfg.NodeName, Admin: s.cfg.AdminAddr, Version: s.cfg.Version}
	if cfg, err := pgconn.ParseConfig(s.cfg.PublicDSN); err == nil {
		m.DB = dbAddr(cfg.Host, cfg.Port)
	}
	s.gmu.Lock()
	m.DBUp = s.dbUp
	cons := s.cons
	s.gmu.Unlock()
	if cons != nil {
		if n, ok := cons.fsm.current().Nodes[s.cfg.NodeName]; ok {
			m.ID, m.State = n.ID, n.State
		}
	}
	return m
}

// syncStreams makes the running streams match the catalog: while this node
// is an active member, one stream from every other active member.
func (s *Service) syncStreams(ctx context.Context) error {
	nodes, err := catalog.Nodes(ctx, s.pool)
	if err != nil {
		return err
	}
	var self *catalog.Node
	for i := range nodes {
		if nodes[i].IsLocal && nodes[i].Current() {
			self = &nodes[i]
		}
	}
	if self == nil || self.State != catalog.StateActive {
		return s.streams.SetPeers(ctx, 0, nil)
	}
	var peers []apply.Peer
	for _, n := range nodes {
		if !n.IsLocal && n.State == catalog.StateActive {
			peers = append(peers, apply.Peer{Name: n.Name, NodeID: n.ID, DSN: n.PublicDSN})
		}
	}
	return s.streams.SetPeers(ctx, self.ID, peers)
}

// local returns this node's catalog row; ok is false when it is not a member.
func (s *Service) local(ctx context.Context) (catalog.Node, bool, error) {
	return catalog.LocalNode(ctx, s.pool)
}

// Info describes this node.
func (s *Service) Info(ctx context.Context) (adminapi.Info, error) {
	info := adminapi.Info{Name: s.cfg.NodeName, PublicDSN: RedactDSN(s.cfg.PublicDSN), AdminAddr: s.cfg.AdminAddr,
		GossipAddr: s.gossipAddr(), RaftAddr: s.raftAddr(), Version: s.cfg.Version, State: "none"}
	self, ok, err := s.local(ctx)
	if err != nil {
		return info, err
	}
	if ok {
		info.ID, info.State = self.ID, self.State
	}
	return info, nil
}

func (s *Service) gossipAddr() string {
	if s.cfg.GossipAdvertise != "" {
		return s.cfg.GossipAdvertise
	}
	return s.cfg.GossipListen
}

func (s *Service) raftAddr() string {
	if s.cfg.RaftAdvertise != "" {
		return s.cfg.RaftAdvertise
	}
	return s.cfg.RaftListen
}

// Init makes this node the first member of a new group: a new group key,
// consensus bootstrapped with this node as its only voter.
func (s *Service) Init(ctx context.Context) (adminapi.Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if self, ok, err := s.local(ctx); err != nil {
		return adminapi.Info{}, err
	} else if ok {
		return adminapi.Info{}, adminapi.Conflict("node %s is already a member of a group (node id %d, %s)", self.Name, self.ID, self.State)
	}
	if s.joining() {
		return adminapi.Info{}, adminapi.Conflict("node %s is joining a group", s.cfg.NodeName)
	}
	if err := replsets.EnsureDefault(ctx, s.pool); err != nil {
		return adminapi.Info{}, err
	}
	self, err := s.initGroup(ctx)
	if err != nil {
		// Nothing half-made stays: no key, no consensus state, no catalog rows.
		s.stopGroup()
		_ = os.Remove(s.cfg.KeyFile)
		_ = os.RemoveAll(filepath.Join(s.cfg.DataDir, "raft"))
		_, _ = s.pool.Exec(ctx, `DELETE FROM bdr.nodes`)
		return adminapi.Info{}, fmt.Errorf("init: %w", err)
	}
	s.log.Info("initialized a new group", "node_id", self.ID)
	return s.Info(ctx)
}

// initGroup makes the group key, bootstraps consensus and admits this node.
func (s *Service) initGroup(ctx context.Context) (groupNode, error) {
	key, err := groupkey.New()
	if err != nil {
		return groupNode{}, err
	}
	if err := groupkey.Write(s.cfg.KeyFile, key); err != nil {
		return groupNode{}, err
	}
	if err := s.startGroup(key, true, nil); err != nil {
		return groupNode{}, err
	}
	cons, _, _ := s.group()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := cons.waitLeader(wctx); err != nil {
		return groupNode{}, fmt.Errorf("consensus: %w", err)
	}
	self, err := cons.apply(command{Op: opAdmit, Node: s.selfNode(catalog.StateActive), At: time.Now()})
	if err != nil {
		return groupNode{}, err
	}
	if err := s.reconcileLocked(ctx); err != nil {
		return groupNode{}, err
	}
	s.setSelfID(self.ID)
	if err := s.store.Put(state.KeyIdentity, state.Identity{Name: self.Name, NodeID: self.ID}); err != nil {
		return groupNode{}, err
	}
	return self, nil
}

// selfNode describes this node for the group's state.
func (s *Service) selfNode(st string) groupNode {
	return groupNode{Name: s.cfg.NodeName, State: st, PublicDSN: s.cfg.PublicDSN, AdminAddr: s.cfg.AdminAddr,
		GossipAddr: s.gossipAddr(), RaftAddr: s.raftAddr()}
}

func (s *Service) joining() bool {
	s.jmu.Lock()
	defer s.jmu.Unlock()
	return s.join != nil && !s.join.Done
}

func toAPI(n catalog.Node) adminapi.Node {
	return adminapi.Node{ID: n.ID, Name: n.Name, State: n.State, PublicDSN: n.PublicDSN, AdminAddr: n.AdminAddr,
		GossipAddr: n.GossipAddr, RaftAddr: n.RaftAddr, Since: n.StateChangedAt, Reason: n.Reason}
}

func groupToAPI(n groupNode) adminapi.Node {
	return adminapi.Node{ID: n.ID, Name: n.Name, State: n.State, PublicDSN: n.PublicDSN, AdminAddr: n.AdminAddr,
		GossipAddr: n.GossipAddr, RaftAddr: n.RaftAddr, Since: n.Since, Reason: n.Reason}
}

// client talks to another member with the group's internal token.
func (s *Service) client(addr string) *adminapi.Client {
	c := adminapi.NewClient(addr, peerTimeout)
	if s.cfg.Dial != nil {
		c = c.WithDialer(s.cfg.Dial)
	}
	if _, _, key := s.group(); key != nil {
		c = c.WithToken(key.InternalToken())
	}
	return c
}

// InternalToken is the token members use on this node's admin API, "" before
// the node has a group key.
func (s *Service) InternalToken() string {
	if _, _, key := s.group(); key != nil {
		return key.InternalToken()
	}
	return ""
}
