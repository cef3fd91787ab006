package apply_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

// tableRows is a table's rows as "k=v" in key order.
func tableRows(t *testing.T, n *grouptest.Node, table string) string {
	t.Helper()
	return n.QueryText(fmt.Sprintf(`SELECT coalesce(string_agg(k || '=' || v, ' ' ORDER BY k), '') FROM %s`, table))
}

// sameTables fails unless the tables have the same checksum on every node.
func sameTables(t *testing.T, nodes []*grouptest.Node, tables ...string) {
	t.Helper()
	first := grouptest.Checksums(t, nodes[0])
	for _, n := range nodes[1:] {
		sums := grouptest.Checksums(t, n)
		for _, tbl := range tables {
			if sums["public."+tbl] != first["public."+tbl] {
				t.Errorf("%s differs between %s (%s) and %s (%s)", tbl, nodes[0].Name, tableRows(t, nodes[0], tbl),
					n.Name, tableRows(t, n, tbl))
			}
		}
	}
}

// record is a conflict_history row a test expects: on node n, for key k of
// table, of type typ with resolution res and a reason matching reason
// (a LIKE pattern; %A and %B stand for the two nodes' ids).
type record struct {
	n               *grouptest.Node
	table, typ, res string
	k               int
	reason          string
	from            *grouptest.Node
}

func checkRecords(t *testing.T, a, b *grouptest.Node, recs []record) {
	t.Helper()
	ida := a.QueryInt(`SELECT node_id FROM bdr.nodes WHERE is_local`)
	idb := b.QueryInt(`SELECT node_id FROM bdr.nodes WHERE is_local`)
	for _, r := range recs {
		reason := strings.NewReplacer("%A", fmt.Sprint(ida), "%B", fmt.Sprint(idb)).Replace(r.reason)
		got := r.n.QueryInt(`SELECT count(*) FROM bdr.conflict_history WHERE table_name = $1 AND conflict_type = $2
			AND resolution = $3 AND (coalesce(remote_tuple, local_tuple)->>'k')::int = $4 AND reason LIKE $5
			AND remote_node_name = $6`, r.table, r.typ, r.res, r.k, reason, r.from.Name)
		if got != 1 {
			t.Errorf("%s: %d %s %s records for %s key %d from %s with a reason like %q, want 1",
				r.n.Name, got, r.typ, r.res, r.table, r.k, r.from.Name, reason)
		}
	}
}

// TestResolverTwoNodes sets a resolver per table on the first of two nodes
// while the group runs (the second node must read it too, without a
// restart), then provokes insert_insert and update_update on every table
// (and update_delete on some) with the appliers paused,
// the first node's changes earlier than the second's. Each node must end
// with what its resolver says and record it; where the resolver converges
// the nodes are identical, where it does not they differ exactly as
// documented. The error resolver parks on both nodes, the streams go on,
// and once the resolver is set back to last_update_wins the retries apply
// the parked transactions and the nodes converge.
func TestResolverTwoNodes(t *testing.T) {
	t.Parallel()
	tables := []string{"r_luw", "r_fuw", "r_keep", "r_apply", "r_error"}
	nodes := grouptest.Group(t, shared(t)[:2], "resolv", grouptest.Options{ErrorRetry: 2 * time.Second}, func(first *grouptest.Node) {
		for _, tbl := range tables {
			first.Exec(fmt.Sprintf(`CREATE TABLE %s (k int PRIMARY KEY, v text)`, tbl))
			first.Exec(fmt.Sprintf(`INSERT INTO %s SELECT g, 'start' FROM generate_series(1, 4) g`, tbl))
		}
	})
	a, b := nodes[0], nodes[1]
	// Before any setting: a's applier prepares and caches (as a generic
	// plan, after five executions) its fast UPDATE of r_keep, which must be
	// planned again once keep_local is set (bdr.keep_local_set()).
	for i := 1; i <= 8; i++ {
		b.Exec(`UPDATE r_keep SET v = $1 WHERE k = 3`, fmt.Sprintf("w%d", i))
	}
	grouptest.WaitQuiet(t, nodes, time.Minute)
	for _, s := range [][3]string{
		{"r_fuw", "insert_insert", "first_update_wins"},
		{"r_keep", "insert_insert", "keep_local"},
		{"r_keep", "update_update", "keep_local"},
		{"r_keep", "update_delete", "keep_local"},
		{"r_apply", "insert_insert", "apply_remote"},
		{"r_apply", "update_update", "apply_remote"},
		{"r_error", "insert_insert", "error"},
		{"r_error", "update_update", "error"},
		{"r_error", "update_delete", "error"},
	} {
		a.Exec(`SELECT bdr.alter_table_conflict_resolver($1, $2, $3)`, s[0], s[1], s[2])
	}
	grouptest.WaitQuiet(t, nodes, time.Minute)
	const settings = `SELECT string_agg(format('%s.%s %s %s', schema_name, table_name, conflict_type, resolver), ', '
		ORDER BY table_name, conflict_type) FROM bdr.conflict_resolvers`
	if got, want := b.QueryText(settings), a.QueryText(settings); got != want {
		t.Fatalf("%s resolvers: %s\n%s has: %s", b.Name, got, a.Name, want)
	}
	if got := b.QueryText(`SELECT bdr.conflict_resolver('r_keep', 'update_update')`); got != "keep_local" {
		t.Fatalf("%s: r_keep update_update resolver %s", b.Name, got)
	}

	resume := pauseAll(t, nodes) // bdrd keeps running
	step := func(n *grouptest.Node, sql string) {
		t.Helper()
		n.Exec(sql)
		time.Sleep(5 * time.Millisecond) // distinct commit times, in this order
	}
	for _, w := range []struct {
		n *grouptest.Node
		v string
	}{{a, "a"}, {b, "b"}} {
		// The keep_local update first: on a, b's newer update is the first
		// change of its stream and goes through a fast statement, which
		// must not apply it.
		step(w.n, fmt.Sprintf(`UPDATE r_keep SET v = '%s1' WHERE k = 1`, w.v))
		for _, tbl := range tables {
			if tbl != "r_keep" {
				step(w.n, fmt.Sprintf(`UPDATE %s SET v = '%s1' WHERE k = 1`, tbl, w.v))
			}
		}
		for _, tbl := range tables {
			step(w.n, fmt.Sprintf(`INSERT INTO %s VALUES (100, '%s')`, tbl, w.v))
		}
	}
	step(a, `UPDATE r_keep SET v = 'a2' WHERE k = 2`) // b deletes it later: update_delete on a
	step(a, `DELETE FROM r_error WHERE k = 3`)        // b updates it later: update_delete on both
	step(b, `DELETE FROM r_keep WHERE k = 2`)
	step(b, `UPDATE r_error SET v = 'b3' WHERE k = 3`)
	resume()

	pgtest.WaitFor(t, time.Minute, "the error resolver's transactions to be parked", func() (bool, error) {
		return a.QueryInt(`SELECT count(*) FROM bdr.apply_errors`) == 2 && b.QueryInt(`SELECT count(*) FROM bdr.apply_errors`) == 3, nil
	})
	// No stall: a later unrelated change still replicates.
	a.Exec(`INSERT INTO r_luw VALUES (300, 'after')`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	if b.QueryInt(`SELECT count(*) FROM r_luw WHERE k = 300`) != 1 {
		t.Errorf("%s: the change after the parked ones did not arrive", b.Name)
	}

	want := map[string][2]string{ // table -> rows on a, on b
		"r_luw":   {"1=b1 2=start 3=start 4=start 100=b 300=after", ""},
		"r_fuw":   {"1=b1 2=start 3=start 4=start 100=a", ""},
		"r_keep":  {"1=a1 2=a2 3=w8 4=start 100=a", "1=b1 3=w8 4=start 100=b"},
		"r_apply": {"1=b1 2=start 3=start 4=start 100=b", "1=a1 2=start 3=start 4=start 100=a"},
		"r_error": {"1=b1 2=start 4=start 100=a", "1=b1 2=start 3=b3 4=start 100=b"},
	}
	for tbl, w := range want {
		if w[1] == "" {
			w[1] = w[0]
		}
		for i, n := range nodes {
			if got := tableRows(t, n, tbl); got != w[i] {
				t.Errorf("%s %s: %s, want %s", n.Name, tbl, got, w[i])
			}
		}
	}
	sameTables(t, nodes, "r_luw", "r_fuw")

	const luwLocal, luwRemote = "local % by node %B is newer than or ties with remote % by node %A", "remote % by node %B is newer than local % by node %A"
	checkRecords(t, a, b, []record{
		{n: a, table: "r_luw", typ: "insert_insert", res: "last_update_wins_keep_remote", k: 100, from: b, reason: luwRemote},
		{n: b, table: "r_luw", typ: "insert_insert", res: "last_update_wins_keep_local", k: 100, from: a, reason: luwLocal},
		{n: b, table: "r_luw", typ: "update_update", res: "last_update_wins_keep_local", k: 1, from: a, reason: luwLocal},
		{n: a, table: "r_fuw", typ: "insert_insert", res: "first_update_wins_keep_local", k: 100, from: b,
			reason: "local % by node %A is earlier than or ties with remote % by node %B"},
		{n: b, table: "r_fuw", typ: "insert_insert", res: "first_update_wins_keep_remote", k: 100, from: a,
			reason: "remote % by node %A is earlier than local % by node %B"},
		{n: b, table: "r_fuw", typ: "update_update", res: "last_update_wins_keep_local", k: 1, from: a, reason: luwLocal},
		{n: a, table: "r_keep", typ: "update_update", res: "keep_local", k: 1, from: b,
			reason: "the local row is kept whatever the versions (local % by node %A, remote update % by node %B)"},
		{n: b, table: "r_keep", typ: "update_update", res: "keep_local", k: 1, from: a,
			reason: "the local row is kept whatever the versions (local % by node %B, remote update % by node %A)"},
		{n: a, table: "r_keep", typ: "insert_insert", res: "keep_local", k: 100, from: b, reason: "the local row is kept whatever the versions (%)"},
		{n: b, table: "r_keep", typ: "insert_insert", res: "keep_local", k: 100, from: a, reason: "the local row is kept whatever the versions (%)"},
		{n: a, table: "r_keep", typ: "update_delete", res: "keep_local", k: 2, from: b,
			reason: "the local row is kept whatever the versions (local % by node %A, remote delete % by node %B)"},
		{n: b, table: "r_keep", typ: "update_delete", res: "keep_local", k: 2, from: a,
			reason: "the row was deleted here: the local row is kept whatever the versions (local % by node %B, remote % by node %A)"},
		{n: a, table: "r_apply", typ: "insert_insert", res: "apply_remote", k: 100, from: b,
			reason: "the remote change is applied whatever the versions (local % by node %A, remote % by node %B)"},
		{n: b, table: "r_apply", typ: "insert_insert", res: "apply_remote", k: 100, from: a, reason: "the remote change is applied whatever the versions (%)"},
		{n: b, table: "r_apply", typ: "update_update", res: "apply_remote", k: 1, from: a,
			reason: "the remote update is applied whatever the versions (local % by node %B, remote update % by node %A)"},
	})
	// b's newer update of r_apply's row 1 was an ordinary later update on a.
	if n := a.QueryInt(`SELECT count(*) FROM bdr.conflict_history WHERE table_name = 'r_apply' AND conflict_type = 'update_update'`); n != 0 {
		t.Errorf("%s recorded %d update_update conflicts on r_apply, want 0", a.Name, n)
	}

	// The error resolver parked, on a, b's insert and b's update of the row
	// a deleted; on b, a's older update, a's insert and a's delete of the
	// row b updated later; with SQLSTATE BR003 and the conflict in the error.
	for _, p := range []struct {
		n     *grouptest.Node
		types []string
	}{{a, []string{"insert_insert", "update_delete"}}, {b, []string{"update_update", "insert_insert", "update_delete"}}} {
		errs := pgtest.Strings(t, p.n.DSN, `SELECT format('%s %s %s %s', state, sqlstate, array_to_string(tables, ','), error)
			FROM bdr.apply_errors ORDER BY error_id`)
		for i, e := range errs {
			if !strings.HasPrefix(e, "parked BR003 public.r_error ") || !strings.Contains(e, "bdr: "+p.types[i]+" conflict not resolved (resolver error)") {
				t.Errorf("%s parked transaction %d: %s, want %s parked with BR003", p.n.Name, i+1, e, p.types[i])
			}
		}
	}
	// Each is also in conflict_history, under the conflict's type.
	for _, p := range []struct {
		n    *grouptest.Node
		want string
	}{{a, "insert_insert, update_delete"}, {b, "insert_insert, update_delete, update_update"}} {
		if got := p.n.QueryText(`SELECT coalesce(string_agg(conflict_type, ', ' ORDER BY conflict_type), '') FROM bdr.conflict_history
			WHERE table_name = 'r_error' AND resolution = 'parked' AND reason LIKE '%(resolver error)%'`); got != p.want {
			t.Errorf("%s recorded the parked conflicts %q, want %q", p.n.Name, got, p.want)
		}
	}
	if s := streamFrom(t, a, b); s.State != "streaming" || s.Parked != 2 {
		t.Errorf("%s's stream from %s: %s with %d parked, want streaming with 2", a.Name, b.Name, s.State, s.Parked)
	}

	// keep_local also keeps a row against a later update made elsewhere
	// after seeing it: b updates a row a wrote; a keeps its version.
	b.Exec(`UPDATE r_keep SET v = 'b4' WHERE k = 4`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	if got := a.QueryText(`SELECT v FROM r_keep WHERE k = 4`); got != "start" {
		t.Errorf("%s: r_keep row 4 is %s after b's later update, want start (keep_local)", a.Name, got)
	}
	checkRecords(t, a, b, []record{{n: a, table: "r_keep", typ: "update_update", res: "keep_local", k: 4, from: b, reason: "%"}})

	// Back to last_update_wins, set on b this time: the retries of the
	// parked transactions apply them by it, on both nodes.
	for _, typ := range []string{"insert_insert", "update_update", "update_delete"} {
		b.Exec(`SELECT bdr.alter_table_conflict_resolver('r_error', $1, 'default')`, typ)
	}
	for _, n := range nodes {
		pgtest.WaitFor(t, time.Minute, "the parked transactions of "+n.Name+" to be applied by a retry", func() (bool, error) {
			return n.QueryInt(`SELECT count(*) FROM bdr.apply_errors WHERE state = 'applied'`) == n.QueryInt(`SELECT count(*) FROM bdr.apply_errors`), nil
		})
	}
	grouptest.WaitQuiet(t, nodes, time.Minute)
	sameTables(t, nodes, "r_luw", "r_fuw", "r_error")
	if got := tableRows(t, a, "r_error"); got != "1=b1 2=start 3=b3 4=start 100=b" {
		t.Errorf("r_error after the retries: %s", got)
	}
	checkRecords(t, a, b, []record{
		{n: a, table: "r_error", typ: "insert_insert", res: "last_update_wins_keep_remote", k: 100, from: b, reason: luwRemote},
		{n: a, table: "r_error", typ: "update_delete", res: "last_update_wins_keep_remote", k: 3, from: b, reason: "the row was deleted here: " + luwRemote},
		{n: b, table: "r_error", typ: "insert_insert", res: "last_update_wins_keep_local", k: 100, from: a, reason: luwLocal},
		{n: b, table: "r_error", typ: "update_delete", res: "last_update_wins_keep_local", k: 3, from: a, reason: "local % by node %B is newer than or ties with remote delete % by node %A"},
		{n: b, table: "r_error", typ: "update_update", res: "last_update_wins_keep_local", k: 1, from: a, reason: luwLocal},
	})
	if t.Failed() {
		for _, n := range nodes {
			t.Logf("%s conflicts:\n%s", n.Name, strings.Join(conflicts(t, n), "\n"))
		}
	}
}

// TestResolverThreeNodes: a setting made before the others joined (copied
// by the join), the group-wide default set on the third node of three
// (first_update_wins for insert_insert), and one table's own setting on
// the second (last_update_wins): every node inserts the same key in both
// tables with the appliers paused; every node ends with the first insert
// where the default decides and the last where the table's own does, and
// the group converges.
func TestResolverThreeNodes(t *testing.T) {
	t.Parallel()
	nodes := grouptest.Group(t, shared(t), "resolv3", grouptest.Options{}, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE by_default (k int PRIMARY KEY, v text)`)
		first.Exec(`CREATE TABLE own (k int PRIMARY KEY, v text)`)
		first.Exec(`SELECT bdr.alter_table_conflict_resolver('own', 'update_update', 'keep_local')`)
	})
	a, b, c := nodes[0], nodes[1], nodes[2]
	c.Exec(`SELECT bdr.alter_table_conflict_resolver(NULL, 'insert_insert', 'first_update_wins')`)
	b.Exec(`SELECT bdr.alter_table_conflict_resolver('own', 'insert_insert', 'last_update_wins')`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	for _, n := range nodes {
		if got := n.QueryText(`SELECT bdr.conflict_resolver('by_default', 'insert_insert') || ' ' || bdr.conflict_resolver('own', 'insert_insert')
			|| ' ' || bdr.conflict_resolver('own', 'update_update')`); got != "first_update_wins last_update_wins keep_local" {
			t.Fatalf("%s reads the resolvers %s", n.Name, got)
		}
	}
	resume := pauseAll(t, nodes)
	for _, n := range nodes {
		for _, tbl := range []string{"by_default", "own"} {
			n.Exec(fmt.Sprintf(`INSERT INTO %s VALUES (1, $1)`, tbl), n.Name)
			time.Sleep(5 * time.Millisecond)
		}
	}
	resume()
	grouptest.WaitQuiet(t, nodes, time.Minute)
	grouptest.AssertConverged(t, nodes)
	for _, n := range nodes {
		if got := tableRows(t, n, "by_default"); got != "1="+a.Name {
			t.Errorf("%s by_default: %s, want the first insert, %s's", n.Name, got, a.Name)
		}
		if got := tableRows(t, n, "own"); got != "1="+c.Name {
			t.Errorf("%s own: %s, want the last insert, %s's", n.Name, got, c.Name)
		}
		// Each node meets two inserts of each key, and records both.
		for _, res := range []string{"first_update_wins_keep_%", "last_update_wins_keep_%"} {
			if got := n.QueryInt(`SELECT count(*) FROM bdr.conflict_history WHERE conflict_type = 'insert_insert' AND resolution LIKE $1`, res); got != 2 {
				t.Errorf("%s: %d insert_insert records %s, want 2", n.Name, got, res)
			}
		}
	}
	if t.Failed() {
		for _, n := range nodes {
			t.Logf("%s conflicts:\n%s", n.Name, strings.Join(conflicts(t, n), "\n"))
		}
	}
}
