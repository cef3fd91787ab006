package bench

import (
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// The PGECons 2016 evaluation between Tokyo and Singapore (76.95 ms round
// trip, 160 Mbit/s; pgbench scale 10, 10 clients, 180 s).
const (
	seedRTTms       = 76.95
	seedSRTPS       = 17.06 // client writing through the WAN to a streaming-replication primary
	seedSRLatencyMs = 584.8
	seedMMTPS       = 92.6 // BDR 1, client writing to the near node
	seedMMLatencyMs = 107.9
)

// Target ratios of the WAN benchmark (issue 6).
const (
	targetLocalVsBaseline = 0.9 // mm-local TPS over baseline TPS, at least
	targetLocalVsSR       = 5.0 // mm-local TPS over sr TPS, at least
	targetLagSlackMs      = 10  // lag p50 at most one-way delay plus this
)

// Header describes the run in one line.
func (r WANResult) Header() string {
	shape := Shape{RTT: time.Duration(r.RTTms * float64(time.Millisecond)), Jitter: time.Duration(r.JitterMs * float64(time.Millisecond)), Bandwidth: r.Bandwidth}
	commits := "fsync off (commits cost CPU only)"
	if r.Fsync {
		commits = "fsync on (WAL flushed at commit)"
	}
	rounds := ""
	if r.Rounds > 1 {
		rounds = fmt.Sprintf(" (baseline and mm-local taking turns, %d rounds of %gs)", r.Rounds, r.DurationSec/float64(r.Rounds))
	}
	return fmt.Sprintf("pgbench scale %d, %d clients%s, %gs per mode%s; %d sites; links: %s; %s", r.Scale, r.Clients, rateText(r.Rate), r.DurationSec, rounds, r.Nodes, shape, commits)
}

// cpusText says which CPUs each site had.
func (r WANResult) cpusText() string {
	if len(r.SiteCPUs) == 0 {
		return fmt.Sprintf("CPUs: shared by every site (%s)", r.SiteCPUsNote)
	}
	var s []string
	for i, set := range r.SiteCPUs {
		s = append(s, fmt.Sprintf("site%d %s", i+1, cpusText(set)))
	}
	weight := "no weight against other work"
	switch {
	case r.SiteWeight > 0:
		weight = fmt.Sprintf("each site and bdrctl weighing %d processes of the machine", r.SiteWeight)
	case r.SiteWeightNote != "":
		weight = "no weight against other work: " + r.SiteWeightNote
	}
	net := "any"
	if r.BdrctlCPUs != "" {
		net = cpusText(r.BdrctlCPUs) + " (all but site1's)"
	}
	return fmt.Sprintf("CPUs: %s (a cgroup cpuset each; the baseline on site1's; bdrctl, which runs the links, on %s, GOMAXPROCS %d; %s)",
		strings.Join(s, ", "), net, r.BdrctlProcs, weight)
}

func rateText(rate int) string {
	if rate == 0 {
		return ""
	}
	return fmt.Sprintf(" at %d txn/s per site", rate)
}

// Report is the result as tables.
func (r WANResult) Report() string {
	var b strings.Builder
	b.WriteString(r.Header() + "\n" + r.cpusText() + "\n\n")
	modeTable(&b, r.Modes)
	modeDetails(&b, r.Modes, true)
	if t := r.Targets(); len(t) > 0 {
		b.WriteString("\ntargets:\n")
		for _, c := range t {
			fmt.Fprintf(&b, "  %s\n", c)
		}
	}
	if rr := r.RoundRatios(); len(rr) > 1 {
		var cells []string
		for _, v := range rr {
			cells = append(cells, fmt.Sprintf("%.2f", v))
		}
		sorted := slices.Sorted(slices.Values(rr))
		fmt.Fprintf(&b, "  mm-local / baseline TPS by round: %s (median %.2f, min %.2f, max %.2f)\n",
			strings.Join(cells, " "), median(sorted), sorted[0], sorted[len(sorted)-1])
	}
	return b.String()
}

// RoundRatios are mm-local's TPS over the baseline's in each round, when
// the two took turns.
func (r WANResult) RoundRatios() []float64 {
	base, okB := r.Mode(ModeBaseline)
	local, okL := r.Mode(ModeLocal)
	if !okB || !okL {
		return nil
	}
	return roundRatios(base, local)
}

// median of sorted values.
func median(v []float64) float64 {
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// Check is one target and whether the run met it.
type Check struct {
	What   string  `json:"what"`
	Value  float64 `json:"value"`
	Target float64 `json:"target"`
	Met    bool    `json:"met"`
}

func (c Check) String() string {
	met := "met"
	if !c.Met {
		met = "NOT met"
	}
	return fmt.Sprintf("%-40s %8.2f  (target %s)  %s", c.What, c.Value, strings.TrimLeft(fmt.Sprintf("%.2f", c.Target), " "), met)
}

// Targets checks the targets on the modes that ran.
func (r WANResult) Targets() []Check {
	out := []Check{}
	local, okL := r.Mode(ModeLocal)
	if base, ok := r.Mode(ModeBaseline); ok && okL && base.TPS > 0 {
		v := local.TPS / base.TPS
		out = append(out, Check{What: "mm-local TPS / baseline TPS (>=)", Value: v, Target: targetLocalVsBaseline, Met: v >= targetLocalVsBaseline})
	}
	if sr, ok := r.Mode(ModeSR); ok && okL && sr.TPS > 0 {
		v := local.TPS / sr.TPS
		out = append(out, Check{What: "mm-local TPS / sr TPS (>=)", Value: v, Target: targetLocalVsSR, Met: v >= targetLocalVsSR})
	}
	if okL && local.Lag != nil && local.Lag.Samples > 0 {
		limit := r.RTTms/2 + targetLagSlackMs
		out = append(out, Check{What: "mm-local lag p50 ms (<= one-way + 10)", Value: local.Lag.P50, Target: limit, Met: local.Lag.P50 <= limit})
	}
	return out
}

// CompareSeed is our figures next to PGECons 2016's.
func (r WANResult) CompareSeed() string {
	var b strings.Builder
	fmt.Fprintf(&b, "against PGECons 2016, Tokyo-Singapore (rtt %.2f ms, 160mbit; scale 10, 10 clients, 180 s); this run: rtt %g ms, %s\n",
		seedRTTms, r.RTTms, FormatBandwidth(r.Bandwidth))
	tw := newTable(&b)
	fmt.Fprintln(tw, "\tPGECons 2016\tthis run\t")
	sr, okS := r.Mode(ModeSR)
	mm, okM := r.Mode(ModeLocal)
	cell := func(ok bool, v float64) string {
		if !ok {
			return "-"
		}
		return fmt.Sprintf("%.1f", v)
	}
	fmt.Fprintf(tw, "streaming replication, remote primary: TPS\t%.2f\t%s\t\n", seedSRTPS, cell(okS, sr.TPS))
	fmt.Fprintf(tw, "streaming replication, remote primary: latency ms\t%.1f\t%s\t\n", seedSRLatencyMs, cell(okS, sr.LatencyAvg))
	fmt.Fprintf(tw, "multi-master, near node: TPS\t%.1f\t%s\t\n", seedMMTPS, cell(okM, mm.TPS))
	fmt.Fprintf(tw, "multi-master, near node: latency ms\t%.1f\t%s\t\n", seedMMLatencyMs, cell(okM, mm.LatencyAvg))
	ratio := "-"
	if okS && okM && sr.TPS > 0 {
		ratio = fmt.Sprintf("%.1f", mm.TPS/sr.TPS)
	}
	fmt.Fprintf(tw, "multi-master TPS / streaming replication TPS\t%.1f\t%s\t\n", seedMMTPS/seedSRTPS, ratio)
	_ = tw.Flush()
	return b.String()
}

// WriteReport writes report.md, result.json and a chart per mode
// (<mode>.png) into dir, which it creates; command is the command line
// that produced the result.
func (r WANResult) WriteReport(dir, command string, resultJSON []byte) error {
	intro := fmt.Sprintf("%s; %s.\n\nThe sites run on one machine and reach each other only through in-process WAN links (toxiproxy): each direction delays by half the round trip (plus jitter) and limits the bandwidth.", r.Header(), r.cpusText())
	if len(r.SiteCPUs) > 0 {
		intro += " Each site runs on CPUs of its own, as if on a machine of its own: its PostgreSQL (the postmaster and every process it forks), its bdrd and the pgbench clients at the site are in a cgroup v1 cpuset of the site's CPUs; the baseline runs on site 1's. bdrctl, which runs the WAN links' proxies and the heartbeat, runs on the CPUs of the other sites."
	}
	body := fmt.Sprintf("```\n%s```\n\n## Against PGECons 2016\n\n```\n%s```\n\n", r.Report(), r.CompareSeed())
	return writeReport(dir, "bdr WAN benchmark", r.Started, command, intro, body, r.Header(), r.Modes, resultJSON)
}

// WriteReport writes report.md, result.json and a chart of the run into
// dir, which it creates.
func (r SitesResult) WriteReport(dir, command string, resultJSON []byte) error {
	intro := fmt.Sprintf("pgbench from the host that ran the command to %s; group: %s.", r.Target, strings.Join(r.Nodes, ", "))
	body := fmt.Sprintf("```\n%s```\n\n", r.Report())
	return writeReport(dir, "bdr pgbench across sites", r.Started, command, intro, body, "this host -> "+r.Target, []ModeResult{r.Run}, resultJSON)
}

func writeReport(dir, title string, started time.Time, command, intro, body, subtitle string, modes []ModeResult, resultJSON []byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# %s, %s\n\n`%s`\n\n%s\n\n%s## Over time\n\n", title, started.Format(time.RFC3339), command, intro, body)
	for _, m := range modes {
		name := m.Mode + ".png"
		if err := m.chart(filepath.Join(dir, name), subtitle); err != nil {
			return fmt.Errorf("chart of %s: %w", m.Mode, err)
		}
		fmt.Fprintf(&b, "### %s: %s\n\n![%s](%s)\n\n", m.Mode, m.Writers, m.Mode, name)
	}
	b.WriteString(`## How it is measured

- TPS is pgbench's (without the initial connection time), summed over the sites that ran pgbench; the latencies come from pgbench's per-transaction log (every transaction).
- Replication lag: every 100 ms a heartbeat row is committed on a writing node; a poller on each other node notes when it becomes visible (polled every 5 ms). Both times are taken on the benchmark's clock, each corrected by half the round trip of its connection.
- Conflicts are the rows added to bdr.conflict_history on each node during the run.
- Bytes (WAN benchmark) are counted in each proxy: "sent" towards the site whose service the proxy fronts, "received" back from it.
`)
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "result.json"), resultJSON, 0o644)
}

func humanBytes(n int64) string {
	switch {
	case n >= 10<<30:
		return fmt.Sprintf("%.1f GB", float64(n)/(1<<30))
	case n >= 10<<20:
		return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
	case n >= 10<<10:
		return fmt.Sprintf("%.1f kB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func sortedKeys(m map[string]int64) []string { return slices.Sorted(maps.Keys(m)) }

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
}

// modeTable writes one line per mode.
func modeTable(b *strings.Builder, modes []ModeResult) {
	tw := newTable(b)
	fmt.Fprintln(tw, "MODE\tTPS\tLAT AVG ms\tP50 ms\tP99 ms\tLAG P50 ms\tLAG P99 ms\tLAG MAX ms\tCONFLICTS\tWAN BYTES\t")
	for _, m := range modes {
		lag := "-\t-\t-"
		if m.Lag != nil {
			lag = fmt.Sprintf("%.1f\t%.1f\t%.1f", m.Lag.P50, m.Lag.P99, m.Lag.Max)
		}
		conflicts := "-"
		if m.Conflicts != nil {
			conflicts = fmt.Sprint(m.TotalConflicts())
		}
		var bytes int64
		for _, l := range m.Links {
			bytes += l.Sent + l.Replies
		}
		wanBytes := "-"
		if m.Links != nil {
			wanBytes = humanBytes(bytes)
		}
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t%.1f\t%s\t%s\t%s\t\n", m.Mode, m.TPS, m.LatencyAvg, m.LatencyP50, m.LatencyP99, lag, conflicts, wanBytes)
	}
	_ = tw.Flush()
}

// modeDetails writes what the table leaves out: TPS by site, lag by pair
// (with lagPairs), heartbeats never seen, conflicts by node, failures,
// bytes by link.
func modeDetails(b *strings.Builder, modes []ModeResult, lagPairs bool) {
	for _, m := range modes {
		var details []string
		if len(m.PerSite) > 0 {
			var s []string
			for _, p := range m.PerSite {
				s = append(s, fmt.Sprintf("%s %.1f", p.Site, p.TPS))
			}
			details = append(details, "tps by site: "+strings.Join(s, ", "))
		}
		if lagPairs && len(m.LagPairs) > 1 {
			var s []string
			for _, p := range m.LagPairs {
				s = append(s, fmt.Sprintf("%s->%s p50 %.1f p99 %.1f", p.From, p.To, p.P50, p.P99))
			}
			details = append(details, "lag: "+strings.Join(s, "; "))
		}
		if m.Lag != nil && m.Lag.Unseen > 0 {
			details = append(details, fmt.Sprintf("%d heartbeats not replicated when the measurement ended", m.Lag.Unseen))
		}
		if len(m.Conflicts) > 0 && m.TotalConflicts() > 0 {
			var s []string
			for _, n := range sortedKeys(m.Conflicts) {
				s = append(s, fmt.Sprintf("%s %d", n, m.Conflicts[n]))
			}
			details = append(details, "conflicts recorded on: "+strings.Join(s, ", "))
		}
		if m.Failed > 0 {
			details = append(details, fmt.Sprintf("%d failed transactions", m.Failed))
		}
		if m.CPU != nil {
			details = append(details, "cpu while pgbench ran: "+m.CPU.String())
		}
		if len(m.Links) > 0 {
			var s []string
			for _, l := range m.Links {
				if l.Sent+l.Replies > 0 {
					s = append(s, fmt.Sprintf("%s %s/%s", l.Name, humanBytes(l.Sent), humanBytes(l.Replies)))
				}
			}
			details = append(details, "links (to/from the site): "+strings.Join(s, ", "))
		}
		if len(details) > 0 {
			fmt.Fprintf(b, "\n%s (%s):\n", m.Mode, m.Writers)
			for _, d := range details {
				fmt.Fprintf(b, "  %s\n", d)
			}
		}
	}
}
