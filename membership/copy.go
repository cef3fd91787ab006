package membership

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

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

// copySchema restores the via node's schema (everything but schema bdr and
// publications), as of the snapshot, into the local database.
func copySchema(ctx context.Context, binDir, viaDSN, snapshot, localDSN string) error {
	dump := exec.CommandContext(ctx, filepath.Join(binDir, "pg_dump"), "--schema-only", "--no-publications",
		"--no-subscriptions", "--exclude-schema="+catalog.Schema, "--snapshot="+snapshot, "--dbname="+viaDSN)
	restore := exec.CommandContext(ctx, filepath.Join(binDir, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
		"--single-transaction", "--dbname="+localDSN)
	var dumpErr, restoreErr bytes.Buffer
	dump.Stderr, restore.Stderr = &dumpErr, &restoreErr
	restore.Stdout = io.Discard
	pipe, err := dump.StdoutPipe()
	if err != nil {
		return fmt.Errorf("copy schema: %w", err)
	}
	restore.Stdin = pipe
	if err := restore.Start(); err != nil {
		return fmt.Errorf("copy schema: start psql: %w", err)
	}
	if err := dump.Run(); err != nil {
		_ = restore.Wait()
		return fmt.Errorf("copy schema: pg_dump: %v: %s", err, lastLine(dumpErr.String()))
	}
	if err := restore.Wait(); err != nil {
		return fmt.Errorf("copy schema: psql: %v: %s", err, lastLine(restoreErr.String()))
	}
	return nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// copyData copies every table's rows and every sequence's value from the
// via node, as of the snapshot, in one local transaction bound to the via
// node's origin and stamped with the slot's position: the origin's progress
// commits with the data (DESIGN rule 1), and the rows carry copyTime.
func copyData(ctx context.Context, viaDSN, snapshot, localDSN string, stamp copyStamp, progress func(string)) error {
	origin, lsn := catalog.OriginName(stamp.localOID, stamp.via), stamp.progress[stamp.via]
	src, err := pgx.Connect(ctx, viaDSN)
	if err != nil {
		return fmt.Errorf("copy data: %w", err)
	}
	defer func() { _ = src.Close(context.Background()) }()
	dst, err := pgx.Connect(ctx, localDSN)
	if err != nil {
		return fmt.Errorf("copy data: %w", err)
	}
	defer func() { _ = dst.Close(context.Background()) }()

	if _, err := src.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
		return fmt.Errorf("copy data: %w", err)
	}
	if _, err := src.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+snapshot+"'"); err != nil {
		return fmt.Errorf("copy data: use snapshot: %w", err)
	}
	tables, err := copyTables(ctx, src)
	if err != nil {
		return err
	}
	for _, s := range []string{
		"SET session_replication_role = replica",
	} {
		if _, err := dst.Exec(ctx, s); err != nil {
			return fmt.Errorf("copy data: %w", err)
		}
	}
	if err := setOrigin(ctx, dst, origin, 0); err != nil {
		return err
	}
	if _, err := dst.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_session_setup($1)`, origin); err != nil {
		return fmt.Errorf("copy data: bind origin %s: %w", origin, err)
	}
	tx, err := dst.Begin(ctx)
	if err != nil {
		return fmt.Errorf("copy data: %w", err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if _, err := tx.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_xact_setup($1::text::pg_lsn, $2::timestamptz)`,
		lsn.String(), copyTime); err != nil {
		return fmt.Errorf("copy data: %w", err)
	}
	for i, t := range tables {
		progress(fmt.Sprintf("copying %s (table %d of %d)", t.name, i+1, len(tables)))
		if err := copyTable(ctx, src.PgConn(), dst.PgConn(), t); err != nil {
			return err
		}
	}
	if err := copySequences(ctx, src, tx); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("copy data: commit: %w", err)
	}
	if _, err = dst.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_session_reset()`); err != nil {
		return err
	}
	created := map[string]bool{}
	for i, t := range tables {
		progress(fmt.Sprintf("restamping %s with the versions of its rows (table %d of %d)", t.name, i+1, len(tables)))
		n, err := restamp(ctx, src, dst, t, stamp, created)
		if err != nil {
			return err
		}
		if n > 0 {
			progress(fmt.Sprintf("restamped %d recent versions of %s", n, t.name))
		}
	}
	return nil
}

type tableCopy struct {
	name    string // quoted schema.table
	columns string // quoted, comma separated
}

func copyTables(ctx context.Context, src *pgx.Conn) ([]tableCopy, error) {
	rows, err := src.Query(ctx, `SELECT n.nspname, c.relname, array_agg(a.attname::text ORDER BY a.attnum)
		FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		WHERE c.relkind = 'r' AND c.relpersistence = 'p'
		  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'bdr') AND n.nspname NOT LIKE 'pg_toast%'
		GROUP BY 1, 2 ORDER BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("copy data: list tables: %w", err)
	}
	var out []tableCopy
	for rows.Next() {
		var schema, name string
		var cols []string
		if err := rows.Scan(&schema, &name, &cols); err != nil {
			return nil, fmt.Errorf("copy data: list tables: %w", err)
		}
		quoted := make([]string, len(cols))
		for i, c := range cols {
			quoted[i] = pgx.Identifier{c}.Sanitize()
		}
		out = append(out, tableCopy{name: pgx.Identifier{schema, name}.Sanitize(), columns: strings.Join(quoted, ", ")})
	}
	return out, rows.Err()
}

// copyTable streams one table from src to dst with COPY.
func copyTable(ctx context.Context, src, dst *pgconn.PgConn, t tableCopy) error {
	err := pipeCopy(ctx, src, dst, fmt.Sprintf("COPY (SELECT %s FROM ONLY %s) TO STDOUT", t.columns, t.name),
		fmt.Sprintf("COPY %s (%s) FROM STDIN", t.name, t.columns))
	if err != nil {
		return fmt.Errorf("copy table %s: %w", t.name, err)
	}
	return nil
}

// pipeCopy streams the output of COPY ... TO STDOUT on src into COPY ...
// FROM STDIN on dst.
func pipeCopy(ctx context.Context, src, dst *pgconn.PgConn, out, in string) error {
	pr, pw := io.Pipe()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		_, err := src.CopyTo(gctx, pw, out)
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
