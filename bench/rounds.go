package bench

import (
	"slices"
	"time"
)

// Rounds. The target that matters most, mm-local against the baseline,
// compares two runs on the same CPUs; on a shared host those CPUs do not
// run at one speed from one minute to the next (here, 60-s runs of the
// same baseline differed by up to 30%). So the two modes take turns: the
// run of each is cut into rounds (windows of Duration/Rounds), baseline
// and mm-local alternating, and each mode's result is made of all its
// windows. Whatever the host does then falls on both alike.

// autoRounds is the rounds of a run of d when none are asked for: windows
// of about 10 s, at most 6.
func autoRounds(d time.Duration) int {
	return min(max(int(d/(10*time.Second)), 1), 6)
}

// minWindow is the shortest window of a round: pgbench's connections and
// the heartbeat's first samples take a moment.
const minWindow = 2 * time.Second

// mergeRounds makes one result of a mode's windows, each window long:
// transactions, conflicts, bytes and failures add up, TPS is the mean of
// the windows' (they are equally long), latencies and lags are percentiles
// over every window's samples, CPU the mean of the windows', and the time
// series follow each other.
func mergeRounds(ws []ModeResult, window time.Duration) ModeResult {
	if len(ws) == 1 {
		return ws[0]
	}
	out := ModeResult{Mode: ws[0].Mode, Writers: ws[0].Writers}
	var lat []time.Duration
	for i, w := range ws {
		out.Transactions += w.Transactions
		out.Failed += w.Failed
		out.TPS += w.TPS / float64(len(ws))
		out.RoundTPS = append(out.RoundTPS, w.TPS)
		lat = append(lat, w.lat...)
		// Window i's series starts where window i-1's time ended, padded
		// to whole windows (a window's series can be a second short).
		series := w.TPSSeries
		if pad := int(window/time.Second) * i; len(out.TPSSeries) < pad {
			out.TPSSeries = append(out.TPSSeries, make([]int64, pad-len(out.TPSSeries))...)
		}
		out.TPSSeries = append(out.TPSSeries, series...)
		for _, p := range w.Lags {
			p.At += window.Seconds() * float64(i)
			out.Lags = append(out.Lags, p)
		}
		if w.Conflicts != nil {
			if out.Conflicts == nil {
				out.Conflicts = map[string]int64{}
			}
			for n, c := range w.Conflicts {
				out.Conflicts[n] += c
			}
		}
		out.Links = addLinks(out.Links, w.Links)
	}
	slices.Sort(lat)
	out.lat = lat
	out.LatencyAvg, out.LatencyP50, out.LatencyP99 = ms(mean(lat)), ms(percentile(lat, 50)), ms(percentile(lat, 99))
	if ws[0].Lag != nil {
		out.Lag, out.LagPairs = mergeLags(ws)
	}
	out.CPU = meanCPU(ws)
	return out
}

// mergeLags recomputes the lag statistics over every window's samples,
// per pair and over all, with the heartbeats each window left unseen.
func mergeLags(ws []ModeResult) (*LagStats, []LagStats) {
	type pair struct{ from, to string }
	lags := map[pair][]time.Duration{}
	unseen := map[pair]int{}
	var order []pair
	for _, w := range ws {
		for _, st := range w.LagPairs {
			p := pair{st.From, st.To}
			if _, ok := unseen[p]; !ok {
				order = append(order, p)
			}
			unseen[p] += st.Unseen
		}
		for _, pt := range w.Lags {
			p := pair{pt.From, pt.To}
			lags[p] = append(lags[p], time.Duration(pt.LagMs*float64(time.Millisecond)))
		}
	}
	var all []time.Duration
	var allUnseen int
	var pairs []LagStats
	for _, p := range order {
		st := lagStats(lags[p], unseen[p])
		st.From, st.To = p.from, p.to
		pairs = append(pairs, st)
		all = append(all, lags[p]...)
		allUnseen += unseen[p]
	}
	st := lagStats(all, allUnseen)
	return &st, pairs
}

// addLinks adds the bytes of b to those of a, link by link.
func addLinks(a, b []LinkBytes) []LinkBytes {
	for _, l := range b {
		i := slices.IndexFunc(a, func(x LinkBytes) bool { return x.Name == l.Name })
		if i < 0 {
			a = append(a, l)
			continue
		}
		a[i].Sent += l.Sent
		a[i].Replies += l.Replies
	}
	return a
}

// meanCPU is the mean of the windows' CPU use, site by site; nil when a
// window has none.
func meanCPU(ws []ModeResult) *CPUUse {
	out := &CPUUse{}
	n := float64(len(ws))
	for _, w := range ws {
		if w.CPU == nil || len(w.CPU.Sites) != len(ws[0].CPU.Sites) {
			return nil
		}
		out.BdrctlPct += w.CPU.BdrctlPct / n
		for i, s := range w.CPU.Sites {
			if len(out.Sites) <= i {
				out.Sites = append(out.Sites, SiteCPU{Site: s.Site, Role: s.Role, CPUs: s.CPUs})
			}
			o := &out.Sites[i]
			o.BusyPct += s.BusyPct / n
			o.PostgresPct += s.PostgresPct / n
			o.WalsenderPct += s.WalsenderPct / n
			o.BdrdPct += s.BdrdPct / n
			o.PgbenchPct += s.PgbenchPct / n
			o.OthersPct += s.OthersPct / n
		}
	}
	return out
}

// roundRatios are mm-local's TPS over the baseline's, round by round.
func roundRatios(base, local ModeResult) []float64 {
	if len(base.RoundTPS) != len(local.RoundTPS) {
		return nil
	}
	var out []float64
	for i, b := range base.RoundTPS {
		if b > 0 {
			out = append(out, local.RoundTPS[i]/b)
		}
	}
	return out
}
