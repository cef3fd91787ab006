package apply

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/bdr-dev/bdr/conflict"
	"github.com/bdr-dev/bdr/decoder"
	"github.com/bdr-dev/bdr/internal/pgerr"
)

// Parking (never stall, never lose silently). A remote transaction that
// cannot be applied — a missing table, column or role, a type error, a
// constraint the row-level resolution does not settle — is parked: the
// whole transaction, its origin, position, commit time and the error go
// into bdr.apply_errors in ONE local transaction that also moves the
// origin past it, and the stream goes on with the next one. Nothing is
// lost: the transaction is either applied, or parked with a row saying so.
//
// Parked transactions are retried by the stream's own applier (only its
// session may stamp changes with the peer's origin and commit time), with
// a backoff from parkRetryMin up to the error retry interval, and at once
// when an operator asks (bdrctl errors retry). A retry applies the
// transaction with the resolving statements, so a parked change that is
// by then older than the local row loses to it like any late change, and
// marks it applied in the same local transaction. An operator may discard
// it instead (bdrctl errors discard): the row stays, marked discarded.
//
// A table whose policy is pause (bdr.alter_table_apply_error_policy)
// stops the stream at such a transaction instead, as before parking
// existed: the stream shows the error and retries until the cause is gone.

const (
	// parkRetryMin is the first retry delay of a parked transaction; it
	// doubles at every failed attempt, up to the stream's error retry.
	parkRetryMin = time.Second
	// parkCheckEvery is how often an applier looks for parked transactions
	// that are due, and counts them, when nothing told it to.
	parkCheckEvery = 5 * time.Second
	// parkRetryBatch bounds the parked transactions one check retries.
	parkRetryBatch = 50
	// maxParkedBytes bounds the parked form of one transaction (jsonb takes
	// at most 255 MB); a larger transaction that fails stops the stream.
	maxParkedBytes = 200 << 20
)

// parkState is what an applier knows of its parked transactions; count
// is shared with the stream's status.
type parkState struct {
	count     *atomic.Int64
	nextCheck time.Time
}

func (a *applier) setParked(n int64) {
	a.parks.count.Store(n)
	a.met.parked.Set(float64(n))
}

// parkable reports whether a failed transaction is one to park: the error
// is in the data or the schema, not in the connection.
func parkable(err error) bool {
	if pgerr.Code(err) == parkGone {
		return false
	}
	c := pgerr.Classify(err)
	return c == pgerr.Fatal || c == pgerr.Conflict
}

// parkGone is the SQLSTATE of bdr.claim_parked for a transaction that is
// no longer parked.
const parkGone = "BR002"

// txnTables returns the tables a transaction changes, as schema.name.
func txnTables(t *decoder.Txn) ([]string, error) {
	seen := map[string]bool{}
	add := func(r *decoder.Relation) { seen[r.Schema+"."+r.Name] = true }
	err := t.Each(func(c *decoder.Change) error {
		if c.Rel != nil {
			add(c.Rel)
		}
		for _, r := range c.Rels {
			add(r)
		}
		return nil
	})
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out, err
}

// park records t, which failed with cause, in bdr.apply_errors and moves
// the origin past it, in one local transaction. It reports false, having
// done nothing, when a table of t has the pause policy (or t is too large
// to park): the caller then stops the stream with cause.
func (a *applier) park(ctx context.Context, t *decoder.Txn, cause error) (bool, error) {
	// t failed as a *txnFailed: its local transaction is rolled back.
	tables, err := txnTables(t)
	if err != nil {
		return false, fmt.Errorf("park txn %d: %w", t.Xid, err)
	}
	var pause bool
	if err := a.conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM bdr.apply_error_policy
		WHERE policy = 'pause' AND schema_name || '.' || table_name = ANY ($1))`, tables).Scan(&pause); err != nil {
		return false, fmt.Errorf("park txn %d: read the tables' policy: %w", t.Xid, err)
	}
	if pause {
		a.log.Warn("transaction not applied; a table's apply error policy is pause: the stream stops at it",
			"xid", t.Xid, "tables", tables, "err", cause)
		return false, nil
	}
	changes, n, err := decoder.MarshalParked(t)
	if err != nil {
		return false, fmt.Errorf("park txn %d: %w", t.Xid, err)
	}
	if len(changes) > maxParkedBytes {
		a.log.Error("transaction not applied and too large to park: the stream stops at it",
			"xid", t.Xid, "bytes", len(changes), "err", cause)
		return false, nil
	}
	var code *string
	if c := pgerr.Code(cause); c != "" {
		code = &c
	}
	var id int64
	err = pgx.BeginFunc(ctx, a.conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_xact_setup($1::text::pg_lsn, $2)`,
			t.EndLSN.String(), t.CommitTime); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `INSERT INTO bdr.apply_errors (origin_node_id, origin_node_name, remote_xid,
				remote_commit_lsn, remote_end_lsn, remote_commit_time, tables, change_count, changes, sqlstate, error,
				next_retry_at)
			VALUES ($1, $2, $3, $4::text::pg_lsn, $5::text::pg_lsn, $6, $7, $8, $9::text::jsonb, $10, $11,
				pg_catalog.clock_timestamp() + $12::interval)
			RETURNING error_id`,
			a.peer.NodeID, a.peer.Name, int64(t.Xid), t.CommitLSN.String(), t.EndLSN.String(), t.CommitTime,
			tables, n, string(changes), code, cause.Error(), parkRetryMin.String()).Scan(&id); err != nil {
			return err
		}
		schema, table := parkedTable(cause, tables)
		_, err := tx.Exec(ctx, `INSERT INTO bdr.conflict_history (local_node_id, local_node_name, remote_node_id,
				remote_node_name, schema_name, table_name, conflict_type, resolution, reason, remote_xid,
				remote_commit_time, remote_commit_lsn)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::text::pg_lsn)`,
			a.local.NodeID, a.local.Name, a.peer.NodeID, a.peer.Name, schema, table, parkedType(code, cause), conflict.Parked,
			fmt.Sprintf("the transaction could not be applied and is parked as apply error %d (bdrctl errors list): %s", id, cause),
			int64(t.Xid), t.CommitTime, t.CommitLSN.String())
		return err
	})
	if err != nil {
		return false, fmt.Errorf("park txn %d: %w", t.Xid, err)
	}
	insert, flush, err := a.position(ctx)
	if err != nil {
		return false, err
	}
	a.track.done(insert, false)
	a.track.flushed(flush)
	a.setParked(a.parks.count.Load() + 1)
	a.parks.nextCheck = time.Now().Add(parkRetryMin)
	a.log.Warn("transaction parked: it could not be applied; the stream goes on (bdrctl errors list)",
		"id", id, "xid", t.Xid, "commit_lsn", t.CommitLSN.String(), "tables", tables, "err", cause)
	return true, nil
}

// parkedType is the conflict type a parked transaction is recorded with
// in conflict_history, by the SQLSTATE of its error; the error resolver's
// error names the type of the conflict it did not resolve.
func parkedType(code *string, cause error) conflict.Type {
	var pgErr *pgconn.PgError
	switch {
	case code == nil:
		return conflict.ApplyError
	case *code == conflict.ErrorSQLState && errors.As(cause, &pgErr):
		if t, ok := conflict.ErrorType(pgErr.Message); ok {
			return t
		}
	case *code == "23P01":
		return conflict.ExclusionViolation
	case *code == "23505":
		// On an index the applier does not resolve (partial, expression).
		return conflict.UniqueSecondary
	}
	return conflict.ApplyError
}

// parkedTable is the table a parked transaction failed on: the one of the
// failed statement, else its first table.
func parkedTable(cause error, tables []string) (schema, table string) {
	var oe *opError
	if errors.As(cause, &oe) && oe.rel != nil {
		return oe.rel.Schema, oe.rel.Name
	}
	if len(tables) == 0 {
		return "", ""
	}
	schema, table, _ = strings.Cut(tables[0], ".")
	return schema, table
}

// parkedTxn is a parked transaction due for a retry.
type parkedTxn struct {
	id       int64
	env      decoder.Envelope
	changes  []byte
	attempts int
}

// retryParked retries the parked transactions of this stream that are due
// (all of them when all is set), oldest first, and counts what is left.
func (a *applier) retryParked(ctx context.Context, all bool) error {
	rows, err := a.conn.Query(ctx, `SELECT error_id, remote_xid, remote_commit_lsn::text, remote_end_lsn::text,
			remote_commit_time, changes::text, attempts
		FROM bdr.apply_errors
		WHERE origin_node_id = $1 AND state = 'parked' AND ($2 OR next_retry_at <= pg_catalog.clock_timestamp())
		ORDER BY error_id LIMIT $3`, a.peer.NodeID, all, parkRetryBatch)
	if err != nil {
		return fmt.Errorf("read parked transactions: %w", err)
	}
	var due []parkedTxn
	for rows.Next() {
		var p parkedTxn
		var xid int64
		var commitLSN, endLSN, changes string
		if err := rows.Scan(&p.id, &xid, &commitLSN, &endLSN, &p.env.CommitTime, &changes, &p.attempts); err != nil {
			rows.Close()
			return fmt.Errorf("read parked transactions: %w", err)
		}
		p.env.Xid = uint32(xid)
		p.changes = []byte(changes)
		if p.env.CommitLSN, err = pglogrepl.ParseLSN(commitLSN); err == nil {
			p.env.EndLSN, err = pglogrepl.ParseLSN(endLSN)
		}
		if err != nil {
			rows.Close()
			return fmt.Errorf("read parked transaction %d: %w", p.id, err)
		}
		due = append(due, p)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read parked transactions: %w", err)
	}
	if len(due) > 0 {
		// The cause may be a local table changed since (a column added or
		// retyped): build the plans again from the local catalog.
		a.plans, a.relPlans = map[string]*plan{}, map[*decoder.Relation]*plan{}
	}
	for _, p := range due {
		if err := a.retryOne(ctx, p); err != nil {
			return err
		}
	}
	var next *time.Time
	var count int64
	if err := a.conn.QueryRow(ctx, `SELECT count(*), min(next_retry_at) FROM bdr.apply_errors
		WHERE origin_node_id = $1 AND state = 'parked'`, a.peer.NodeID).Scan(&count, &next); err != nil {
		return fmt.Errorf("count parked transactions: %w", err)
	}
	a.setParked(count)
	a.parks.nextCheck = time.Now().Add(parkCheckEvery)
	if next != nil && next.Before(a.parks.nextCheck) {
		a.parks.nextCheck = *next
	}
	return nil
}

// retryOne applies one parked transaction; a failure is recorded on its
// row, with the next retry time. Only a lost connection is returned.
func (a *applier) retryOne(ctx context.Context, p parkedTxn) error {
	t, err := decoder.UnmarshalParked(p.env, p.changes)
	if err == nil {
		err = a.applyParked(ctx, p.id, t)
	}
	if err == nil {
		a.log.Info("parked transaction applied", "id", p.id, "xid", p.env.Xid, "attempts", p.attempts+1)
		return nil
	}
	if !parkable(err) {
		if pgerr.Code(err) == parkGone {
			return nil // discarded meanwhile
		}
		return err
	}
	wait := min(parkRetryMin<<min(p.attempts, 20), max(a.errorRetry, parkRetryMin))
	var code *string
	if c := pgerr.Code(err); c != "" {
		code = &c
	}
	if _, uerr := a.conn.Exec(ctx, `UPDATE bdr.apply_errors SET attempts = attempts + 1,
			last_attempt_at = pg_catalog.clock_timestamp(), sqlstate = $2, error = $3,
			next_retry_at = pg_catalog.clock_timestamp() + $4::interval
		WHERE error_id = $1 AND state = 'parked'`, p.id, code, err.Error(), wait.String()); uerr != nil {
		return fmt.Errorf("record the retry of parked transaction %d: %w", p.id, uerr)
	}
	a.log.Debug("parked transaction still fails", "id", p.id, "err", err, "retry_in", wait)
	return nil
}

// applyParked applies t with resolving statements and marks parked
// transaction id applied, in one local transaction stamped with t's origin
// position and commit time (the origin's progress never moves back).
func (a *applier) applyParked(ctx context.Context, id int64, t *decoder.Txn) error {
	b := &batch{a: a, txns: []*decoder.Txn{t}, rows: make([]rowCounts, 1), committed: -1, untracked: true}
	a.cur = b
	defer func() { a.cur = nil }()
	a.orphanChecks, a.orphanTxn = a.orphanChecks[:0], t
	a.send(ctx, stmtBegin, nil, op{kind: opBegin, txn: 0, what: "begin"})
	a.send(ctx, stmtSetup, setupParams(t), op{kind: opSetup, txn: 0, what: "origin setup"})
	a.send(ctx, stmtClaim, []param{{data: []byte(fmt.Sprint(id))}, {data: []byte("retry")}},
		op{kind: opChange, txn: 0, what: "claim parked transaction"})
	commitTS := param{data: []byte(pgTime(t.CommitTime))}
	err := t.Each(func(c *decoder.Change) error {
		if _, err := a.sendChange(ctx, 0, c, &b.rows[0], true, commitTS); err != nil {
			return err
		}
		return b.syncIfFull(ctx)
	})
	if err == nil {
		a.sendOrphanChecks(ctx, 0, t)
		a.send(ctx, stmtCommit, nil, op{kind: opCommit, txn: 0, what: "commit"})
		err = b.sync(ctx)
	}
	if err != nil {
		return a.failed(ctx, b, 0, t, err)
	}
	return nil
}

// failed ends the pipeline after sending transaction i of b failed with
// err. A statement that failed on the server has already rolled its
// transaction back (err is a *txnFailed). An error raised before sending
// (no local table, no key) leaves the connection usable: what is in
// flight is finished, transaction i rolled back, and a *txnFailed
// returned, so that the transaction can be parked. Anything else (a lost
// connection) abandons the connection.
func (a *applier) failed(ctx context.Context, b *batch, i int, t *decoder.Txn, err error) error {
	var f *txnFailed
	if errors.As(err, &f) {
		return err
	}
	if !parkable(err) || a.conn.IsClosed() {
		a.abandon(ctx)
		return a.wrap(t, err)
	}
	if serr := b.sync(ctx); serr != nil {
		if !errors.As(serr, &f) {
			a.abandon(ctx)
		}
		return serr // a statement failed on the server, of this transaction or an earlier one
	}
	if a.conn.PgConn().TxStatus() != 'I' {
		if _, rerr := a.conn.Exec(ctx, "ROLLBACK"); rerr != nil {
			a.abandon(ctx)
			return fmt.Errorf("rollback: %w", rerr)
		}
	}
	return &txnFailed{txn: i, err: a.wrap(t, err)}
}
