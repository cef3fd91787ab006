package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestCPUList(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []int
		text string
	}{
		{"0", []int{0}, "0"},
		{"0-3", []int{0, 1, 2, 3}, "0-3"},
		{" 3,0-1 ,1\n", []int{0, 1, 3}, "0-1,3"},
		{"0,2,4-5,6", []int{0, 2, 4, 5, 6}, "0,2,4-6"},
	} {
		got, err := parseCPUList(c.in)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("parseCPUList(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
		if s := formatCPUList(got); s != c.text {
			t.Errorf("formatCPUList(%v) = %q, want %q", got, s, c.text)
		}
	}
	for _, bad := range []string{"", "a", "1-", "3-1", "-1", "0,,1", "5000"} {
		if got, err := parseCPUList(bad); err == nil {
			t.Errorf("parseCPUList(%q) = %v, want an error", bad, got)
		}
	}
	if got, err := parseSiteCPUs("0/1-2/3,5"); err != nil || !slices.Equal(got, []string{"0", "1-2", "3,5"}) {
		t.Errorf("parseSiteCPUs: %v, %v", got, err)
	}
	if cpusText("1") != "cpu 1" || cpusText("0-1") != "cpus 0-1" {
		t.Errorf("cpusText: %q, %q", cpusText("1"), cpusText("0-1"))
	}
}

// TestPlanSiteCPUs plans the sites' cpusets against a fake cgroup mount
// whose root cpuset has CPUs 0-3.
func TestPlanSiteCPUs(t *testing.T) {
	base := t.TempDir()
	if err := os.MkdirAll(filepath.Join(base, "cpuset"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(base, "cpuset", "cpuset.effective_cpus"), []byte("0-3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		spec  string
		nodes int
		want  []string
		note  string // in the note, when no cpusets
		err   string // in the error
	}{
		{spec: "auto", nodes: 2, want: []string{"0-1", "2-3"}},
		{spec: "", nodes: 3, want: []string{"0", "1", "2"}},
		{spec: "auto", nodes: 4, want: []string{"0", "1", "2", "3"}},
		{spec: "auto", nodes: 5, note: "4 CPUs (0-3) for 5 sites"},
		{spec: "off", nodes: 2, note: "--site-cpus off"},
		{spec: "3/0-1", nodes: 2, want: []string{"3", "0-1"}},
		{spec: "1/1", nodes: 2, want: []string{"1", "1"}},
		{spec: "0/7", nodes: 2, err: "cpu 7 is not among this machine's (0-3)"},
		{spec: "0/1/2", nodes: 2, err: "3 cpusets for 2 sites"},
	} {
		got, note, err := planSiteCPUs(base, c.spec, c.nodes)
		switch {
		case c.err != "":
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q, %d sites: error %v, want one saying %q", c.spec, c.nodes, err, c.err)
			}
		case err != nil || !slices.Equal(got, c.want) || !strings.Contains(note, c.note) || (got != nil) != (note == ""):
			t.Errorf("%q, %d sites: %q, note %q, %v; want %q, note %q", c.spec, c.nodes, got, note, err, c.want, c.note)
		}
	}
	// Without a cgroup v1 cpuset hierarchy: auto falls back with a
	// note, a list is an error.
	empty := t.TempDir()
	if got, note, err := planSiteCPUs(empty, "auto", 2); got != nil || err != nil || !strings.Contains(note, "no cgroup v1 cpuset hierarchy") {
		t.Errorf("auto without cpusets: %q, note %q, %v", got, note, err)
	}
	if _, _, err := planSiteCPUs(empty, "0/1", 2); err == nil || !strings.Contains(err.Error(), "no cgroup v1 cpuset hierarchy") {
		t.Errorf("a list without cpusets: %v", err)
	}
}

func TestReadProcStat(t *testing.T) {
	st, err := readProcStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.ppid != os.Getppid() {
		t.Errorf("ppid %d, want %d", st.ppid, os.Getppid())
	}
	cmd := exec.Command("sleep", "5")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if !slices.Contains(childrenOf(os.Getpid()), cmd.Process.Pid) {
		t.Errorf("childrenOf does not list the child %d", cmd.Process.Pid)
	}
}

// requireCgroups skips the test when this machine cannot give the sites
// CPUs of their own (no cgroup v1 cpuset hierarchy, not writable, or
// fewer CPUs than sites) and returns the cpusets of two sites.
func requireCgroups(t *testing.T) []string {
	t.Helper()
	cpus, note, err := planSiteCPUs(cgroupBase, SiteCPUsAuto, 2)
	if err != nil || cpus == nil {
		t.Skipf("the sites cannot have CPUs of their own here, so their cgroups are not tested: %s%v", note, err)
	}
	cg, err := newCgroups(cgroupBase, cpus, 0)
	if err != nil {
		t.Skipf("cgroups cannot be made here, so the sites' cgroups are not tested: %v", err)
	}
	if err := cg.remove(); err != nil {
		t.Fatal(err)
	}
	return cpus
}

// ownCgroups lists the cgroups this process's runs made that still exist.
func ownCgroups(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, ctrl := range []string{"cpuset", "cpuacct", "cpu"} {
		m, err := filepath.Glob(filepath.Join(cgroupBase, ctrl, cgroupPrefix+strconv.Itoa(os.Getpid())+"-*"))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m...)
	}
	return out
}

// TestCgroups places a process tree into a site's groups, counts its CPU,
// and removes the groups with a process still in them; until then this
// process is in the bdrctl groups: a cpuset of every CPU but site 1's
// and, with a weight, the weighted cpu group.
func TestCgroups(t *testing.T) {
	cpus := requireCgroups(t)
	cg, err := newCgroups(cgroupBase, cpus, 10)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := cgroupOf(os.Getpid(), "cpuset"); err != nil || got != "/"+cg.name+"/bdrctl" || cg.netCPUs == "" {
		t.Errorf("this process is in cpuset %q (%v) of cpus %q, want the run's bdrctl group", got, err, cg.netCPUs)
	} else if b, _ := readTrim(filepath.Join(cgroupBase, "cpuset", cg.name, "bdrctl", "cpuset.cpus")); strings.Contains(","+b+",", ","+cpus[0]+",") {
		t.Errorf("bdrctl's cpuset %q holds site1's cpus %q", b, cpus[0])
	}
	if cg.weightErr != nil {
		t.Logf("no cpu groups here, the weight is not tested: %v", cg.weightErr)
	} else {
		if got, err := cgroupOf(os.Getpid(), "cpu"); err != nil || got != "/"+cg.name+"/bdrctl" {
			t.Errorf("this process is in cpu group %q (%v), want the run's bdrctl group", got, err)
		}
		if b, _ := readTrim(filepath.Join(cgroupBase, "cpu", cg.name, "cpu.shares")); b != strconv.Itoa(10*1024*3) {
			t.Errorf("cpu.shares of the run's cpu group: %s, want 10 processes' for each of 3 groups", b)
		}
	}
	defer func() {
		if err := cg.remove(); err != nil {
			t.Error(err)
		}
	}()
	// A parent that forks a child before it is placed, and one after.
	cmd := exec.Command("sh", "-c", "sleep 30 & read x; sleep 30 & i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; wait")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() }()
	var before []int
	for deadline := time.Now().Add(5 * time.Second); len(before) == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		before = childrenOf(cmd.Process.Pid)
	}
	if len(before) != 1 {
		t.Fatalf("children before the move: %v", before)
	}
	if err := cg.placeTree(2, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if _, err := stdin.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	var after []int
	for deadline := time.Now().Add(5 * time.Second); len(after) < 2 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		after = childrenOf(cmd.Process.Pid)
	}
	if len(after) != 2 {
		t.Fatalf("children after the move: %v", after)
	}
	want := "/" + cg.name + "/site2"
	for _, pid := range append(after, cmd.Process.Pid) {
		for _, ctrl := range cg.controllers() {
			if got, err := cgroupOf(pid, ctrl); err != nil || got != want {
				t.Errorf("process %d: %s cgroup %q, %v; want %q", pid, ctrl, got, err, want)
			}
		}
	}
	if cg.acct {
		time.Sleep(200 * time.Millisecond)
		if u, ok := cg.usage(2); !ok || u <= 0 {
			t.Errorf("site2 used %s of CPU (%v), want some", u, ok)
		}
		if u, ok := cg.usage(1); !ok || u != 0 {
			t.Errorf("site1 used %s of CPU (%v), want none", u, ok)
		}
	}
	// Removed while the processes still run: they go back to the root.
	if err := cg.remove(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range []int{cmd.Process.Pid, os.Getpid()} {
		for _, ctrl := range []string{"cpuset", "cpu"} {
			if got, _ := cgroupOf(pid, ctrl); got != "/" {
				t.Errorf("after the removal process %d is in %s group %q, want /", pid, ctrl, got)
			}
		}
	}
	if left := ownCgroups(t); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}
