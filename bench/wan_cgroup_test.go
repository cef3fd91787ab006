package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestWANSiteCPUs runs every mode briefly with each site on CPUs of its
// own and checks, in the middle of each mode, that every process of each
// site is in the site's cgroups: each PostgreSQL server's postmaster and
// every process it forked, each bdrd, each pgbench. Afterwards the run's
// cgroups are gone, and so are those a run that died had left.
func TestWANSiteCPUs(t *testing.T) {
	cpus := requireCgroups(t)
	// The groups of a bdrctl that was killed: removed when a run begins.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(cgroupBase, "cpuset", fmt.Sprintf("%s%d-1", cgroupPrefix, dead.Process.Pid))
	if err := os.MkdirAll(filepath.Join(stale, "site1"), 0o755); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = removeGroup(filepath.Dir(stale), filepath.Base(stale)) }()

	dir := t.TempDir()
	fds := openFDs(t)
	pc := &placementCheck{t: t, dir: dir, start: time.Now(), checked: map[string]int{}}
	cfg := WANConfig{Bdrd: bdrd(t), Nodes: 2, Shape: Shape{RTT: 10 * time.Millisecond}, Scale: 1, Clients: 2, Rate: 100,
		Duration: 3 * time.Second, Dir: dir, Progress: pc, ProgressEvery: time.Second, SiteWeight: 10}
	res, err := RunWAN(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	report := res.Report()
	t.Logf("\n%s", report)
	if left := leftovers(t, dir, fds); len(left) > 0 {
		t.Errorf("left behind: %q", left)
	}
	if left := ownCgroups(t); len(left) > 0 {
		t.Errorf("cgroups left behind: %q", left)
	}
	if _, err := os.Stat(stale); err == nil {
		t.Errorf("the stale cgroup %s is still there", stale)
	}
	pc.mu.Lock()
	for _, mode := range AllModes {
		// sr and baseline: the servers and pgbench; the group: servers,
		// bdrd and pgbench at each site.
		want := map[string]int{ModeSR: 3, ModeBaseline: 2, ModeLocal: 5, ModeBoth: 6}[mode]
		if pc.checked[mode] < want {
			t.Errorf("%s: %d processes of the sites checked in their cgroups (postmasters, bdrd, pgbench), want %d", mode, pc.checked[mode], want)
		}
	}
	pc.mu.Unlock()

	if fmt.Sprint(res.SiteCPUs) != fmt.Sprint(cpus) || res.SiteCPUsNote != "" {
		t.Errorf("site CPUs %q (note %q), want %q", res.SiteCPUs, res.SiteCPUsNote, cpus)
	}
	if res.SiteWeight != 10 && res.SiteWeightNote == "" {
		t.Errorf("site weight %d without a note why, want 10", res.SiteWeight)
	}
	if res.SiteWeight == 10 && !strings.Contains(report, "each site and bdrctl weighing 10 processes of the machine") {
		t.Errorf("the report does not say the weight")
	}
	for _, ctrl := range []string{"cpuset", "cpu"} {
		if got, _ := cgroupOf(os.Getpid(), ctrl); got != "/" {
			t.Errorf("after the run this process is in %s group %q, want /", ctrl, got)
		}
	}
	if res.BdrctlCPUs == "" || !strings.Contains(report, "bdrctl, which runs the links, on "+cpusText(res.BdrctlCPUs)+" (all but site1's)") {
		t.Errorf("bdrctl on cpus %q; report:\n%s", res.BdrctlCPUs, report)
	}
	if want := fmt.Sprintf("CPUs: site1 %s, site2 %s (a cgroup cpuset each", cpusText(cpus[0]), cpusText(cpus[1])); !strings.Contains(report, want) {
		t.Errorf("the report does not say %q", want)
	}
	sites := map[string][]string{ModeSR: {"site1 standby", "site2 primary"}, ModeBaseline: {"site1 "},
		ModeLocal: {"site1 ", "site2 "}, ModeBoth: {"site1 ", "site2 "}}
	for _, m := range res.Modes {
		if m.CPU == nil {
			t.Errorf("%s: no CPU figures", m.Mode)
			continue
		}
		var got []string
		for _, s := range m.CPU.Sites {
			got = append(got, s.Site+" "+s.Role)
			if s.BusyPct <= 0 || s.BusyPct > 120 || s.PostgresPct <= 0 || s.PostgresPct > s.BusyPct+0.01 || s.OthersPct < 0 || s.OthersPct > 120 {
				t.Errorf("%s: %s busy %.1f%%, postgres %.1f%%, others %.1f%%", m.Mode, s.Site, s.BusyPct, s.PostgresPct, s.OthersPct)
			}
			if s.CPUs != res.SiteCPUs[s.Site[len(s.Site)-1]-'1'] {
				t.Errorf("%s: %s on cpus %q, want %q", m.Mode, s.Site, s.CPUs, res.SiteCPUs)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(sites[m.Mode]) {
			t.Errorf("%s: CPU figures of %q, want %q", m.Mode, got, sites[m.Mode])
		}
		if (m.Mode == ModeLocal || m.Mode == ModeBoth) && m.CPU.Sites[1].BdrdPct <= 0 {
			t.Errorf("%s: site2's bdrd used no CPU: %+v", m.Mode, m.CPU.Sites[1])
		}
		if m.CPU.Sites[0].PgbenchPct <= 0 {
			t.Errorf("%s: site1's pgbench used no CPU: %+v", m.Mode, m.CPU.Sites[0])
		}
		if !strings.Contains(report, "cpu while pgbench ran: "+m.CPU.String()) {
			t.Errorf("%s: the report does not show the CPU figures", m.Mode)
		}
	}
}

// placementCheck is a progress writer that checks, at the first progress
// line of each mode, that the sites' processes are in their cgroups.
type placementCheck struct {
	t     *testing.T
	dir   string
	start time.Time

	mu      sync.Mutex
	checked map[string]int // mode -> processes checked (postmasters, bdrd, pgbench)
}

var firstProgress = regexp.MustCompile(`^bench: (\S+)(?: \(round \d+/\d+\))?: +1s/`)

func (pc *placementCheck) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	pc.t.Logf("%5.1fs %s", time.Since(pc.start).Seconds(), line)
	if m := firstProgress.FindStringSubmatch(line); m != nil {
		n, problems := checkPlacement(pc.dir, m[1])
		for _, p := range problems {
			pc.t.Errorf("%s: %s", m[1], p)
		}
		pc.mu.Lock()
		pc.checked[m[1]] = n
		pc.mu.Unlock()
	}
	return len(p), nil
}

// checkPlacement finds the processes of a run under dir: PostgreSQL
// servers (by their working directory, the data directory), bdrd and
// pgbench (by their command lines), works out each one's site, and
// returns how many postmasters, bdrd and pgbench it found and what is not
// in the site's cgroups.
func checkPlacement(dir, mode string) (int, []string) {
	type proc struct {
		pid  int
		args []string
		cwd  string
	}
	var procs []proc
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cwd, _ := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		procs = append(procs, proc{pid, strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), cwd})
	}
	var problems []string
	found := 0
	controllers := []string{"cpuset"}
	for _, ctrl := range []string{"cpuacct", "cpu"} {
		if m, _ := filepath.Glob(filepath.Join(cgroupBase, ctrl, fmt.Sprintf("%s%d-*", cgroupPrefix, os.Getpid()))); len(m) > 0 {
			controllers = append(controllers, ctrl)
		}
	}
	in := func(what string, pid, site int) {
		for _, ctrl := range controllers {
			got, err := cgroupOf(pid, ctrl)
			want := regexp.MustCompile(fmt.Sprintf(`^/%s%d-\d+/site%d$`, cgroupPrefix, os.Getpid(), site))
			if err != nil || !want.MatchString(got) {
				problems = append(problems, fmt.Sprintf("%s (process %d): %s cgroup %q (%v), want site%d's", what, pid, ctrl, got, err, site))
			}
		}
	}
	// bdrd and pgbench name their site; bdrd's --dsn names its server's port.
	siteOfPort := map[string]int{}
	arg := func(p proc, flag string) string {
		for i, a := range p.args {
			if a == flag && i+1 < len(p.args) {
				return p.args[i+1]
			}
		}
		return ""
	}
	for _, p := range procs {
		joined := strings.Join(p.args, " ")
		switch {
		case filepath.Base(p.args[0]) == "bdrd" && strings.Contains(joined, dir):
			site, _ := strconv.Atoi(strings.TrimPrefix(arg(p, "--node-name"), "site"))
			if m := regexp.MustCompile(`port=(\d+)`).FindStringSubmatch(arg(p, "--dsn")); m != nil {
				siteOfPort[m[1]] = site
			}
			in("bdrd of site"+strconv.Itoa(site), p.pid, site)
			found++
		case filepath.Base(p.args[0]) == "pgbench" && strings.Contains(joined, dir):
			m := regexp.MustCompile(`pgbench_site(\d+)`).FindStringSubmatch(arg(p, "--log-prefix"))
			if m == nil {
				problems = append(problems, fmt.Sprintf("pgbench %q: no site", joined))
				continue
			}
			site, _ := strconv.Atoi(m[1])
			in("pgbench of site"+m[1], p.pid, site)
			found++
		}
	}
	// PostgreSQL: the postmaster is the process postmaster.pid names;
	// every process whose working directory is the data directory is
	// its, and must be in the same site's groups.
	servers := map[string]int{} // data dir -> site
	for _, p := range procs {
		if p.cwd == "" || !strings.HasPrefix(p.cwd, dir) {
			continue
		}
		if _, ok := servers[p.cwd]; ok {
			continue
		}
		b, err := os.ReadFile(filepath.Join(p.cwd, "postmaster.pid"))
		if err != nil {
			continue
		}
		lines := strings.Split(string(b), "\n")
		if len(lines) < 4 {
			continue
		}
		site, named := siteOfPort[strings.TrimSpace(lines[3])]
		switch {
		case named: // a member of the group
		case mode == ModeSR:
			site = 2 // the primary; its standby is at site 1
			if _, err := os.Stat(filepath.Join(p.cwd, "standby.signal")); err == nil {
				site = 1
			}
		default:
			// The baseline's server, up beside the group's while the
			// baseline and mm-local take turns.
			site = 1
		}
		servers[p.cwd] = site
		found++
	}
	for _, p := range procs {
		if site, ok := servers[p.cwd]; ok {
			in(fmt.Sprintf("%q of the server of site%d", strings.Join(p.args, " "), site), p.pid, site)
		}
	}
	return found, problems
}
