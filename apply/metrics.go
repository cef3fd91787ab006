package apply

import "github.com/prometheus/client_golang/prometheus"

// metrics are the apply metrics of one bdrd, labelled by peer.
type metrics struct {
	txns      *prometheus.CounterVec
	rows      *prometheus.CounterVec
	lag       *prometheus.GaugeVec
	lagBytes  *prometheus.GaugeVec
	received  *prometheus.CounterVec
	conflicts *prometheus.CounterVec
	errors    *prometheus.CounterVec
	skipped   *prometheus.CounterVec
	up        *prometheus.GaugeVec
	parked    *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		txns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bdr_apply_transactions_total",
			Help: "Remote transactions applied, by peer."}, []string{"peer"}),
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bdr_apply_rows_total",
			Help: "Remote row changes applied, by peer and operation."}, []string{"peer", "op"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bdr_apply_lag_seconds",
			Help: "Age of the oldest received remote transaction not yet applied (0 when caught up)."}, []string{"peer"}),
		lagBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bdr_apply_lag_bytes",
			Help: "Provider WAL not yet processed by this node's stream."}, []string{"peer"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bdr_receive_bytes_total",
			Help: "Bytes received from the peer's replication stream."}, []string{"peer"}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bdr_conflicts_total",
			Help: "Conflicts detected while applying, by peer and conflict type."}, []string{"peer", "type"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bdr_stream_errors_total",
			Help: "Stream failures, by peer and class (retryable, conflict, fatal)."}, []string{"peer", "class"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bdr_skipped_transactions_total",
			Help: "Transactions received and not applied: replicated from elsewhere (origin filter) or empty."}, []string{"peer"}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bdr_stream_up",
			Help: "1 while the stream from the peer is streaming."}, []string{"peer"}),
		parked: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bdr_parked_transactions",
			Help: "Transactions from the peer that could not be applied and wait in bdr.apply_errors."}, []string{"peer"}),
	}
	if reg != nil {
		reg.MustRegister(m.txns, m.rows, m.lag, m.lagBytes, m.received, m.conflicts, m.errors, m.skipped, m.up, m.parked)
	}
	return m
}

// forget removes every series of peer.
func (m *metrics) forget(peer string) {
	l := prometheus.Labels{"peer": peer}
	for _, v := range []*prometheus.MetricVec{m.txns.MetricVec, m.rows.MetricVec, m.lag.MetricVec,
		m.lagBytes.MetricVec, m.received.MetricVec, m.conflicts.MetricVec, m.errors.MetricVec,
		m.skipped.MetricVec, m.up.MetricVec, m.parked.MetricVec} {
		v.DeletePartialMatch(l)
	}
}

// streamMetrics are the series of one peer.
type streamMetrics struct {
	txns                 prometheus.Counter
	ins, upd, del, trunc prometheus.Counter
	lag, lagBytes, up    prometheus.Gauge
	parked               prometheus.Gauge
	received             prometheus.Counter
	skipped              prometheus.Counter
	conflicts            *prometheus.CounterVec
	errors               *prometheus.CounterVec
}

func (m *metrics) stream(peer string) *streamMetrics {
	return &streamMetrics{
		txns:      m.txns.WithLabelValues(peer),
		ins:       m.rows.WithLabelValues(peer, "insert"),
		upd:       m.rows.WithLabelValues(peer, "update"),
		del:       m.rows.WithLabelValues(peer, "delete"),
		trunc:     m.rows.WithLabelValues(peer, "truncate"),
		lag:       m.lag.WithLabelValues(peer),
		lagBytes:  m.lagBytes.WithLabelValues(peer),
		up:        m.up.WithLabelValues(peer),
		parked:    m.parked.WithLabelValues(peer),
		received:  m.received.WithLabelValues(peer),
		skipped:   m.skipped.WithLabelValues(peer),
		conflicts: m.conflicts.MustCurryWith(prometheus.Labels{"peer": peer}),
		errors:    m.errors.MustCurryWith(prometheus.Labels{"peer": peer}),
	}
}

func (sm *streamMetrics) observeTxn(r rowCounts) {
	sm.txns.Inc()
	for _, c := range r.conflicts {
		sm.conflicts.WithLabelValues(c).Inc()
	}
	sm.ins.Add(float64(r.ins))
	sm.upd.Add(float64(r.upd))
	sm.del.Add(float64(r.del))
	sm.trunc.Add(float64(r.trunc))
}
