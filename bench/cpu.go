package bench

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// CPUUse is what the sites used of their CPUs while pgbench ran, when each
// site has CPUs of its own (--site-cpus).
type CPUUse struct {
	Sites []SiteCPU `json:"sites"`
	// BdrctlPct is the benchmark process itself (the WAN links' proxies,
	// the heartbeat), which runs outside the sites' CPUs, on any: percent
	// of one CPU.
	BdrctlPct float64 `json:"bdrctl_pct_of_one_cpu"`
}

// SiteCPU is one site's use of its CPUs, in percent of all of them over
// the run (100: every one busy all the time).
type SiteCPU struct {
	Site    string  `json:"site"`
	Role    string  `json:"role,omitempty"` // in sr: primary, standby
	CPUs    string  `json:"cpus"`           // the site's cpuset
	BusyPct float64 `json:"busy_pct"`
	// The processes of the site: PostgreSQL (the postmaster and its
	// children: backends, walsenders, background processes) is what
	// remains of the site's total without bdrd and pgbench; of it, the
	// walsenders (logical decoding, or streaming to a standby).
	PostgresPct  float64 `json:"postgres_pct"`
	WalsenderPct float64 `json:"walsender_pct,omitempty"`
	BdrdPct      float64 `json:"bdrd_pct,omitempty"`
	PgbenchPct   float64 `json:"pgbench_pct,omitempty"`
	// OthersPct is what processes outside the site used of its CPUs:
	// bdrctl (the links), other work on this machine, the kernel's
	// threads. The site's CPUs are its own only where nothing else runs.
	OthersPct float64 `json:"others_pct"`
}

// cpuSite is a site whose CPU a measurement reports.
type cpuSite struct {
	site int
	role string
	bdrd int // bdrd's pid, 0 for none
}

// cpuMeter measures the sites' CPU over a measurement.
type cpuMeter struct {
	cg    *cgroups
	sites []cpuSite
	start time.Time
	group []time.Duration         // per site: cpuacct usage at start
	bdrd  []time.Duration         // per site: bdrd's CPU at start
	wals  []map[int]time.Duration // per site: each walsender's CPU at start
	self  time.Duration
	busy  map[int]time.Duration // per CPU: busy time at start (/proc/stat)
}

// startCPU notes the CPU used so far; nil when the sites share the CPUs or
// their use cannot be counted.
func startCPU(cg *cgroups, sites []cpuSite) *cpuMeter {
	if cg == nil || !cg.acct || len(sites) == 0 {
		return nil
	}
	m := &cpuMeter{cg: cg, sites: sites, start: time.Now(), self: selfCPU(), busy: cpuBusy()}
	for _, s := range sites {
		u, _ := cg.usage(s.site)
		m.group = append(m.group, u)
		m.bdrd = append(m.bdrd, pidCPU(s.bdrd))
		m.wals = append(m.wals, walsenders(cg, s.site))
	}
	return m
}

// walsenders are the CPU times of the walsenders among site's processes.
func walsenders(cg *cgroups, site int) map[int]time.Duration {
	out := map[int]time.Duration{}
	for _, pid := range readIDs(filepath.Join(cg.dir("cpuset", site), "cgroup.procs")) {
		// PostgreSQL sets its processes' titles: "postgres: walsender ...".
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && bytes.HasPrefix(b, []byte("postgres: walsender ")) {
			out[pid] = pidCPU(pid)
		}
	}
	return out
}

// stop returns the use since start; pgbench is the CPU of the pgbench
// runs by site, counted when they ended.
func (m *cpuMeter) stop(pgbench map[int]time.Duration) *CPUUse {
	if m == nil {
		return nil
	}
	wall := time.Since(m.start)
	out := &CPUUse{BdrctlPct: pct(selfCPU()-m.self, wall, 1)}
	busy := cpuBusy()
	for i, s := range m.sites {
		set := m.cg.siteCPUs(s.site)
		list, _ := parseCPUList(set)
		u, _ := m.cg.usage(s.site)
		used := u - m.group[i]
		var all time.Duration // of the site's CPUs, by anyone
		for _, c := range list {
			all += busy[c] - m.busy[c]
		}
		var bdrd time.Duration
		if s.bdrd != 0 {
			bdrd = max(pidCPU(s.bdrd)-m.bdrd[i], 0)
		}
		pg := pgbench[s.site]
		var wal time.Duration
		for pid, cpu := range walsenders(m.cg, s.site) {
			wal += max(cpu-m.wals[i][pid], 0) // a new one: all of it
		}
		out.Sites = append(out.Sites, SiteCPU{Site: fmt.Sprintf("site%d", s.site), Role: s.role, CPUs: set,
			BusyPct: pct(used, wall, len(list)), PostgresPct: pct(max(used-bdrd-pg, 0), wall, len(list)),
			OthersPct:    pct(max(all-used, 0), wall, len(list)),
			WalsenderPct: pct(wal, wall, len(list)), BdrdPct: pct(bdrd, wall, len(list)), PgbenchPct: pct(pg, wall, len(list))})
	}
	return out
}

func pct(used, wall time.Duration, cpus int) float64 {
	if wall <= 0 || cpus <= 0 {
		return 0
	}
	return 100 * used.Seconds() / wall.Seconds() / float64(cpus)
}

// pidCPU is the CPU time process pid used so far, 0 when unknown.
func pidCPU(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	st, err := readProcStat(pid)
	if err != nil {
		return 0
	}
	return st.cpu
}

// cpuBusy is the time each CPU has been busy (not idle nor waiting for
// I/O) since boot, from /proc/stat; nil when it cannot be read.
func cpuBusy() map[int]time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return nil
	}
	out := map[int]time.Duration{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		c, err := strconv.Atoi(strings.TrimPrefix(f[0], "cpu"))
		if err != nil {
			continue
		}
		var ticks int64
		for i, v := range f[1:] {
			n, _ := strconv.ParseInt(v, 10, 64)
			// user nice system idle iowait irq softirq steal guest
			// guest_nice: guest time is counted in user already.
			if i != 3 && i != 4 && i < 8 {
				ticks += n
			}
		}
		out[c] = time.Duration(ticks) * time.Second / userHZ
	}
	return out
}

// selfCPU is the CPU time this process used so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// String is the use in one line.
func (u *CPUUse) String() string {
	var s []string
	for _, c := range u.Sites {
		who := c.Site
		if c.Role != "" {
			who += " (" + c.Role + ")"
		}
		pg := fmt.Sprintf("postgres %.0f%%", c.PostgresPct)
		if c.WalsenderPct > 0 {
			pg += fmt.Sprintf(" [walsender %.0f%%]", c.WalsenderPct)
		}
		parts := []string{pg}
		if c.PgbenchPct > 0 {
			parts = append(parts, fmt.Sprintf("pgbench %.0f%%", c.PgbenchPct))
		}
		if c.BdrdPct > 0 {
			parts = append(parts, fmt.Sprintf("bdrd %.0f%%", c.BdrdPct))
		}
		s = append(s, fmt.Sprintf("%s on %s busy %.0f%% (%s), others %.0f%%", who, cpusText(c.CPUs), c.BusyPct, strings.Join(parts, ", "), c.OthersPct))
	}
	return fmt.Sprintf("%s; bdrctl %.0f%% of a cpu", strings.Join(s, "; "), u.BdrctlPct)
}
