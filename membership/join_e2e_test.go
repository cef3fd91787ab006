package membership_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgcluster"
	"github.com/bdr-dev/bdr/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// load is write traffic on a group: pgbench TPC-B on every node and an
// insert-only writer per node that remembers which of its rows committed.
type load struct {
	ctx           context.Context
	cancel        context.CancelFunc
	clients, rate int
	insertRate    int // the insert-only writer's rate (0: unlimited)
	wg            sync.WaitGroup
	mu            sync.Mutex
	acked         map[string]int64 // per node: rows 1..acked[node] committed
	errs          []error
}

// startLoad starts pgbench (clients per node) and an insert-only writer on
// each node; table ins must exist. With rate > 0, pgbench runs at most rate
// transactions a second per node, and so does the writer. On the nodes in
// restarts (whose PostgreSQL the test restarts) pgbench starts again after
// a failure and the writer reconnects and retries.
func startLoad(t *testing.T, nodes []*grouptest.Node, clients, rate int, restarts ...*grouptest.Node) *load {
	return startLoadInserting(t, nodes, clients, rate, rate, restarts...)
}

// startLoadInserting is startLoad with the insert-only writer at its own
// rate (0: unlimited).
func startLoadInserting(t *testing.T, nodes []*grouptest.Node, clients, rate, insertRate int, restarts ...*grouptest.Node) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{ctx: ctx, cancel: cancel, clients: clients, rate: rate, insertRate: insertRate, acked: map[string]int64{}}
	for _, n := range nodes {
		l.add(n, slices.Contains(restarts, n))
	}
	t.Cleanup(l.stop)
	return l
}

// loadTables creates the tables of the load on the first node: pgbench's
// (scale 1) and ins.
func loadTables(t *testing.T, first *grouptest.Node) {
	t.Helper()
	first.Exec(`CREATE TABLE ins (node text, seq bigint, at timestamptz DEFAULT now(), PRIMARY KEY (node, seq))`)
	cmd := first.Server.Command(context.Background(), "pgbench", "-i", "-q", "-s", "1", first.DB)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
}

// add starts the load on one more node.
func (l *load) add(n *grouptest.Node, restarted bool) {
	ctx, rate := l.ctx, l.rate
	l.wg.Go(func() {
		args := []string{"-n", "-c", fmt.Sprint(l.clients), "-T", "600"}
		if rate > 0 {
			args = append(args, "-R", fmt.Sprint(rate))
		}
		for ctx.Err() == nil {
			cmd := n.Server.Command(ctx, "pgbench", append(args, n.DB)...)
			out, err := cmd.CombinedOutput()
			if err == nil || ctx.Err() != nil {
				return
			}
			if !restarted {
				l.fail(fmt.Errorf("pgbench on %s: %v\n%s", n.Name, err, out))
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	})
	l.wg.Go(func() {
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		for seq := int64(1); ctx.Err() == nil; {
			if l.insertRate > 0 {
				time.Sleep(time.Second / time.Duration(l.insertRate))
			}
			var err error
			if conn == nil {
				conn, err = pgx.Connect(ctx, n.DSN)
			}
			if err == nil {
				// A retry after a lost connection may find the row
				// committed: it is then acknowledged.
				_, err = conn.Exec(ctx, `INSERT INTO ins (node, seq) VALUES ($1, $2) ON CONFLICT DO NOTHING`, n.Name, seq)
			}
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				if !restarted {
					l.fail(fmt.Errorf("insert on %s: %w", n.Name, err))
					return
				}
				if conn != nil {
					conn.Close(context.Background())
					conn = nil
				}
				time.Sleep(200 * time.Millisecond)
				continue
			}
			l.mu.Lock()
			l.acked[n.Name] = seq
			l.mu.Unlock()
			seq++
		}
	})
}

func (l *load) fail(err error) {
	l.mu.Lock()
	l.errs = append(l.errs, err)
	l.mu.Unlock()
}

// stop ends the load and returns what failed on the way.
func (l *load) stop() {
	l.cancel()
	l.wg.Wait()
}

func (l *load) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return errors.Join(l.errs...)
}

// checkInserts checks that every node holds exactly the acknowledged rows
// of every writer: none missing, none twice (the key forbids twice; a row
// not acknowledged may or may not have committed).
func (l *load) checkInserts(t *testing.T, nodes []*grouptest.Node) {
	t.Helper()
	for _, n := range nodes {
		for writer, acked := range l.acked {
			got := n.QueryInt(`SELECT count(*) FROM ins WHERE node = $1 AND seq <= $2`, writer, acked)
			if got != acked {
				t.Errorf("%s holds %d of the %d rows %s acknowledged", n.Name, got, acked, writer)
			}
		}
	}
}

// joinLoadRate is the pgbench rate per member (and the insert rate of its
// writer) in the join tests: what a group of five on this 2-core machine
// applies on every node while it also copies a joiner's data.
const joinLoadRate = 40

// TestJoinUnderLoad grows a group from one node to five while pgbench (8
// clients) and an insert-only writer run on every member the whole time;
// each node joins through a different member (the 2nd through the 1st, then
// through the 2nd, the 2nd again and the 3rd). Afterwards all five are
// identical and no acknowledged row is missing or doubled anywhere: changes
// that a member committed before a joiner's snapshot and the via node had
// not applied yet are neither lost nor applied twice.
func TestJoinUnderLoad(t *testing.T) {
	t.Parallel()
	s := []*pgcluster.Server{pgtest.Shared(t, 0), pgtest.Shared(t, 1), pgtest.Shared(t, 2)}
	opts := grouptest.Options{Bdrd: bdrdBinary}
	first := grouptest.NewNode(t, s[0], pgtest.UniqueName(t, "jl"), opts)
	t.Cleanup(first.Stop)
	grouptest.Init(t, first)
	loadTables(t, first)
	members := []*grouptest.Node{first}
	l := startLoad(t, members, 8, joinLoadRate)
	for i, via := range []int{0, 1, 1, 2} {
		n := grouptest.NewNode(t, s[(i+1)%len(s)], pgtest.UniqueName(t, "jl"), opts)
		t.Cleanup(n.Stop)
		time.Sleep(2 * time.Second)
		start := time.Now()
		grouptest.Join(t, n, members[via])
		t.Logf("node %d (%s) joined through %s under load in %s", i+2, n.Name, members[via].Name, time.Since(start).Round(10*time.Millisecond))
		members = append(members, n)
		l.add(n, false)
	}
	if b, err := os.ReadFile(members[len(members)-1].LogPath); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "msg=join ") && !strings.Contains(line, "catching up:") {
				t.Log(line)
			}
		}
	}
	time.Sleep(3 * time.Second)
	l.stopAndCheck(t)
	grouptest.WaitQuiet(t, members, 3*time.Minute)
	grouptest.AssertConverged(t, members)
	l.checkInserts(t, members)
	for w, n := range l.acked {
		t.Logf("%s: %d inserts acknowledged", w, n)
	}
}

// TestJoinUnthrottled joins a fourth node to a group of three while
// pgbench (2 clients, no rate limit) runs flat out on every member, beside
// an insert-only writer (100 rows a second per member: every row is a
// transaction of its own to apply, and it is there to check that every
// acknowledged insert arrives once). On this 2-core machine the members
// fall behind each other under that load; the join still goes through its
// phases, and while it catches up it waits for a fixed target per member
// (where that member's WAL was once the streams started), not for a lag
// that keeps growing: the test reads the targets from the join's progress
// while the load goes on and fails if one moves. What the join has to
// catch up on is what the members wrote from its slots' creation to its
// streams' start (the via node's lag, the snapshot, the copy, the
// restamp): a minute of that load is tens of thousands of transactions,
// and those of the members other than the via node mostly meet a newer row
// the via node's stream applied first (a conflict, on the resolving path,
// a few hundred a second here, slower than pgbench writes them: 46 s of
// load took 1m45s to catch up on, alone on the machine). So
// joinLoadCatchUp into the catch-up the load stops, and the join must then
// finish within 7 minutes of its start. Then all four converge with
// every acknowledged insert present once. It does not run in parallel with
// the package's other tests: it takes all the CPU there is.
func TestJoinUnthrottled(t *testing.T) {
	const joinLoadCatchUp = 5 * time.Second
	s := []*pgcluster.Server{pgtest.Shared(t, 0), pgtest.Shared(t, 1), pgtest.Shared(t, 2)}
	opts := grouptest.Options{Bdrd: bdrdBinary}
	members := grouptest.Group(t, s, "ju", opts, func(first *grouptest.Node) { loadTables(t, first) })
	l := startLoadInserting(t, members, 2, 0, 100)
	time.Sleep(3 * time.Second)
	n := grouptest.NewNode(t, s[0], pgtest.UniqueName(t, "ju"), opts)
	t.Cleanup(n.Stop)
	start := time.Now()

	var mu sync.Mutex
	var catchUp time.Time          // when the join began catching up
	var phase string               // the last phase seen
	targets := map[string]string{} // member -> the LSN the join catches up to
	var moved []string             // targets that changed
	target := regexp.MustCompile(`applying the changes of (\S+) up to (\S+)`)
	progress := func(jp adminapi.JoinProgress) {
		mu.Lock()
		defer mu.Unlock()
		if jp.Phase != phase {
			t.Logf("%s: %s", time.Since(start).Round(100*time.Millisecond), jp.Phase)
			phase = jp.Phase
		}
		if jp.Phase == adminapi.PhaseCatchingUp && catchUp.IsZero() {
			catchUp = time.Now()
		}
		if m := target.FindStringSubmatch(jp.Message); m != nil {
			if old, ok := targets[m[1]]; ok && old != m[2] {
				moved = append(moved, fmt.Sprintf("%s: %s, then %s", m[1], old, m[2]))
			}
			targets[m[1]] = m[2]
		}
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 7*time.Minute)
		defer cancel()
		done <- n.Client().JoinAndWait(ctx, adminapi.JoinRequest{Via: members[1].Admin}, 50*time.Millisecond, progress)
	}()
	loadStopped := false
	var err error
wait:
	for {
		select {
		case err = <-done:
			break wait
		case <-time.After(time.Second):
		}
		mu.Lock()
		long := !catchUp.IsZero() && time.Since(catchUp) > joinLoadCatchUp
		seen := fmt.Sprint(targets)
		mu.Unlock()
		if long && !loadStopped {
			t.Logf("the join has been catching up for %s under the load (targets so far %s): stopping the load", joinLoadCatchUp, seen)
			l.stopAndCheck(t)
			loadStopped = true
		}
	}
	if err != nil {
		t.Fatalf("join %s via %s: %v", n.Name, members[1].Name, err)
	}
	mu.Lock()
	t.Logf("%s joined through %s in %s (load stopped during the catch-up: %t); catch-up targets %v",
		n.Name, members[1].Name, time.Since(start).Round(10*time.Millisecond), loadStopped, targets)
	// Progress is polled: a target the join reached at once may go unseen.
	if len(targets) == 0 {
		t.Errorf("no catch-up target seen in the join's progress")
	}
	if len(moved) > 0 {
		t.Errorf("catch-up targets moved while the join waited: %v", moved)
	}
	mu.Unlock()
	members = append(members, n)
	if !loadStopped {
		l.add(n, false)
		time.Sleep(2 * time.Second)
		l.stopAndCheck(t)
	}
	start = time.Now()
	grouptest.WaitQuiet(t, members, 3*time.Minute)
	t.Logf("all quiet %s after the load stopped", time.Since(start).Round(10*time.Millisecond))
	grouptest.AssertConverged(t, members)
	l.checkInserts(t, members)
	for w, n := range l.acked {
		t.Logf("%s: %d inserts acknowledged", w, n)
	}
}

// TestJoinSkipsCopy checks that the members do not stream a joiner's copy
// back from it: the joiner's slots are moved past the copy, so a member
// receives from the joiner only what the joiner writes itself (and the
// restamp of recent rows, which this test has next to none of). It joins a
// node whose copy is one transaction, then one whose copy runs in four
// sessions (several transactions, guarded).
func TestJoinSkipsCopy(t *testing.T) {
	t.Parallel()
	opts := grouptest.Options{Bdrd: bdrdBinary, Env: []string{"BDRD_TEST_COPY_PART=1048576"}}
	first := grouptest.NewNode(t, pgtest.Shared(t, 1), pgtest.UniqueName(t, "sk"), opts)
	t.Cleanup(first.Stop)
	grouptest.Init(t, first)
	first.Exec(`CREATE TABLE big (id int PRIMARY KEY, v text NOT NULL)`)
	first.Exec(`INSERT INTO big SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 200000) g`)
	// Rows written shortly before a join are restamped after the copy, in
	// transactions of their own that do stream back (dropped by origin):
	// these are older.
	time.Sleep(11 * time.Second) // the restamp margin is 10 s
	nodes := []*grouptest.Node{first}
	for i, workers := range []int{1, 4} {
		n := grouptest.NewNode(t, pgtest.Shared(t, 2-2*i), pgtest.UniqueName(t, "sk"), opts)
		t.Cleanup(n.Stop)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		err := n.Client().JoinAndWait(ctx, adminapi.JoinRequest{Via: first.Admin, CopyWorkers: workers}, 50*time.Millisecond, nil)
		cancel()
		if err != nil {
			t.Fatalf("join %s: %v", n.Name, err)
		}
		if jp, err := n.Client().JoinProgress(context.Background()); err != nil || jp.Copy == nil || jp.Copy.Sessions != workers {
			t.Fatalf("join progress of %s: %+v, %v; want a copy in %d sessions", n.Name, jp.Copy, err, workers)
		}
		n.Exec(`INSERT INTO big VALUES ($1, 'written on the joiner')`, -i)
		nodes = append(nodes, n)
		grouptest.WaitQuiet(t, nodes, 2*time.Minute)
		grouptest.AssertConverged(t, nodes)
		copied := n.QueryInt(`SELECT pg_total_relation_size('big')`)
		for _, m := range nodes[:len(nodes)-1] {
			got := metricValue(t, m, "bdr_receive_bytes_total", `peer="`+n.Name+`"`)
			t.Logf("%s received %.0f bytes from %s, which holds a copy of %d bytes made in %d session(s)", m.Name, got, n.Name, copied, workers)
			if got < 0 || got > 1<<20 {
				t.Errorf("%s received %.0f bytes from the joiner %s: the copy (%d bytes, %d session(s)) came back", m.Name, got, n.Name, copied, workers)
			}
		}
	}
}

// TestJoinFailures kills, in each phase of a join, the joiner's bdrd, the
// via node's bdrd or the via node's PostgreSQL, under write load. Each time
// the group keeps working, the join either fails and is undone or finishes,
// and nothing of a half-joined node is left anywhere; joining again (into
// the same database) succeeds. The joined node is then parted while live,
// leaves no trace, rejoins into its old database and converges, and at last
// leaves from its own side.
func TestJoinFailures(t *testing.T) {
	t.Parallel()
	via := pgtest.Private(t, pgcluster.Options{})
	s := []*pgcluster.Server{pgtest.Shared(t, 0), via, pgtest.Shared(t, 1)}
	opts := grouptest.Options{Bdrd: bdrdBinary}
	nodes := grouptest.Group(t, s, "jf", opts, func(first *grouptest.Node) { loadTables(t, first) })
	viaNode := nodes[1]
	jopts := opts
	jopts.Env = []string{"BDRD_TEST_JOIN_STEP_DELAY=1500ms"}
	joiner := grouptest.NewNode(t, pgtest.Shared(t, 2), pgtest.UniqueName(t, "jfx"), jopts)
	t.Cleanup(joiner.Stop)
	l := startLoad(t, nodes, 2, 50, viaNode)
	ctx := context.Background()

	type fault struct {
		phase, victim string
	}
	faults := []fault{
		{adminapi.PhaseSlots, "joiner"},
		{adminapi.PhaseSnapshot, "joiner"},
		{adminapi.PhaseCopying, "joiner"},
		{adminapi.PhaseCopying, "joiner (SIGTERM)"},
		{adminapi.PhaseStreams, "joiner"},
		{adminapi.PhaseSnapshot, "via bdrd"},
		{adminapi.PhaseCopying, "via postgres"},
	}
	for _, f := range faults {
		start := time.Now()
		if _, err := joiner.Client().Join(ctx, adminapi.JoinRequest{Via: viaNode.Admin}); err != nil {
			t.Fatalf("start a join to kill the %s in phase %q: %v", f.victim, f.phase, err)
		}
		pgtest.WaitFor(t, time.Minute, "the join to reach phase "+f.phase, func() (bool, error) {
			jp, err := joiner.Client().JoinProgress(ctx)
			if jp.Done {
				return false, fmt.Errorf("the join ended (%s %s) before phase %s", jp.Phase, jp.Error, f.phase)
			}
			return jp.Phase == f.phase, err
		})
		switch f.victim {
		case "joiner":
			joiner.Kill()
			joiner.Start()
		case "joiner (SIGTERM)":
			// SIGTERM: bdrd stops at once and undoes the join when it
			// starts again, as after a crash.
			stopped := time.Now()
			joiner.Stop()
			if d := time.Since(stopped); d > 5*time.Second {
				t.Errorf("bdrd took %s to stop during a join's copy", d.Round(100*time.Millisecond))
			}
			joiner.Start()
		case "via bdrd":
			// Down past the end of the phase's pause: the join's next
			// call to it fails.
			viaNode.Kill()
			time.Sleep(3 * time.Second)
			viaNode.Start()
		case "via postgres":
			if err := via.Kill(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second)
			if err := via.Restart(ctx); err != nil {
				t.Fatal(err)
			}
		}
		var jp adminapi.JoinProgress
		pgtest.WaitFor(t, 2*time.Minute, "the join to end", func() (bool, error) {
			var err error
			jp, err = joiner.Client().JoinProgress(ctx)
			return jp.Done, err
		})
		t.Logf("killed the %s in phase %q: join %s %s (%s)", f.victim, f.phase, jp.Phase, jp.Error, time.Since(start).Round(100*time.Millisecond))
		if jp.Error == "" {
			// It finished despite the fault: part it for the next round.
			if _, err := nodes[0].Client().Part(ctx, joiner.Name); err != nil {
				t.Fatalf("part %s: %v", joiner.Name, err)
			}
		}
		waitNoTrace(t, joiner, nodes)
	}

	start := time.Now()
	grouptest.Join(t, joiner, viaNode)
	t.Logf("joined in %s", time.Since(start).Round(100*time.Millisecond))
	all := append(slices.Clone(nodes), joiner)
	grouptest.WaitQuiet(t, all, 3*time.Minute) // under load

	// Part the live node: it leaves no trace, and writes go on.
	res, err := nodes[2].Client().Part(ctx, joiner.Name)
	if err != nil {
		t.Fatalf("part %s: %v", joiner.Name, err)
	}
	t.Logf("parted %s: done on %v, unreachable %v", joiner.Name, res.Done, res.Unreachable)
	waitNoTrace(t, joiner, nodes)
	if st := joiner.QueryText(`SELECT string_agg(DISTINCT state, ',') FROM bdr.nodes WHERE is_local`); st != "parted" {
		t.Errorf("%s sees itself %q; want parted", joiner.Name, st)
	}
	for _, n := range nodes {
		if st := n.QueryText(`SELECT state FROM bdr.nodes WHERE node_name = $1 ORDER BY node_id DESC LIMIT 1`, joiner.Name); st != "parted" {
			t.Errorf("%s shows %s %q; want parted", n.Name, joiner.Name, st)
		}
	}

	// It rejoins into its old database, which holds the old data.
	start = time.Now()
	grouptest.Join(t, joiner, nodes[2])
	t.Logf("rejoined into its old database in %s", time.Since(start).Round(100*time.Millisecond))
	l.stopAndCheck(t)
	grouptest.WaitQuiet(t, all, 3*time.Minute)
	grouptest.AssertConverged(t, all)
	l.checkInserts(t, all)

	// It leaves from its own side (bdrctl leave): no trace anywhere.
	if _, err := joiner.Client().LeaveGroup(ctx); err != nil {
		t.Fatalf("leave: %v", err)
	}
	waitNoTrace(t, joiner, nodes)
	if st := nodes[0].QueryText(`SELECT state FROM bdr.nodes WHERE node_name = $1 ORDER BY node_id DESC LIMIT 1`, joiner.Name); st != "parted" {
		t.Errorf("%s shows %s %q after it left; want parted", nodes[0].Name, joiner.Name, st)
	}
}

// stopAndCheck stops the load and fails the test on its errors.
func (l *load) stopAndCheck(t *testing.T) {
	t.Helper()
	l.stop()
	if err := l.err(); err != nil {
		t.Fatal(err)
	}
}

// waitNoTrace waits until no member holds a slot or an origin for node
// and the node itself holds none and is no member.
func waitNoTrace(t *testing.T, node *grouptest.Node, members []*grouptest.Node) {
	t.Helper()
	for _, m := range members {
		pgtest.WaitFor(t, time.Minute, m.Name+" to have parted "+node.Name+" and dropped its slot and origin", func() (bool, error) {
			n := m.QueryInt(`SELECT (SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = bdr.repl_name($1))
				+ (SELECT count(*) FROM pg_catalog.pg_replication_origin WHERE roname = bdr.repl_name($1))
				+ (SELECT count(*) FROM bdr.nodes WHERE node_name = $1 AND state <> 'parted')`, node.Name)
			return n == 0, nil
		})
	}
	pgtest.WaitFor(t, time.Minute, node.Name+" to hold no slot, origin or membership", func() (bool, error) {
		n := node.QueryInt(`SELECT (SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE database = pg_catalog.current_database())
			+ (SELECT count(*) FROM pg_catalog.pg_replication_origin WHERE pg_catalog.starts_with(roname, bdr.repl_name('')))
			+ (SELECT count(*) FROM bdr.nodes WHERE state <> 'parted')`)
		return n == 0, nil
	})
	if _, err := node.Client().Info(context.Background()); err != nil {
		t.Fatalf("%s: %v", node.Name, err)
	}
}
