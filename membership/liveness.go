package membership

import (
	"context"
	"math"
	"sort"
	"time"

	"github.com/bdr-dev/bdr/internal/catalog"
)

// livenessLoop checks the local database, gossips the result, and
// publishes every member's liveness in bdr.member_status and the metrics.
func (s *Service) livenessLoop(ctx context.Context) {
	t := time.NewTicker(livenessEvery)
	defer t.Stop()
	lastHealth := time.Time{}
	var published []catalog.MemberStatus
	told := map[string]time.Time{} // parted nodes told to leave, when
	var rejoined time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if time.Since(lastHealth) >= healthEvery {
			s.checkDB(ctx)
			lastHealth = time.Now()
		}
		cons, gsp, _ := s.group()
		if cons == nil || gsp == nil {
			continue
		}
		var expect []string
		nodes := cons.fsm.current().Nodes
		for _, n := range nodes {
			if n.State != catalog.StateParted {
				expect = append(expect, n.Name)
			}
		}
		lives := gsp.states(expect)
		for name, l := range lives {
			if contains(expect, name) {
				continue
			}
			delete(lives, name) // gossip of a parted or unknown node
			// A parted node that was down when the group parted it is still
			// replicating: tell it to stop.
			if n, ok := nodes[name]; ok && n.State == catalog.StateParted && l.State != LiveDown &&
				time.Since(told[name]) > time.Minute {
				told[name] = time.Now()
				if err := s.client(n.AdminAddr).Leave(ctx); err != nil {
					s.log.Info("a parted node is back and did not leave yet", "node", name, "err", err)
				}
			}
		}
		s.gmu.Lock()
		before := s.lives
		s.lives = lives
		s.gmu.Unlock()
		for name, l := range lives {
			if l.State == LiveUp && before[name].State != LiveUp && name != s.cfg.NodeName {
				s.streams.Retry(name) // the peer is back: no need to sit out a backoff
			}
		}
		// Gossip forgets members it declared dead (after a restart or a
		// partition): contact them again now and then.
		if time.Since(rejoined) > rejoinEvery {
			rejoined = time.Now()
			var seeds []string
			for name, l := range lives {
				if l.State == LiveDown && name != s.cfg.NodeName && nodes[name].GossipAddr != "" {
					seeds = append(seeds, nodes[name].GossipAddr)
				}
			}
			if len(seeds) > 0 {
				_ = gsp.join(seeds)
			}
		}
		s.met.observeMembers(lives, cons, gsp)

		cur := make([]catalog.MemberStatus, 0, len(lives))
		for name, l := range lives {
			m := catalog.MemberStatus{Name: name, State: l.State, Since: l.Since}
			if l.Clock != nil {
				skew := l.Clock.Offset.Seconds()
				m.ClockSkew = &skew
			}
			cur = append(cur, m)
		}
		sort.Slice(cur, func(i, j int) bool { return cur[i].Name < cur[j].Name })
		if !sameMembers(cur, published) {
			if err := catalog.WriteMemberStatus(ctx, s.pool, cur); err == nil {
				published = cur
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// skewRewrite is how much a member's clock skew changes before
// bdr.member_status is written again (the estimate moves by fractions of a
// millisecond from probe to probe).
const skewRewrite = 0.01

func sameMembers(a, b []catalog.MemberStatus) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || a[i].State != b[i].State || !a[i].Since.Equal(b[i].Since) ||
			!closeSkew(a[i].ClockSkew, b[i].ClockSkew) {
			return false
		}
	}
	return true
}

func closeSkew(a, b *float64) bool {
	if a == nil || b == nil {
		return a == b
	}
	return math.Abs(*a-*b) < skewRewrite
}

// checkDB pings the local PostgreSQL; a change is gossiped at once.
func (s *Service) checkDB(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, healthEvery)
	err := s.pool.Ping(cctx)
	cancel()
	up := err == nil
	s.gmu.Lock()
	changed := up != s.dbUp
	s.dbUp = up
	gsp := s.gsp
	s.gmu.Unlock()
	if changed {
		s.log.Info("local database", "up", up)
		if gsp != nil {
			gsp.update()
		}
	}
}

// liveOf returns what gossip says of a member.
func (s *Service) liveOf(name string) (liveness, bool) {
	s.gmu.Lock()
	defer s.gmu.Unlock()
	l, ok := s.lives[name]
	return l, ok
}
