package apply_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgcluster"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

// bdrdBinary is built once by TestMain for the tests that SIGKILL bdrd or
// measure its memory.
var bdrdBinary string

func TestMain(m *testing.M) { os.Exit(grouptest.Main(m, 3, &bdrdBinary)) }

func shared(t *testing.T) []*pgcluster.Server {
	return []*pgcluster.Server{pgtest.Shared(t, 0), pgtest.Shared(t, 1), pgtest.Shared(t, 2)}
}

const typesTable = `CREATE TABLE types (
	id   int PRIMARY KEY,
	i    int,
	b    bigint,
	n    numeric(20, 6),
	tx   text,
	by   bytea,
	j    jsonb,
	ts   timestamptz,
	u    uuid,
	arr  int[],
	tarr text[],
	big  text
)`

// TestReplicateTypes writes every common column type, NULLs and a 2 MB
// TOASTed value on all three nodes with INSERT, UPDATE (including a key
// change and an update that leaves the TOASTed value untouched), DELETE and
// TRUNCATE, and checks that the nodes end identical.
func TestReplicateTypes(t *testing.T) {
	t.Parallel()
	replicateTypes(t, grouptest.Options{})
}

// TestReplicateTypesBinary is TestReplicateTypes with column values sent in
// binary form.
func TestReplicateTypesBinary(t *testing.T) {
	t.Parallel()
	replicateTypes(t, grouptest.Options{BinaryValues: true})
}

func replicateTypes(t *testing.T, opts grouptest.Options) {
	nodes := grouptest.Group(t, shared(t), "types", opts, func(first *grouptest.Node) {
		first.Exec(typesTable)
		first.Exec(`CREATE TABLE scratch (id int PRIMARY KEY, v text)`)
		first.Exec(`CREATE TABLE nokey (v text)`)
		first.Exec(`CREATE SCHEMA "Odd schema"`)
		first.Exec(`CREATE TABLE "Odd schema"."we""ird %s tbl" ("Key col" int PRIMARY KEY, "v%d" text, "$1" int)`)
	})
	for i, n := range nodes {
		base := (i + 1) * 100
		n.Exec(fmt.Sprintf(`INSERT INTO types SELECT g, g, g * 1000000000000, g / 7.0, 'text ' || g || ' ''quoted'' "double" \ back',
			decode(md5(g::text), 'hex'), jsonb_build_object('g', g, 'nested', jsonb_build_array(1, 'two', null)),
			'2026-01-02 03:04:05.123456+00'::timestamptz + g * interval '1 hour', md5(g::text)::uuid,
			ARRAY[g, g + 1, NULL], ARRAY['a,b', 'c"d', NULL], NULL
			FROM generate_series(%d, %d) g`, base, base+19))
		n.Exec(fmt.Sprintf(`INSERT INTO types (id) VALUES (%d)`, base+50)) // all NULLs
		n.Exec(`INSERT INTO scratch SELECT g, 'x' FROM generate_series($1::int, $1::int + 9) g`, base)
		n.Exec(`INSERT INTO nokey VALUES ($1)`, n.Name)
		n.Exec(`INSERT INTO "Odd schema"."we""ird %s tbl" VALUES ($1, $2, $1)`, i, n.Name)
	}
	grouptest.WaitQuiet(t, nodes, time.Minute)

	// A 2 MB value that does not compress, so it is stored out of line.
	nodes[0].Exec(`UPDATE types SET big = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 65536) g) WHERE id = 100`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	// Updates from other nodes: the TOASTed column is not sent again and must
	// stay. Each step touches rows no other node writes in the same step, so
	// nothing here conflicts.
	nodes[1].Exec(`UPDATE types SET i = -1, tx = NULL WHERE id = 100`)
	nodes[2].Exec(`UPDATE types SET id = id + 1000 WHERE id = 210`) // primary key change
	nodes[0].Exec(`DELETE FROM types WHERE id IN (301, 302, 350)`)
	nodes[0].Exec(`UPDATE "Odd schema"."we""ird %s tbl" SET "v%d" = 'x' WHERE "Key col" = 1`)
	nodes[1].Exec(`DELETE FROM "Odd schema"."we""ird %s tbl" WHERE "Key col" = 2`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	nodes[2].Exec(`UPDATE types SET j = '{"changed": true}' WHERE id BETWEEN 100 AND 105`)
	nodes[1].Exec(`UPDATE types SET arr = NULL, n = n * 2 WHERE id BETWEEN 300 AND 310`)
	nodes[2].Exec(`TRUNCATE scratch`)
	nodes[0].Exec(`BEGIN; INSERT INTO types (id, tx) VALUES (900, 'in txn'); UPDATE types SET tx = 'twice' WHERE id = 900; DELETE FROM types WHERE id = 900; INSERT INTO types (id, tx) VALUES (901, 'kept'); COMMIT`)
	grouptest.WaitQuiet(t, nodes, time.Minute)

	grouptest.AssertConverged(t, nodes)
	for _, n := range nodes {
		if l := n.QueryInt(`SELECT length(big) FROM types WHERE id = 100 AND i = -1 AND j ? 'changed'`); l != 2<<20 {
			t.Errorf("%s: the 2 MB value has length %d after updates of other columns", n.Name, l)
		}
		if c := n.QueryInt(`SELECT count(*) FROM types`); c != 3*21-3+1 {
			t.Errorf("%s: %d rows in types, want %d", n.Name, c, 3*21-3+1)
		}
		if c := n.QueryInt(`SELECT count(*) FROM types WHERE id = 1210`); c != 1 {
			t.Errorf("%s: the row whose key changed is missing", n.Name)
		}
		if c := n.QueryInt(`SELECT count(*) FROM scratch`); c != 0 {
			t.Errorf("%s: %d rows left in truncated table", n.Name, c)
		}
		if c := n.QueryInt(`SELECT count(*) FROM "Odd schema"."we""ird %s tbl" WHERE "Key col" <> 2 AND "v%d" IS NOT NULL`); c != 2 {
			t.Errorf("%s: %d rows in the oddly named table, want 2", n.Name, c)
		}
		if c := n.QueryInt(`SELECT count(*) FROM nokey`); c != 3 {
			t.Errorf("%s: %d rows in the table without key, want 3", n.Name, c)
		}
		if c := n.QueryInt(`SELECT count(*) FROM bdr.conflict_history`); c != 0 {
			t.Errorf("%s: %d conflicts recorded for writes that did not conflict", n.Name, c)
		}
	}
}

// pgbench runs pgbench against n's database.
func pgbench(t *testing.T, n *grouptest.Node, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := n.Server.Command(ctx, "pgbench", append(args, n.DB)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pgbench on %s: %v\n%s", n.Name, err, out)
	}
	return string(out)
}

func pgbenchInit(t *testing.T, scale int) func(*grouptest.Node) {
	return func(first *grouptest.Node) {
		pgbench(t, first, "-i", "-q", "-s", fmt.Sprint(scale))
	}
}

// runPgbenchAll runs TPC-B on every node at once (-n: no vacuum and no
// truncate of pgbench_history, which would race with the other nodes).
func runPgbenchAll(t *testing.T, nodes []*grouptest.Node, clients int, d time.Duration) {
	t.Helper()
	var wg sync.WaitGroup
	outs := make([]string, len(nodes))
	for i, n := range nodes {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), d+2*time.Minute)
			defer cancel()
			cmd := n.Server.Command(ctx, "pgbench", "-n", "-c", fmt.Sprint(clients), "-T", fmt.Sprint(int(d.Seconds())), n.DB)
			out, err := cmd.CombinedOutput()
			if err != nil {
				outs[i] = fmt.Sprintf("pgbench on %s failed: %v\n%s", n.Name, err, out)
			}
		})
	}
	wg.Wait()
	for _, o := range outs {
		if o != "" {
			t.Fatal(o)
		}
	}
}

// TestPgbenchConverges runs TPC-B on all three nodes at once; the group must
// converge, with the conflicts written down.
func TestPgbenchConverges(t *testing.T) {
	t.Parallel()
	nodes := grouptest.Group(t, shared(t), "bench", grouptest.Options{}, pgbenchInit(t, 1))
	runPgbenchAll(t, nodes, 2, 8*time.Second)
	grouptest.WaitQuiet(t, nodes, 2*time.Minute)
	grouptest.AssertConverged(t, nodes)

	var conflicts int64
	for _, n := range nodes {
		conflicts += n.QueryInt(`SELECT count(*) FROM bdr.conflict_history`)
		if bad := n.QueryInt(`SELECT count(*) FROM bdr.conflict_history
			WHERE conflict_type <> 'update_update' OR remote_tuple IS NULL OR local_tuple IS NULL OR reason = ''`); bad != 0 {
			t.Errorf("%s: %d unexpected or incomplete conflict records", n.Name, bad)
		}
	}
	if conflicts == 0 {
		t.Error("no conflict recorded although every node updated the one branch row")
	}
	metrics := scrape(t, nodes[0])
	if !strings.Contains(metrics, `bdr_conflicts_total{node="`+nodes[0].Name+`",peer="`) || !strings.Contains(metrics, "bdr_apply_transactions_total") {
		t.Errorf("metrics lack conflict or transaction counters:\n%s", metrics)
	}
	assertNoLoop(t, nodes)
}

// assertNoLoop checks that a quiet group stays quiet: no node applies or
// even receives another transaction.
func assertNoLoop(t *testing.T, nodes []*grouptest.Node) {
	t.Helper()
	count := func() string {
		var b strings.Builder
		for _, n := range nodes {
			for _, line := range strings.Split(scrape(t, n), "\n") {
				if strings.HasPrefix(line, "bdr_apply_transactions_total") || strings.HasPrefix(line, "bdr_skipped_transactions_total") ||
					strings.HasPrefix(line, "bdr_apply_rows_total") {
					b.WriteString(n.Name + " " + line + "\n")
				}
			}
		}
		return b.String()
	}
	before := count()
	time.Sleep(3 * time.Second)
	if after := count(); after != before {
		t.Errorf("the group keeps replicating after writes stopped:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func scrape(t *testing.T, n *grouptest.Node) string {
	t.Helper()
	return n.Metrics()
}
