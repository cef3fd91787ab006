package membership

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the membership, consensus and WAL budget metrics of a bdrd.
type metrics struct {
	members     *prometheus.GaugeVec // by state
	member      *prometheus.GaugeVec // by member and state: 1 for its state
	since       *prometheus.GaugeVec // by member: unix time of its last change
	gossipScore prometheus.Gauge
	leader      prometheus.Gauge
	term        prometheus.Gauge
	contact     prometheus.Gauge
	voters      prometheus.Gauge
	retained    *prometheus.GaugeVec // by peer
	budgetUsed  *prometheus.GaugeVec // by peer
	autoParts   prometheus.Counter
	skew        *prometheus.GaugeVec // by peer
	skewBound   prometheus.Gauge
}

var liveStates = []string{LiveUp, LiveSuspect, LiveDown, LiveDBDown}

func newMetrics(reg prometheus.Registerer, maxSkew time.Duration) *metrics {
	m := &metrics{
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bdr_members",
			Help: "Members of the group by liveness state as this node sees them (up, suspect, down, db-down)."}, []string{"state"}),
		member: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bdr_member_state",
			Help: "1 for the liveness state a member is in, as this node sees it."}, []string{"member", "state"}),
		since: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bdr_member_state_since_seconds",
			Help: "Unix time a member entered its current liveness state."}, []string{"member"}),
		gossipScore: prometheus.NewGauge(prometheus.GaugeOpts{Name: "bdr_gossip_health_score",
			Help: "Gossip awareness health score of this node: 0 is healthy, higher means it misses probes."}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "bdr_consensus_leader",
			Help: "1 when this node leads the group's consensus."}),
		term: prometheus.NewGauge(prometheus.GaugeOpts{Name: "bdr_consensus_term",
			Help: "Current consensus term."}),
		contact: prometheus.NewGauge(prometheus.GaugeOpts{Name: "bdr_consensus_last_contact_seconds",
			Help: "Seconds since this node last heard from the leader (0 on the leader)."}),
		voters: prometheus.NewGauge(prometheus.GaugeOpts{Name: "bdr_consensus_voters",
			Help: "Voters in the consensus configuration."}),
		retained: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bdr_slot_retained_wal_bytes",
			Help: "WAL kept on this node by the slot of a peer."}, []string{"peer"}),
		budgetUsed: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bdr_wal_budget_used_ratio",
			Help: "WAL kept for a peer over the per-peer WAL budget (1 = the budget is used up)."}, []string{"peer"}),
		autoParts: prometheus.NewCounter(prometheus.CounterOpts{Name: "bdr_wal_budget_parts_total",
			Help: "Peers parted by this node because their slot exceeded the WAL budget."}),
		skew: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bdr_clock_skew_seconds",
			Help: "A peer's clock minus this node's, estimated from gossip probes (error at most half their round trip)."}, []string{"peer"}),
		skewBound: prometheus.NewGauge(prometheus.GaugeOpts{Name: "bdr_clock_skew_bound_seconds",
			Help: "The clock skew over which a peer is flagged and logged (--max-clock-skew)."}),
	}
	m.skewBound.Set(maxSkew.Seconds())
	if reg != nil {
		reg.MustRegister(m.members, m.member, m.since, m.gossipScore, m.leader, m.term, m.contact, m.voters,
			m.retained, m.budgetUsed, m.autoParts, m.skew, m.skewBound)
	}
	return m
}

func (m *metrics) observeMembers(lives map[string]liveness, cons *consensus, gsp *gossip) {
	counts := map[string]float64{}
	m.member.Reset()
	m.since.Reset()
	m.skew.Reset()
	for name, l := range lives {
		if l.Clock != nil {
			m.skew.WithLabelValues(name).Set(l.Clock.Offset.Seconds())
		}
		counts[l.State]++
		for _, st := range liveStates {
			v := 0.0
			if st == l.State {
				v = 1
			}
			m.member.WithLabelValues(name, st).Set(v)
		}
		m.since.WithLabelValues(name).Set(float64(l.Since.Unix()))
	}
	for _, st := range liveStates {
		m.members.WithLabelValues(st).Set(counts[st])
	}
	m.gossipScore.Set(float64(gsp.healthScore()))
	stats := cons.raft.Stats()
	if cons.isLeader() {
		m.leader.Set(1)
		m.contact.Set(0)
	} else {
		m.leader.Set(0)
		if lc := cons.raft.LastContact(); !lc.IsZero() {
			m.contact.Set(time.Since(lc).Seconds())
		}
	}
	if t, err := strconv.ParseFloat(stats["term"], 64); err == nil {
		m.term.Set(t)
	}
	if servers, err := cons.servers(); err == nil {
		voters := 0
		for _, v := range servers {
			if v {
				voters++
			}
		}
		m.voters.Set(float64(voters))
	}
}
