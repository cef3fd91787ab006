package membership

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/catalog"
	"github.com/bdr-dev/bdr/internal/checksum"
)

// statusTimeout bounds asking a member for its streams.
const statusTimeout = 3 * time.Second

// Status reports this node, the nodes it knows, and the streams: its own
// incoming ones, and with group, every member's incoming streams (which
// together are every stream of the group). Outgoing streams to members that
// do not answer are described from this node's slot for them.
func (s *Service) Status(ctx context.Context, group bool) (adminapi.Status, error) {
	info, err := s.Info(ctx)
	if err != nil {
		return adminapi.Status{}, err
	}
	st := adminapi.Status{Node: info, Streams: []adminapi.Stream{}, Nodes: []adminapi.Node{},
		ClockSkewBoundSeconds: s.cfg.MaxClockSkew.Seconds()}
	for _, x := range s.streams.Status() {
		st.Streams = append(st.Streams, adminapi.Stream{From: x.Peer, To: s.cfg.NodeName, State: x.State, Since: x.Since,
			LagBytes: x.LagBytes, LagSeconds: x.LagSeconds, LastCommit: x.LastCommit, LastError: x.LastError, Paused: x.Paused, Parked: x.Parked})
	}
	s.jmu.Lock()
	if s.join != nil {
		jp := *s.join
		st.Join = &jp
	}
	s.jmu.Unlock()
	nodes, err := catalog.Nodes(ctx, s.pool)
	if err != nil {
		return adminapi.Status{}, err
	}
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM bdr.conflict_history`).Scan(&st.Conflicts); err != nil {
		return adminapi.Status{}, fmt.Errorf("count conflicts: %w", err)
	}
	s.addGroupInfo(&st)
	if !group {
		// A node's own view: its members and what gossip says of them,
		// without asking the others.
		for _, n := range nodes {
			st.Nodes = append(st.Nodes, s.nodeAPI(n))
		}
		return st, nil
	}

	var mu sync.Mutex
	var wg sync.WaitGroup
	reach := map[string]bool{}
	for _, n := range nodes {
		if n.IsLocal || n.State != catalog.StateActive {
			continue
		}
		if l, ok := s.liveOf(n.Name); ok && l.State == LiveDown {
			reach[n.Name] = false // do not wait for a member gossip knows is down
			continue
		}
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, statusTimeout)
			defer cancel()
			remote, err := s.client(n.AdminAddr).Status(cctx, false)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				reach[n.Name] = false
				return
			}
			reach[n.Name] = true
			st.Streams = append(st.Streams, remote.Streams...)
		})
	}
	wg.Wait()
	for _, n := range nodes {
		a := s.nodeAPI(n)
		if r, ok := reach[n.Name]; ok {
			a.Reachable = &r
			if !r {
				st.Unreachable = append(st.Unreachable, n.Name)
				out, err := s.slotStream(ctx, n.Name)
				if err != nil {
					return adminapi.Status{}, err
				}
				st.Streams = append(st.Streams, out)
			}
		}
		st.Nodes = append(st.Nodes, a)
	}
	sort.Slice(st.Streams, func(i, j int) bool {
		a, b := st.Streams[i], st.Streams[j]
		if a.From != b.From {
			return a.From < b.From
		}
		return a.To < b.To
	})
	return st, nil
}

// nodeAPI describes a member with its liveness as this node sees it.
func (s *Service) nodeAPI(n catalog.Node) adminapi.Node {
	a := toAPI(n)
	a.PublicDSN = RedactDSN(a.PublicDSN)
	if l, ok := s.liveOf(n.Name); ok {
		a.Live, a.LiveSince = l.State, l.Since
		if c := l.Clock; c != nil {
			skew := c.Offset.Seconds()
			a.ClockSkewSeconds, a.ClockSkewErrorSeconds, a.ClockSkewOver = &skew, (c.RTT / 2).Seconds(), c.Over
		}
	}
	return a
}

// addGroupInfo adds consensus and WAL budget information.
func (s *Service) addGroupInfo(st *adminapi.Status) {
	cons, _, _ := s.group()
	if cons == nil {
		return
	}
	st.Leader = cons.leader()
	s.gmu.Lock()
	defer s.gmu.Unlock()
	for peer, u := range s.budget {
		st.WAL = append(st.WAL, adminapi.WALBudget{Peer: peer, RetainedBytes: u.Retained,
			BudgetBytes: s.cfg.MaxPeerWAL, UsedRatio: u.Ratio, State: u.State})
	}
	sort.Slice(st.WAL, func(i, j int) bool { return st.WAL[i].Peer < st.WAL[j].Peer })
}

// slotStream describes the stream from this node to name from the slot.
func (s *Service) slotStream(ctx context.Context, name string) (adminapi.Stream, error) {
	out := adminapi.Stream{From: s.cfg.NodeName, To: name, State: "unknown (node unreachable; slot missing)"}
	var active bool
	var lag *int64
	err := s.pool.QueryRow(ctx, `SELECT active, pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
		FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, catalog.SlotName(s.dbOID, name)).Scan(&active, &lag)
	if err != nil {
		return out, nil
	}
	out.State = "unknown (node unreachable; slot inactive)"
	if active {
		out.State = "unknown (node unreachable; slot in use)"
	}
	if lag != nil {
		out.LagBytes = *lag
	}
	return out, nil
}

var (
	dsnPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)
	urlPassword = regexp.MustCompile(`(://[^:/@]*:)[^@]*@`)
)

// RedactDSN hides the password of a keyword/value or URL connection string.
func RedactDSN(dsn string) string {
	dsn = dsnPassword.ReplaceAllString(dsn, "${1}xxxxx")
	return urlPassword.ReplaceAllString(dsn, "${1}xxxxx@")
}

// Checksums computes per-table checksums of the local database.
func (s *Service) Checksums(ctx context.Context) (adminapi.Checksums, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return adminapi.Checksums{}, err
	}
	defer conn.Release()
	tables, err := checksum.Tables(ctx, conn.Conn())
	if err != nil {
		return adminapi.Checksums{}, err
	}
	return adminapi.Checksums{Node: s.cfg.NodeName, Tables: tables}, nil
}
