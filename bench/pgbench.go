package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// pgbenchRun is one pgbench process (TPC-B, the default script) writing a
// per-transaction log.
type pgbenchRun struct {
	site   int
	cmd    *exec.Cmd
	prefix string // --log-prefix; the logs are prefix.PID[.THREAD]
	start  time.Time
	stdout strings.Builder
	stderr tailWriter
	tps    atomic.Uint64 // math.Float64bits of the last -P 1 figure
	done   chan struct{}
	err    error
}

// startPgbench runs bin (pgbench) against the database dsn with the given
// clients for d, at rate transactions a second (0: as fast as it goes),
// logging every transaction under dir.
func startPgbench(ctx context.Context, bin string, site int, dsn string, clients, rate int, d time.Duration, dir string) (*pgbenchRun, error) {
	prefix := filepath.Join(dir, fmt.Sprintf("pgbench_site%d", site))
	args := []string{"-n", "-c", strconv.Itoa(clients), "-j", strconv.Itoa(min(clients, 4)),
		"-T", strconv.Itoa(int(d.Round(time.Second).Seconds())), "-P", "1",
		"-l", "--log-prefix", prefix}
	if rate > 0 {
		args = append(args, "-R", strconv.Itoa(rate))
	}
	args = append(args, dsn)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	r := &pgbenchRun{site: site, cmd: cmd, prefix: prefix, done: make(chan struct{})}
	cmd.Stdout = &r.stdout
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	r.start = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start pgbench: %w", err)
	}
	progress := regexp.MustCompile(`^progress: [\d.]+ s, ([\d.]+) tps`)
	var wg sync.WaitGroup
	wg.Go(func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			if m := progress.FindStringSubmatch(line); m != nil {
				v, _ := strconv.ParseFloat(m[1], 64)
				r.tps.Store(math.Float64bits(v))
				continue
			}
			r.stderr.Write([]byte(line + "\n"))
		}
		_, _ = io.Copy(io.Discard, pr)
	})
	go func() {
		err := cmd.Wait()
		pw.Close()
		wg.Wait()
		if err != nil {
			r.err = fmt.Errorf("pgbench at site %d: %v: %s", site, err, strings.TrimSpace(r.stderr.String()))
		}
		close(r.done)
	}()
	return r, nil
}

// cpu is the CPU time pgbench used, once it has ended.
func (r *pgbenchRun) cpu() time.Duration {
	select {
	case <-r.done:
	default:
		return 0
	}
	if ps := r.cmd.ProcessState; ps != nil {
		return ps.UserTime() + ps.SystemTime()
	}
	return 0
}

// currentTPS is pgbench's last per-second figure.
func (r *pgbenchRun) currentTPS() float64 { return math.Float64frombits(r.tps.Load()) }

// wait waits for pgbench to end and reads its results.
func (r *pgbenchRun) wait(ctx context.Context) (pgbenchResult, error) {
	select {
	case <-r.done:
	case <-ctx.Done():
		<-r.done // CommandContext kills it
		return pgbenchResult{}, ctx.Err()
	}
	if r.err != nil {
		return pgbenchResult{}, r.err
	}
	res, err := readPgbenchLogs(r.prefix, r.start)
	if err != nil {
		return pgbenchResult{}, err
	}
	m := regexp.MustCompile(`tps = ([\d.]+) \(without initial connection time\)`).FindStringSubmatch(r.stdout.String())
	if m == nil {
		return pgbenchResult{}, fmt.Errorf("pgbench at site %d: no tps in its output: %s", r.site, r.stdout.String())
	}
	res.TPS, _ = strconv.ParseFloat(m[1], 64)
	if m := regexp.MustCompile(`number of failed transactions: (\d+)`).FindStringSubmatch(r.stdout.String()); m != nil {
		res.Failed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return res, nil
}

// pgbenchResult is what one pgbench run measured.
type pgbenchResult struct {
	TPS       float64         // pgbench's own figure, without connection time
	Failed    int64           // failed transactions
	Latencies []time.Duration // of every transaction, sorted
	PerSecond []int64         // transactions finished in each second since start
}

// readPgbenchLogs reads the per-transaction logs prefix.* ("client_id
// transaction_no time_us script_no epoch_s epoch_us", time in µs) into
// sorted latencies and transactions per second since start.
func readPgbenchLogs(prefix string, start time.Time) (pgbenchResult, error) {
	files, err := filepath.Glob(prefix + ".*")
	if err != nil {
		return pgbenchResult{}, err
	}
	if len(files) == 0 {
		return pgbenchResult{}, fmt.Errorf("pgbench left no transaction log %s.*", prefix)
	}
	var res pgbenchResult
	for _, f := range files {
		if err := readPgbenchLog(f, start, &res); err != nil {
			return pgbenchResult{}, err
		}
	}
	slices.Sort(res.Latencies)
	return res, nil
}

func readPgbenchLog(path string, start time.Time, res *pgbenchResult) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 {
			continue
		}
		us, err1 := strconv.ParseInt(fields[2], 10, 64) // "failed"/"skipped" are not numbers
		sec, err2 := strconv.ParseInt(fields[4], 10, 64)
		usec, err3 := strconv.ParseInt(fields[5], 10, 64)
		if err := errors.Join(err1, err2, err3); err != nil {
			continue
		}
		res.Latencies = append(res.Latencies, time.Duration(us)*time.Microsecond)
		at := int(time.Unix(sec, usec*1000).Sub(start) / time.Second)
		if at < 0 {
			at = 0
		}
		for len(res.PerSecond) <= at {
			res.PerSecond = append(res.PerSecond, 0)
		}
		res.PerSecond[at]++
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return nil
}

// percentile of sorted durations (nearest rank), 0 for none.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func mean(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

// tailWriter keeps the last 4 KB written to it.
type tailWriter struct {
	mu sync.Mutex
	b  []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > 4<<10 {
		t.b = t.b[len(t.b)-4<<10:]
	}
	return len(p), nil
}

func (t *tailWriter) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
