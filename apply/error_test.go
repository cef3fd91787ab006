package apply_test

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

// streamFrom returns b's status of its stream from a.
func streamFrom(t *testing.T, b, a *grouptest.Node) adminapi.Stream {
	t.Helper()
	st, err := b.Client().Status(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st.Streams {
		if s.From == a.Name {
			return s
		}
	}
	t.Fatalf("%s has no stream from %s", b.Name, a.Name)
	return adminapi.Stream{}
}

// TestParkedTransaction: a remote transaction that cannot be applied (one
// of its tables does not exist on the subscriber) is parked whole in
// bdr.apply_errors; the stream goes on with the next transaction; status
// and metrics count it; once the cause is gone it is applied by itself.
func TestParkedTransaction(t *testing.T) {
	t.Parallel()
	nodes := grouptest.Group(t, shared(t)[:2], "park", grouptest.Options{ErrorRetry: 2 * time.Second}, nil)
	a, b := nodes[0], nodes[1]
	for _, n := range nodes {
		n.Exec(`CREATE TABLE shared (id int PRIMARY KEY, v text)`)
	}
	a.Exec(`CREATE TABLE only_a (id int PRIMARY KEY)`)
	a.Exec(`BEGIN; INSERT INTO shared VALUES (1, 'with only_a'); INSERT INTO only_a VALUES (1); COMMIT`)
	a.Exec(`INSERT INTO shared VALUES (2, 'after')`)

	pgtest.WaitFor(t, time.Minute, "the next transaction to be applied", func() (bool, error) {
		return b.QueryInt(`SELECT count(*) FROM shared WHERE id = 2`) == 1, nil
	})
	if n := b.QueryInt(`SELECT count(*) FROM shared WHERE id = 1`); n != 0 {
		t.Errorf("part of the parked transaction was applied: %d rows", n)
	}
	var count, changes int64
	var state, origin, tables, errText, firstOp string
	pgtest.Scan(t, b.DSN, `SELECT count(*) OVER (), change_count, state, origin_node_name, array_to_string(tables, ','), error,
			changes->'changes'->0->>'op'
		FROM bdr.apply_errors`, nil, &count, &changes, &state, &origin, &tables, &errText, &firstOp)
	if count != 1 || changes != 2 || state != "parked" || origin != a.Name || tables != "public.only_a,public.shared" || firstOp != "INSERT" {
		t.Errorf("parked row: count %d changes %d state %s origin %s tables %s first op %s", count, changes, state, origin, tables, firstOp)
	}
	if !strings.Contains(errText, "only_a") || !strings.Contains(errText, "does not exist on this node") {
		t.Errorf("parked error %q does not name the missing table", errText)
	}
	if s := streamFrom(t, b, a); s.State != "streaming" || s.Parked != 1 {
		t.Errorf("stream from %s: state %s, parked %d; want streaming, 1", a.Name, s.State, s.Parked)
	}
	pgtest.WaitFor(t, 10*time.Second, "bdr.node_status and the metrics to count it", func() (bool, error) {
		return b.QueryInt(`SELECT coalesce(sum(parked_transactions), 0) FROM bdr.node_status WHERE peer = $1`, a.Name) == 1 &&
			strings.Contains(scrape(t, b), `bdr_parked_transactions{node="`+b.Name+`",peer="`+a.Name+`"} 1`), nil
	})

	b.Exec(`CREATE TABLE only_a (id int PRIMARY KEY)`)
	pgtest.WaitFor(t, time.Minute, "the parked transaction to be applied by a retry", func() (bool, error) {
		return b.QueryInt(`SELECT count(*) FROM bdr.apply_errors WHERE state = 'applied' AND resolved_by = 'retry'`) == 1, nil
	})
	if b.QueryInt(`SELECT count(*) FROM shared WHERE id = 1`) != 1 || b.QueryInt(`SELECT count(*) FROM only_a`) != 1 {
		t.Error("the retried transaction's rows are missing")
	}
	pgtest.WaitFor(t, 10*time.Second, "the count to drop", func() (bool, error) {
		return streamFrom(t, b, a).Parked == 0, nil
	})
	grouptest.WaitQuiet(t, nodes, time.Minute)
	grouptest.AssertConverged(t, nodes)
}

// TestParkedRetryDiscard: transactions that break a local constraint are
// parked; an operator's retry reports that it still fails, a discard gives
// one up (its row stays), a retry after the fix applies the other.
func TestParkedRetryDiscard(t *testing.T) {
	t.Parallel()
	nodes := grouptest.Group(t, shared(t)[:2], "discard", grouptest.Options{ErrorRetry: time.Hour}, nil)
	a, b := nodes[0], nodes[1]
	a.Exec(`CREATE TABLE t (id int PRIMARY KEY, v int)`)
	b.Exec(`CREATE TABLE t (id int PRIMARY KEY, v int CONSTRAINT small CHECK (v < 100))`)
	a.Exec(`INSERT INTO t VALUES (1, 500)`)
	a.Exec(`INSERT INTO t VALUES (2, 600)`)
	a.Exec(`INSERT INTO t VALUES (3, 7)`)
	pgtest.WaitFor(t, time.Minute, "the valid row to be applied", func() (bool, error) {
		return b.QueryInt(`SELECT count(*) FROM t WHERE id = 3`) == 1, nil
	})
	first := b.QueryInt(`SELECT min(error_id) FROM bdr.apply_errors WHERE state = 'parked'`)
	if n := b.QueryInt(`SELECT count(*) FROM bdr.apply_errors WHERE state = 'parked' AND sqlstate = '23514'`); n != 2 {
		t.Fatalf("%d transactions parked for the check constraint, want 2", n)
	}
	ctx := context.Background()
	list, err := b.Client().ApplyErrors(ctx, false)
	if err != nil || len(list.Errors) != 2 || list.Errors[0].ID != first || list.Errors[0].Origin != a.Name {
		t.Fatalf("list: %+v, %v", list, err)
	}

	e, err := b.Client().ApplyErrorAction(ctx, first, adminapi.ErrorRetry)
	if err != nil || e.State != "parked" || e.Attempts != 2 || !strings.Contains(e.Error, `"small"`) {
		t.Errorf("retry before the fix: %+v, %v", e, err)
	}
	e, err = b.Client().ApplyErrorAction(ctx, first+1, adminapi.ErrorDiscard)
	if err != nil || e.State != "discarded" || e.ResolvedBy != "operator" {
		t.Errorf("discard: %+v, %v", e, err)
	}
	var apiErr *adminapi.Error
	if _, err := b.Client().ApplyErrorAction(ctx, first+1, adminapi.ErrorRetry); !errors.As(err, &apiErr) || apiErr.Status != http.StatusConflict {
		t.Errorf("retry of a discarded transaction: %v, want a conflict", err)
	}
	if _, err := b.Client().ApplyErrorAction(ctx, first+100, adminapi.ErrorDiscard); !errors.As(err, &apiErr) || apiErr.Status != http.StatusNotFound {
		t.Errorf("discard of an unknown transaction: %v, want not found", err)
	}

	b.Exec(`ALTER TABLE t DROP CONSTRAINT small`)
	e, err = b.Client().ApplyErrorAction(ctx, first, adminapi.ErrorRetry)
	if err != nil || e.State != "applied" {
		t.Errorf("retry after the fix: %+v, %v", e, err)
	}
	if v := b.QueryInt(`SELECT v FROM t WHERE id = 1`); v != 500 {
		t.Errorf("row 1 is %d after the retry, want 500", v)
	}
	if n := b.QueryInt(`SELECT count(*) FROM t WHERE id = 2`); n != 0 {
		t.Errorf("the discarded transaction was applied")
	}
	list, err = b.Client().ApplyErrors(ctx, true)
	if err != nil || len(list.Errors) != 2 {
		t.Errorf("list --all: %+v, %v", list, err)
	}
	// The discarded row is the only difference; deleting it converges.
	a.Exec(`DELETE FROM t WHERE id = 2`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	grouptest.AssertConverged(t, nodes)
}

// TestApplyErrorPolicyPause: with the pause policy, a change that cannot
// be applied puts the stream in the error state, visible in bdrctl status,
// bdr.node_status and the metrics, without a crash loop; once the cause is
// fixed the stream resumes by itself and nothing is lost.
func TestApplyErrorPolicyPause(t *testing.T) {
	t.Parallel()
	nodes := grouptest.Group(t, shared(t)[:2], "pause", grouptest.Options{ErrorRetry: 2 * time.Second}, nil)
	a, b := nodes[0], nodes[1]
	a.Exec(`CREATE TABLE t (id int PRIMARY KEY, extra text)`)
	b.Exec(`CREATE TABLE t (id int PRIMARY KEY)`)
	b.Exec(`SELECT bdr.alter_table_apply_error_policy('t', 'pause')`)
	a.Exec(`INSERT INTO t VALUES (1, 'x')`)

	var lastErr string
	pgtest.WaitFor(t, time.Minute, "the stream from a to show the error", func() (bool, error) {
		s := streamFrom(t, b, a)
		lastErr = s.LastError
		return s.State == "error", nil
	})
	if !strings.Contains(lastErr, "extra") || !strings.Contains(lastErr, "does not exist on this node") {
		t.Errorf("last error %q does not name the missing column", lastErr)
	}
	pgtest.WaitFor(t, 10*time.Second, "bdr.node_status to show the error", func() (bool, error) {
		return b.QueryInt(`SELECT count(*) FROM bdr.node_status WHERE peer = $1 AND direction = 'incoming'
			AND state = 'error' AND last_error LIKE '%extra%'`, a.Name) == 1, nil
	})
	if m := scrape(t, b); !strings.Contains(m, `bdr_stream_errors_total{class="fatal",node="`+b.Name+`",peer="`+a.Name+`"}`) {
		t.Errorf("no fatal stream error counted in the metrics")
	}
	if n := b.QueryInt(`SELECT count(*) FROM bdr.apply_errors`); n != 0 {
		t.Errorf("%d transactions parked under the pause policy", n)
	}
	var ignored bool
	if err := pgtest.QueryRow(context.Background(), b.DSN, `SELECT bdr.alter_table_apply_error_policy('t', 'skip') IS NULL`,
		nil, &ignored); err == nil ||
		!strings.Contains(err.Error(), "park or pause") {
		t.Errorf("a bad policy: %v", err)
	}

	b.Exec(`ALTER TABLE t ADD COLUMN extra text`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	if b.QueryText(`SELECT extra FROM t WHERE id = 1`) != "x" {
		t.Error("the change that failed was not applied after the column was added")
	}
	grouptest.AssertConverged(t, nodes)
}

// TestApplyLockWait: a local session that holds a lock on a table for a
// long time does not hold the stream forever: the apply waits up to the
// lock timeout, the stream shows why it retries, and the change is applied
// once the lock is gone.
func TestApplyLockWait(t *testing.T) {
	t.Parallel()
	nodes := grouptest.Group(t, shared(t)[:2], "lockwait", grouptest.Options{ApplyLockTimeout: 500 * time.Millisecond}, nil)
	a, b := nodes[0], nodes[1]
	for _, n := range nodes {
		n.Exec(`CREATE TABLE t (id int PRIMARY KEY)`)
	}
	ctx := context.Background()
	holder := pgtest.Conn(t, b.DSN)
	if _, err := holder.Exec(ctx, `BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	a.Exec(`INSERT INTO t VALUES (1)`)
	pgtest.WaitFor(t, time.Minute, "the stream to say it retries after the lock timeout", func() (bool, error) {
		s := streamFrom(t, b, a)
		return s.State == "retrying" && strings.Contains(s.LastError, "lock timeout") &&
			strings.Contains(s.LastError, `INSERT on "public"."t"`), nil
	})
	if n := b.QueryInt(`SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE application_name LIKE 'bdr apply %'
		AND wait_event_type = 'Lock' AND state_change < now() - interval '2 seconds'`); n != 0 {
		t.Errorf("%d apply sessions wait for a lock for longer than the lock timeout", n)
	}
	if _, err := holder.Exec(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, time.Minute, "the change to be applied once the lock is gone", func() (bool, error) {
		return b.QueryInt(`SELECT count(*) FROM t`) == 1, nil
	})
	grouptest.WaitQuiet(t, nodes, time.Minute)
	grouptest.AssertConverged(t, nodes)
}

// TestParkedRetryOutOfOrder: a parked transaction is retried after its
// stream went on, so its own node's later changes to its rows are here
// before it. They are newer, and stay: the retry compares with them by
// time, as with any other node's, instead of replacing them as the next
// change of their stream would (an update over the later update, an
// insert over the later delete's tombstone).
func TestParkedRetryOutOfOrder(t *testing.T) {
	t.Parallel()
	nodes := grouptest.Group(t, shared(t)[:2], "outoforder", grouptest.Options{ErrorRetry: time.Hour}, nil)
	a, b := nodes[0], nodes[1]
	a.Exec(`CREATE TABLE t (id int PRIMARY KEY, v int)`)
	b.Exec(`CREATE TABLE t (id int PRIMARY KEY, v int CONSTRAINT small CHECK (v < 100))`)
	a.Exec(`INSERT INTO t VALUES (1, 10)`)
	a.Exec(`UPDATE t SET v = 500 WHERE id = 1`) // parked on b
	a.Exec(`UPDATE t SET v = 20 WHERE id = 1`)
	a.Exec(`INSERT INTO t VALUES (2, 600)`) // parked on b
	a.Exec(`DELETE FROM t WHERE id = 2`)
	a.Exec(`INSERT INTO t VALUES (3, 30)`)
	pgtest.WaitFor(t, time.Minute, "the changes after the parked ones to be applied", func() (bool, error) {
		return b.QueryInt(`SELECT count(*) FROM t WHERE id = 3`) == 1, nil
	})
	if n := b.QueryInt(`SELECT count(*) FROM bdr.apply_errors WHERE state = 'parked'`); n != 2 {
		t.Fatalf("%d transactions parked, want 2", n)
	}
	b.Exec(`ALTER TABLE t DROP CONSTRAINT small`)
	for _, id := range pgtest.Strings(t, b.DSN, `SELECT error_id::text FROM bdr.apply_errors WHERE state = 'parked' ORDER BY error_id`) {
		n, err := strconv.ParseInt(id, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		retryParked(t, b, n)
	}
	if v := b.QueryInt(`SELECT v FROM t WHERE id = 1`); v != 20 {
		t.Errorf("row 1 is %d on %s after the retry, want 20 (the later update)", v, b.Name)
	}
	if n := b.QueryInt(`SELECT count(*) FROM t WHERE id = 2`); n != 0 {
		t.Errorf("the retried insert of row 2 came back over its later delete")
	}
	grouptest.WaitQuiet(t, nodes, time.Minute)
	grouptest.AssertConverged(t, nodes)
}
