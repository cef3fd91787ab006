package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// heartbeatDDL creates the table the lag heartbeat writes to; it
// replicates like any other table.
const heartbeatDDL = `CREATE TABLE IF NOT EXISTS bench_heartbeat (
	site int NOT NULL,
	seq bigint NOT NULL,
	at timestamptz NOT NULL DEFAULT clock_timestamp(),
	PRIMARY KEY (site, seq))`

// heartbeatEvery is how often each writer commits a heartbeat row.
const heartbeatEvery = 100 * time.Millisecond

// pollEvery is the pause between two polls of a reader.
const pollEvery = 5 * time.Millisecond

// hbNode is a node the heartbeat writes to or reads from.
type hbNode struct {
	site int
	name string
	dsn  string
}

// heartbeat measures replication lag end to end: writers commit a row
// every 100 ms on their node, pollers on the other nodes note when each
// row becomes visible. Both times are taken on this process's clock, each
// corrected by half its connection's round trip (measured at connect), so
// the nodes' clocks do not matter. Safe for concurrent use.
type heartbeat struct {
	start time.Time

	mu      sync.Mutex
	commits map[int]map[int64]time.Time    // writer site -> seq -> committed
	seen    map[[2]int]map[int64]time.Time // (writer, reader) -> seq -> visible
	last    map[int]int64                  // writer site -> last seq committed
	final   map[int]int64                  // writer site -> last seq, once stopped
	names   map[int]string                 // site -> node name
	latest  map[[2]int]time.Duration       // last lag seen per pair
	pairs   [][2]int                       // in the order added
	base    map[int]int64                  // writer site -> seq before this run
	stopped chan struct{}                  // closed when every writer stopped
	errs    []error
}

func newHeartbeat(start time.Time) *heartbeat {
	return &heartbeat{start: start, commits: map[int]map[int64]time.Time{}, seen: map[[2]int]map[int64]time.Time{},
		last: map[int]int64{}, final: map[int]int64{}, names: map[int]string{}, latest: map[[2]int]time.Duration{},
		base: map[int]int64{}, stopped: make(chan struct{})}
}

// connect opens a connection and measures its round trip (the fastest of
// five trivial queries).
func connectTimed(ctx context.Context, dsn string) (*pgx.Conn, time.Duration, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, 0, err
	}
	rtt := time.Hour
	for range 5 {
		t0 := time.Now()
		if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
			conn.Close(context.Background())
			return nil, 0, err
		}
		rtt = min(rtt, time.Since(t0))
	}
	return conn, rtt, nil
}

// run writes heartbeats on every writer until load is closed, and polls
// for them on every reader until they have all been seen or drain has
// passed since the writers stopped. It returns the errors of the writers
// and pollers.
func (h *heartbeat) run(ctx context.Context, load <-chan struct{}, writers, readers []hbNode, drain time.Duration) error {
	// The sequence goes on from the rows earlier runs left.
	for _, w := range writers {
		var base int64
		conn, err := pgx.Connect(ctx, w.dsn)
		if err != nil {
			return fmt.Errorf("heartbeat: %s: %w", w.name, err)
		}
		err = conn.QueryRow(ctx, `SELECT coalesce(max(seq), 0) FROM bench_heartbeat WHERE site = $1`, w.site).Scan(&base)
		conn.Close(context.Background())
		if err != nil {
			return fmt.Errorf("heartbeat: %s: %w", w.name, err)
		}
		h.mu.Lock()
		h.base[w.site], h.last[w.site], h.names[w.site] = base, base, w.name
		h.commits[w.site] = map[int64]time.Time{}
		for _, r := range readers {
			if r.site != w.site {
				p := [2]int{w.site, r.site}
				h.names[r.site] = r.name
				h.seen[p] = map[int64]time.Time{}
				h.pairs = append(h.pairs, p)
			}
		}
		h.mu.Unlock()
	}
	pollCtx, cancelPolls := context.WithCancel(ctx)
	defer cancelPolls()
	var pollers sync.WaitGroup
	for _, w := range writers {
		for _, r := range readers {
			if r.site == w.site {
				continue
			}
			pollers.Go(func() { h.fail(h.poll(pollCtx, w.site, r)) })
		}
	}
	var writersWG sync.WaitGroup
	for _, w := range writers {
		writersWG.Go(func() { h.fail(h.write(ctx, load, w)) })
	}
	writersWG.Wait()
	h.mu.Lock()
	for s, n := range h.last {
		h.final[s] = n
	}
	h.mu.Unlock()
	close(h.stopped)
	done := make(chan struct{})
	go func() { pollers.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		cancelPolls()
		<-done
	case <-time.After(drain):
		cancelPolls()
		<-done
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return errors.Join(h.errs...)
}

func (h *heartbeat) fail(err error) {
	if err == nil || errors.Is(err, context.Canceled) {
		return
	}
	h.mu.Lock()
	h.errs = append(h.errs, err)
	h.mu.Unlock()
}

// write commits a heartbeat row every 100 ms until load is closed or ctx
// ends.
func (h *heartbeat) write(ctx context.Context, load <-chan struct{}, w hbNode) error {
	conn, rtt, err := connectTimed(ctx, w.dsn)
	if err != nil {
		return fmt.Errorf("heartbeat writer on %s: %w", w.name, err)
	}
	defer conn.Close(context.Background())
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-load:
			return nil
		case <-t.C:
		}
		h.mu.Lock()
		seq := h.last[w.site] + 1
		h.mu.Unlock()
		if _, err := conn.Exec(ctx, `INSERT INTO bench_heartbeat (site, seq) VALUES ($1, $2)`, w.site, seq); err != nil {
			return fmt.Errorf("heartbeat writer on %s: %w", w.name, err)
		}
		at := time.Now().Add(-rtt / 2)
		h.mu.Lock()
		h.commits[w.site][seq] = at
		h.last[w.site] = seq
		h.mu.Unlock()
	}
}

// poll notes when each heartbeat of writer becomes visible on r, until
// all of them have been seen after the writers stopped, or ctx ends.
func (h *heartbeat) poll(ctx context.Context, writer int, r hbNode) error {
	conn, rtt, err := connectTimed(ctx, r.dsn)
	if err != nil {
		return fmt.Errorf("heartbeat reader on %s: %w", r.name, err)
	}
	defer conn.Close(context.Background())
	pair := [2]int{writer, r.site}
	h.mu.Lock()
	after := h.base[writer]
	h.mu.Unlock()
	for {
		rows, err := conn.Query(ctx, `SELECT seq FROM bench_heartbeat WHERE site = $1 AND seq > $2 ORDER BY seq`, writer, after)
		if err != nil {
			return fmt.Errorf("heartbeat reader on %s: %w", r.name, err)
		}
		seqs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return fmt.Errorf("heartbeat reader on %s: %w", r.name, err)
		}
		at := time.Now().Add(-rtt / 2)
		h.mu.Lock()
		for _, s := range seqs {
			h.seen[pair][s] = at
			if c, ok := h.commits[writer][s]; ok {
				h.latest[pair] = at.Sub(c)
			}
			after = s
		}
		final, stopped := h.final[writer], h.isStopped()
		h.mu.Unlock()
		if stopped && after >= final {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollEvery):
		}
	}
}

func (h *heartbeat) isStopped() bool {
	select {
	case <-h.stopped:
		return true
	default:
		return false
	}
}

// current is the lag of the latest heartbeat seen, the largest over the
// pairs; 0 before any.
func (h *heartbeat) current() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	var lag time.Duration
	for _, l := range h.latest {
		lag = max(lag, l)
	}
	return lag
}

// LagStats summarizes replication lag samples, in milliseconds.
type LagStats struct {
	From    string  `json:"from,omitempty"`
	To      string  `json:"to,omitempty"`
	Samples int     `json:"samples"`
	Unseen  int     `json:"unseen"` // heartbeats not visible when the measurement ended
	P50     float64 `json:"p50_ms"`
	P99     float64 `json:"p99_ms"`
	Max     float64 `json:"max_ms"`
}

// LagPoint is one heartbeat's lag.
type LagPoint struct {
	From  string  `json:"from"`
	To    string  `json:"to"`
	At    float64 `json:"at_s"` // commit, seconds since the start of the run
	LagMs float64 `json:"lag_ms"`
}

// results returns the lag over all pairs, per pair, and every sample.
func (h *heartbeat) results() (LagStats, []LagStats, []LagPoint) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var all []time.Duration
	var unseen int
	var pairs []LagStats
	var points []LagPoint
	for _, p := range h.pairs {
		var lags []time.Duration
		miss := 0
		for seq, c := range h.commits[p[0]] {
			v, ok := h.seen[p][seq]
			if !ok {
				miss++
				continue
			}
			lag := max(v.Sub(c), 0)
			lags = append(lags, lag)
			points = append(points, LagPoint{From: h.names[p[0]], To: h.names[p[1]], At: c.Sub(h.start).Seconds(), LagMs: ms(lag)})
		}
		all = append(all, lags...)
		unseen += miss
		st := lagStats(lags, miss)
		st.From, st.To = h.names[p[0]], h.names[p[1]]
		pairs = append(pairs, st)
	}
	slices.SortFunc(points, func(a, b LagPoint) int {
		switch {
		case a.At < b.At:
			return -1
		case a.At > b.At:
			return 1
		}
		return 0
	})
	return lagStats(all, unseen), pairs, points
}

func lagStats(lags []time.Duration, unseen int) LagStats {
	slices.Sort(lags)
	st := LagStats{Samples: len(lags), Unseen: unseen}
	if len(lags) > 0 {
		st.P50, st.P99, st.Max = ms(percentile(lags, 50)), ms(percentile(lags, 99)), ms(lags[len(lags)-1])
	}
	return st
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
