package membership

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
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

// copyTime is the commit time stamped on copied rows: older than any real
// change, so every change made after the snapshot wins over the copy.
const copyTime = "2000-01-01 00:00:00.000001+00"

var snapshotPattern = regexp.MustCompile(`^[0-9A-F]+-[0-9A-F]+(-[0-9]+)?$`)

// viaSnapshot is the exported snapshot of the via node, held open by the
// replication connection that created our slot there.
type viaSnapshot struct {
	conn     *pgconn.PgConn
	name     string
	lsn      pglogrepl.LSN            // consistent point of slot bdr_<self> on the via node
	viaOID   uint32                   // of the via node's database
	progress map[string]pglogrepl.LSN // where to start each other member's stream
}

func (v *viaSnapshot) close() {
	if v.conn != nil {
		_ = v.conn.Close(context.Background())
		v.conn = nil
	}
}

// snapshot pauses the via node's appliers, creates slot bdr_<self> there
// with an exported snapshot, reads the via node's progress from every other
// member, and resumes (DESIGN "Join", step 4).
func (j *joiner) snapshot(ctx context.Context, start map[string]pglogrepl.LSN) (*viaSnapshot, error) {
	s, via := j.s, j.task.via
	c := s.client(via.AdminAddr)
	if err := c.Pause(ctx, pauseLease); err != nil {
		return nil, fmt.Errorf("pause %s: %w", via.Name, err)
	}
	defer func() { _ = c.Resume(context.WithoutCancel(ctx)) }()

	viaDSN := j.viaNode().PublicDSN
	cfg, err := pgconn.ParseConfig(viaDSN)
	if err != nil {
		return nil, fmt.Errorf("via node dsn: %w", err)
	}
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["application_name"] = "bdr join " + s.cfg.NodeName
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", via.Name, err)
	}
	snap := &viaSnapshot{conn: conn, progress: map[string]pglogrepl.LSN{}}
	vconn, err := pgx.Connect(ctx, viaDSN)
	if err != nil {
		snap.close()
		return nil, fmt.Errorf("connect to %s: %w", via.Name, err)
	}
	defer func() { _ = vconn.Close(context.Background()) }()
	viaOID, err := catalog.DatabaseOID(ctx, vconn)
	if err != nil {
		snap.close()
		return nil, fmt.Errorf("on %s: %w", via.Name, err)
	}
	snap.viaOID = viaOID
	slot := catalog.SlotName(viaOID, s.cfg.NodeName)
	res, err := pglogrepl.CreateReplicationSlot(ctx, conn, slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "EXPORT_SNAPSHOT"})
	if err != nil {
		snap.close()
		return nil, fmt.Errorf("create slot %s on %s: %w", slot, via.Name, err)
	}
	if !snapshotPattern.MatchString(res.SnapshotName) {
		snap.close()
		return nil, fmt.Errorf("create slot on %s: unexpected snapshot name %q", via.Name, res.SnapshotName)
	}
	snap.name = res.SnapshotName
	if snap.lsn, err = pglogrepl.ParseLSN(res.ConsistentPoint); err != nil {
		snap.close()
		return nil, fmt.Errorf("create slot on %s: %w", via.Name, err)
	}

	for name, slotStart := range start {
		var p *string
		if err := vconn.QueryRow(ctx, `SELECT pg_catalog.pg_replication_origin_progress($1, false)::text`,
			catalog.OriginName(viaOID, name)).Scan(&p); err != nil {
			snap.close()
			return nil, fmt.Errorf("read progress of %s on %s: %w", name, via.Name, err)
		}
		lsn := slotStart
		if p != nil {
			applied, err := pglogrepl.ParseLSN(*p)
			if err != nil {
				snap.close()
				return nil, err
			}
			lsn = max(lsn, applied)
		}
		snap.progress[name] = lsn
	}
	return snap, nil
}

// createSlot creates the pgoutput slot for subscriber in the database of
// dsn and returns its consistent point.
func createSlot(ctx context.Context, dsn, subscriber string) (pglogrepl.LSN, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, fmt.Errorf("create slot for %s: %w", subscriber, err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	oid, err := catalog.DatabaseOID(ctx, conn)
	if err != nil {
		return 0, fmt.Errorf("create slot for %s: %w", subscriber, err)
	}
	name := catalog.SlotName(oid, subscriber)
	var lsn string
	err = conn.QueryRow(ctx, `SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')`, name).Scan(&lsn)
	if err != nil {
		return 0, fmt.Errorf("create slot %s: %w", name, err)
	}
	return pglogrepl.ParseLSN(lsn)
}

// skipCopy moves this node's slots for the members (made before the copy,
// so that no local write is missed) past the copy's commit, at end. On
// PostgreSQL 15 every member's walsender would otherwise decode the whole
// copy, spill it, and send it over the network, for the member to drop it
// by origin. No local write is skipped: the copy created the tables (or
// replaced them, dropping what was written to the old ones), so whatever
// commits after it is past end. Advancing only reads the WAL. Skipping is
// an optimization: a join resumed after a crash before it just streams more.
func skipCopy(ctx context.Context, db catalog.DB, localOID uint32, members []adminapi.Node, end pglogrepl.LSN) error {
	for _, m := range members {
		slot := catalog.SlotName(localOID, m.Name)
		if _, err := db.Exec(ctx, `SELECT pg_catalog.pg_replication_slot_advance($1, $2::text::pg_lsn)
			FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND confirmed_flush_lsn < $2::text::pg_lsn`,
			slot, end.String()); err != nil {
			return fmt.Errorf("move slot %s past the copy: %w", slot, err)
		}
	}
	return nil
}

// dropSlot drops the slot for subscriber in the database of dsn, first
// ending the session that streams from it. A missing slot is not an error.
func dropSlot(ctx context.Context, dsn, subscriber string) error {
	cctx, cancel := context.WithTimeout(ctx, peerTimeout)
	defer cancel()
	conn, err := pgx.Connect(cctx, dsn)
	if err != nil {
		return fmt.Errorf("drop slot for %s: %w", subscriber, err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	oid, err := catalog.DatabaseOID(ctx, conn)
	if err != nil {
		return fmt.Errorf("drop slot for %s: %w", subscriber, err)
	}
	name := catalog.SlotName(oid, subscriber)
	for attempt := 0; ; attempt++ {
		_, err = conn.Exec(ctx, `SELECT pg_catalog.pg_terminate_backend(active_pid) FROM pg_catalog.pg_replication_slots
			WHERE slot_name = $1 AND active_pid IS NOT NULL`, name)
		if err == nil {
			_, err = conn.Exec(ctx, `SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots
				WHERE slot_name = $1`, name)
		}
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "55006" || attempt >= dropAttempts {
			break
		}
		time.Sleep(100 * time.Millisecond) // the terminated walsender is still exiting
	}
	if err != nil {
		return fmt.Errorf("drop slot %s: %w", name, err)
	}
	return nil
}

// setOrigin creates origin name if needed and sets its progress to lsn.
func setOrigin(ctx context.Context, db catalog.DB, name string, lsn pglogrepl.LSN) error {
	if _, err := db.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_create($1)
		WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_origin WHERE roname = $1)`, name); err != nil {
		return fmt.Errorf("create origin %s: %w", name, err)
	}
	if _, err := db.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_advance($1, $2::text::pg_lsn)`, name, lsn.String()); err != nil {
		return fmt.Errorf("set origin %s to %s: %w", name, lsn, err)
	}
	return nil
}

// dropOrigin drops origin name if it exists.
func dropOrigin(ctx context.Context, db catalog.DB, name string) error {
	var err error
	for attempt := 0; attempt < dropAttempts; attempt++ {
		_, err = db.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_drop(roname)
			FROM pg_catalog.pg_replication_origin WHERE roname = $1`, name)
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "55006" {
			break
		}
		time.Sleep(100 * time.Millisecond) // the applier session is still closing
	}
	if err != nil {
		return fmt.Errorf("drop origin %s: %w", name, err)
	}
	return nil
}

// dumpSection returns the SQL of one section of the via node's schema
// (pre-data or post-data; everything but schema bdr and publications) as of
// the snapshot. pg_dump's \restrict lines, psql commands, are left out: the
// SQL runs on a connection of ours.
func dumpSection(ctx context.Context, binDir, viaDSN, snapshot, section string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "pg_dump"), "--section="+section, "--no-publications",
		"--no-subscriptions", "--exclude-schema="+catalog.Schema, "--snapshot="+snapshot, "--dbname="+viaDSN)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("copy schema: pg_dump: %v: %s", err, lastLine(stderr.String()))
	}
	lines := strings.SplitAfter(string(out), "\n")
	var b strings.Builder
	for _, l := range lines {
		if strings.HasPrefix(l, `\restrict `) || strings.HasPrefix(l, `\unrestrict `) {
			continue
		}
		b.WriteString(l)
	}
	return b.String(), nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// copyJob is the copy of the via node's schema and data into the local
// database.
type copyJob struct {
	binDir, viaDSN, snapshot, localDSN string
	stamp                              copyStamp
	// replace drops the user objects of the local database first (in the
	// same transaction).
	replace  bool
	phase    func(string)                // a step of the copy
	progress func(adminapi.CopyProgress) // the row copy, a few times a second
}

// progressEvery is how often the row copy reports.
const progressEvery = 250 * time.Millisecond

// copyAll copies schema, rows and sequence values from the via node, as of
// the snapshot, in ONE local transaction bound to the via node's origin and
// stamped with the slot's position: the origin's progress commits with the
// data (DESIGN rule 1), the rows carry copyTime, and a copy that fails
// leaves the database as it was. Tables are created without their indexes
// and constraints, which are built after the rows (as pg_restore does).
// Then rows written shortly before the join get their versions back
// (restamp). It returns the local end of the copy's commit.
func copyAll(ctx context.Context, job copyJob) (end pglogrepl.LSN, err error) {
	stamp := job.stamp
	origin, lsn := catalog.OriginName(stamp.localOID, stamp.via), stamp.progress[stamp.via]
	job.phase("dumping the schema")
	var pre, post string
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) {
		pre, err = dumpSection(gctx, job.binDir, job.viaDSN, job.snapshot, "pre-data")
		return
	})
	g.Go(func() (err error) {
		post, err = dumpSection(gctx, job.binDir, job.viaDSN, job.snapshot, "post-data")
		return
	})
	if err := g.Wait(); err != nil {
		return 0, err
	}
	src, err := pgx.Connect(ctx, job.viaDSN)
	if err != nil {
		return 0, fmt.Errorf("copy data: %w", err)
	}
	defer func() { _ = src.Close(context.Background()) }()
	dst, err := pgx.Connect(ctx, job.localDSN)
	if err != nil {
		return 0, fmt.Errorf("copy data: %w", err)
	}
	defer func() { _ = dst.Close(context.Background()) }()

	if _, err := src.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
		return 0, fmt.Errorf("copy data: %w", err)
	}
	if _, err := src.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+job.snapshot+"'"); err != nil {
		return 0, fmt.Errorf("copy data: use snapshot: %w", err)
	}
	tables, err := copyTables(ctx, src)
	if err != nil {
		return 0, err
	}
	// The recent versions are read while the rows are copied.
	cctx, cancel := context.WithCancel(ctx)
	rdst, collected, err := startCollect(cctx, job, tables)
	if err != nil {
		cancel()
		return 0, err
	}
	defer func() {
		cancel()
		_, _ = collected() // the collector is done with rdst
		_ = rdst.Close(context.Background())
	}()
	if _, err := dst.Exec(ctx, "SET session_replication_role = replica"); err != nil {
		return 0, fmt.Errorf("copy data: %w", err)
	}
	if err := setOrigin(ctx, dst, origin, 0); err != nil {
		return 0, err
	}
	if _, err := dst.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_session_setup($1)`, origin); err != nil {
		return 0, fmt.Errorf("copy data: bind origin %s: %w", origin, err)
	}
	tx, err := dst.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("copy data: %w", err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if _, err := tx.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_xact_setup($1::text::pg_lsn, $2::timestamptz)`,
		lsn.String(), copyTime); err != nil {
		return 0, fmt.Errorf("copy data: %w", err)
	}
	if job.replace {
		job.phase("dropping the user objects the database holds (replaced by the group's)")
		if n, err := dropUserObjects(ctx, tx); err != nil {
			return 0, err
		} else if n > 0 {
			job.phase(fmt.Sprintf("dropped %d user objects; creating tables", n))
		}
	}
	job.phase(fmt.Sprintf("creating %d tables", len(tables)))
	// pg_dump's SQL sets search_path to '' for the session; every name
	// below is qualified.
	if _, err := dst.PgConn().Exec(ctx, pre).ReadAll(); err != nil {
		return 0, fmt.Errorf("copy schema (tables): %w", err)
	}
	if err := copyRows(ctx, src.PgConn(), dst.PgConn(), tables, job); err != nil {
		return 0, err
	}
	if err := copySequences(ctx, src, tx); err != nil {
		return 0, err
	}
	job.phase("building indexes and constraints")
	if _, err := dst.PgConn().Exec(ctx, post).ReadAll(); err != nil {
		return 0, fmt.Errorf("copy schema (indexes and constraints): %w", err)
	}
	if err := copyReplicatedCatalog(ctx, src, dst); err != nil {
		return 0, err
	}
	job.phase("committing the copy")
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("copy data: commit: %w", err)
	}
	// The origin's local_lsn is the end of the commit just made: no other
	// session can bind the origin while this one holds it.
	var local string
	if err := dst.QueryRow(ctx, `SELECT local_lsn::text FROM pg_catalog.pg_replication_origin_status WHERE external_id = $1`,
		origin).Scan(&local); err != nil {
		return 0, fmt.Errorf("copy data: read the local end of the copy: %w", err)
	}
	if end, err = pglogrepl.ParseLSN(local); err != nil {
		return 0, fmt.Errorf("copy data: read the local end of the copy: %w", err)
	}
	if _, err = dst.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_session_reset()`); err != nil {
		return 0, err
	}
	job.phase("reading the versions of recent rows")
	vs, err := collected()
	if err != nil {
		return 0, err
	}
	created := map[string]bool{}
	for i, v := range vs {
		if v.count == 0 {
			continue
		}
		job.phase(fmt.Sprintf("restamping %d recent rows of %s with their versions (table %d of %d)", v.count, v.t.name, i+1, len(vs)))
		n, err := restamp(ctx, rdst, v, stamp, created)
		if err != nil {
			return 0, err
		}
		job.phase(fmt.Sprintf("restamped %d versions of %s", n, v.t.name))
	}
	return end, nil
}

// startCollect reads the recent versions of every table (collectVersions)
// on connections of its own while the rows are copied; collected waits for
// it. The restamp runs on the returned local connection, which holds them.
func startCollect(ctx context.Context, job copyJob, tables []tableCopy) (*pgx.Conn, func() ([]versions, error), error) {
	src, err := pgx.Connect(ctx, job.viaDSN)
	if err != nil {
		return nil, nil, fmt.Errorf("restamp: %w", err)
	}
	dst, err := pgx.Connect(ctx, job.localDSN)
	if err != nil {
		_ = src.Close(context.Background())
		return nil, nil, fmt.Errorf("restamp: %w", err)
	}
	var vs []versions
	done := make(chan error, 1)
	var result error
	var once sync.Once
	go func() {
		defer func() { _ = src.Close(context.Background()) }()
		done <- func() error {
			if _, err := src.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
				return fmt.Errorf("restamp: %w", err)
			}
			if _, err := src.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+job.snapshot+"'"); err != nil {
				return fmt.Errorf("restamp: use snapshot: %w", err)
			}
			for i, t := range tables {
				v, err := collectVersions(ctx, src, dst, t, i, job.stamp)
				if err != nil {
					return err
				}
				vs = append(vs, v)
			}
			return nil
		}()
	}()
	return dst, func() ([]versions, error) {
		once.Do(func() { result = <-done })
		return vs, result
	}, nil
}

// copyRows copies every table's rows, reporting progress.
func copyRows(ctx context.Context, src, dst *pgconn.PgConn, tables []tableCopy, job copyJob) error {
	cp := adminapi.CopyProgress{Started: time.Now(), Tables: make([]adminapi.TableProgress, len(tables))}
	for i, t := range tables {
		cp.Tables[i] = adminapi.TableProgress{Name: t.name, EstimatedRows: t.estRows}
	}
	var mu sync.Mutex
	report := func() {
		mu.Lock()
		out := cp
		out.Tables = slices.Clone(cp.Tables)
		mu.Unlock()
		out.ETASeconds = eta(out)
		job.progress(out)
	}
	stop := make(chan struct{})
	ticks := make(chan struct{})
	go func() {
		defer close(ticks)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				report()
			}
		}
	}()
	defer func() { close(stop); <-ticks }()
	for i, t := range tables {
		count := func(rows, bytes int64) {
			mu.Lock()
			cp.Tables[i].Rows += rows
			cp.Tables[i].Bytes += bytes
			mu.Unlock()
		}
		err := pipeCopy(ctx, src, dst, fmt.Sprintf("COPY (SELECT %s FROM ONLY %s) TO STDOUT", t.columns, t.name),
			fmt.Sprintf("COPY %s (%s) FROM STDIN", t.name, t.columns), count)
		if err != nil {
			return fmt.Errorf("copy table %s: %w", t.name, err)
		}
		mu.Lock()
		cp.Tables[i].Done = true
		mu.Unlock()
	}
	mu.Lock()
	cp.Done, cp.Finished = true, time.Now()
	mu.Unlock()
	report()
	return nil
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

type tableCopy struct {
	name    string // quoted schema.table
	columns string // quoted, comma separated
	estRows int64  // the via node's estimate, 0 unknown
}

func copyTables(ctx context.Context, src *pgx.Conn) ([]tableCopy, error) {
	rows, err := src.Query(ctx, `SELECT n.nspname, c.relname, array_agg(a.attname::text ORDER BY a.attnum),
			greatest(c.reltuples, 0)::bigint
		FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		WHERE c.relkind = 'r' AND c.relpersistence = 'p'
		  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'bdr') AND n.nspname NOT LIKE 'pg_toast%'
		GROUP BY 1, 2, c.reltuples ORDER BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("copy data: list tables: %w", err)
	}
	var out []tableCopy
	for rows.Next() {
		var schema, name string
		var cols []string
		var est int64
		if err := rows.Scan(&schema, &name, &cols, &est); err != nil {
			return nil, fmt.Errorf("copy data: list tables: %w", err)
		}
		quoted := make([]string, len(cols))
		for i, c := range cols {
			quoted[i] = pgx.Identifier{c}.Sanitize()
		}
		out = append(out, tableCopy{name: pgx.Identifier{schema, name}.Sanitize(), columns: strings.Join(quoted, ", "), estRows: est})
	}
	return out, rows.Err()
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

// copyReplicatedCatalog replaces the rows of bdr's replicated tables
// (catalog.ReplicatedTables: declarations that must hold on every node)
// with the via node's. It runs after the indexes and constraints are
// built: the trigger of bdr.delta_columns checks each declaration against
// its table's primary key.
func copyReplicatedCatalog(ctx context.Context, src, dst *pgx.Conn) error {
	for _, name := range catalog.ReplicatedTables() {
		table := pgx.Identifier{catalog.Schema, name}.Sanitize()
		var cols []string
		if err := src.QueryRow(ctx, `SELECT coalesce(array_agg(a.attname::text ORDER BY a.attnum), '{}')
			FROM pg_catalog.pg_attribute a
			WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped`, table).Scan(&cols); err != nil {
			return fmt.Errorf("copy %s: %w", table, err)
		}
		if len(cols) == 0 {
			return fmt.Errorf("copy %s: the via node has no such table (its bdrd is older: upgrade it first)", table)
		}
		quoted := make([]string, len(cols))
		for i, c := range cols {
			quoted[i] = pgx.Identifier{c}.Sanitize()
		}
		list := strings.Join(quoted, ", ")
		if _, err := dst.Exec(ctx, "DELETE FROM "+table); err != nil {
			return fmt.Errorf("copy %s: %w", table, err)
		}
		if err := pipeCopy(ctx, src.PgConn(), dst.PgConn(), fmt.Sprintf("COPY (SELECT %s FROM ONLY %s) TO STDOUT", list, table),
			fmt.Sprintf("COPY %s (%s) FROM STDIN", table, list), nil); err != nil {
			return fmt.Errorf("copy %s: %w", table, err)
		}
	}
	return nil
}

// copySequences sets every local sequence to the via node's value.
func copySequences(ctx context.Context, src *pgx.Conn, dst pgx.Tx) error {
	rows, err := src.Query(ctx, `SELECT format('%I.%I', schemaname, sequencename), last_value
		FROM pg_catalog.pg_sequences WHERE schemaname <> 'bdr' AND last_value IS NOT NULL`)
	if err != nil {
		return fmt.Errorf("copy sequences: %w", err)
	}
	type seq struct {
		name  string
		value int64
	}
	seqs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[seq])
	if err != nil {
		return fmt.Errorf("copy sequences: %w", err)
	}
	for _, s := range seqs {
		if _, err := dst.Exec(ctx, `SELECT pg_catalog.setval($1::regclass, $2, true)`, s.name, s.value); err != nil {
			return fmt.Errorf("copy sequence %s: %w", s.name, err)
		}
	}
	return nil
}
