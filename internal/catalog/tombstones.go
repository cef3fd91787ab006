package catalog

import (
	"bufio"
	"io"
	"strings"
)

// migrationTombstones is migration 8: tombstones, the versions of deleted
// rows.
//
// Last update wins compares the versions of a row: the commit time and
// node of its latest change. A deleted row has none left in the table, so
// without a trace of the delete a node cannot tell a row deleted here from
// one that never arrived, nor whether a remote change is older or newer
// than the delete. bdr.tombstones keeps that trace: one row per deleted key
// of a table, whose own version (the commit time and origin of its xmin, as
// for any row) is the delete's. The applier reads it when a remote change
// finds no row (package apply, plan_resolve.go) and bdrd removes the
// tombstones every peer has gone past (apply's tombstone collection).
//
// Rows are written by the triggers bdr_tombstone (AFTER DELETE) and
// bdr_tombstone_key (AFTER UPDATE of the key columns that changes them: a
// key change deletes the old key), on every table with a replica identity
// key. They are ENABLE ALWAYS, so the applier's deletes leave tombstones
// too, stamped with the remote commit. The event trigger bdr_track_deletes
// puts them on tables as they are created or altered (a new primary key, a
// new replica identity); this migration puts them on the tables that exist.
// A join copies them with the schema (pg_dump, session_replication_role
// replica, where event triggers do not fire).
//
// A row with deleted false marks a key whose row the applier inserted from
// a remote UPDATE that found no row and no tombstone: its INSERT had not
// arrived yet (the insert_update conflict, when it does).
//
// The key is the jsonb object of the key columns' values (to_jsonb of the
// row, so the applier builds the same with jsonb_build_object). A tombstone
// also keeps the deleted row (row) and the version it had (row_time and
// row_origin; NULL when the deleting transaction wrote it): a remote row
// older than that version, colliding with it on a unique index, would have
// lost to it had it arrived before the delete, and loses to the tombstone
// (apply's plan_unique.go). TRUNCATE leaves no tombstones.
const migrationTombstones = `
CREATE TABLE bdr.tombstones (
	relid   oid NOT NULL,
	key     jsonb NOT NULL,
	deleted boolean NOT NULL DEFAULT true,
	row        jsonb,
	row_time   timestamptz,
	row_origin oid,
	PRIMARY KEY (relid, key)
);

-- Raised by the applier's statements when the row they found in their
-- snapshot was changed or deleted by a concurrent transaction before they
-- could change it (PostgreSQL then skips it): the remote transaction is
-- applied again, with a new snapshot (SQLSTATE 40001, retried).
CREATE FUNCTION bdr.concurrently_changed(what text) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
	RAISE EXCEPTION 'bdr: % changed by a concurrent transaction; the remote transaction is applied again', what
		USING ERRCODE = 'serialization_failure';
END
$$;

CREATE FUNCTION bdr.tombstone() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
	o jsonb := pg_catalog.to_jsonb(OLD);
	v record;
BEGIN
	SELECT c.timestamp, c.roident INTO v FROM pg_catalog.pg_xact_commit_timestamp_origin(OLD.xmin) c;
	INSERT INTO bdr.tombstones (relid, key, row, row_time, row_origin)
	SELECT TG_RELID, pg_catalog.jsonb_object_agg(a, o -> a), o, v.timestamp, v.roident FROM pg_catalog.unnest(TG_ARGV) a
	ON CONFLICT (relid, key) DO UPDATE SET deleted = true, row = excluded.row, row_time = excluded.row_time, row_origin = excluded.row_origin;
	RETURN NULL;
END
$$;

-- The replica identity key columns of table rel, in index order; NULL
-- when it has none (no primary key, REPLICA IDENTITY FULL or NOTHING).
CREATE FUNCTION bdr.key_columns(rel oid) RETURNS name[]
LANGUAGE sql STABLE AS $$
	SELECT pg_catalog.array_agg(a.attname ORDER BY k.ord)
	  FROM pg_catalog.pg_class c
	  JOIN pg_catalog.pg_index i ON i.indrelid = c.oid
	   AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))
	 CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
	  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
	 WHERE c.oid = rel
$$;

-- Puts the tombstone triggers on table rel (or takes them off when it has
-- no key); tables of bdr and the system, temporary and unlogged tables
-- are left alone.
CREATE FUNCTION bdr.track_deletes(rel oid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	t text;
	cols name[];
	args text;
	changed text;
	names text;
BEGIN
	SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) INTO t
	  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
	 WHERE c.oid = rel AND c.relkind = 'r' AND c.relpersistence = 'p'
	   AND n.nspname NOT IN ('bdr', 'pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%';
	IF t IS NULL THEN
		RETURN;
	END IF;
	-- The ALTER TABLE below fires the event trigger again: it returns at once.
	PERFORM pg_catalog.set_config('bdr.tracking_deletes', 'on', true);
	cols := bdr.key_columns(rel);
	IF cols IS NULL THEN
		EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS bdr_tombstone ON %s', t);
		EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS bdr_tombstone_key ON %s', t);
	ELSE
		SELECT pg_catalog.string_agg(pg_catalog.quote_literal(x), ', '),
		       pg_catalog.string_agg(pg_catalog.format('OLD.%1$I IS DISTINCT FROM NEW.%1$I', x), ' OR '),
		       pg_catalog.string_agg(pg_catalog.quote_ident(x), ', ')
		  INTO args, changed, names
		  FROM pg_catalog.unnest(cols) x;
		EXECUTE pg_catalog.format('CREATE OR REPLACE TRIGGER bdr_tombstone AFTER DELETE ON %s FOR EACH ROW EXECUTE FUNCTION bdr.tombstone(%s)', t, args);
		EXECUTE pg_catalog.format('CREATE OR REPLACE TRIGGER bdr_tombstone_key AFTER UPDATE OF %s ON %s FOR EACH ROW WHEN (%s) EXECUTE FUNCTION bdr.tombstone(%s)',
			names, t, changed, args);
		EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER bdr_tombstone, ENABLE ALWAYS TRIGGER bdr_tombstone_key', t);
	END IF;
	PERFORM pg_catalog.set_config('bdr.tracking_deletes', 'off', true);
END
$$;

CREATE FUNCTION bdr.track_deletes_ddl() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
	r record;
BEGIN
	IF coalesce(pg_catalog.current_setting('bdr.tracking_deletes', true), '') = 'on' THEN
		RETURN;
	END IF;
	FOR r IN SELECT DISTINCT objid FROM pg_catalog.pg_event_trigger_ddl_commands() WHERE object_type = 'table' LOOP
		PERFORM bdr.track_deletes(r.objid);
	END LOOP;
END
$$;

CREATE EVENT TRIGGER bdr_track_deletes ON ddl_command_end
	WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE', 'CREATE TABLE AS', 'SELECT INTO')
	EXECUTE FUNCTION bdr.track_deletes_ddl();

SELECT bdr.track_deletes(c.oid) FROM pg_catalog.pg_class c WHERE c.relkind = 'r';
`

// migrationCollisionVersions is migration 9: a tombstone may carry the
// delete's version explicitly (at_time, at_origin) instead of its xmin's.
//
// A row that a unique collision deletes (a newer remote row took its value
// of a unique index) was deleted, on every node, as of its own version:
// where it arrives after the newer row, the change that made it is what
// loses, in its own transaction. Stamped with the transaction that deleted
// it here (the newer row's), its tombstone would be newer than on the
// other nodes, and a later change of that row between the two versions (a
// node where it had moved off the value before the newer row arrived) would
// be skipped here and applied there. So the applier names the rows its
// unique statement deletes in bdr.collision_deleted ("relid/ctid;"...,
// transaction-local) and the trigger gives their tombstones the row's
// version. Any other delete clears at_time.
const migrationCollisionVersions = `
ALTER TABLE bdr.tombstones ADD COLUMN at_time timestamptz, ADD COLUMN at_origin oid;

CREATE OR REPLACE FUNCTION bdr.tombstone() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
	o jsonb := pg_catalog.to_jsonb(OLD);
	v record;
	collided boolean;
BEGIN
	SELECT c.timestamp, c.roident INTO v FROM pg_catalog.pg_xact_commit_timestamp_origin(OLD.xmin) c;
	collided := v.timestamp IS NOT NULL AND pg_catalog.strpos(coalesce(pg_catalog.current_setting('bdr.collision_deleted', true), ''),
		TG_RELID::text || '/' || OLD.ctid::text || ';') > 0;
	INSERT INTO bdr.tombstones (relid, key, row, row_time, row_origin, at_time, at_origin)
	SELECT TG_RELID, pg_catalog.jsonb_object_agg(a, o -> a), o, v.timestamp, v.roident,
		CASE WHEN collided THEN v.timestamp END, CASE WHEN collided THEN v.roident END
	FROM pg_catalog.unnest(TG_ARGV) a
	ON CONFLICT (relid, key) DO UPDATE SET deleted = true, row = excluded.row, row_time = excluded.row_time,
		row_origin = excluded.row_origin, at_time = excluded.at_time, at_origin = excluded.at_origin;
	RETURN NULL;
END
$$;
`

// FilterDump removes bdr's event triggers from the SQL pg_dump wrote of a
// database with schema bdr (pg_dump dumps every event trigger, whatever
// the schema of its function), and with tombstones false the tombstone
// triggers too: what is left restores into a database without schema bdr.
// A join keeps the tombstone triggers: the joining node has schema bdr.
func FilterDump(sql string, tombstones bool) string {
	var b strings.Builder
	f := dumpFilter{tombstones: tombstones}
	for _, l := range strings.SplitAfter(sql, "\n") {
		if f.keep(l) {
			b.WriteString(l)
		}
	}
	return b.String()
}

// CopyDump copies the SQL pg_dump writes from src to dst as FilterDump
// filters it, line by line (a whole database's dump need not fit in
// memory).
func CopyDump(dst io.Writer, src io.Reader, tombstones bool) error {
	r := bufio.NewReaderSize(src, 1<<16)
	f := dumpFilter{tombstones: tombstones}
	for {
		l, err := r.ReadString('\n')
		if l != "" && f.keep(l) {
			if _, werr := io.WriteString(dst, l); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

type dumpFilter struct {
	tombstones     bool
	inEventTrigger bool
}

func (f *dumpFilter) keep(l string) bool {
	switch {
	case f.inEventTrigger:
		f.inEventTrigger = !strings.HasSuffix(strings.TrimSpace(l), ";")
		return false
	case strings.HasPrefix(l, "CREATE EVENT TRIGGER "+Schema+"_"):
		f.inEventTrigger = !strings.HasSuffix(strings.TrimSpace(l), ";")
		return false
	case strings.HasPrefix(l, "ALTER EVENT TRIGGER "+Schema+"_"):
		return false
	case !f.tombstones && strings.HasPrefix(l, "CREATE TRIGGER "+Schema+"_tombstone"),
		!f.tombstones && strings.HasPrefix(l, "ALTER TABLE ") && strings.Contains(l, " TRIGGER "+Schema+"_tombstone"):
		return false
	}
	return true
}
