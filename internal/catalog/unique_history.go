package catalog

// migrationUniqueHistory is migration 10: the history of the values rows
// had in unique indexes other than the key (bdr.unique_history).
//
// The applier settles a unique collision by version: of two rows of
// different keys with the same value of a unique index, the older loses
// (package apply, plan_unique.go). For every node to delete the same rows
// whatever order the changes arrive in, a row version must lose to every
// newer version of another key that had its value, not only to the ones
// still in the table when it arrives: a node where the newer version
// arrived first and was changed since (its value changed, its row deleted,
// or never applied because its own key had a newer version there) must
// still see it. So every version that held a value of such an index is
// kept here with its version (commit time and origin):
//
//   - the trigger bdr_tombstone_unique keeps the old row of every delete,
//     and of every update that changes one of those columns (a local
//     change or an applied one alike: ENABLE ALWAYS);
//   - the applier's unique statement keeps every remote version it checks,
//     whether it is then applied or not.
//
// The applier reads it with the tombstones' deleted rows (ghosts). bdrd
// removes the entries every peer has gone past, with the tombstones.
// Tables without such an index get no trigger. The trigger's arguments are
// the number of key columns, the key columns, then the unique columns.
// The id is its replica identity: the publication of all tables takes it
// in, and bdrd's collection deletes from it.
const migrationUniqueHistory = `
CREATE TABLE bdr.unique_history (
	id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	relid      oid NOT NULL,
	key        jsonb NOT NULL,
	row        jsonb NOT NULL,
	row_time   timestamptz,
	row_origin oid
);
CREATE INDEX unique_history_relid ON bdr.unique_history (relid);
CREATE INDEX unique_history_row_time ON bdr.unique_history (row_time);

CREATE FUNCTION bdr.unique_superseded() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
	o jsonb := pg_catalog.to_jsonb(OLD);
	n jsonb;
	nkeys int := TG_ARGV[0]::int;
	changed boolean := TG_OP = 'DELETE';
	v record;
BEGIN
	IF NOT changed THEN
		n := pg_catalog.to_jsonb(NEW);
		FOR i IN nkeys + 1 .. TG_NARGS - 1 LOOP
			changed := changed OR (o -> TG_ARGV[i]) IS DISTINCT FROM (n -> TG_ARGV[i]);
		END LOOP;
		IF NOT changed THEN
			RETURN NULL;
		END IF;
	END IF;
	SELECT c.timestamp, c.roident INTO v FROM pg_catalog.pg_xact_commit_timestamp_origin(OLD.xmin) c;
	-- No commit time: a version this transaction wrote (no other node has
	-- it), or one too old to matter (frozen, or from before commit times).
	IF v.timestamp IS NULL THEN
		RETURN NULL;
	END IF;
	INSERT INTO bdr.unique_history (relid, key, row, row_time, row_origin)
	SELECT TG_RELID, pg_catalog.jsonb_object_agg(TG_ARGV[i], o -> TG_ARGV[i]), o, v.timestamp, v.roident
	  FROM pg_catalog.generate_series(1, nkeys) i;
	RETURN NULL;
END
$$;

-- The columns of the unique indexes of table rel other than its key's,
-- as the applier checks them (valid, no predicate, no expression).
CREATE FUNCTION bdr.unique_columns(rel oid) RETURNS name[]
LANGUAGE sql STABLE AS $$
	SELECT pg_catalog.array_agg(DISTINCT a.attname ORDER BY a.attname)
	  FROM pg_catalog.pg_index i
	 CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::int2[]) k(attnum)
	  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
	 WHERE i.indrelid = rel AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
	   AND NOT (SELECT pg_catalog.array_agg(x.attname ORDER BY x.attname) FROM pg_catalog.pg_attribute x
	             WHERE x.attrelid = rel AND x.attnum = ANY (i.indkey::int2[]))
	           IS NOT DISTINCT FROM
	           (SELECT pg_catalog.array_agg(y ORDER BY y) FROM pg_catalog.unnest(bdr.key_columns(rel)) y)
$$;

CREATE OR REPLACE FUNCTION bdr.track_deletes(rel oid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	t text;
	cols name[];
	ucols name[];
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
	ucols := bdr.unique_columns(rel);
	IF cols IS NULL THEN
		EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS bdr_tombstone ON %s', t);
		EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS bdr_tombstone_key ON %s', t);
		EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS bdr_tombstone_unique ON %s', t);
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
		IF ucols IS NULL THEN
			EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS bdr_tombstone_unique ON %s', t);
		ELSE
			EXECUTE pg_catalog.format('CREATE OR REPLACE TRIGGER bdr_tombstone_unique AFTER DELETE OR UPDATE OF %s ON %s FOR EACH ROW EXECUTE FUNCTION bdr.unique_superseded(%s, %s, %s)',
				(SELECT pg_catalog.string_agg(pg_catalog.quote_ident(x), ', ') FROM pg_catalog.unnest(ucols) x),
				t, pg_catalog.quote_literal(pg_catalog.cardinality(cols)), args,
				(SELECT pg_catalog.string_agg(pg_catalog.quote_literal(x), ', ') FROM pg_catalog.unnest(ucols) x));
			EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER bdr_tombstone_unique', t);
		END IF;
	END IF;
	PERFORM pg_catalog.set_config('bdr.tracking_deletes', 'off', true);
END
$$;

-- CREATE INDEX names the index: its table's triggers are made again.
CREATE OR REPLACE FUNCTION bdr.track_deletes_ddl() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
	r record;
BEGIN
	IF coalesce(pg_catalog.current_setting('bdr.tracking_deletes', true), '') = 'on' THEN
		RETURN;
	END IF;
	FOR r IN SELECT DISTINCT coalesce(i.indrelid, d.objid) AS objid
	           FROM pg_catalog.pg_event_trigger_ddl_commands() d
	           LEFT JOIN pg_catalog.pg_index i ON d.object_type = 'index' AND i.indexrelid = d.objid
	          WHERE d.object_type IN ('table', 'index') LOOP
		PERFORM bdr.track_deletes(r.objid);
	END LOOP;
END
$$;

DROP EVENT TRIGGER bdr_track_deletes;
CREATE EVENT TRIGGER bdr_track_deletes ON ddl_command_end
	WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'CREATE INDEX')
	EXECUTE FUNCTION bdr.track_deletes_ddl();

SELECT bdr.track_deletes(c.oid) FROM pg_catalog.pg_class c WHERE c.relkind = 'r';
`
