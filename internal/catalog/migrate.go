package catalog

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DB is what the catalog needs from a connection, pool or transaction.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Schema is the name of bdr's own schema. Nothing in it replicates but
// the tables of ReplicatedTables.
const Schema = "bdr"

// ReplicatedTables lists the tables of schema bdr whose rows replicate like
// user tables (a declaration must hold on every node, or the group
// diverges): the decoder keeps their changes, the applier applies them
// (with last-update-wins), and a join copies their rows. Each has a
// primary key.
func ReplicatedTables() []string { return []string{"delta_columns", "conflict_resolvers"} }

// IsReplicated reports whether schema.table is one of ReplicatedTables.
func IsReplicated(schema, table string) bool {
	if schema != Schema {
		return false
	}
	for _, t := range ReplicatedTables() {
		if t == table {
			return true
		}
	}
	return false
}

// migrations are applied in order; each runs once, in its own transaction,
// and its index+1 is the schema version it produces. Never edit a released
// migration: append a new one.
var migrations = []string{
	// 1: node catalog, conflict history, stream status and the status view.
	`
CREATE SCHEMA IF NOT EXISTS bdr;

CREATE TABLE bdr.schema_version (
	version    int PRIMARY KEY,
	applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE bdr.nodes (
	node_id          int PRIMARY KEY CHECK (node_id > 0),
	node_name        text NOT NULL CHECK (node_name ~ '^[a-z][a-z0-9_]{0,30}$'),
	state            text NOT NULL CHECK (state IN ('joining', 'active', 'parting', 'parted')),
	is_local         boolean NOT NULL DEFAULT false,
	public_dsn       text NOT NULL,
	admin_addr       text NOT NULL,
	created_at       timestamptz NOT NULL DEFAULT now(),
	state_changed_at timestamptz NOT NULL DEFAULT now()
);
-- A parted name may join again: names are unique among the current members only.
CREATE UNIQUE INDEX nodes_current_name ON bdr.nodes (node_name) WHERE state <> 'parted';
CREATE UNIQUE INDEX nodes_one_local ON bdr.nodes (is_local) WHERE is_local AND state <> 'parted';

CREATE TABLE bdr.conflict_history (
	conflict_id          bigserial PRIMARY KEY,
	local_node_id        int NOT NULL,
	local_node_name      text NOT NULL,
	remote_node_id       int NOT NULL,
	remote_node_name     text NOT NULL,
	schema_name          text NOT NULL,
	table_name           text NOT NULL,
	conflict_type        text NOT NULL,
	resolution           text NOT NULL,
	reason               text NOT NULL,
	local_tuple          jsonb,
	local_commit_time    timestamptz,
	local_origin_node_id int,
	remote_tuple         jsonb,
	remote_xid           bigint NOT NULL,
	remote_commit_time   timestamptz NOT NULL,
	remote_commit_lsn    pg_lsn NOT NULL,
	local_time           timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX conflict_history_local_time ON bdr.conflict_history (local_time);

-- Written by bdrd about the streams it applies; unlogged: it is rebuilt
-- within a second of a restart and must not cost WAL.
CREATE UNLOGGED TABLE bdr.stream_status (
	peer_name                text PRIMARY KEY,
	state                    text NOT NULL,
	lag_bytes                bigint,
	lag_seconds              double precision,
	last_applied_commit_time timestamptz,
	last_error               text,
	updated_at               timestamptz NOT NULL DEFAULT now()
);

CREATE VIEW bdr.node_status AS
SELECT n.node_name AS peer,
       'incoming'::text AS direction,
       coalesce(s.state, 'unknown') AS state,
       s.lag_bytes,
       s.lag_seconds,
       s.last_applied_commit_time AS last_applied_remote_commit_time,
       o.remote_lsn AS position,
       s.last_error
  FROM bdr.nodes n
  LEFT JOIN bdr.stream_status s ON s.peer_name = n.node_name
  LEFT JOIN pg_catalog.pg_replication_origin_status o ON o.external_id = 'bdr_' || n.node_name
 WHERE NOT n.is_local AND n.state IN ('joining', 'active')
UNION ALL
SELECT n.node_name,
       'outgoing',
       CASE WHEN sl.slot_name IS NULL THEN 'missing'
            WHEN sl.active THEN 'streaming'
            ELSE 'inactive' END,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), sl.confirmed_flush_lsn)::bigint,
       NULL,
       NULL,
       sl.confirmed_flush_lsn,
       NULL
  FROM bdr.nodes n
  LEFT JOIN pg_catalog.pg_replication_slots sl
         ON sl.slot_name = 'bdr_' || n.node_name AND sl.database = pg_catalog.current_database()
 WHERE NOT n.is_local AND n.state IN ('joining', 'active');

-- Raised before COMMIT when a fast apply statement did not apply its row
-- (a conflict or a missing row): the applier then applies the transaction
-- again with statements that resolve and record conflicts.
CREATE FUNCTION bdr.check_applied(expected int) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	IF pg_catalog.current_setting('bdr.applied')::int <> expected THEN
		RAISE EXCEPTION 'bdr: % of % row changes applied without conflict',
			pg_catalog.current_setting('bdr.applied'), expected USING ERRCODE = 'BR001';
	END IF;
END
$$;

-- The node that wrote a row version, from the replication origin of its
-- transaction (origin 0, local writes, is handled by the caller).
CREATE FUNCTION bdr.origin_node_id(roident oid) RETURNS int
LANGUAGE sql STABLE AS $$
	SELECT n.node_id
	  FROM pg_catalog.pg_replication_origin o
	  JOIN bdr.nodes n ON o.roname = 'bdr_' || n.node_name AND n.state <> 'parted'
	 WHERE o.roident = $1
$$;
`,
	// 2: consensus and gossip addresses of the nodes, liveness of members.
	`
ALTER TABLE bdr.nodes
	ADD COLUMN gossip_addr text NOT NULL DEFAULT '',
	ADD COLUMN raft_addr   text NOT NULL DEFAULT '',
	ADD COLUMN reason      text;

-- Written by bdrd from gossip: up, suspect, down or db-down, and since when.
CREATE UNLOGGED TABLE bdr.member_status (
	node_name  text PRIMARY KEY,
	state      text NOT NULL,
	since      timestamptz NOT NULL,
	updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE VIEW bdr.node_status AS
SELECT n.node_name AS peer,
       'incoming'::text AS direction,
       coalesce(s.state, 'unknown') AS state,
       s.lag_bytes,
       s.lag_seconds,
       s.last_applied_commit_time AS last_applied_remote_commit_time,
       o.remote_lsn AS position,
       s.last_error,
       m.state AS peer_state,
       m.since AS peer_state_since
  FROM bdr.nodes n
  LEFT JOIN bdr.stream_status s ON s.peer_name = n.node_name
  LEFT JOIN pg_catalog.pg_replication_origin_status o ON o.external_id = 'bdr_' || n.node_name
  LEFT JOIN bdr.member_status m ON m.node_name = n.node_name
 WHERE NOT n.is_local AND n.state IN ('joining', 'active')
UNION ALL
SELECT n.node_name,
       'outgoing',
       CASE WHEN sl.slot_name IS NULL THEN 'missing'
            WHEN sl.active THEN 'streaming'
            ELSE 'inactive' END,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), sl.confirmed_flush_lsn)::bigint,
       NULL,
       NULL,
       sl.confirmed_flush_lsn,
       NULL,
       m.state,
       m.since
  FROM bdr.nodes n
  LEFT JOIN pg_catalog.pg_replication_slots sl
         ON sl.slot_name = 'bdr_' || n.node_name AND sl.database = pg_catalog.current_database()
  LEFT JOIN bdr.member_status m ON m.node_name = n.node_name
 WHERE NOT n.is_local AND n.state IN ('joining', 'active');
`,
	// 3: slot and origin names carry the database oid (bdr_<oid>_<node>):
	// slots and origins belong to the server, and two bdr databases on one
	// server must never share one.
	`
-- This database's slot for subscriber node, and its origin for provider node.
CREATE FUNCTION bdr.repl_name(node text) RETURNS text
LANGUAGE sql STABLE AS $$
	SELECT 'bdr_' || d.oid::text || '_' || node
	  FROM pg_catalog.pg_database d
	 WHERE d.datname = pg_catalog.current_database()
$$;

CREATE OR REPLACE FUNCTION bdr.origin_node_id(roident oid) RETURNS int
LANGUAGE sql STABLE AS $$
	SELECT n.node_id
	  FROM pg_catalog.pg_replication_origin o
	  JOIN bdr.nodes n ON n.state <> 'parted'
	   AND o.roname = 'bdr_' || (SELECT d.oid::text FROM pg_catalog.pg_database d
	                              WHERE d.datname = pg_catalog.current_database()) || '_' || n.node_name
	 WHERE o.roident = $1
$$;

CREATE OR REPLACE VIEW bdr.node_status AS
SELECT n.node_name AS peer,
       'incoming'::text AS direction,
       coalesce(s.state, 'unknown') AS state,
       s.lag_bytes,
       s.lag_seconds,
       s.last_applied_commit_time AS last_applied_remote_commit_time,
       o.remote_lsn AS position,
       s.last_error,
       m.state AS peer_state,
       m.since AS peer_state_since
  FROM bdr.nodes n
  LEFT JOIN bdr.stream_status s ON s.peer_name = n.node_name
  LEFT JOIN pg_catalog.pg_replication_origin_status o ON o.external_id = bdr.repl_name(n.node_name)
  LEFT JOIN bdr.member_status m ON m.node_name = n.node_name
 WHERE NOT n.is_local AND n.state IN ('joining', 'active')
UNION ALL
SELECT n.node_name,
       'outgoing',
       CASE WHEN sl.slot_name IS NULL THEN 'missing'
            WHEN sl.active THEN 'streaming'
            ELSE 'inactive' END,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), sl.confirmed_flush_lsn)::bigint,
       NULL,
       NULL,
       sl.confirmed_flush_lsn,
       NULL,
       m.state,
       m.since
  FROM bdr.nodes n
  LEFT JOIN pg_catalog.pg_replication_slots sl
         ON sl.slot_name = bdr.repl_name(n.node_name) AND sl.database = pg_catalog.current_database()
  LEFT JOIN bdr.member_status m ON m.node_name = n.node_name
 WHERE NOT n.is_local AND n.state IN ('joining', 'active');
`,
	// 4: parked transactions: remote transactions that could not be
	// applied, kept whole until they can be (the stream goes on), and the
	// per-table policy that stops the stream instead.
	`
CREATE TABLE bdr.apply_errors (
	error_id           bigserial PRIMARY KEY,
	origin_node_id     int NOT NULL,
	origin_node_name   text NOT NULL,
	remote_xid         bigint NOT NULL,
	remote_commit_lsn  pg_lsn NOT NULL,
	remote_end_lsn     pg_lsn NOT NULL,
	remote_commit_time timestamptz NOT NULL,
	tables             text[] NOT NULL,
	change_count       int NOT NULL,
	changes            jsonb NOT NULL,
	sqlstate           text,
	error              text NOT NULL,
	state              text NOT NULL DEFAULT 'parked' CHECK (state IN ('parked', 'applied', 'discarded')),
	attempts           int NOT NULL DEFAULT 1,
	parked_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
	last_attempt_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
	next_retry_at      timestamptz,
	resolved_at        timestamptz,
	resolved_by        text
);
CREATE INDEX apply_errors_parked ON bdr.apply_errors (origin_node_id, error_id) WHERE state = 'parked';

-- Takes a parked transaction for the retry that applies it, in the same
-- local transaction: an operator's discard waits for it, then finds it gone.
CREATE FUNCTION bdr.claim_parked(id bigint, by text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	UPDATE bdr.apply_errors SET state = 'applied', resolved_at = pg_catalog.clock_timestamp(), resolved_by = by,
		attempts = attempts + 1, last_attempt_at = pg_catalog.clock_timestamp()
	 WHERE error_id = id AND state = 'parked';
	IF NOT FOUND THEN
		RAISE EXCEPTION 'bdr: transaction % is no longer parked', id USING ERRCODE = 'BR002';
	END IF;
END
$$;

CREATE TABLE bdr.apply_error_policy (
	schema_name text NOT NULL,
	table_name  text NOT NULL,
	policy      text NOT NULL CHECK (policy IN ('park', 'pause')),
	PRIMARY KEY (schema_name, table_name)
);

-- park (the default): a transaction that cannot be applied is parked in
-- bdr.apply_errors and the stream goes on; pause: the stream stops at it
-- (error state) until the cause is fixed.
CREATE FUNCTION bdr.alter_table_apply_error_policy(tbl regclass, policy text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	s text;
	t text;
BEGIN
	IF policy IS NULL OR policy NOT IN ('park', 'pause') THEN
		RAISE EXCEPTION 'bdr: apply error policy must be park or pause, not %', coalesce(policy, 'NULL');
	END IF;
	SELECT n.nspname, c.relname INTO s, t
	  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
	 WHERE c.oid = tbl;
	INSERT INTO bdr.apply_error_policy AS p (schema_name, table_name, policy) VALUES (s, t, policy)
	ON CONFLICT (schema_name, table_name) DO UPDATE SET policy = excluded.policy;
END
$$;

ALTER TABLE bdr.stream_status ADD COLUMN parked bigint NOT NULL DEFAULT 0;

CREATE OR REPLACE VIEW bdr.node_status AS
SELECT n.node_name AS peer,
       'incoming'::text AS direction,
       coalesce(s.state, 'unknown') AS state,
       s.lag_bytes,
       s.lag_seconds,
       s.last_applied_commit_time AS last_applied_remote_commit_time,
       o.remote_lsn AS position,
       s.last_error,
       m.state AS peer_state,
       m.since AS peer_state_since,
       s.parked AS parked_transactions
  FROM bdr.nodes n
  LEFT JOIN bdr.stream_status s ON s.peer_name = n.node_name
  LEFT JOIN pg_catalog.pg_replication_origin_status o ON o.external_id = bdr.repl_name(n.node_name)
  LEFT JOIN bdr.member_status m ON m.node_name = n.node_name
 WHERE NOT n.is_local AND n.state IN ('joining', 'active')
UNION ALL
SELECT n.node_name,
       'outgoing',
       CASE WHEN sl.slot_name IS NULL THEN 'missing'
            WHEN sl.active THEN 'streaming'
            ELSE 'inactive' END,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), sl.confirmed_flush_lsn)::bigint,
       NULL,
       NULL,
       sl.confirmed_flush_lsn,
       NULL,
       m.state,
       m.since,
       NULL
  FROM bdr.nodes n
  LEFT JOIN pg_catalog.pg_replication_slots sl
         ON sl.slot_name = bdr.repl_name(n.node_name) AND sl.database = pg_catalog.current_database()
  LEFT JOIN bdr.member_status m ON m.node_name = n.node_name
 WHERE NOT n.is_local AND n.state IN ('joining', 'active');
`,
	// 5: the clock skew of members, as gossip measures it.
	`
-- The member's clock minus this node's, in seconds; NULL until measured.
ALTER TABLE bdr.member_status ADD COLUMN clock_skew_seconds double precision;

CREATE OR REPLACE VIEW bdr.node_status AS
SELECT n.node_name AS peer,
       'incoming'::text AS direction,
       coalesce(s.state, 'unknown') AS state,
       s.lag_bytes,
       s.lag_seconds,
       s.last_applied_commit_time AS last_applied_remote_commit_time,
       o.remote_lsn AS position,
       s.last_error,
       m.state AS peer_state,
       m.since AS peer_state_since,
       s.parked AS parked_transactions,
       m.clock_skew_seconds AS peer_clock_skew_seconds
  FROM bdr.nodes n
  LEFT JOIN bdr.stream_status s ON s.peer_name = n.node_name
  LEFT JOIN pg_catalog.pg_replication_origin_status o ON o.external_id = bdr.repl_name(n.node_name)
  LEFT JOIN bdr.member_status m ON m.node_name = n.node_name
 WHERE NOT n.is_local AND n.state IN ('joining', 'active')
UNION ALL
SELECT n.node_name,
       'outgoing',
       CASE WHEN sl.slot_name IS NULL THEN 'missing'
            WHEN sl.active THEN 'streaming'
            ELSE 'inactive' END,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), sl.confirmed_flush_lsn)::bigint,
       NULL,
       NULL,
       sl.confirmed_flush_lsn,
       NULL,
       m.state,
       m.since,
       NULL,
       m.clock_skew_seconds
  FROM bdr.nodes n
  LEFT JOIN pg_catalog.pg_replication_slots sl
         ON sl.slot_name = bdr.repl_name(n.node_name) AND sl.database = pg_catalog.current_database()
  LEFT JOIN bdr.member_status m ON m.node_name = n.node_name
 WHERE NOT n.is_local AND n.state IN ('joining', 'active');
`,
	// 6: delta (counter) columns. bdr.delta_columns replicates (see
	// ReplicatedTables); a trigger that fires on local and applied changes
	// alike sets the table's replica identity, so that updates carry the old
	// values the delta is computed from. bdr.row_versions is local: it holds
	// the conflict version of row versions the applier wrote with a version
	// other than the transaction's (a remote update of a delta table whose
	// other columns lost).
	`
CREATE TABLE bdr.delta_columns (
	schema_name text NOT NULL,
	table_name  text NOT NULL,
	column_name text NOT NULL,
	declared_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (schema_name, table_name, column_name)
);

-- The conflict version of one row version (relid, tid, row_xmin): what
-- last-update-wins compares instead of the commit time and origin of
-- row_xmin, as long as that row version is the live one.
CREATE TABLE bdr.row_versions (
	relid       oid NOT NULL,
	tid         tid NOT NULL,
	row_xmin    xid NOT NULL,
	commit_time timestamptz,
	roident     oid NOT NULL,
	PRIMARY KEY (relid, tid)
);

-- Checks a declaration and sets the replica identity it needs; on the
-- removal of a table's last delta column, sets it back to DEFAULT.
CREATE FUNCTION bdr.delta_columns_identity() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
	rel   oid;
	ident "char";
	typ   oid;
	attn  int2;
BEGIN
	IF TG_OP IN ('UPDATE', 'DELETE') AND NOT EXISTS (SELECT 1 FROM bdr.delta_columns d
			WHERE d.schema_name = OLD.schema_name AND d.table_name = OLD.table_name) THEN
		SELECT c.oid, c.relreplident INTO rel, ident FROM pg_catalog.pg_class c
		  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		 WHERE n.nspname = OLD.schema_name AND c.relname = OLD.table_name;
		IF ident = 'f' THEN
			EXECUTE pg_catalog.format('ALTER TABLE %I.%I REPLICA IDENTITY DEFAULT', OLD.schema_name, OLD.table_name);
		END IF;
	END IF;
	IF TG_OP = 'DELETE' THEN
		RETURN NULL;
	END IF;
	SELECT c.oid, c.relreplident INTO rel, ident FROM pg_catalog.pg_class c
	  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
	 WHERE n.nspname = NEW.schema_name AND c.relname = NEW.table_name AND c.relkind = 'r';
	IF rel IS NULL THEN
		RAISE EXCEPTION 'bdr: delta column %: table %.% does not exist on this node', NEW.column_name,
			pg_catalog.quote_ident(NEW.schema_name), pg_catalog.quote_ident(NEW.table_name) USING ERRCODE = '42P01';
	END IF;
	SELECT a.atttypid, a.attnum INTO typ, attn FROM pg_catalog.pg_attribute a
	 WHERE a.attrelid = rel AND a.attname = NEW.column_name AND a.attnum > 0 AND NOT a.attisdropped;
	IF typ IS NULL THEN
		RAISE EXCEPTION 'bdr: column % of table %.% does not exist', pg_catalog.quote_ident(NEW.column_name),
			pg_catalog.quote_ident(NEW.schema_name), pg_catalog.quote_ident(NEW.table_name) USING ERRCODE = '42703';
	END IF;
	IF typ NOT IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'numeric'::regtype) THEN
		RAISE EXCEPTION 'bdr: column % is of type %: a delta column must be smallint, integer, bigint or numeric (float addition depends on the order, so nodes adding the same increments in another order would differ)',
			pg_catalog.quote_ident(NEW.column_name), pg_catalog.format_type(typ, NULL) USING ERRCODE = '42804';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index x WHERE x.indrelid = rel AND x.indisprimary) THEN
		RAISE EXCEPTION 'bdr: table %.% has no primary key: a table with delta columns needs one',
			pg_catalog.quote_ident(NEW.schema_name), pg_catalog.quote_ident(NEW.table_name) USING ERRCODE = '42P10';
	END IF;
	IF EXISTS (SELECT 1 FROM pg_catalog.pg_index x WHERE x.indrelid = rel AND x.indisprimary AND attn = ANY (x.indkey)) THEN
		RAISE EXCEPTION 'bdr: column % is part of the primary key of %.%: it cannot be a delta column',
			pg_catalog.quote_ident(NEW.column_name), pg_catalog.quote_ident(NEW.schema_name),
			pg_catalog.quote_ident(NEW.table_name) USING ERRCODE = '42P10';
	END IF;
	IF ident <> 'f' THEN
		EXECUTE pg_catalog.format('ALTER TABLE %I.%I REPLICA IDENTITY FULL', NEW.schema_name, NEW.table_name);
	END IF;
	RETURN NULL;
END
$$;

CREATE TRIGGER delta_columns_identity AFTER INSERT OR UPDATE OR DELETE ON bdr.delta_columns
	FOR EACH ROW EXECUTE FUNCTION bdr.delta_columns_identity();
-- Also when bdrd applies a declaration made on another node, or copies
-- them at join (session_replication_role = replica).
ALTER TABLE bdr.delta_columns ENABLE ALWAYS TRIGGER delta_columns_identity;

-- Declares a numeric column a delta (counter) column: concurrent updates
-- on different nodes add their increments (new - old) instead of one
-- overwriting the other. The declaration replicates to every node.
CREATE FUNCTION bdr.alter_column_set_delta(table_name regclass, column_name name) RETURNS void
LANGUAGE sql AS $$
	INSERT INTO bdr.delta_columns (schema_name, table_name, column_name)
	SELECT n.nspname, c.relname, $2
	  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
	 WHERE c.oid = $1
	ON CONFLICT DO NOTHING
$$;

-- Undoes bdr.alter_column_set_delta; the last delta column of a table
-- takes the table back to REPLICA IDENTITY DEFAULT.
CREATE FUNCTION bdr.alter_column_unset_delta(table_name regclass, column_name name) RETURNS void
LANGUAGE sql AS $$
	DELETE FROM bdr.delta_columns d
	 USING pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
	 WHERE c.oid = $1 AND d.schema_name = n.nspname AND d.table_name = c.relname AND d.column_name = $2
$$;
`,
	// 7: per-table conflict resolvers (resolvers.go).
	migrationResolvers,
	// 8: tombstones of deleted rows (tombstones.go).
	migrationTombstones,
	// 9: the versions of rows deleted by unique collisions (tombstones.go).
	migrationCollisionVersions,
	// 10: the values rows had in unique indexes (unique_history.go).
	migrationUniqueHistory,
}

// Version is the schema version this build installs.
func Version() int { return len(migrations) }

// Migrate creates or upgrades the bdr schema to Version. It is safe to run
// concurrently from several sessions: they serialize on an advisory lock.
// It refuses a schema newer than this build.
func Migrate(ctx context.Context, conn *pgx.Conn) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('bdr.migrate'))`); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	current, err := installedVersion(ctx, tx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if current > len(migrations) {
		return fmt.Errorf("migrate: schema bdr is at version %d, newer than this bdrd (%d); upgrade bdrd", current, len(migrations))
	}
	for v := current + 1; v <= len(migrations); v++ {
		if _, err := tx.Exec(ctx, migrations[v-1]); err != nil {
			return fmt.Errorf("migrate to version %d: %w", v, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO bdr.schema_version (version) VALUES ($1)`, v); err != nil {
			return fmt.Errorf("migrate to version %d: %w", v, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("migrate: commit: %w", err)
	}
	return nil
}

// installedVersion returns 0 when the schema does not exist yet.
func installedVersion(ctx context.Context, db DB) (int, error) {
	var exists bool
	if err := db.QueryRow(ctx, `SELECT to_regclass('bdr.schema_version') IS NOT NULL`).Scan(&exists); err != nil {
		return 0, err
	}
	if !exists {
		return 0, nil
	}
	var v int
	if err := db.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM bdr.schema_version`).Scan(&v); err != nil {
		return 0, err
	}
	return v, nil
}
