package apply

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/bdr-dev/bdr/decoder"
	"github.com/bdr-dev/bdr/internal/catalog"
	"github.com/bdr-dev/bdr/internal/pgerr"
)

// Pipeline chunk bounds: a chunk is sent, synced and its results read
// before the next one, so neither side buffers without limit.
const (
	chunkOps   = 2000
	chunkBytes = 8 << 20
	// txnRetries bounds how often one transaction is retried in place after
	// a transient error (deadlock, a row inserted locally at that moment)
	// before the stream gives up and the supervisor takes over.
	txnRetries = 3
)

// Fixed statements every applier connection prepares.
var (
	stmtBegin  = stmt{"bdr_begin", "BEGIN"}
	stmtCommit = stmt{"bdr_commit", "COMMIT"}
	// stmtSetup stamps the transaction with the remote commit (DESIGN rule 1)
	// and makes the remote commit known to the conflict-resolving statements.
	stmtSetup = stmt{"bdr_xact_setup", `SELECT pg_catalog.pg_replication_origin_xact_setup($1::pg_lsn, $2::timestamptz),
	pg_catalog.set_config('` + setCommitTS + `', $3::text, true),
	pg_catalog.set_config('` + setXid + `', $4::text, true),
	pg_catalog.set_config('` + setCommitLSN + `', $5::text, true)`}
	// stmtSetupFast is stmtSetup for fast statements, which take the remote
	// commit time as a parameter and count the rows they apply.
	stmtSetupFast = stmt{"bdr_xact_setup_fast", `SELECT pg_catalog.pg_replication_origin_xact_setup($1::pg_lsn, $2::timestamptz),
	pg_catalog.set_config('` + setApplied + `', '0', true)`}
	// stmtRecordSetup makes the remote commit known to statements that
	// record conflicts in a transaction applied with fast statements.
	stmtRecordSetup = stmt{"bdr_record_setup", `SELECT pg_catalog.set_config('` + setCommitTS + `', $1::text, true),
	pg_catalog.set_config('` + setXid + `', $2::text, true),
	pg_catalog.set_config('` + setCommitLSN + `', $3::text, true)`}
	// stmtCheck aborts the transaction when a fast statement did not apply.
	stmtCheck    = stmt{"bdr_check", "SELECT bdr.check_applied($1::int)"}
	stmtPosition = stmt{"bdr_position", "SELECT pg_catalog.pg_current_wal_insert_lsn()::text, pg_catalog.pg_current_wal_flush_lsn()::text"}
	// stmtClaim marks a parked transaction applied by the transaction that
	// applies it (park.go), and tells the resolving statements that the
	// transaction comes out of its stream's order (setStream).
	stmtClaim = stmt{"bdr_claim", "SELECT bdr.claim_parked($1::bigint, $2::text), pg_catalog.set_config('" + setStream + "', '" + noStream + "', true)"}
)

var fixedStmts = []stmt{stmtBegin, stmtCommit, stmtSetup, stmtSetupFast, stmtRecordSetup, stmtCheck, stmtPosition, stmtClaim}

// resolveWindow is how many transactions are applied with resolving
// statements after one needed them, before fast statements are tried again.
const resolveWindow = 1000

// applier applies the transactions of one peer on one local connection.
type applier struct {
	peer   Peer
	local  Local
	conn   *pgx.Conn
	origin uint32 // roident of the peer's origin on this node
	log    *slog.Logger
	met    *streamMetrics
	relay  *relay
	track  *tracker
	pause  *pauser
	// errorRetry bounds the retry delay of parked transactions; retryNow
	// asks for a retry of all of them at once (bdrctl errors retry).
	errorRetry time.Duration
	retryNow   <-chan struct{}
	parks      parkState

	plans    map[string]*plan            // by relation signature
	relPlans map[*decoder.Relation]*plan // by relation, for the common case
	// prepared holds the statements prepared on the connection, with their
	// description once known (nil while its preparation is in flight).
	prepared    map[string]*pgconn.StatementDescription
	stmtSeq     int
	resolveNext int // transactions still to apply with resolving statements
	// deltaSeen is the delta column declarations the plans were built
	// with; declared says that the transaction being sent changed them.
	deltaSeen string
	declared  bool

	// orphanChecks are the foreign-key checks of the transaction being
	// sent, sent before its COMMIT (plan_fk.go).
	orphanChecks []pendingCheck
	orphanTxn    *decoder.Txn

	// trace, when not nil, collects every statement sent (for tests).
	trace *[]op

	// state of the pipeline in progress
	pl        *pgconn.Pipeline
	ops       []op
	sentBytes int
	cur       *batch
}

type opKind uint8

const (
	opBegin opKind = iota
	opSetup
	opChange  // a fast or plain row change
	opResolve // a resolving row change: returns the conflict recorded
	opCheck
	opCommit
	opPosition
	opPrepare
)

type op struct {
	kind opKind
	txn  int    // index in the batch, -1 outside transactions
	what string // for errors: the statement, or with change set, the table
	// change is the kind of row change of an opChange or opResolve.
	change decoder.Op
	// rel is the relation a row change or its checks act on.
	rel  *decoder.Relation
	stmt string // the statement prepared or executed
}

// describe says what the operation was, for errors.
func (o *op) describe() string {
	if o.change != 0 {
		return o.change.String() + " on " + o.what
	}
	return o.what
}

// txnFailed is a failure of transaction txn of a batch; the transactions
// before it are committed.
type txnFailed struct {
	txn int
	err error
}

func (f *txnFailed) Error() string { return f.err.Error() }
func (f *txnFailed) Unwrap() error { return f.err }

// connectApplier opens the local connection, binds it to the peer's
// replication origin and returns the position to resume streaming from.
// The applier's fixed statements are prepared by setupSession.
func connectApplier(ctx context.Context, peer Peer, local Local, lockTimeout time.Duration) (*applier, decoder.LSN, error) {
	cfg, err := pgx.ParseConfig(local.DSN)
	if err != nil {
		return nil, 0, fmt.Errorf("parse local dsn: %w", err)
	}
	cfg.RuntimeParams["application_name"] = "bdr apply " + peer.Name
	if lockTimeout > 0 {
		cfg.RuntimeParams["lock_timeout"] = strconv.FormatInt(max(lockTimeout.Milliseconds(), 1), 10)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, 0, fmt.Errorf("connect local: %w", err)
	}
	a := &applier{peer: peer, local: local, conn: conn, plans: map[string]*plan{}, relPlans: map[*decoder.Relation]*plan{},
		prepared: map[string]*pgconn.StatementDescription{}}
	start, err := a.setupSession(ctx)
	if err != nil {
		_ = conn.Close(context.Background())
		return nil, 0, err
	}
	return a, start, nil
}

// setupSession binds the session to the peer's origin, sets what the
// statements read, prepares the fixed statements and returns the position
// to resume streaming from.
func (a *applier) setupSession(ctx context.Context) (decoder.LSN, error) {
	conn, peer, local := a.conn, a.peer, a.local
	oid, err := catalog.DatabaseOID(ctx, conn)
	if err != nil {
		return 0, err
	}
	name := catalog.OriginName(oid, peer.Name)
	for _, s := range []string{
		"SET session_replication_role = replica",
		"SET synchronous_commit = off",
	} {
		if _, err := conn.Exec(ctx, s); err != nil {
			return 0, fmt.Errorf("set up apply session: %w", err)
		}
	}
	var origin uint32
	err = conn.QueryRow(ctx, `SELECT roident FROM pg_catalog.pg_replication_origin WHERE roname = $1`, name).Scan(&origin)
	if errors.Is(err, pgx.ErrNoRows) {
		err = conn.QueryRow(ctx, `SELECT pg_catalog.pg_replication_origin_create($1)`, name).Scan(&origin)
	}
	if err != nil {
		return 0, fmt.Errorf("origin %s: %w", name, err)
	}
	settings := [][2]string{
		{setOrigin, strconv.FormatUint(uint64(origin), 10)},
		{setStream, strconv.FormatUint(uint64(origin), 10)},
		{setLocalID, strconv.Itoa(int(local.NodeID))},
		{setLocalName, local.Name},
		{setRemoteID, strconv.Itoa(int(peer.NodeID))},
		{setRemoteName, peer.Name},
	}
	for _, kv := range settings {
		if _, err := conn.Exec(ctx, `SELECT pg_catalog.set_config($1, $2, false)`, kv[0], kv[1]); err != nil {
			return 0, fmt.Errorf("set up apply session: %w", err)
		}
	}
	if _, err := conn.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_session_setup($1)`, name); err != nil {
		return 0, fmt.Errorf("bind session to origin %s: %w", name, err)
	}
	var progress *string
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_replication_origin_progress($1, true)::text`, name).Scan(&progress); err != nil {
		return 0, fmt.Errorf("read progress of origin %s: %w", name, err)
	}
	var start decoder.LSN
	if progress != nil {
		lsn, err := pglogrepl.ParseLSN(*progress)
		if err != nil {
			return 0, fmt.Errorf("read progress of origin %s: %w", name, err)
		}
		start = lsn
	}
	for _, s := range fixedStmts {
		desc, err := conn.PgConn().Prepare(ctx, s.name, s.sql, nil)
		if err != nil {
			return 0, fmt.Errorf("prepare %s: %w", s.name, err)
		}
		a.prepared[s.name] = desc
	}
	a.origin = origin
	return start, nil
}

// run applies batches from the relay until ctx ends or an error occurs.
func (a *applier) run(ctx context.Context) error {
	for {
		if err := a.pause.enter(ctx); err != nil {
			return err
		}
		var err error
		select {
		case <-a.retryNow:
			err = a.retryParked(ctx, true)
		default:
			if !time.Now().Before(a.parks.nextCheck) {
				err = a.retryParked(ctx, false)
			}
		}
		if err != nil {
			a.pause.leave()
			return err
		}
		txns, err := a.relay.take(ctx, 200*time.Millisecond, pauseSlice)
		if err == nil && len(txns) > 0 {
			err = a.applyBatch(ctx, txns)
		} else if err == nil && a.track.unflushed() {
			err = a.refreshPosition(ctx)
		}
		a.pause.leave()
		if err != nil {
			return err
		}
	}
}

// pauseSlice is how many transactions an applier takes from the relay at a
// time, so that a pause (a join waiting for this applier) gets in between
// them: a whole relay can take seconds to apply on the conflict-resolving
// path, longer than a join waits.
const pauseSlice = 256

// applyBatch applies txns in order, pipelined. A transaction that fails
// with a transient error is retried in place a few times.
func (a *applier) applyBatch(ctx context.Context, txns []*decoder.Txn) error {
	defer func(all []*decoder.Txn) {
		// All of them, applied or not: a spilled transaction holds a file.
		for _, t := range all {
			_ = t.Close()
		}
	}(txns)
	if err := a.checkDeclarations(ctx); err != nil {
		return err
	}
	retries := 0
	for len(txns) > 0 {
		n, err := a.applyPipelined(ctx, txns)
		txns = txns[n:]
		if err == nil {
			return nil
		}
		var f *txnFailed
		if !errors.As(err, &f) || f.txn != n {
			return err
		}
		class := pgerr.Classify(err)
		if class == pgerr.Conflict && a.resolveNext == 0 {
			// A fast statement met a conflict (a row it did not apply, a key
			// that exists): resolve from this transaction on.
			a.resolveNext = resolveWindow
			a.log.Debug("conflict: applying with resolving statements", "xid", txns[0].Xid)
			continue
		}
		if class == pgerr.Fatal || class == pgerr.Conflict && retries >= txnRetries {
			// It will not apply as it is: park it and go on.
			parked, perr := a.park(ctx, txns[0], err)
			if perr != nil {
				return perr
			}
			if !parked {
				return err
			}
			_ = txns[0].Close()
			txns, retries = txns[1:], 0
			continue
		}
		if retries >= txnRetries {
			return err
		}
		retries++
		a.resolveNext = resolveWindow
		a.log.Debug("retrying transaction", "xid", txns[0].Xid, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(retries) * 50 * time.Millisecond):
		}
	}
	return nil
}

func skipped(t *decoder.Txn) bool { return t.Filtered() || t.Len() == 0 }

// applyPipelined sends the transactions of txns through pipelines, one
// local transaction each. It returns how many (from the first) are
// committed or skipped, and the error that stopped it, if any.
func (a *applier) applyPipelined(ctx context.Context, txns []*decoder.Txn) (int, error) {
	b := &batch{a: a, txns: txns, rows: make([]rowCounts, len(txns)), committed: -1}
	a.cur = b
	defer func() { a.cur = nil }()
	for i, t := range txns {
		if skipped(t) {
			continue
		}
		if a.declared {
			a.dropFullPlans()
		}
		resolving := a.resolveNext > 0
		if resolving {
			a.resolveNext--
		}
		a.orphanChecks, a.orphanTxn = a.orphanChecks[:0], t
		a.send(ctx, stmtBegin, nil, op{kind: opBegin, txn: i, what: "begin"})
		if resolving {
			a.send(ctx, stmtSetup, setupParams(t), op{kind: opSetup, txn: i, what: "origin setup"})
		} else {
			a.send(ctx, stmtSetupFast, setupParams(t)[:2], op{kind: opSetup, txn: i, what: "origin setup"})
		}
		commitTS := param{data: []byte(pgTime(t.CommitTime))}
		counted := 0
		err := t.Each(func(c *decoder.Change) error {
			n, err := a.sendChange(ctx, i, c, &b.rows[i], resolving, commitTS)
			if err != nil {
				return err
			}
			counted += n
			return b.syncIfFull(ctx)
		})
		if err == nil {
			a.sendOrphanChecks(ctx, i, t)
			if counted > 0 {
				a.send(ctx, stmtCheck, []param{{data: []byte(strconv.Itoa(counted))}}, op{kind: opCheck, txn: i, what: "check"})
			}
			a.send(ctx, stmtCommit, nil, op{kind: opCommit, txn: i, what: "commit"})
			err = b.syncIfFull(ctx)
		}
		if err != nil {
			err = a.failed(ctx, b, i, t, err)
			return b.done, err
		}
	}
	if a.pl != nil {
		return b.done, b.sync(ctx)
	}
	b.finish(0, 0)
	return b.done, nil
}

func (a *applier) wrap(t *decoder.Txn, err error) error {
	var f *txnFailed
	if errors.As(err, &f) {
		return err
	}
	return fmt.Errorf("apply txn %d from %s: %w", t.Xid, a.peer.Name, err)
}

type rowCounts struct {
	ins, upd, del, trunc int
	conflicts            []string
}

// sendChange queues the statement of one change, fast or resolving, and
// returns how many fast statements that count their row it sent (0 or 1).
func (a *applier) sendChange(ctx context.Context, i int, c *decoder.Change, rows *rowCounts, resolving bool, commitTS param) (int, error) {
	if c.Op == decoder.Truncate {
		rows.trunc++
		a.startPipeline(ctx)
		sql := truncateSQL(c)
		a.pl.SendQueryParams(sql, nil, nil, nil, nil)
		a.ops = append(a.ops, op{kind: opChange, txn: i, what: sql})
		return 0, nil
	}
	p, err := a.planFor(ctx, c.Rel)
	if err != nil {
		return 0, err
	}
	if p.declares {
		a.declared = true // plans of tables with old rows are built again after this transaction
	}
	if len(p.keys) == 0 && c.Op != decoder.Insert {
		return 0, fmt.Errorf("%s of %s: the table has no replica identity", c.Op, p.table)
	}
	var st, pre stmt
	var params []param
	kind, counted := opChange, 0
	if p.resolving() {
		counted = 1
		if resolving {
			kind, counted = opResolve, 0
			params = []param{{data: []byte(p.rel.Schema)}, {data: []byte(p.rel.Name)}}
		}
	}
	switch c.Op {
	case decoder.Insert:
		rows.ins++
		st = p.insert
		if kind == opResolve {
			st, pre = p.resInsert, p.uniqInsert
		}
		params = append(params, values(c.New)...)
	case decoder.Update:
		rows.upd++
		mask := presence(c.New)
		if kind == opResolve {
			// A changed key comes with the old one: check it too.
			pre = a.uniqueUpdateStmt(p, mask, c.Old != nil)
			st = a.updateStmt(p, mask, true, pre.name != "", c.Old != nil && pre.name != "")
		} else {
			st = a.updateStmt(p, mask, false, false, false)
		}
		params = append(params, values(p.keyValues(c.Old, c.New))...)
		if p.hasDelta() {
			vals, err := p.deltaValues(c.Old, c.New)
			if err != nil {
				return 0, err
			}
			params = append(params, vals...)
		} else {
			params = append(params, presentValues(c.New)...)
		}
		if kind == opChange && !p.full {
			params = append(params, commitTS)
		}
	case decoder.Delete:
		rows.del++
		st = p.del
		if kind == opResolve {
			st = p.resDel
		}
		params = append(params, values(p.keyValues(c.Old, nil))...)
		if kind == opChange && !p.full {
			params = append(params, commitTS)
		}
	}
	if pre.name != "" {
		a.send(ctx, pre, params, op{kind: opResolve, txn: i, what: p.table, change: c.Op, rel: c.Rel})
	}
	a.send(ctx, st, params, op{kind: kind, txn: i, what: p.table, change: c.Op, rel: c.Rel})
	a.queueOrphanCheck(ctx, i, p, c, params, kind == opResolve)
	return counted, nil
}

// updateStmt returns the UPDATE statement of p for the columns in mask;
// afterUnique: a resolving one that follows a unique statement; keyChange:
// one that changes the key (it always follows a unique statement).
func (a *applier) updateStmt(p *plan, mask string, resolving, afterUnique, keyChange bool) stmt {
	if !resolving {
		st, ok := p.update[mask]
		if !ok {
			st = stmt{a.stmtName(), p.updateSQL(mask)}
			p.update[mask] = st
		}
		return st
	}
	key := mask
	if afterUnique {
		key += "u"
	}
	if keyChange {
		key += "k"
	}
	st, ok := p.resUpdate[key]
	if !ok {
		st = stmt{a.stmtName(), p.resolvingUpdateSQL(mask, afterUnique, keyChange)}
		p.resUpdate[key] = st
	}
	return st
}

// uniqueUpdateStmt returns the unique statement (plan_unique.go) before
// the resolving UPDATE of the columns in mask, or none when that UPDATE
// cannot collide on a unique index: the table has none besides the key
// and the key does not change.
func (a *applier) uniqueUpdateStmt(p *plan, mask string, keyChanged bool) stmt {
	if len(p.uniques) == 0 && !keyChanged || !p.resolving() || p.hasDelta() {
		return stmt{}
	}
	key := mask
	if keyChanged {
		key += "k"
	}
	st, ok := p.uniqUpdate[key]
	if !ok {
		if sql := p.uniqueUpdateSQL(mask, keyChanged); sql != "" {
			st = stmt{a.stmtName(), sql}
		}
		p.uniqUpdate[key] = st
	}
	return st
}

// planFor returns the plan of rel, building it on first use. Building reads
// the local catalog, which needs the connection out of pipeline mode. Plans
// are found by relation (the decoder's relations are immutable), then by
// signature, since the provider sends an equal description again for every
// streamed transaction.
func (a *applier) planFor(ctx context.Context, rel *decoder.Relation) (*plan, error) {
	if p, ok := a.relPlans[rel]; ok {
		return p, nil
	}
	key := signature(rel)
	if p, ok := a.plans[key]; ok {
		a.relPlans[rel] = p
		return p, nil
	}
	if err := a.cur.sync(ctx); err != nil {
		return nil, err
	}
	lt, err := loadLocalTable(ctx, a.conn, rel)
	if err != nil {
		return nil, err
	}
	p, err := newPlan(rel, lt, a.stmtName)
	if err != nil {
		return nil, err
	}
	a.plans[key] = p
	a.relPlans[rel] = p
	return p, nil
}

// checkDeclarations drops the plans of relations that carry old rows
// (REPLICA IDENTITY FULL, where delta columns take effect) when the delta
// column declarations changed since they were built: a declaration made
// here, or applied from another peer. Other relations need no check: a
// declaration changes their identity, and their next description.
func (a *applier) checkDeclarations(ctx context.Context) error {
	full := false
	for _, p := range a.plans {
		full = full || p.rel.ReplicaIdentity == decoder.IdentityFull
	}
	if !full {
		return nil
	}
	fp, err := deltaFingerprint(ctx, a.conn)
	if err != nil {
		return err
	}
	if fp != a.deltaSeen {
		a.dropFullPlans()
		a.deltaSeen = fp
	}
	return nil
}

// dropFullPlans forgets the plans of relations that carry old rows; they
// are built again, with the declarations then committed, on next use.
func (a *applier) dropFullPlans() {
	a.declared = false
	for key, p := range a.plans {
		if p.rel.ReplicaIdentity == decoder.IdentityFull {
			delete(a.plans, key)
		}
	}
	for rel, p := range a.relPlans {
		if p.rel.ReplicaIdentity == decoder.IdentityFull {
			delete(a.relPlans, rel)
		}
	}
}

func (a *applier) stmtName() string {
	a.stmtSeq++
	return "bdr_s" + strconv.Itoa(a.stmtSeq)
}

// param is sent as text or binary exactly as pgoutput delivered it; nil
// data is NULL.
type param struct {
	data   []byte
	binary bool
}

func values(t []decoder.Value) []param {
	ps := make([]param, len(t))
	for i, v := range t {
		ps[i] = valueParam(v)
	}
	return ps
}

func valueParam(v decoder.Value) param {
	switch v.Kind {
	case decoder.Text:
		return param{data: v.Data}
	case decoder.Binary:
		return param{data: v.Data, binary: true}
	}
	return param{} // NULL
}

func presentValues(t decoder.Tuple) []param {
	ps := make([]param, 0, len(t))
	for _, v := range t {
		if v.Kind != decoder.Unchanged {
			ps = append(ps, valueParam(v))
		}
	}
	return ps
}

func encodeParams(ps []param) ([][]byte, []int16) {
	vals := make([][]byte, len(ps))
	var formats []int16
	for i, p := range ps {
		vals[i] = p.data
		if p.binary {
			if formats == nil {
				formats = make([]int16, len(ps))
			}
			formats[i] = 1
		}
	}
	return vals, formats
}

func setupParams(t *decoder.Txn) []param {
	ts := []byte(pgTime(t.CommitTime))
	return []param{
		{data: []byte(t.EndLSN.String())},
		{data: ts},
		{data: ts},
		{data: []byte(strconv.FormatUint(uint64(t.Xid), 10))},
		{data: []byte(t.CommitLSN.String())},
	}
}

// pgTime formats a time as timestamptz input with microseconds.
func pgTime(t time.Time) string {
	return t.UTC().Format("2006-01-02 15:04:05.999999") + "+00"
}

func truncateSQL(c *decoder.Change) string {
	sql := "TRUNCATE ONLY "
	for i, r := range c.Rels {
		if i > 0 {
			sql += ", "
		}
		sql += ident(r.Schema, r.Name)
	}
	if c.RestartIdentity {
		sql += " RESTART IDENTITY"
	}
	if c.Cascade {
		sql += " CASCADE"
	}
	return sql
}
