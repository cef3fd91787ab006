package membership_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgcluster"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

// TestJoinParallelCopy joins a node whose row copy runs in four sessions
// (parts of 1 MB: the big table is split by ranges of blocks) onto a group
// of two under write load. The join is broken in the middle of the
// parallel copy three times: the joiner's bdrd is stopped (it stops at
// once and undoes the join when it starts again), the via node's
// PostgreSQL is killed (the join fails and is undone), the joiner's bdrd
// is killed and the group parts it before it starts again. Each time
// nothing of the join is left anywhere: no slot, no origin (the copy
// sessions' included), no guard on the partly copied tables. A write to a
// copied table on the joiner while it copies is refused. The fourth join
// succeeds: the copy's rows came from several transactions with origins
// that are gone, and the group converges.
func TestJoinParallelCopy(t *testing.T) {
	t.Parallel()
	via := pgtest.Private(t, pgcluster.Options{})
	s := []*pgcluster.Server{pgtest.Shared(t, 0), via}
	opts := grouptest.Options{Bdrd: bdrdBinary}
	nodes := grouptest.Group(t, s, "pc", opts, func(first *grouptest.Node) {
		loadTables(t, first)
		first.Exec(`CREATE TABLE big (id int PRIMARY KEY, v text NOT NULL)`)
		first.Exec(`INSERT INTO big SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 250000) g`)
	})
	jopts := opts
	jopts.Env = []string{"BDRD_TEST_COPY_PART=1048576"}
	joiner := grouptest.NewNode(t, pgtest.Shared(t, 2), pgtest.UniqueName(t, "pcx"), jopts)
	t.Cleanup(joiner.Stop)
	l := startLoad(t, nodes, 2, 20, nodes[1])
	ctx := context.Background()
	req := adminapi.JoinRequest{Via: nodes[1].Admin, CopyWorkers: 4}

	// copying waits until the joiner copies rows in several sessions and
	// returns the copy's progress then.
	copying := func() *adminapi.CopyProgress {
		var cp *adminapi.CopyProgress
		pgtest.WaitFor(t, 2*time.Minute, "a parallel row copy", func() (bool, error) {
			jp, err := joiner.Client().JoinProgress(ctx)
			if jp.Done {
				t.Fatalf("the join ended (%s %s) before its row copy was seen", jp.Phase, jp.Error)
			}
			cp = jp.Copy
			return cp != nil && !cp.Done && slices.ContainsFunc(cp.Tables, func(tp adminapi.TableProgress) bool { return tp.Rows > 0 }), err
		})
		if cp.Sessions != 4 {
			t.Errorf("the row copy runs in %d sessions, want 4", cp.Sessions)
		}
		if n := joiner.QueryInt(`SELECT count(*) FROM pg_catalog.pg_replication_origin WHERE pg_catalog.starts_with(roname, bdr.repl_name('_copy'))`); n != 4 {
			t.Errorf("%d origins of copy sessions during the copy, want 4", n)
		}
		return cp
	}
	noGuard := func() {
		pgtest.WaitFor(t, time.Minute, "the copy guard to go", func() (bool, error) {
			return joiner.QueryInt(`SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgname = 'bdr_copy_guard'`) == 0, nil
		})
	}

	// 1. Stopped while copying: undone when bdrd starts again.
	if _, err := joiner.Client().Join(ctx, req); err != nil {
		t.Fatal(err)
	}
	copying()
	_, err := pgtest.Conn(t, joiner.DSN).Exec(ctx, `INSERT INTO big VALUES (0, 'written on the joiner while it copies')`)
	if err == nil || !strings.Contains(err.Error(), "is being copied by a join") {
		if jp, _ := joiner.Client().JoinProgress(ctx); err != nil || jp.Copy == nil || !jp.Copy.Done {
			t.Errorf("a write to a table being copied: %v; want it refused", err)
		} else {
			t.Log("the copy ended before the write: it went through")
		}
	}
	stopped := time.Now()
	joiner.Stop()
	if d := time.Since(stopped); d > 5*time.Second {
		t.Errorf("bdrd took %s to stop during a parallel copy", d.Round(100*time.Millisecond))
	}
	joiner.Start()
	waitNoTrace(t, joiner, nodes)
	noGuard()
	t.Logf("stopped during a parallel copy: undone; the joiner holds %d rows of big (the sessions had not committed)", joiner.QueryInt(`SELECT count(*) FROM big`))

	// 2. The via node's PostgreSQL killed while copying: the join fails.
	if _, err := joiner.Client().Join(ctx, req); err != nil {
		t.Fatal(err)
	}
	copying()
	if err := via.Kill(); err != nil {
		t.Fatal(err)
	}
	var jp adminapi.JoinProgress
	pgtest.WaitFor(t, 2*time.Minute, "the join to end", func() (bool, error) {
		var err error
		jp, err = joiner.Client().JoinProgress(ctx)
		return jp.Done, err
	})
	if err := via.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("the via node's PostgreSQL killed during a parallel copy: join %s: %s", jp.Phase, jp.Error)
	if jp.Phase != adminapi.PhaseFailed {
		t.Errorf("join %s, want failed", jp.Phase)
	}
	waitNoTrace(t, joiner, nodes)
	noGuard()

	// 3. Killed while copying, parted by the group, then started.
	if _, err := joiner.Client().Join(ctx, req); err != nil {
		t.Fatal(err)
	}
	copying()
	joiner.Kill()
	if _, err := nodes[0].Client().Part(ctx, joiner.Name); err != nil {
		t.Fatalf("part %s: %v", joiner.Name, err)
	}
	joiner.Start()
	waitNoTrace(t, joiner, nodes)
	noGuard()

	// 4. Joined (into the partly copied database, replaced).
	start := time.Now()
	jctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := joiner.Client().JoinAndWait(jctx, req, 50*time.Millisecond, nil); err != nil {
		t.Fatalf("join %s: %v", joiner.Name, err)
	}
	t.Logf("joined in %s", time.Since(start).Round(100*time.Millisecond))
	jp, err = joiner.Client().JoinProgress(ctx)
	if err != nil || jp.Copy == nil || jp.Copy.Sessions != 4 {
		t.Fatalf("join progress %+v, %v: want a copy in 4 sessions", jp.Copy, err)
	}
	noGuard()
	if n := joiner.QueryInt(`SELECT count(*) FROM pg_catalog.pg_replication_origin WHERE pg_catalog.starts_with(roname, bdr.repl_name('_copy'))`); n != 0 {
		t.Errorf("%d origins of copy sessions left after the join", n)
	}
	// big is not written by the load: its rows are the copy's, written by
	// several sessions (transactions), each with an origin of its own, and
	// stamped older than any change.
	var txns, origins, stamped int64
	pgtest.Scan(t, joiner.DSN, `SELECT count(DISTINCT big.xmin::text), count(DISTINCT x.roident),
			count(*) FILTER (WHERE x.timestamp = '2000-01-01 00:00:00.000001+00')
		FROM big CROSS JOIN LATERAL pg_catalog.pg_xact_commit_timestamp_origin(big.xmin) AS x`, nil, &txns, &origins, &stamped)
	t.Logf("big was copied by %d transactions with %d origins", txns, origins)
	if txns < 2 || origins < 2 || stamped != 250000 {
		t.Errorf("big: %d transactions, %d origins, %d rows stamped with the copy's time; want several, several, 250000", txns, origins, stamped)
	}
	all := append(slices.Clone(nodes), joiner)
	l.add(joiner, false)
	time.Sleep(2 * time.Second)
	l.stopAndCheck(t)
	grouptest.WaitQuiet(t, all, 3*time.Minute)
	grouptest.AssertConverged(t, all)
	l.checkInserts(t, all)
}

// TestJoinRestampsRecentRows checks that a joiner gives the rows written
// shortly before its join the versions they have on the via node: the
// commit time and the member that wrote them (the via node itself, or
// another member through the via node's stream), so that the conflict rule
// decides on the joiner as it does on the via node. (Versions older than
// 10 s before the joiner's slots keep the copy's; a slow machine may make
// some of these rows that old.)
func TestJoinRestampsRecentRows(t *testing.T) {
	t.Parallel()
	opts := grouptest.Options{Bdrd: bdrdBinary}
	nodes := grouptest.Group(t, []*pgcluster.Server{pgtest.Shared(t, 0), pgtest.Shared(t, 1)}, "rs", opts, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE r (id int PRIMARY KEY, v text)`)
	})
	a, b := nodes[0], nodes[1]
	c := grouptest.NewNode(t, pgtest.Shared(t, 2), pgtest.UniqueName(t, "rsc"), opts)
	t.Cleanup(c.Stop)
	a.Exec(`INSERT INTO r SELECT g, 'a' FROM generate_series(1, 100) g`)
	b.Exec(`INSERT INTO r SELECT g, 'b' FROM generate_series(101, 200) g`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	a.Exec(`UPDATE r SET v = 'a again' WHERE id > 150`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	grouptest.Join(t, c, b)
	// Versions newer than this are restamped whatever the join took.
	bound := time.Now().Add(-10 * time.Second)
	// versions lists every row's commit time and writer on n, and whether
	// the time is before bound.
	versions := func(n *grouptest.Node) ([]string, []bool) {
		rows := pgtest.Strings(t, n.DSN, `SELECT pg_catalog.format('%s %s by %s|%s', r.id, x.timestamp,
				CASE WHEN x.roident = 0 THEN $1 ELSE substr(o.roname, length(bdr.repl_name('')) + 1) END, x.timestamp < $2)
			FROM r CROSS JOIN LATERAL pg_catalog.pg_xact_commit_timestamp_origin(r.xmin) AS x
			LEFT JOIN pg_catalog.pg_replication_origin o ON o.roident = x.roident ORDER BY r.id`, n.Name, bound)
		lines, old := make([]string, len(rows)), make([]bool, len(rows))
		for i, r := range rows {
			line, o, _ := strings.Cut(r, "|")
			lines[i], old[i] = line, o == "true"
		}
		return lines, old
	}
	onB, oldOnB := versions(b)
	onC, _ := versions(c)
	if len(onB) != 200 || len(onC) != 200 {
		t.Fatalf("%d rows on %s, %d on %s; want 200", len(onB), b.Name, len(onC), c.Name)
	}
	checked := 0
	for i := range onB {
		copied := strings.HasSuffix(onC[i], " 2000-01-01 00:00:00.000001+00 by "+b.Name)
		switch {
		case onB[i] == onC[i]:
			checked++
		case copied && oldOnB[i]:
			// Older than the restamp window: it keeps the copy's version.
		default:
			t.Errorf("row version on the via node %s: %s; on the joiner %s: %s", b.Name, onB[i], c.Name, onC[i])
		}
	}
	t.Logf("%d of 200 rows have the via node's version on the joiner (the others were older than the restamp window)", checked)
	for _, want := range []string{"1 ", "101 ", "151 "} {
		i := slices.IndexFunc(onC, func(s string) bool { return strings.HasPrefix(s, want) })
		t.Logf("row %son %s: %s", want, c.Name, onC[i])
	}
}
