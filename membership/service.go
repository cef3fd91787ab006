package membership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/bdr-dev/bdr/apply"
	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/catalog"
	"github.com/bdr-dev/bdr/internal/state"
	"github.com/bdr-dev/bdr/replsets"
)

// NamePattern is what a node name must look like: it becomes part of slot
// and origin names.
var NamePattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,30}$`)

// Timeouts of calls to other members.
const (
	peerTimeout  = 10 * time.Second
	pauseLease   = time.Minute
	caughtUpLag  = 1 << 20 // bytes of lag under which a joined node is ready
	dropAttempts = 20
)

// Config configures a Service.
type Config struct {
	NodeName  string
	DSN       string // local PostgreSQL, the replicated database
	PublicDSN string // how peers reach the local PostgreSQL
	AdminAddr string // how peers reach this bdrd's admin API
	PGBinDir  string // where pg_dump and psql are, for the join's schema copy
	Version   string
	Logger    *slog.Logger
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
}

var _ Streams = (*apply.Manager)(nil)

// Service carries out the group's membership procedures for one node: init,
// admission of joiners, the join itself, part and leave. It implements the
// admin API backend.
type Service struct {
	cfg     Config
	pool    *pgxpool.Pool
	store   *state.Store
	streams Streams
	log     *slog.Logger
	tasks   chan joinTask

	// mu serializes the procedures that change this node's catalog.
	mu sync.Mutex

	jmu  sync.Mutex
	join *adminapi.JoinProgress
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
	s := &Service{cfg: cfg, pool: pool, store: store, streams: streams, log: log, tasks: make(chan joinTask, 1)}
	var jp adminapi.JoinProgress
	if ok, err := store.Get(state.KeyJoin, &jp); err != nil {
		return nil, err
	} else if ok {
		if !jp.Done {
			// bdrd stopped in the middle of a join; it does not resume by itself.
			jp.Phase, jp.Done = adminapi.PhaseFailed, true
			jp.Error = "bdrd restarted during the join; run bdrctl join again"
		}
		s.join = &jp
	}
	return s, nil
}

// Run starts the streams the catalog asks for and carries out joins handed
// to it, until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	if err := s.syncStreams(ctx); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case t := <-s.tasks:
			s.runJoin(ctx, t)
		}
	}
}

// local returns this node's catalog row; ok is false when it is not a member.
func (s *Service) local(ctx context.Context) (catalog.Node, bool, error) {
	return catalog.LocalNode(ctx, s.pool)
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

// Info describes this node.
func (s *Service) Info(ctx context.Context) (adminapi.Info, error) {
	info := adminapi.Info{Name: s.cfg.NodeName, PublicDSN: s.cfg.PublicDSN, AdminAddr: s.cfg.AdminAddr,
		Version: s.cfg.Version, State: "none"}
	self, ok, err := s.local(ctx)
	if err != nil {
		return info, err
	}
	if ok {
		info.ID, info.State = self.ID, self.State
	}
	return info, nil
}

// Init makes this node the first member of a new group.
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
	id, err := nextNodeID(ctx, s.pool)
	if err != nil {
		return adminapi.Info{}, err
	}
	self := catalog.Node{ID: id, Name: s.cfg.NodeName, State: catalog.StateActive, IsLocal: true,
		PublicDSN: s.cfg.PublicDSN, AdminAddr: s.cfg.AdminAddr}
	if err := catalog.UpsertNode(ctx, s.pool, self); err != nil {
		return adminapi.Info{}, err
	}
	if err := s.store.Put(state.KeyIdentity, state.Identity{Name: self.Name, NodeID: self.ID}); err != nil {
		return adminapi.Info{}, err
	}
	s.log.Info("initialized a new group", "node_id", id)
	return s.Info(ctx)
}

// nextNodeID is one more than any id this node has ever recorded, so ids of
// parted nodes are never reused.
func nextNodeID(ctx context.Context, db catalog.DB) (int32, error) {
	var id int32
	if err := db.QueryRow(ctx, `SELECT coalesce(max(node_id), 0) + 1 FROM bdr.nodes`).Scan(&id); err != nil {
		return 0, fmt.Errorf("allocate node id: %w", err)
	}
	return id, nil
}

func (s *Service) joining() bool {
	s.jmu.Lock()
	defer s.jmu.Unlock()
	return s.join != nil && !s.join.Done
}

func toAPI(n catalog.Node) adminapi.Node {
	return adminapi.Node{ID: n.ID, Name: n.Name, State: n.State, PublicDSN: n.PublicDSN, AdminAddr: n.AdminAddr, Since: n.StateChangedAt}
}

func client(addr string) *adminapi.Client { return adminapi.NewClient(addr, peerTimeout) }

// findCurrent returns the current (not parted) node named name.
func findCurrent(nodes []catalog.Node, name string) (catalog.Node, bool) {
	for _, n := range nodes {
		if n.Name == name && n.Current() {
			return n, true
		}
	}
	return catalog.Node{}, false
}
