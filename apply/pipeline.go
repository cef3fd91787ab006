package apply

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/bdr-dev/bdr/decoder"
)

// batch follows the transactions of one applyPipelined call: which are
// committed, and which have been reported to the tracker.
type batch struct {
	a         *applier
	txns      []*decoder.Txn
	rows      []rowCounts
	done      int // txns[:done] are reported to the tracker
	committed int // highest index whose COMMIT succeeded
	// untracked: the transactions are not the stream's (parked ones
	// retried), the tracker does not hear of them.
	untracked bool
}

func (b *batch) syncIfFull(ctx context.Context) error {
	if len(b.a.ops) >= chunkOps || b.a.sentBytes >= chunkBytes {
		return b.sync(ctx)
	}
	return nil
}

// sync ends the pipeline chunk in flight and reads its results. When a
// statement failed, its transaction is rolled back and a *txnFailed is
// returned; everything before it is committed and reported.
func (b *batch) sync(ctx context.Context) error {
	if b.a.pl == nil {
		return nil
	}
	insert, flush, last, failed, err := b.a.syncPipeline(ctx)
	if last > b.committed {
		b.committed = last
	}
	if err != nil && failed >= 0 {
		insert, flush, perr := b.a.position(ctx)
		if perr != nil {
			return perr
		}
		b.finish(insert, flush)
		return &txnFailed{txn: failed, err: err}
	}
	if err != nil {
		return err
	}
	b.finish(insert, flush)
	return nil
}

// finish reports to the tracker, in stream order, every transaction that is
// committed (its local commit at or before insert) or skipped.
func (b *batch) finish(insert, flush decoder.LSN) {
	for b.done < len(b.txns) && (skipped(b.txns[b.done]) || b.done <= b.committed) {
		t := b.txns[b.done]
		switch {
		case b.untracked:
			b.a.met.observeTxn(b.rows[b.done])
		case skipped(t):
			b.a.track.done(0, false)
			b.a.met.skipped.Inc()
		default:
			b.a.track.done(insert, true)
			b.a.met.observeTxn(b.rows[b.done])
		}
		b.done++
	}
	if !b.untracked {
		b.a.track.flushed(flush)
	}
}

func (a *applier) startPipeline(ctx context.Context) {
	if a.pl == nil {
		a.pl = a.conn.PgConn().StartPipeline(ctx)
		a.ops = a.ops[:0]
		a.sentBytes = 0
	}
}

// send queues a prepared statement, preparing it first if needed.
func (a *applier) send(ctx context.Context, st stmt, params []param, o op) {
	a.startPipeline(ctx)
	desc, ok := a.prepared[st.name]
	if !ok {
		a.pl.SendPrepare(st.name, st.sql, nil)
		a.ops = append(a.ops, op{kind: opPrepare, txn: o.txn, what: "prepare the statement of " + o.describe(), stmt: st.name})
		a.prepared[st.name] = nil
	}
	vals, formats := encodeParams(params)
	for _, v := range vals {
		a.sentBytes += len(v)
	}
	if desc != nil {
		// The description is known: no Describe round for every execution.
		a.pl.SendQueryStatement(desc, vals, formats, nil)
	} else {
		a.pl.SendQueryPrepared(st.name, vals, formats, nil)
	}
	o.stmt = st.name
	a.ops = append(a.ops, o)
}

// syncPipeline appends the position query, syncs and reads every result.
// It returns the local WAL insert and flush positions after the chunk and
// the batch index of the last transaction whose COMMIT succeeded. When a
// statement fails, the transaction it belongs to (failed >= 0) is rolled
// back and its error returned.
func (a *applier) syncPipeline(ctx context.Context) (insert, flush decoder.LSN, last, failed int, err error) {
	last, failed = -1, -1
	a.send(ctx, stmtPosition, nil, op{kind: opPosition, txn: -1, what: "read position"})
	ops := a.ops
	pl := a.pl
	a.pl, a.ops = nil, nil
	if a.trace != nil {
		*a.trace = append(*a.trace, ops...)
	}
	if err := pl.Sync(); err != nil {
		return 0, 0, last, failed, fmt.Errorf("send pipeline: %w", err)
	}
	failedIdx := -1
	var failErr error
	for i := range ops {
		o := &ops[i]
		res, err := pl.GetResults()
		if desc, ok := res.(*pgconn.StatementDescription); ok && err == nil {
			desc.Name = o.stmt // a pipeline's Prepare does not fill it in
			a.prepared[o.stmt] = desc
		}
		if err == nil {
			if rr, ok := res.(*pgconn.ResultReader); ok {
				switch o.kind {
				case opPosition:
					insert, flush, err = readPosition(rr)
				case opResolve:
					err = a.readChange(rr, o.txn)
				default:
					_, err = rr.Close()
				}
			}
		}
		if err != nil {
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				_ = pl.Close()
				return 0, 0, last, failed, fmt.Errorf("%s: %w", o.describe(), err)
			}
			failedIdx, failErr = i, &opError{rel: o.rel, err: fmt.Errorf("%s: %w", o.describe(), err)}
			break
		}
		if o.kind == opCommit {
			last = o.txn
		}
	}
	if err := pl.Close(); err != nil && failErr == nil {
		return 0, 0, last, failed, fmt.Errorf("close pipeline: %w", err)
	}
	if failErr == nil {
		return insert, flush, last, failed, nil
	}
	// The server skipped everything after the failure, preparations too.
	for _, o := range ops[failedIdx:] {
		if o.kind == opPrepare {
			delete(a.prepared, o.stmt)
		}
	}
	failed = ops[failedIdx].txn
	if failed >= 0 {
		if _, err := a.conn.Exec(ctx, "ROLLBACK"); err != nil {
			return 0, 0, last, failed, fmt.Errorf("rollback: %w", err)
		}
	}
	return 0, 0, last, failed, failErr
}

// opError is the failure of one statement; rel is the relation it
// changed, if any.
type opError struct {
	rel *decoder.Relation
	err error
}

func (e *opError) Error() string { return e.err.Error() }
func (e *opError) Unwrap() error { return e.err }

// readChange reads the result of a change statement: the type of the
// conflict it resolved, if any.
func (a *applier) readChange(rr *pgconn.ResultReader, txn int) error {
	for rr.NextRow() {
		if v := rr.Values(); len(v) > 0 && v[0] != nil {
			rows := &a.cur.rows[txn]
			rows.conflicts = append(rows.conflicts, string(v[0]))
		}
	}
	_, err := rr.Close()
	return err
}

func readPosition(rr *pgconn.ResultReader) (insert, flush decoder.LSN, err error) {
	for rr.NextRow() {
		v := rr.Values()
		if insert, err = pglogrepl.ParseLSN(string(v[0])); err != nil {
			return 0, 0, err
		}
		if flush, err = pglogrepl.ParseLSN(string(v[1])); err != nil {
			return 0, 0, err
		}
	}
	_, err = rr.Close()
	return insert, flush, err
}

// position reads the local WAL insert and flush positions outside a pipeline.
func (a *applier) position(ctx context.Context) (insert, flush decoder.LSN, err error) {
	rr := a.conn.PgConn().ExecPrepared(ctx, stmtPosition.name, nil, nil, nil)
	insert, flush, err = readPosition(rr)
	if err != nil {
		return 0, 0, fmt.Errorf("read local position: %w", err)
	}
	return insert, flush, nil
}

// refreshPosition updates the tracker with the local flush position while
// the stream is idle, so applied transactions get confirmed.
func (a *applier) refreshPosition(ctx context.Context) error {
	_, flush, err := a.position(ctx)
	if err != nil {
		return err
	}
	a.track.flushed(flush)
	return nil
}

// abandon drops a pipeline after an error that is not a conflict: the
// connection is in an unknown state, so it is closed and the supervisor
// starts the stream again.
func (a *applier) abandon(ctx context.Context) {
	if a.pl == nil {
		return
	}
	a.pl, a.ops = nil, nil
	_ = a.conn.Close(ctx)
}
