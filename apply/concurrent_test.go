package apply_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

// provoke runs writes in order with every applier paused, then resumes
// and waits for quiet.
func (e *matrixEnv) provoke(t *testing.T, writes ...mwrite) {
	t.Helper()
	resume := pauseAll(t, e.nodes)
	for _, w := range writes {
		e.exec(t, e.nodes[w.on], w.sql)
	}
	resume()
	grouptest.WaitQuiet(t, e.nodes, time.Minute)
}

// TestConflictRecordConcurrentRow: a remote INSERT applied with the
// resolving statement meets a row a local transaction has inserted but not
// committed yet; it waits for it, and once it commits, keeps the newer
// local row. Its statement's snapshot, taken before that commit, has no
// local row to record: the statement raises SQLSTATE 40001 and the
// transaction is applied again, so the record names the local row and its
// version. (On three nodes the two incoming streams of a node race the
// same way.)
func TestConflictRecordConcurrentRow(t *testing.T) {
	t.Parallel()
	e := divergenceGroup(t, 2, matrixCase{name: "concrecord"})
	a, b := e.nodes[nodeA], e.nodes[nodeB]
	// A conflict first: B's applier then resolves the next transactions.
	e.provoke(t,
		mwrite{nodeA, `INSERT INTO kv VALUES (9, 'a')`},
		mwrite{nodeB, `INSERT INTO kv VALUES (9, 'b')`})

	ctx := context.Background()
	local := pgtest.Conn(t, e.dsn(b))
	if _, err := local.Exec(ctx, `BEGIN; INSERT INTO kv VALUES (4, 'b')`); err != nil {
		t.Fatal(err)
	}
	e.exec(t, a, `INSERT INTO kv VALUES (4, 'a')`)
	pgtest.WaitFor(t, time.Minute, "B's applier to wait for the local transaction", func() (bool, error) {
		return b.QueryInt(`SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE application_name = $1
			AND wait_event_type = 'Lock'`, "bdr apply "+a.Name) == 1, nil
	})
	if _, err := local.Exec(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	grouptest.WaitQuiet(t, e.nodes, time.Minute)
	e.assertSame(t, "")
	var res, reason string
	var localRow *string
	pgtest.Scan(t, b.DSN, `SELECT resolution, reason, local_tuple::text FROM bdr.conflict_history
		WHERE schema_name = $1 AND remote_tuple->>'k' = '4'`, []any{e.schema}, &res, &reason, &localRow)
	if res != resKeepLocal || localRow == nil || !strings.Contains(reason, "local ") || strings.Contains(reason, "unknown") {
		t.Errorf("%s recorded %s (%s) with local row %v; want %s naming B's row and its version",
			b.Name, res, reason, localRow, resKeepLocal)
	}
}
