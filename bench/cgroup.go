package bench

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Site CPU budgets. The WAN benchmark emulates one machine per site on
// this one: each site's processes (its PostgreSQL postmaster and every
// child of it, its bdrd, the pgbench clients at the site) run in a cgroup
// v1 cpuset of the site's own CPUs, and a cpuacct group of the same name
// counts what they use. bdrctl itself (the WAN links' proxies, the
// heartbeat) is the network and the observer: it runs on every CPU but
// site 1's, when there are others, since the baseline, which mm-local is
// compared with, runs on site 1's CPUs and has no network.
//
// A cpuset keeps a site on its CPUs but does not keep the rest of the
// machine off them. With a weight, the sites and bdrctl also get a group
// each in the cpu hierarchy, under a parent whose cpu.shares make each of
// them weigh as much as that many processes of the machine: a woken site
// process then runs at once instead of queueing behind other work, which
// a serial apply, one round trip after another, needs.

// cgroupBase is where the cgroup v1 hierarchies are mounted.
const cgroupBase = "/sys/fs/cgroup"

// cgroupPrefix starts the name of every cgroup the benchmark makes:
// bdrbench-<pid of bdrctl>-<random>, with a group site<N> in it per site.
const cgroupPrefix = "bdrbench-"

// The values of --site-cpus besides a list.
const (
	SiteCPUsAuto = "auto" // a share of this machine's CPUs per site, when cgroups allow
	SiteCPUsOff  = "off"  // every process on every CPU
)

// parseSiteCPUs reads a --site-cpus list, one cpuset per site separated
// by "/" ("0/1", "0-1/2-3", "0,2/1,3"), into canonical cpusets.
func parseSiteCPUs(spec string) ([]string, error) {
	var out []string
	for _, part := range strings.Split(spec, "/") {
		cpus, err := parseCPUList(part)
		if err != nil {
			return nil, fmt.Errorf("--site-cpus %q: %w", spec, err)
		}
		out = append(out, formatCPUList(cpus))
	}
	return out, nil
}

// parseCPUList reads a kernel CPU list ("0-2,5") into sorted, distinct
// CPU numbers.
func parseCPUList(s string) ([]int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("empty cpu list")
	}
	var cpus []int
	for _, r := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(r), "-")
		a, err1 := strconv.Atoi(lo)
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err := errors.Join(err1, err2); err != nil || a < 0 || b < a || b > 4095 {
			return nil, fmt.Errorf("cpu list %q: want CPU numbers and ranges like 0-2,5", s)
		}
		for c := a; c <= b; c++ {
			cpus = append(cpus, c)
		}
	}
	slices.Sort(cpus)
	return slices.Compact(cpus), nil
}

// formatCPUList writes sorted CPU numbers as a kernel CPU list.
func formatCPUList(cpus []int) string {
	var parts []string
	for i := 0; i < len(cpus); {
		j := i
		for j+1 < len(cpus) && cpus[j+1] == cpus[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, strconv.Itoa(cpus[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", cpus[i], cpus[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

// cpusText names a cpuset for people: "cpu 0", "cpus 2-3".
func cpusText(set string) string {
	if cpus, err := parseCPUList(set); err == nil && len(cpus) == 1 {
		return "cpu " + set
	}
	return "cpus " + set
}

// planSiteCPUs decides the cpuset of each of nodes sites from the
// --site-cpus spec and the CPUs of base's root cpuset. With auto it splits
// them evenly (site 1 first); when that cannot be done it returns no
// cpusets and a note saying why. An explicit list that cannot be used is
// an error.
func planSiteCPUs(base, spec string, nodes int) (cpus []string, note string, err error) {
	if spec == SiteCPUsOff {
		return nil, "--site-cpus off", nil
	}
	auto := spec == "" || spec == SiteCPUsAuto
	fail := func(format string, args ...any) ([]string, string, error) {
		msg := fmt.Sprintf(format, args...)
		if auto {
			return nil, msg, nil
		}
		return nil, "", fmt.Errorf("--site-cpus %s: %s", spec, msg)
	}
	b, err := os.ReadFile(filepath.Join(base, "cpuset", "cpuset.effective_cpus"))
	if err != nil {
		return fail("no cgroup v1 cpuset hierarchy at %s (cgroup v2 alone is not supported): %v", filepath.Join(base, "cpuset"), err)
	}
	avail, err := parseCPUList(string(b))
	if err != nil {
		return fail("the root cpuset's CPUs: %v", err)
	}
	if !auto {
		sets, err := parseSiteCPUs(spec)
		if err != nil {
			return nil, "", err
		}
		if len(sets) != nodes {
			return fail("%d cpusets for %d sites", len(sets), nodes)
		}
		for _, set := range sets {
			list, _ := parseCPUList(set)
			for _, c := range list {
				if !slices.Contains(avail, c) {
					return fail("cpu %d is not among this machine's (%s)", c, formatCPUList(avail))
				}
			}
		}
		return sets, "", nil
	}
	if len(avail) < nodes {
		return fail("%d CPUs (%s) for %d sites: a site needs one at least", len(avail), formatCPUList(avail), nodes)
	}
	per := len(avail) / nodes
	for i := range nodes {
		cpus = append(cpus, formatCPUList(avail[i*per:(i+1)*per]))
	}
	return cpus, "", nil
}

// cgroups are the cgroups of one run: a parent group, and in it a group
// per site in the cpuset hierarchy (the site's CPUs) and, when it can be
// written, in the cpuacct one (what the site used). Not safe for
// concurrent use except place, placeTree and usage, which only write and
// read cgroup files.
type cgroups struct {
	base string
	name string   // the parent group
	cpus []string // cpuset of each site, site 1 first
	// netCPUs is the cpuset of this process, the network ("" when it
	// could not leave site 1's CPUs: it stays on all).
	netCPUs string
	acct    bool // cpuacct groups too
	// weight is the cpu groups' weight (0: none made); weightErr why
	// they could not be made.
	weight    int
	weightErr error
	// stale names the groups of runs that died, removed when this one
	// began.
	stale []string
}

// newCgroups makes the cgroups of a run, one per site with the given
// cpusets, after removing those left by runs that died; with a weight,
// the cpu groups of the sites and of this process, which it moves there.
// On error nothing of them is left.
func newCgroups(base string, cpus []string, weight int) (*cgroups, error) {
	c := &cgroups{base: base, cpus: cpus}
	c.stale = removeStaleCgroups(base)
	root := filepath.Join(base, "cpuset")
	rootCPUs, err1 := readTrim(filepath.Join(root, "cpuset.effective_cpus"))
	mems, err2 := readTrim(filepath.Join(root, "cpuset.effective_mems"))
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("cgroups: %w", err)
	}
	for attempt := 0; ; attempt++ {
		c.name = fmt.Sprintf("%s%d-%d", cgroupPrefix, os.Getpid(), rand.IntN(1e6))
		err := os.Mkdir(filepath.Join(root, c.name), 0o755)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) || attempt == 9 {
			return nil, fmt.Errorf("cgroups: %w", err)
		}
	}
	// A cpuset takes tasks only once it has CPUs and memory nodes, and
	// a child's must be within its parent's.
	err := errors.Join(writeFile(filepath.Join(root, c.name, "cpuset.cpus"), rootCPUs),
		writeFile(filepath.Join(root, c.name, "cpuset.mems"), mems))
	for i, set := range cpus {
		if err != nil {
			break
		}
		dir := c.dir("cpuset", i+1)
		if err = os.Mkdir(dir, 0o755); err == nil {
			err = errors.Join(writeFile(filepath.Join(dir, "cpuset.cpus"), set), writeFile(filepath.Join(dir, "cpuset.mems"), mems))
		}
	}
	if err == nil {
		err = c.placeSelf(root, rootCPUs, mems)
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("cgroups: %w", err), c.remove())
	}
	c.acct = os.Mkdir(filepath.Join(base, "cpuacct", c.name), 0o755) == nil
	for i := range cpus {
		if c.acct && os.Mkdir(c.dir("cpuacct", i+1), 0o755) != nil {
			c.acct = false
		}
	}
	if !c.acct {
		_ = removeGroup(filepath.Join(base, "cpuacct"), c.name) // what was made of it, if any
	}
	if weight > 0 {
		if c.weightErr = c.makeWeighted(weight); c.weightErr == nil {
			c.weight = weight
		} else {
			_ = removeGroup(filepath.Join(base, "cpu"), c.name)
		}
	}
	return c, nil
}

// placeSelf moves this process into a cpuset of every CPU of the machine
// but site 1's, if any.
func (c *cgroups) placeSelf(root, rootCPUs, mems string) error {
	all, err1 := parseCPUList(rootCPUs)
	site1, err2 := parseCPUList(c.cpus[0])
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	others := slices.DeleteFunc(all, func(cpu int) bool { return slices.Contains(site1, cpu) })
	if len(others) == 0 {
		return nil
	}
	dir := filepath.Join(root, c.name, "bdrctl")
	set := formatCPUList(others)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	if err := errors.Join(writeFile(filepath.Join(dir, "cpuset.cpus"), set), writeFile(filepath.Join(dir, "cpuset.mems"), mems),
		writeFile(filepath.Join(dir, "cgroup.procs"), strconv.Itoa(os.Getpid()))); err != nil {
		return err
	}
	c.netCPUs = set
	return nil
}

// nice0Shares is the cpu.shares of one process of nice 0.
const nice0Shares = 1024

// makeWeighted makes the cpu groups: the parent weighs weight nice-0
// processes for each of its groups (the sites and bdrctl), which share it
// equally; this process goes into its group.
func (c *cgroups) makeWeighted(weight int) error {
	root := filepath.Join(c.base, "cpu")
	groups := len(c.cpus) + 1
	if err := os.Mkdir(filepath.Join(root, c.name), 0o755); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(root, c.name, "cpu.shares"), strconv.Itoa(min(weight*nice0Shares*groups, 262144))); err != nil {
		return err
	}
	for i := range c.cpus {
		if err := os.Mkdir(c.dir("cpu", i+1), 0o755); err != nil {
			return err
		}
	}
	if err := os.Mkdir(filepath.Join(root, c.name, "bdrctl"), 0o755); err != nil {
		return err
	}
	return writeFile(filepath.Join(root, c.name, "bdrctl", "cgroup.procs"), strconv.Itoa(os.Getpid()))
}

// dir is the group of site in the hierarchy of controller.
func (c *cgroups) dir(controller string, site int) string {
	return filepath.Join(c.base, controller, c.name, fmt.Sprintf("site%d", site))
}

func (c *cgroups) controllers() []string {
	out := []string{"cpuset"}
	if c.acct {
		out = append(out, "cpuacct")
	}
	if c.weight > 0 {
		out = append(out, "cpu")
	}
	return out
}

// siteCPUs is the cpuset of site.
func (c *cgroups) siteCPUs(site int) string { return c.cpus[site-1] }

// place moves process pid (every thread of it) into site's groups; the
// children it forks from then on are born there.
func (c *cgroups) place(site, pid int) error {
	for _, ctrl := range c.controllers() {
		if err := writeFile(filepath.Join(c.dir(ctrl, site), "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return fmt.Errorf("move process %d into the cgroup of site%d: %w", pid, site, err)
		}
	}
	return nil
}

// placeTree moves process pid into site's groups, then the children it
// had forked before: a PostgreSQL postmaster and its background
// processes. The kernel orders forks and moves, so a child forked while
// its parent moved is either in the new group or in the listing.
func (c *cgroups) placeTree(site, pid int) error {
	if err := c.place(site, pid); err != nil {
		return err
	}
	for _, child := range childrenOf(pid) {
		if err := c.place(site, child); err != nil && !errors.Is(err, syscall.ESRCH) {
			return err
		}
	}
	return nil
}

// usage is the CPU time used by site's processes since its group was
// made (cpuacct.usage), false without cpuacct.
func (c *cgroups) usage(site int) (time.Duration, bool) {
	if !c.acct {
		return 0, false
	}
	s, err := readTrim(filepath.Join(c.dir("cpuacct", site), "cpuacct.usage"))
	if err != nil {
		return 0, false
	}
	ns, err := strconv.ParseInt(s, 10, 64)
	return time.Duration(ns), err == nil
}

// remove moves any process left in the run's groups, this one too, back
// to the root groups and removes them.
func (c *cgroups) remove() error {
	var errs []error
	for _, ctrl := range []string{"cpu", "cpuacct", "cpuset"} {
		if (ctrl == "cpuacct" && !c.acct) || (ctrl == "cpu" && c.weight == 0) {
			continue
		}
		if err := removeGroup(filepath.Join(c.base, ctrl), c.name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeGroup empties the group name under the hierarchy root and its
// child groups into root, and removes them.
func removeGroup(root, name string) error {
	dir := filepath.Join(root, name)
	subs, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var errs []error
	for _, e := range subs {
		if e.IsDir() {
			errs = append(errs, removeEmptied(root, filepath.Join(dir, e.Name())))
		}
	}
	errs = append(errs, removeEmptied(root, dir))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove cgroup %s: %w", dir, err)
	}
	return nil
}

// removeEmptied moves the processes, then the threads, of group dir to
// root and removes dir, waiting a little for exiting tasks to leave it.
func removeEmptied(root, dir string) error {
	var err error
	for range 100 {
		for _, f := range []string{"cgroup.procs", "tasks"} {
			for _, id := range readIDs(filepath.Join(dir, f)) {
				_ = writeFile(filepath.Join(root, f), strconv.Itoa(id)) // gone meanwhile: fine
			}
		}
		if err = os.Remove(dir); err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}

// removeStaleCgroups removes the groups of runs whose bdrctl is gone
// (killed before it could remove them) and returns their names.
func removeStaleCgroups(base string) []string {
	var removed []string
	for _, ctrl := range []string{"cpuset", "cpuacct", "cpu"} {
		root := filepath.Join(base, ctrl)
		dirs, _ := filepath.Glob(filepath.Join(root, cgroupPrefix+"*"))
		for _, d := range dirs {
			name := filepath.Base(d)
			pid, _, _ := strings.Cut(strings.TrimPrefix(name, cgroupPrefix), "-")
			if n, err := strconv.Atoi(pid); err != nil || n <= 0 || processExists(n) {
				continue
			}
			if removeGroup(root, name) == nil && !slices.Contains(removed, name) {
				removed = append(removed, name)
			}
		}
	}
	return removed
}

func processExists(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readProcStat(n); err == nil && st.ppid == pid {
			out = append(out, n)
		}
	}
	return out
}

// procStat is what the benchmark reads of /proc/PID/stat.
type procStat struct {
	ppid int
	cpu  time.Duration // user and system time of every thread
}

// userHZ is the unit of the times in /proc/PID/stat (USER_HZ, 100 on
// every Linux architecture Go supports).
const userHZ = 100

func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// "pid (comm) state ppid ...": comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	ppid, err1 := strconv.Atoi(f[1])
	utime, err2 := strconv.ParseInt(f[11], 10, 64)
	stime, err3 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return procStat{ppid: ppid, cpu: time.Duration(utime+stime) * time.Second / userHZ}, nil
}

// cgroupOf is the path of pid's group in the hierarchy of controller, as
// /proc/PID/cgroup gives it ("/" for the root).
func cgroupOf(pid int, controller string) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		// hierarchy-ID:controller-list:path
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && slices.Contains(strings.Split(parts[1], ","), controller) {
			return parts[2], nil
		}
	}
	return "", fmt.Errorf("process %d: no %s cgroup", pid, controller)
}

func readIDs(path string) []int {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

func readTrim(path string) (string, error) {
	b, err := os.ReadFile(path)
	return strings.TrimSpace(string(b)), err
}

// writeFile writes s to an existing cgroup file in one write.
func writeFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	return errors.Join(err, f.Close())
}
