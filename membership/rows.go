package membership

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/catalog"
)

// DefaultCopyPart is the least a session of a join's row copy takes at a
// time: tables of more than that are split by ranges of blocks, and a
// database under twice that is copied by one session (see planCopy).
const DefaultCopyPart = 64 << 20

// MaxCopyWorkers is the most sessions a join's row copy may be given.
const MaxCopyWorkers = 32

// DefaultCopyWorkers is the most sessions a join's row copy uses unless
// told otherwise: half the CPUs bdrd may use (GOMAXPROCS; bdrd runs next
// to the joining PostgreSQL), at least 1 and at most 4. A session keeps
// about one core busy on the joining host (its backend's COPY FROM: 4.2 s
// of CPU in a 5.4 s copy of pgbench scale 50, bdrd 0.7 s) and a third of
// one on the via node; on a host without idle cores more sessions only
// compete (2 cores: 1 or 2 sessions copy in the same time, 4 take
// longer), and half of the host stays for PostgreSQL's own work.
func DefaultCopyWorkers() int { return min(4, max(1, runtime.GOMAXPROCS(0)/2)) }

// progressEvery is how often the row copy reports.
const progressEvery = 250 * time.Millisecond

type tableCopy struct {
	name    string // quoted schema.table
	columns string // quoted, comma separated
	estRows int64  // the via node's estimate, 0 unknown
	bytes   int64  // on the via node, TOAST included
	blocks  int64  // of its main fork on the via node
}

func copyTables(ctx context.Context, src *pgx.Conn) ([]tableCopy, error) {
	rows, err := src.Query(ctx, `SELECT n.nspname, c.relname, array_agg(a.attname::text ORDER BY a.attnum),
			greatest(c.reltuples, 0)::bigint, pg_catalog.pg_table_size(c.oid),
			pg_catalog.pg_relation_size(c.oid) / pg_catalog.current_setting('block_size')::bigint
		FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		WHERE c.relkind = 'r' AND c.relpersistence = 'p'
		  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'bdr') AND n.nspname NOT LIKE 'pg_toast%'
		GROUP BY 1, 2, c.reltuples, c.oid ORDER BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("copy data: list tables: %w", err)
	}
	var out []tableCopy
	for rows.Next() {
		var schema, name string
		var cols []string
		var t tableCopy
		if err := rows.Scan(&schema, &name, &cols, &t.estRows, &t.bytes, &t.blocks); err != nil {
			return nil, fmt.Errorf("copy data: list tables: %w", err)
		}
		quoted := make([]string, len(cols))
		for i, c := range cols {
			quoted[i] = pgx.Identifier{c}.Sanitize()
		}
		t.name, t.columns = pgx.Identifier{schema, name}.Sanitize(), strings.Join(quoted, ", ")
		out = append(out, t)
	}
	return out, rows.Err()
}

// copyPart is what one session copies at a time: the rows of a table in
// blocks [lo, hi) of its main fork (hi 0: to the end; both 0: the whole
// table).
type copyPart struct {
	table  int // index in the tables
	lo, hi int64
	bytes  int64 // estimated
}

// source is the COPY statement that reads the part on the via node. A
// block range is a TID range scan: it reads those blocks only.
func (p copyPart) source(t tableCopy) string {
	where := ""
	switch {
	case p.hi > 0:
		where = fmt.Sprintf(" WHERE ctid >= '(%d,0)'::tid AND ctid < '(%d,0)'::tid", p.lo, p.hi)
	case p.lo > 0:
		where = fmt.Sprintf(" WHERE ctid >= '(%d,0)'::tid", p.lo)
	}
	return fmt.Sprintf("COPY (SELECT %s FROM ONLY %s%s) TO STDOUT", t.columns, t.name, where)
}

// copyPlan is how the rows are copied: the parts, in the order sessions
// take them, and how many sessions.
type copyPlan struct {
	parts    []copyPart
	sessions int
}

// planCopy decides where parallel sessions pay: a database under twice
// minPart is copied by one session, a table at a time (one transaction
// with the schema: the copy is atomic). Above that, up to workers sessions
// share the parts, each of at least minPart and about a quarter of a
// session's share, so that they end together: a table larger than that is
// split into ranges of blocks, copied under the same snapshot. Parts go
// largest first.
func planCopy(tables []tableCopy, workers int, minPart int64) copyPlan {
	var total int64
	for _, t := range tables {
		total += t.bytes
	}
	if workers <= 1 || total < 2*minPart {
		p := copyPlan{sessions: 1}
		for i, t := range tables {
			p.parts = append(p.parts, copyPart{table: i, bytes: t.bytes})
		}
		return p
	}
	size := max(minPart, total/int64(4*workers))
	var p copyPlan
	for i, t := range tables {
		n := min((t.bytes+size-1)/size, t.blocks)
		if n <= 1 {
			p.parts = append(p.parts, copyPart{table: i, bytes: t.bytes})
			continue
		}
		step := (t.blocks + n - 1) / n
		for lo := int64(0); lo < t.blocks; lo += step {
			hi := lo + step
			if hi >= t.blocks {
				hi = 0 // the last part reads to the end, whatever the table grew to
			}
			p.parts = append(p.parts, copyPart{table: i, lo: lo, hi: hi, bytes: t.bytes / n})
		}
	}
	slices.SortStableFunc(p.parts, func(a, b copyPart) int { return cmp.Compare(b.bytes, a.bytes) })
	p.sessions = min(workers, len(p.parts))
	return p
}

// copyReport is the row copy's progress, table by table, reported every
// progressEvery while it runs.
type copyReport struct {
	out  func(adminapi.CopyProgress)
	mu   sync.Mutex
	cp   adminapi.CopyProgress
	left []int // parts of each table not copied yet
}

func newCopyReport(tables []tableCopy, plan copyPlan, out func(adminapi.CopyProgress)) *copyReport {
	r := &copyReport{out: out, left: make([]int, len(tables)),
		cp: adminapi.CopyProgress{Started: time.Now(), Sessions: plan.sessions, Tables: make([]adminapi.TableProgress, len(tables))}}
	for i, t := range tables {
		r.cp.Tables[i] = adminapi.TableProgress{Name: t.name, EstimatedRows: t.estRows}
	}
	for _, p := range plan.parts {
		r.left[p.table]++
	}
	return r
}

// count is what a part's copy calls as rows go through.
func (r *copyReport) count(table int) func(rows, bytes int64) {
	return func(rows, bytes int64) {
		r.mu.Lock()
		r.cp.Tables[table].Rows += rows
		r.cp.Tables[table].Bytes += bytes
		r.mu.Unlock()
	}
}

// partDone marks a part of table copied; the table is done with its last.
func (r *copyReport) partDone(table int) {
	r.mu.Lock()
	r.left[table]--
	r.cp.Tables[table].Done = r.left[table] == 0
	r.mu.Unlock()
}

func (r *copyReport) report() {
	r.mu.Lock()
	out := r.cp
	out.Tables = slices.Clone(r.cp.Tables)
	r.mu.Unlock()
	out.ETASeconds = eta(out)
	r.out(out)
}

// run reports until stop is called, which returns once it stopped.
func (r *copyReport) run() (stop func()) {
	quit, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				r.report()
			}
		}
	}()
	return func() { close(quit); <-stopped }
}

// copyRows copies the rows of every table as plan says, reporting
// progress: with one session on src and dst, the coordinator's
// connections (inside its transaction); with more, each session on
// connections of its own (copySession).
func copyRows(ctx context.Context, src, dst *pgconn.PgConn, tables []tableCopy, plan copyPlan, job copyJob) error {
	rep := newCopyReport(tables, plan, job.progress)
	stop := rep.run()
	defer stop()
	if plan.sessions > 1 {
		queue := make(chan copyPart, len(plan.parts))
		for _, p := range plan.parts {
			queue <- p
		}
		close(queue)
		g, gctx := errgroup.WithContext(ctx)
		for n := range plan.sessions {
			g.Go(func() error { return copySession(gctx, job, n, tables, queue, rep) })
		}
		if err := g.Wait(); err != nil {
			return err
		}
	} else {
		for _, p := range plan.parts {
			if err := copyOne(ctx, src, dst, tables, p, rep); err != nil {
				return err
			}
		}
	}
	rep.mu.Lock()
	rep.cp.Done, rep.cp.Finished = true, time.Now()
	rep.mu.Unlock()
	rep.report()
	return nil
}

// copyOne copies one part.
func copyOne(ctx context.Context, src, dst *pgconn.PgConn, tables []tableCopy, p copyPart, rep *copyReport) error {
	t := tables[p.table]
	if err := pipeCopy(ctx, src, dst, p.source(t), fmt.Sprintf("COPY %s (%s) FROM STDIN", t.name, t.columns), rep.count(p.table)); err != nil {
		if p.lo > 0 || p.hi > 0 {
			return fmt.Errorf("copy table %s (blocks from %d): %w", t.name, p.lo, err)
		}
		return fmt.Errorf("copy table %s: %w", t.name, err)
	}
	rep.partDone(p.table)
	return nil
}

// copySession is session n of a parallel row copy: it reads the via node
// under the snapshot, and writes in one local transaction, with
// session_replication_role replica (the copy guard does not stop it),
// bound to replication origin n of the copy and stamped with copyTime:
// like the coordinator's, its rows carry an origin (no member ever applies
// them) and lose to every real change. It takes parts from queue until
// none is left.
func copySession(ctx context.Context, job copyJob, n int, tables []tableCopy, queue <-chan copyPart, rep *copyReport) error {
	src, err := copyConnect(ctx, job.viaDSN)
	if err != nil {
		return fmt.Errorf("copy session %d: %w", n, err)
	}
	defer func() { _ = src.Close(context.Background()) }()
	if err := useSnapshot(ctx, src, job.snapshot); err != nil {
		return fmt.Errorf("copy session %d: %w", n, err)
	}
	dst, err := copyConnect(ctx, job.localDSN)
	if err != nil {
		return fmt.Errorf("copy session %d: %w", n, err)
	}
	defer func() { _ = dst.Close(context.Background()) }()
	origin := catalog.CopyOriginName(job.stamp.localOID, n)
	if _, err := dst.Exec(ctx, "SET session_replication_role = replica"); err != nil {
		return fmt.Errorf("copy session %d: %w", n, err)
	}
	if err := setOrigin(ctx, dst, origin, 0); err != nil {
		return err
	}
	if _, err := dst.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_session_setup($1)`, origin); err != nil {
		return fmt.Errorf("copy session %d: bind origin %s: %w", n, origin, err)
	}
	tx, err := beginStamped(ctx, dst, job.stamp.progress[job.stamp.via])
	if err != nil {
		return fmt.Errorf("copy session %d: %w", n, err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	for p := range queue {
		if err := copyOne(ctx, src.PgConn(), dst.PgConn(), tables, p, rep); err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("copy session %d: commit: %w", n, err)
	}
	// Released now, the origin can be dropped at once.
	if _, err := dst.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_session_reset()`); err != nil {
		return fmt.Errorf("copy session %d: %w", n, err)
	}
	return nil
}

// dropCopyOrigins drops the origins of a copy's sessions: after the copy,
// and those a copy that did not finish left behind.
func dropCopyOrigins(ctx context.Context, db catalog.DB, localOID uint32) error {
	rows, err := db.Query(ctx, `SELECT roname FROM pg_catalog.pg_replication_origin WHERE pg_catalog.starts_with(roname, $1)`,
		catalog.CopyOriginPrefix(localOID))
	if err != nil {
		return fmt.Errorf("list the origins of the copy: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("list the origins of the copy: %w", err)
	}
	for _, name := range names {
		if err := dropOrigin(ctx, db, name); err != nil {
			return err
		}
	}
	return nil
}

// guardFunction refuses a write: the statement trigger of every table
// while a parallel copy fills it (see guardTables).
const guardFunction = `CREATE FUNCTION pg_temp.bdr_copy_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'table %.% is being copied by a join of this node: writes wait for the join''s copy to commit', TG_TABLE_SCHEMA, TG_TABLE_NAME
		USING ERRCODE = '55000';
END
$$`

// guardTables makes every table the schema copy created refuse writes
// from other sessions until unguard: a statement trigger (firing, as
// ordinary triggers do, in every session but those with
// session_replication_role replica: the copy's) on a function in this
// session's temporary schema. So nothing but the copy writes the tables
// between the schema's commit and the end of the copy, which is what lets
// skipCopy move our slots past all of it; and should this session end
// first (bdrd stopped, the copy failed), PostgreSQL drops the function and
// the triggers with it.
func guardTables(ctx context.Context, tx pgx.Tx) (int, error) {
	rows, err := tx.Query(ctx, `SELECT pg_catalog.format('%I.%I', n.nspname, c.relname)
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
		  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'bdr')
		  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'
		ORDER BY 1`)
	if err != nil {
		return 0, fmt.Errorf("guard the tables: %w", err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("guard the tables: %w", err)
	}
	if len(tables) == 0 {
		return 0, nil
	}
	var b strings.Builder
	b.WriteString(guardFunction)
	for _, t := range tables {
		// t comes from format('%I.%I'): quoted by the server.
		fmt.Fprintf(&b, ";\nCREATE TRIGGER bdr_copy_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.bdr_copy_guard()", t)
	}
	if _, err := tx.Conn().PgConn().Exec(ctx, b.String()).ReadAll(); err != nil {
		return 0, fmt.Errorf("guard the tables: %w", err)
	}
	return len(tables), nil
}

// unguardTables drops the guard function and, with it, its triggers.
func unguardTables(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, `DROP FUNCTION IF EXISTS pg_temp.bdr_copy_guard() CASCADE`); err != nil {
		return fmt.Errorf("unguard the tables: %w", err)
	}
	return nil
}

// copyConnect connects for a copy with the settings of pg_dump's sessions,
// so that dates, intervals and floats go through COPY's text unchanged
// whatever the servers' defaults.
func copyConnect(ctx context.Context, dsn string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["datestyle"] = "ISO"
	cfg.RuntimeParams["intervalstyle"] = "postgres"
	cfg.RuntimeParams["extra_float_digits"] = "3"
	return pgx.ConnectConfig(ctx, cfg)
}

// useSnapshot starts a read-only transaction on the via node as of the
// join's exported snapshot.
func useSnapshot(ctx context.Context, src *pgx.Conn, snapshot string) error {
	if _, err := src.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
		return err
	}
	// snapshot matched snapshotPattern: no quote in it.
	if _, err := src.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+snapshot+"'"); err != nil {
		return fmt.Errorf("use snapshot: %w", err)
	}
	return nil
}

// beginStamped begins a local transaction on a session bound to an
// origin, stamped with the origin position lsn and copyTime.
func beginStamped(ctx context.Context, dst *pgx.Conn, lsn pglogrepl.LSN) (pgx.Tx, error) {
	tx, err := dst.Begin(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_xact_setup($1::text::pg_lsn, $2::timestamptz)`,
		lsn.String(), copyTime); err != nil {
		_ = tx.Rollback(context.Background())
		return nil, err
	}
	return tx, nil
}

// eta estimates the seconds left of the row copy from the rate so far and
// the via node's row estimates; nil while nothing is known.
func eta(cp adminapi.CopyProgress) *float64 {
	var rows, est int64
	for _, t := range cp.Tables {
		rows += t.Rows
		if t.Done {
			est += t.Rows
		} else {
			est += max(t.EstimatedRows, t.Rows)
		}
	}
	elapsed := time.Since(cp.Started).Seconds()
	if rows == 0 || est == 0 || elapsed < 1 {
		return nil
	}
	left := elapsed * float64(est-rows) / float64(rows)
	return &left
}

// pipeCopy streams the output of COPY ... TO STDOUT on src into COPY ...
// FROM STDIN on dst; count, when not nil, hears of the rows and bytes
// going through (text format: a row ends with the only unescaped newline).
func pipeCopy(ctx context.Context, src, dst *pgconn.PgConn, out, in string, count func(rows, bytes int64)) error {
	pr, pw := io.Pipe()
	var w io.Writer = pw
	if count != nil {
		w = countingWriter{w: pw, count: count}
	}
	// The provider sends a message per row: rows go through the pipe in
	// chunks, not one at a time (that cost a goroutine hand-off and a
	// CopyData message to the local server per row).
	buf := bufio.NewWriterSize(w, copyChunk)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		_, err := src.CopyTo(gctx, buf, out)
		if err == nil {
			err = buf.Flush()
		}
		pw.CloseWithError(err)
		return err
	})
	g.Go(func() error {
		_, err := dst.CopyFrom(gctx, pr, in)
		pr.CloseWithError(err)
		return err
	})
	return g.Wait()
}

// copyChunk is how much of a table's rows goes through bdrd at a time.
const copyChunk = 256 << 10

type countingWriter struct {
	w     io.Writer
	count func(rows, bytes int64)
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.count(int64(bytes.Count(p[:n], []byte{'\n'})), int64(n))
	return n, err
}
