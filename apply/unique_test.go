package apply_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

// TestUniqueConflicts provokes conflicts on unique indexes other than the
// replica identity, and on a changed key, with the bdrd of all three nodes
// stopped, then lets them meet: of two colliding rows the older goes on
// every node, nothing is parked, the conflicts are written down and the
// nodes converge.
func TestUniqueConflicts(t *testing.T) {
	t.Parallel()
	nodes := grouptest.Group(t, shared(t), "uniq", grouptest.Options{}, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE, name text UNIQUE)`)
		first.Exec(`INSERT INTO users VALUES (10, 'x10', 'n10'), (20, 'x20', 'n20'), (30, 'x30', 'n30')`)
	})
	a, b, c := nodes[0], nodes[1], nodes[2]
	for _, n := range nodes {
		n.Stop()
	}
	step := func(n *grouptest.Node, sql string) {
		t.Helper()
		n.Exec(sql)
		time.Sleep(5 * time.Millisecond) // distinct commit times, in this order
	}
	// unique_secondary, two inserts: b's is later and wins.
	step(a, `INSERT INTO users VALUES (1, 'e1', 'a1')`)
	step(b, `INSERT INTO users VALUES (2, 'e1', 'b2')`)
	// An update that loses to a later insert: the updated row goes.
	step(a, `UPDATE users SET email = 'e2' WHERE id = 10`)
	step(c, `INSERT INTO users VALUES (11, 'e2', 'c11')`)
	// pk_change losing to a later insert of the new key.
	step(a, `UPDATE users SET id = 21 WHERE id = 20`)
	step(b, `INSERT INTO users VALUES (21, 'e21', 'b21')`)
	// pk_change winning over an earlier insert of the new key.
	step(b, `INSERT INTO users VALUES (31, 'e31', 'b31')`)
	step(a, `UPDATE users SET id = 31 WHERE id = 30`)
	// multiple_unique: one insert collides with two later rows...
	step(a, `INSERT INTO users VALUES (42, 'm1', 'm2')`)
	step(b, `INSERT INTO users VALUES (43, 'm1', 'b43')`)
	step(b, `INSERT INTO users VALUES (44, 'b44', 'm2')`)
	// ... and a later insert beats two rows.
	step(a, `INSERT INTO users VALUES (45, 'm3', 'a45')`)
	step(a, `INSERT INTO users VALUES (46, 'a46', 'm4')`)
	step(b, `INSERT INTO users VALUES (47, 'm3', 'm4')`)
	for _, n := range nodes {
		n.Start()
	}
	grouptest.WaitQuiet(t, nodes, time.Minute)
	grouptest.AssertConverged(t, nodes)

	want := map[int]string{2: "e1", 11: "e2", 21: "e21", 31: "x30", 43: "m1", 44: "b44", 47: "m3"}
	for _, n := range nodes {
		if got := n.QueryInt(`SELECT count(*) FROM users WHERE id < 100`); got != int64(len(want)) {
			t.Errorf("%s: %d rows, want %d: %s", n.Name, got, len(want), n.QueryText(`SELECT string_agg(id || '=' || email, ' ' ORDER BY id) FROM users`))
		}
		for id, email := range want {
			if n.QueryInt(`SELECT count(*) FROM users WHERE id = $1 AND email = $2`, id, email) != 1 {
				t.Errorf("%s: no row %d with email %q", n.Name, id, email)
			}
		}
		if p := n.QueryInt(`SELECT count(*) FROM bdr.apply_errors`); p != 0 {
			t.Errorf("%s parked %d transactions: %s", n.Name, p, n.QueryText(`SELECT string_agg(error, '; ') FROM bdr.apply_errors`))
		}
	}
	count := func(typ, resolution string) int64 {
		var sum int64
		for _, n := range nodes {
			sum += n.QueryInt(`SELECT count(*) FROM bdr.conflict_history WHERE table_name = 'users'
				AND conflict_type = $1 AND resolution = $2 AND reason LIKE '%by node%by node%'`, typ, resolution)
		}
		return sum
	}
	for _, tc := range []struct{ typ, res string }{
		{"unique_secondary", "last_update_wins_keep_remote"},
		{"unique_secondary", "last_update_wins_keep_local"},
		{"pk_change", "last_update_wins_keep_remote"},
		{"pk_change", "last_update_wins_keep_local"},
		{"multiple_unique", "last_update_wins_keep_remote"},
		{"multiple_unique", "last_update_wins_keep_local"},
	} {
		if count(tc.typ, tc.res) == 0 {
			t.Errorf("no %s conflict resolved %s recorded", tc.typ, tc.res)
		}
	}
	if t.Failed() {
		for _, n := range nodes {
			t.Logf("%s: %s", n.Name, n.QueryText(`SELECT coalesce(string_agg(conflict_type || ' ' || resolution || ': ' || reason, E'\n'), '') FROM bdr.conflict_history`))
		}
	}

	// No stall: a later change replicates everywhere.
	c.Exec(`INSERT INTO users VALUES (100, 'later', 'later')`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	for _, n := range nodes {
		if n.QueryInt(`SELECT count(*) FROM users WHERE id = 100`) != 1 {
			t.Errorf("%s: the later row did not arrive", n.Name)
		}
	}
}

// TestExclusionParked: rows that violate an exclusion constraint together,
// written on two nodes at once, cannot both stay, and no rule picks one:
// each node parks the other's transaction, records the conflict, and goes
// on with later changes.
func TestExclusionParked(t *testing.T) {
	t.Parallel()
	for _, size := range []int{2, 3} {
		t.Run(fmt.Sprint(size, "nodes"), func(t *testing.T) {
			t.Parallel()
			testExclusionParked(t, size)
		})
	}
}

func testExclusionParked(t *testing.T, size int) {
	nodes := grouptest.Group(t, shared(t)[:size], fmt.Sprint("excl", size), grouptest.Options{ErrorRetry: time.Hour}, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE booking (id int PRIMARY KEY, during tsrange, EXCLUDE USING gist (during WITH &&))`)
	})
	a, b := nodes[0], nodes[1]
	for _, n := range nodes {
		n.Stop()
	}
	a.Exec(`INSERT INTO booking VALUES (1, '[2026-01-01 10:00, 2026-01-01 12:00)')`)
	b.Exec(`INSERT INTO booking VALUES (2, '[2026-01-01 11:00, 2026-01-01 13:00)')`)
	for _, n := range nodes {
		n.Start()
	}
	a.Exec(`INSERT INTO booking VALUES (3, '[2026-02-01 10:00, 2026-02-01 12:00)')`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	for _, n := range nodes {
		if n.QueryInt(`SELECT count(*) FROM booking WHERE id = 3`) != 1 {
			t.Errorf("%s: the later row did not arrive", n.Name)
		}
		if n.QueryInt(`SELECT count(*) FROM bdr.apply_errors WHERE state = 'parked' AND sqlstate = '23P01'`) != 1 {
			t.Errorf("%s: the other node's booking is not parked", n.Name)
		}
		if n.QueryInt(`SELECT count(*) FROM bdr.conflict_history WHERE conflict_type = 'exclusion_violation'
			AND resolution = 'parked' AND table_name = 'booking' AND reason LIKE '%parked as apply error%'`) != 1 {
			t.Errorf("%s: the exclusion violation is not recorded: %s", n.Name,
				n.QueryText(`SELECT coalesce(string_agg(conflict_type || ' ' || resolution || ': ' || reason, '; '), '') FROM bdr.conflict_history`))
		}
	}
}

// TestKeyChange: a primary-key change is a delete and an insert, and
// resolves as they do, on 2 and on 3 nodes: a later update of the row wins
// over its delete, so the row stays under both keys; it is inserted under
// its new key when the row was deleted, and two concurrent key changes of
// one row leave both rows.
func TestKeyChange(t *testing.T) {
	t.Parallel()
	for _, size := range []int{2, 3} {
		t.Run(fmt.Sprint(size, "nodes"), func(t *testing.T) {
			t.Parallel()
			nodes := grouptest.Group(t, shared(t)[:size], fmt.Sprint("kch", size), grouptest.Options{}, func(first *grouptest.Node) {
				first.Exec(`CREATE TABLE kv (k int PRIMARY KEY, v text)`)
				first.Exec(`INSERT INTO kv SELECT g, 'start' FROM generate_series(1, 4) g`)
			})
			a, b := nodes[0], nodes[1]
			for _, n := range nodes {
				n.Stop()
			}
			step := func(n *grouptest.Node, sql string) {
				t.Helper()
				n.Exec(sql)
				time.Sleep(5 * time.Millisecond)
			}
			step(a, `UPDATE kv SET k = 10 WHERE k = 1`)
			step(b, `UPDATE kv SET v = 'b' WHERE k = 1`) // later than the key change's delete of 1: both rows stay
			step(a, `UPDATE kv SET k = 20 WHERE k = 2`)
			step(b, `DELETE FROM kv WHERE k = 2`) // the row lives on under 20
			step(a, `UPDATE kv SET k = 30 WHERE k = 3`)
			step(b, `UPDATE kv SET k = 31 WHERE k = 3`) // both keys stay
			for _, n := range nodes {
				n.Start()
			}
			grouptest.WaitQuiet(t, nodes, time.Minute)
			grouptest.AssertConverged(t, nodes)
			for _, n := range nodes {
				if got := n.QueryText(`SELECT string_agg(k || '=' || v, ' ' ORDER BY k) FROM kv`); got != "1=b 4=start 10=start 20=start 30=start 31=start" {
					t.Errorf("%s: %s", n.Name, got)
				}
			}
			if got := a.QueryInt(`SELECT count(*) FROM bdr.conflict_history WHERE resolution = 'key_change_inserted'`) +
				b.QueryInt(`SELECT count(*) FROM bdr.conflict_history WHERE resolution = 'key_change_inserted'`); got < 2 {
				t.Errorf("%d key changes inserted under the new key recorded, want 2 or more", got)
			}
			if b.QueryInt(`SELECT count(*) FROM bdr.conflict_history WHERE conflict_type = 'update_update'
				AND resolution = 'last_update_wins_keep_local' AND reason LIKE '%by node%by node%inserted under its new key'`) != 1 {
				t.Errorf("%s: the update winning over the key change is not recorded: %s", b.Name,
					b.QueryText(`SELECT coalesce(string_agg(conflict_type || ' ' || resolution || ': ' || reason, '; '), '') FROM bdr.conflict_history`))
			}
		})
	}
}

// TestUniqueResolver: the resolver of unique_secondary, set on one node,
// decides on every node: under first_update_wins the earlier of two rows
// with one email stays everywhere; under error the other's insert is
// parked on each node.
func TestUniqueResolver(t *testing.T) {
	t.Parallel()
	nodes := grouptest.Group(t, shared(t)[:2], "ures", grouptest.Options{ErrorRetry: time.Hour}, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE)`)
		first.Exec(`CREATE TABLE strict (id int PRIMARY KEY, email text UNIQUE)`)
	})
	a, b := nodes[0], nodes[1]
	a.Exec(`SELECT bdr.alter_table_conflict_resolver('users', 'unique_secondary', 'first_update_wins')`)
	a.Exec(`SELECT bdr.alter_table_conflict_resolver('strict', 'unique_secondary', 'error')`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	for _, n := range nodes {
		n.Stop()
	}
	a.Exec(`INSERT INTO users VALUES (1, 'x')`)
	a.Exec(`INSERT INTO strict VALUES (1, 'x')`)
	time.Sleep(5 * time.Millisecond)
	b.Exec(`INSERT INTO users VALUES (2, 'x')`)
	b.Exec(`INSERT INTO strict VALUES (2, 'x')`)
	for _, n := range nodes {
		n.Start()
	}
	grouptest.WaitQuiet(t, nodes, time.Minute)
	for _, n := range nodes {
		if got := n.QueryText(`SELECT string_agg(id::text, ' ' ORDER BY id) FROM users`); got != "1" {
			t.Errorf("%s: users %q, want the earlier row 1", n.Name, got)
		}
		if got := n.QueryInt(`SELECT count(*) FROM bdr.conflict_history WHERE table_name = 'users'
			AND conflict_type = 'unique_secondary' AND resolution LIKE 'first_update_wins_%'`); got != 1 {
			t.Errorf("%s: %d first_update_wins records, want 1", n.Name, got)
		}
		if got := n.QueryInt(`SELECT count(*) FROM bdr.apply_errors WHERE state = 'parked' AND 'public.strict' = ANY (tables)`); got != 1 {
			t.Errorf("%s: %d parked transactions on strict, want 1", n.Name, got)
		}
	}
}

// TestCollisionDeleteVersion: a row that a unique collision deletes is
// deleted as of its own version on every node. Node a renames row 3 to
// 'n'; node w receives that, then renames it to 'm'; node b, which has
// seen neither, inserts row 2 named 'n', later than both. On a, row 2
// arrives first (w's transaction waits on a lock a session holds on a) and
// deletes row 3 ('n', older): w's rename, later than row 3's version but
// earlier than row 2, must then bring row 3 back as 'm' on a, as it stays
// on w and b, where row 3 had left 'n' before row 2 came. (Stamped with
// row 2's version, the delete skipped the rename on a, and a lost row 3.)
func TestCollisionDeleteVersion(t *testing.T) {
	t.Parallel()
	nodes := grouptest.Group(t, shared(t), "cdv", grouptest.Options{}, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE users (id int PRIMARY KEY, name text UNIQUE, v int)`)
		first.Exec(`CREATE TABLE gate (id int)`)
		first.Exec(`INSERT INTO users VALUES (3, 'x', 0)`)
	})
	grouptest.WaitQuiet(t, nodes, time.Minute)
	a, w, b := nodes[0], nodes[1], nodes[2]
	ctx := context.Background()
	if err := b.Client().Pause(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	// A session on a holds the gate: w's transaction, which writes it
	// first, waits there.
	lock := pgtest.Conn(t, a.DSN)
	tx, err := lock.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `LOCK TABLE gate IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	a.Exec(`UPDATE users SET name = 'n' WHERE id = 3`)
	pgtest.WaitFor(t, time.Minute, "w to rename row 3", func() (bool, error) {
		return w.QueryText(`SELECT name FROM users WHERE id = 3`) == "n", nil
	})
	w.Exec(`BEGIN; INSERT INTO gate VALUES (1); UPDATE users SET name = 'm' WHERE id = 3; COMMIT`)
	time.Sleep(5 * time.Millisecond)
	b.Exec(`INSERT INTO users VALUES (2, 'n', 0)`)
	pgtest.WaitFor(t, time.Minute, "row 2 on a", func() (bool, error) {
		return a.QueryInt(`SELECT count(*) FROM users WHERE id = 2`) == 1, nil
	})
	if got := a.QueryInt(`SELECT count(*) FROM users WHERE id = 3`); got != 0 {
		t.Fatalf("%s still has row 3 after row 2 arrived: the test did not set up the order it means to", a.Name)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Client().Resume(ctx); err != nil {
		t.Fatal(err)
	}
	grouptest.WaitQuiet(t, nodes, time.Minute)
	grouptest.AssertConverged(t, nodes)
	for _, n := range nodes {
		if got := n.QueryText(`SELECT string_agg(id || '=' || name, ' ' ORDER BY id) FROM users`); got != "2=n 3=m" {
			t.Errorf("%s: %s, want 2=n 3=m", n.Name, got)
		}
	}
}
