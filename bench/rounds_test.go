package bench

import (
	"testing"
	"time"
)

func TestMergeRounds(t *testing.T) {
	msd := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	w1 := ModeResult{Mode: ModeLocal, Writers: "w", Transactions: 3, TPS: 100, lat: msd(1, 2, 3), TPSSeries: []int64{50, 50},
		Lag: &LagStats{}, LagPairs: []LagStats{{From: "site1", To: "site2", Unseen: 1}},
		Lags:      []LagPoint{{From: "site1", To: "site2", At: 0.5, LagMs: 40}, {From: "site1", To: "site2", At: 1, LagMs: 60}},
		Links:     []LinkBytes{{Name: "site2 postgres", Sent: 10, Replies: 1000}},
		Conflicts: map[string]int64{"site1": 0, "site2": 1},
		CPU:       &CPUUse{BdrctlPct: 10, Sites: []SiteCPU{{Site: "site1", BusyPct: 90, WalsenderPct: 8}}}}
	w2 := ModeResult{Mode: ModeLocal, Writers: "w", Transactions: 2, TPS: 50, lat: msd(10, 20), TPSSeries: []int64{25},
		Lag: &LagStats{}, LagPairs: []LagStats{{From: "site1", To: "site2"}},
		Lags:      []LagPoint{{From: "site1", To: "site2", At: 0.5, LagMs: 50}},
		Links:     []LinkBytes{{Name: "site2 postgres", Sent: 5, Replies: 500}, {Name: "site2 raft", Sent: 1}},
		Conflicts: map[string]int64{"site2": 2},
		CPU:       &CPUUse{BdrctlPct: 20, Sites: []SiteCPU{{Site: "site1", BusyPct: 70, WalsenderPct: 4}}}}
	m := mergeRounds([]ModeResult{w1, w2}, 2*time.Second)
	if m.Mode != ModeLocal || m.Transactions != 5 || m.TPS != 75 || len(m.RoundTPS) != 2 || m.RoundTPS[1] != 50 {
		t.Errorf("merged: mode %s, %d transactions, tps %.1f, rounds %v; want 5, 75, [100 50]", m.Mode, m.Transactions, m.TPS, m.RoundTPS)
	}
	if m.LatencyP50 != 3 || m.LatencyP99 != 20 || m.LatencyAvg != 7.2 {
		t.Errorf("latency avg %.2f p50 %.1f p99 %.1f; want 7.2, 3, 20 (over both rounds)", m.LatencyAvg, m.LatencyP50, m.LatencyP99)
	}
	if got := m.TPSSeries; len(got) != 3 || got[2] != 25 {
		t.Errorf("tps series %v; want [50 50 25]", got)
	}
	if m.Lag == nil || m.Lag.Samples != 3 || m.Lag.Unseen != 1 || m.Lag.P50 != 50 || m.Lag.Max != 60 || len(m.LagPairs) != 1 || m.LagPairs[0].Samples != 3 {
		t.Errorf("lag %+v, pairs %+v; want 3 samples, 1 unseen, p50 50, max 60", m.Lag, m.LagPairs)
	}
	if last := m.Lags[len(m.Lags)-1]; last.At != 2.5 || last.LagMs != 50 {
		t.Errorf("round 2's sample at %.1f s (%.0f ms); want 2.5 s, after round 1's 2 s", last.At, last.LagMs)
	}
	if len(m.Links) != 2 || m.Links[0].Sent != 15 || m.Links[0].Replies != 1500 || m.Links[1].Sent != 1 {
		t.Errorf("links %+v; want site2 postgres 15/1500 and site2 raft 1", m.Links)
	}
	if m.Conflicts["site2"] != 3 || m.Conflicts["site1"] != 0 {
		t.Errorf("conflicts %v; want site2 3", m.Conflicts)
	}
	if c := m.CPU; c == nil || c.BdrctlPct != 15 || c.Sites[0].BusyPct != 80 || c.Sites[0].WalsenderPct != 6 {
		t.Errorf("cpu %+v; want the means: bdrctl 15, busy 80, walsender 6", c)
	}
	if r := roundRatios(ModeResult{RoundTPS: []float64{100, 50}}, ModeResult{RoundTPS: []float64{90, 50}}); len(r) != 2 || r[0] != 0.9 || r[1] != 1 {
		t.Errorf("round ratios %v; want [0.9 1]", r)
	}
	if one := mergeRounds([]ModeResult{w1}, time.Second); one.TPS != 100 || one.RoundTPS != nil {
		t.Errorf("one round: tps %.1f rounds %v; want it as it was", one.TPS, one.RoundTPS)
	}
}
