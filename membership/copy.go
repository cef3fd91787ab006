package membership

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
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
// so that no local write is missed) past the copy's last commit, at end.
// On PostgreSQL 15 every member's walsender would otherwise decode the
// whole copy, spill it, and send it over the network, for the member to
// drop it by origin. No local write is skipped: the copy created the tables
// (or replaced them, dropping what was written to the old ones), and until
// its last commit nothing but the copy could write them (one transaction,
// or the guard of a parallel copy), so whatever commits after it is past
// end. Advancing only reads the WAL. Skipping is an optimization: a join
// resumed after a crash before it just streams more.
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
// SQL runs on a connection of ours. So are bdr's own event triggers (pg_dump
// dumps every event trigger whatever the schema of its function): the
// local database has them already.
func dumpSection(ctx context.Context, binDir, viaDSN, snapshot, section string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "pg_dump"), "--section="+section, "--no-publications",
		"--no-subscriptions", "--exclude-schema="+catalog.Schema, "--snapshot="+snapshot, "--dbname="+viaDSN)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("copy schema: pg_dump: %v: %s", err, lastLine(stderr.String()))
	}
	var b strings.Builder
	for _, l := range strings.SplitAfter(catalog.FilterDump(string(out), true), "\n") {
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
	// transaction that creates the tables).
	replace bool
	// workers is the most sessions the row copy may use; minPart the
	// least one of them copies at a time (see planCopy).
	workers  int
	minPart  int64
	phase    func(string)                // a step of the copy
	progress func(adminapi.CopyProgress) // the row copy, a few times a second
}

// copyAll copies schema, rows and sequence values from the via node, as of
// the snapshot. The coordinator's session is bound to the via node's
// origin and its transactions are stamped with the slot's position and
// copyTime; the copied rows carry copyTime and an origin, so that every
// change made after the snapshot wins over them and no member ever applies
// them. Tables are created without their indexes and constraints, which are
// built after the rows (as pg_restore does).
//
// A small database (see planCopy) is copied in ONE transaction: the via
// origin's progress commits with the data (DESIGN rule 1) and a copy that
// fails leaves the database as it was. A larger one is copied by several
// sessions: the schema commits first, with every table guarded against
// writes from other sessions (guardTables); each session copies its parts
// in one transaction bound to an origin of its own (bdr_<oid>__copy<n>,
// dropped afterwards); then a last transaction of the coordinator drops
// the guard, sets the sequences, builds the indexes and constraints and
// commits the via origin's progress. A parallel copy that fails leaves
// tables partly filled, which the next join replaces.
//
// Then rows written shortly before the join get their versions back
// (restamp). It returns the local end of the copy's last commit: before it,
// nothing but the copy wrote the tables.
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
	src, err := copyConnect(ctx, job.viaDSN)
	if err != nil {
		return 0, fmt.Errorf("copy data: %w", err)
	}
	defer func() { _ = src.Close(context.Background()) }()
	dst, err := copyConnect(ctx, job.localDSN)
	if err != nil {
		return 0, fmt.Errorf("copy data: %w", err)
	}
	defer func() { _ = dst.Close(context.Background()) }()

	if err := useSnapshot(ctx, src, job.snapshot); err != nil {
		return 0, fmt.Errorf("copy data: %w", err)
	}
	tables, err := copyTables(ctx, src)
	if err != nil {
		return 0, err
	}
	plan := planCopy(tables, job.workers, job.minPart)
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
	// Origins of the sessions of a copy that did not finish.
	if err := dropCopyOrigins(ctx, dst, stamp.localOID); err != nil {
		return 0, err
	}
	if _, err := dst.Exec(ctx, "SET session_replication_role = replica"); err != nil {
		return 0, fmt.Errorf("copy data: %w", err)
	}
	if err := setOrigin(ctx, dst, origin, 0); err != nil {
		return 0, err
	}
	if _, err := dst.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_session_setup($1)`, origin); err != nil {
		return 0, fmt.Errorf("copy data: bind origin %s: %w", origin, err)
	}
	tx, err := beginStamped(ctx, dst, lsn)
	if err != nil {
		return 0, fmt.Errorf("copy data: %w", err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
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
	if plan.sessions > 1 {
		if _, err := guardTables(ctx, tx); err != nil {
			return 0, err
		}
		if err := tx.Commit(ctx); err != nil {
			return 0, fmt.Errorf("copy schema: commit: %w", err)
		}
		job.phase(fmt.Sprintf("copying the rows of %d tables in %d sessions (%d parts)", len(tables), plan.sessions, len(plan.parts)))
	} else {
		job.phase(fmt.Sprintf("copying the rows of %d tables", len(tables)))
	}
	err = copyRows(ctx, src.PgConn(), dst.PgConn(), tables, plan, job)
	if plan.sessions > 1 && ctx.Err() == nil {
		// The sessions are over: their origins go (when bdrd stops, the
		// undo at its next start drops them).
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), peerTimeout)
		derr := dropCopyOrigins(dctx, dst, stamp.localOID)
		cancel()
		if err == nil {
			err = derr
		}
	}
	if err != nil {
		return 0, err
	}
	if plan.sessions > 1 {
		// The deferred rollback above ends this one too.
		if tx, err = beginStamped(ctx, dst, lsn); err != nil {
			return 0, fmt.Errorf("copy data: %w", err)
		}
		if err := unguardTables(ctx, tx); err != nil {
			return 0, err
		}
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
	// session can bind the origin while this one holds it. The sessions'
	// commits came before.
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
			if err := useSnapshot(ctx, src, job.snapshot); err != nil {
				return fmt.Errorf("restamp: %w", err)
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
