package apply_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/grouptest"
)

// TestForeignKeyOrphan: a parent deleted on one node while a child of it
// is inserted on another. Apply does not enforce foreign keys, so both
// changes apply everywhere and the nodes converge, with the orphan recorded
// on both: on one as a child without its parent, on the other as a delete
// that leaves a child. A cascade and a deferred foreign key, whose rows
// arrive in the "wrong" order within their transaction, record nothing.
func TestForeignKeyOrphan(t *testing.T) {
	t.Parallel()
	for _, size := range []int{2, 3} {
		t.Run(fmt.Sprint(size, "nodes"), func(t *testing.T) {
			t.Parallel()
			testForeignKeyOrphan(t, size)
		})
	}
}

func testForeignKeyOrphan(t *testing.T, size int) {
	nodes := grouptest.Group(t, shared(t)[:size], fmt.Sprint("fk", size), grouptest.Options{}, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE parent (id int PRIMARY KEY)`)
		first.Exec(`CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent ON DELETE CASCADE)`)
		first.Exec(`CREATE TABLE late (id int PRIMARY KEY, parent_id int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)`)
		first.Exec(`INSERT INTO parent VALUES (1), (2), (4), (5)`)
		first.Exec(`INSERT INTO child VALUES (20, 2), (40, 4)`)
	})
	a, b := nodes[0], nodes[1]
	for _, n := range nodes {
		n.Stop()
	}
	a.Exec(`DELETE FROM parent WHERE id = 1`)
	b.Exec(`INSERT INTO child VALUES (10, 1)`)
	a.Exec(`DELETE FROM parent WHERE id = 2`) // cascades to child 20
	b.Exec(`BEGIN; INSERT INTO late VALUES (30, 3); INSERT INTO parent VALUES (3); COMMIT`)
	a.Exec(`DELETE FROM parent WHERE id = 5`)
	b.Exec(`UPDATE child SET parent_id = 5 WHERE id = 40`)
	for _, n := range nodes {
		n.Start()
	}
	grouptest.WaitQuiet(t, nodes, time.Minute)
	grouptest.AssertConverged(t, nodes)

	for _, n := range nodes {
		if got := n.QueryText(`SELECT string_agg(id || ':' || parent_id, ' ' ORDER BY id) FROM child`); got != "10:1 40:5" {
			t.Errorf("%s: child rows %q, want 10:1 40:5", n.Name, got)
		}
		if got := n.QueryInt(`SELECT count(*) FROM bdr.conflict_history WHERE conflict_type = 'foreign_key_orphan'`); got != 2 {
			t.Errorf("%s: %d orphans recorded, want 2: %s", n.Name, got,
				n.QueryText(`SELECT coalesce(string_agg(table_name || ': ' || reason, '; '), '') FROM bdr.conflict_history`))
		}
	}
	if a.QueryInt(`SELECT count(*) FROM bdr.conflict_history WHERE conflict_type = 'foreign_key_orphan'
		AND table_name = 'child' AND resolution = 'apply_anyway' AND reason LIKE '%"public"."parent" ("id") = (1), which does not exist here%'`) != 1 {
		t.Errorf("%s: the child without a parent is not recorded as such", a.Name)
	}
	if b.QueryInt(`SELECT count(*) FROM bdr.conflict_history WHERE conflict_type = 'foreign_key_orphan'
		AND table_name = 'parent' AND local_tuple->>'id' = '10' AND reason LIKE 'deleting the row leaves 1 row(s) of "public"."child"%'`) != 1 {
		t.Errorf("%s: the delete leaving a child is not recorded as such", b.Name)
	}
}
