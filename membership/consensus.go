package membership

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/bdr-dev/bdr/internal/groupkey"
)

// errNoLeader means this node sees no leader: it is on the minority side
// of a partition, or the group is electing one.
var errNoLeader = errors.New("no leader")

// consensusConfig configures the consensus of one bdrd.
type consensusConfig struct {
	Name      string // raft server id
	Dir       string // raft log, stable store and snapshots
	Bind      string
	Advertise string
	Key       groupkey.Key
	Logger    *slog.Logger
	// Dial replaces the network dialer (tests inject faults); nil = net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Changed is signalled after every change of the group's state.
	Changed chan struct{}
}

// consensus is the replicated state machine of the group's decisions, run
// by hashicorp/raft over mutual TLS (certificates from the group key).
type consensus struct {
	raft  *raft.Raft
	fsm   *groupFSM
	trans *raft.NetworkTransport
	store *raftboltdb.BoltStore
}

// openConsensus starts raft with its state in cfg.Dir (created if needed).
func openConsensus(cfg consensusConfig) (*consensus, error) {
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("consensus: %w", err)
	}
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.Dir, "raft.db")})
	if err != nil {
		return nil, fmt.Errorf("consensus store: %w", err)
	}
	logOut := &logWriter{log: cfg.Logger.With("component", "consensus")}
	snaps, err := raft.NewFileSnapshotStore(cfg.Dir, 2, logOut)
	if err != nil {
		_ = store.Close()
		return nil, fmt.Errorf("consensus snapshots: %w", err)
	}
	stream, err := newTLSStream(cfg)
	if err != nil {
		_ = store.Close()
		return nil, err
	}
	hlog := hclog.New(&hclog.LoggerOptions{Name: "raft", Output: logOut, Level: hclog.Info})
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: stream, MaxPool: 3, Timeout: 5 * time.Second, Logger: hlog,
	})
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.Name)
	rc.Logger = hlog
	rc.HeartbeatTimeout = 500 * time.Millisecond
	rc.ElectionTimeout = 500 * time.Millisecond
	rc.LeaderLeaseTimeout = 250 * time.Millisecond
	rc.CommitTimeout = 20 * time.Millisecond
	rc.SnapshotThreshold = 1024
	fsm := newGroupFSM(cfg.Changed)
	r, err := raft.NewRaft(rc, fsm, store, store, snaps, trans)
	if err != nil {
		_ = trans.Close()
		_ = store.Close()
		return nil, fmt.Errorf("consensus: %w", err)
	}
	return &consensus{raft: r, fsm: fsm, trans: trans, store: store}, nil
}

// bootstrap makes this node the only voter of a new group, unless raft
// already has state.
func (c *consensus) bootstrap(name string) error {
	err := c.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
		Suffrage: raft.Voter, ID: raft.ServerID(name), Address: c.trans.LocalAddr(),
	}}}).Error()
	if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return fmt.Errorf("bootstrap consensus: %w", err)
	}
	return nil
}

// waitLeader waits until some node is leader.
func (c *consensus) waitLeader(ctx context.Context) error {
	for {
		if addr, _ := c.raft.LeaderWithID(); addr != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// isLeader reports whether this node leads.
func (c *consensus) isLeader() bool { return c.raft.State() == raft.Leader }

// leader returns the id (node name) of the leader this node knows, "" if none.
func (c *consensus) leader() string {
	_, id := c.raft.LeaderWithID()
	return string(id)
}

// apply commits a command; only the leader can.
func (c *consensus) apply(cmd command) (groupNode, error) {
	if !c.isLeader() {
		return groupNode{}, errNoLeader
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return groupNode{}, err
	}
	f := c.raft.Apply(b, 10*time.Second)
	if err := f.Error(); err != nil {
		switch {
		case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrEnqueueTimeout):
			// Not decided, or decided without our knowing: the proposal is
			// retried, with the same request id, through the next leader.
			return groupNode{}, fmt.Errorf("%w (commit %s: %v)", errNoLeader, cmd.Op, err)
		}
		return groupNode{}, fmt.Errorf("commit %s: %w", cmd.Op, err)
	}
	res, _ := f.Response().(applyResult)
	return res.Node, res.Err
}

// setVoter adds (or promotes) a member: a nonvoter follows the log without
// counting for quorum, a voter counts.
func (c *consensus) setVoter(name, addr string, voter bool) error {
	var f raft.IndexFuture
	if voter {
		f = c.raft.AddVoter(raft.ServerID(name), raft.ServerAddress(addr), 0, 10*time.Second)
	} else {
		f = c.raft.AddNonvoter(raft.ServerID(name), raft.ServerAddress(addr), 0, 10*time.Second)
	}
	if err := f.Error(); err != nil {
		return fmt.Errorf("add %s to consensus: %w", name, err)
	}
	return nil
}

// remove takes a member out of the consensus configuration.
func (c *consensus) remove(name string) error {
	if err := c.raft.RemoveServer(raft.ServerID(name), 0, 10*time.Second).Error(); err != nil {
		return fmt.Errorf("remove %s from consensus: %w", name, err)
	}
	return nil
}

// servers lists the configuration: name -> voter.
func (c *consensus) servers() (map[string]bool, error) {
	f := c.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, s := range f.Configuration().Servers {
		out[string(s.ID)] = s.Suffrage == raft.Voter
	}
	return out, nil
}

// close shuts raft down.
func (c *consensus) close() {
	_ = c.raft.Shutdown().Error()
	_ = c.trans.Close()
	_ = c.store.Close()
}

// tlsStream is raft's network: TCP with mutual TLS between members.
type tlsStream struct {
	net.Listener
	advertise net.Addr
	client    *tls.Config
	dial      func(ctx context.Context, network, addr string) (net.Conn, error)
}

func newTLSStream(cfg consensusConfig) (*tlsStream, error) {
	server, client, err := cfg.Key.TLS(cfg.Name)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("consensus listen: %w", err)
	}
	adv := cfg.Advertise
	if adv == "" {
		adv = ln.Addr().String()
	}
	addr, err := net.ResolveTCPAddr("tcp", adv)
	if err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("consensus advertise address %q: %w", adv, err)
	}
	if addr.IP == nil || addr.IP.IsUnspecified() {
		_ = ln.Close()
		return nil, fmt.Errorf("consensus advertise address %q: set one peers can reach", adv)
	}
	dial := cfg.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	return &tlsStream{Listener: tls.NewListener(ln, server), advertise: addr, client: client, dial: dial}, nil
}

func (s *tlsStream) Addr() net.Addr { return s.advertise }

func (s *tlsStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	raw, err := s.dial(ctx, "tcp", string(address))
	if err != nil {
		return nil, err
	}
	conn := tls.Client(raw, s.client)
	if err := conn.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, err
	}
	return conn, nil
}
