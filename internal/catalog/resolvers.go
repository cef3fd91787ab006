package catalog

// migrationResolvers is migration 7: per-table conflict resolvers.
//
// bdr.conflict_resolvers replicates (ReplicatedTables): a resolver set on
// one node is set on every node, and copied to nodes that join. A row with
// an empty schema and table name is the group-wide default of its conflict
// type; no row at all means last_update_wins. The applier reads the table
// inside the statements that apply rows (package conflict, apply's
// resolvers.go), so a change takes effect with the next statement, whether
// made here or applied from a peer.
//
// bdr.resolvers_set() and bdr.keep_local_set() are constants the trigger
// on the table redefines (see apply's resolvers.go): the applier's
// statements read no resolver while none is set, and its fast statements
// only while a keep_local resolver is.
//
// The resolvers each conflict type takes are conflict.Resolvers; the CHECK
// constraint and bdr.alter_table_conflict_resolver hold the same list
// (TestConflictResolverSetting checks they agree).
const migrationResolvers = `
-- Whether conflict type typ takes resolver res (conflict.Resolvers).
CREATE FUNCTION bdr.conflict_resolver_valid(typ text, res text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
	SELECT CASE
		WHEN typ IN ('insert_insert', 'unique_secondary', 'multiple_unique', 'pk_change')
			THEN res IN ('last_update_wins', 'first_update_wins', 'keep_local', 'apply_remote', 'error')
		WHEN typ IN ('update_update', 'update_delete')
			THEN res IN ('last_update_wins', 'keep_local', 'apply_remote', 'error')
		WHEN typ IN ('update_missing', 'delete_missing')
			THEN res IN ('last_update_wins', 'error')
		ELSE false
	END
$$;

CREATE TABLE bdr.conflict_resolvers (
	schema_name   text NOT NULL,
	table_name    text NOT NULL,
	conflict_type text NOT NULL,
	resolver      text NOT NULL,
	set_at        timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (schema_name, table_name, conflict_type),
	CONSTRAINT conflict_resolvers_default CHECK ((schema_name = '') = (table_name = '')),
	CONSTRAINT conflict_resolvers_valid CHECK (bdr.conflict_resolver_valid(conflict_type, resolver))
);

-- The resolver that decides conflicts of type typ on table tbl (NULL: the
-- group-wide default): its own, else the default, else last_update_wins.
CREATE FUNCTION bdr.conflict_resolver(tbl regclass, typ text) RETURNS text
LANGUAGE sql STABLE AS $$
	SELECT coalesce((SELECT r.resolver FROM bdr.conflict_resolvers r
	                  JOIN pg_catalog.pg_class c ON c.relname = r.table_name
	                  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace AND n.nspname = r.schema_name
	                 WHERE c.oid = tbl AND r.conflict_type = typ),
	                (SELECT r.resolver FROM bdr.conflict_resolvers r
	                 WHERE r.schema_name = '' AND r.table_name = '' AND r.conflict_type = typ),
	                'last_update_wins')
$$;

-- Sets the resolver of conflicts of type conflict_type on table table_name,
-- or with table_name NULL the group-wide default of the type; resolver NULL
-- or 'default' removes the setting (the table then follows the group-wide
-- default, the default last_update_wins). The setting replicates.
CREATE FUNCTION bdr.alter_table_conflict_resolver(table_name regclass, conflict_type text, resolver text)
RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	s text := '';
	t text := '';
BEGIN
	IF conflict_type IS NULL OR NOT bdr.conflict_resolver_valid(conflict_type, 'last_update_wins') THEN
		RAISE EXCEPTION 'bdr: unknown conflict type %: it must be one of insert_insert, update_update, update_delete, update_missing, delete_missing, unique_secondary, multiple_unique, pk_change',
			coalesce(pg_catalog.quote_literal(conflict_type), 'NULL') USING ERRCODE = 'BR004';
	END IF;
	IF resolver IS NOT NULL AND resolver <> 'default' AND NOT bdr.conflict_resolver_valid(conflict_type, resolver) THEN
		RAISE EXCEPTION 'bdr: % cannot resolve % conflicts: %', pg_catalog.quote_literal(resolver), conflict_type,
			CASE WHEN resolver = 'first_update_wins' THEN
				'a node receiving an update cannot tell one made at the same time as its own from one made after seeing it, so first_update_wins would drop every later update too (it is for insert_insert and the unique index conflicts)'
			WHEN conflict_type IN ('update_missing', 'delete_missing') THEN
				'there is no local row to keep or compare; the resolver is last_update_wins (skip the change) or error (park the transaction)'
			ELSE
				'the resolvers are last_update_wins, first_update_wins, keep_local, apply_remote and error'
			END USING ERRCODE = 'BR004';
	END IF;
	IF table_name IS NOT NULL THEN
		SELECT n.nspname, c.relname INTO s, t
		  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		 WHERE c.oid = table_name;
		IF s = 'bdr' THEN
			RAISE EXCEPTION 'bdr: the tables of schema bdr always resolve conflicts by last_update_wins' USING ERRCODE = 'BR004';
		END IF;
	END IF;
	IF resolver IS NULL OR resolver = 'default' THEN
		DELETE FROM bdr.conflict_resolvers r
		 WHERE r.schema_name = s AND r.table_name = t AND r.conflict_type = conflict_type;
	ELSE
		INSERT INTO bdr.conflict_resolvers AS r (schema_name, table_name, conflict_type, resolver)
		VALUES (s, t, conflict_type, resolver)
		ON CONFLICT ON CONSTRAINT conflict_resolvers_pkey
		DO UPDATE SET resolver = excluded.resolver, set_at = excluded.set_at
		WHERE r.resolver IS DISTINCT FROM excluded.resolver;
	END IF;
END
$$;

-- Whether any resolver is set (bdr.resolvers_set), and whether a keep_local
-- resolver is set for update_update or update_delete (bdr.keep_local_set),
-- anywhere. Constants, redefined by the trigger below when they change:
-- PostgreSQL folds them into the plans of the applier's statements, which
-- then read no resolver at all (none set) or, for the fast ones, only
-- while keep_local is set (only keep_local changes what they apply); and
-- it plans them again when they are redefined.
CREATE FUNCTION bdr.resolvers_set() RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT false $$;
CREATE FUNCTION bdr.keep_local_set() RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT false $$;

CREATE FUNCTION bdr.conflict_resolvers_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
	fn   text;
	body text;
BEGIN
	-- One redefinition at a time (concurrent ones would fail); a statement
	-- after the lock sees what the others committed.
	PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('bdr.conflict_resolvers_changed'));
	FOR fn, body IN
		SELECT 'resolvers_set', 'SELECT ' || (EXISTS (SELECT 1 FROM bdr.conflict_resolvers))::text
		UNION ALL
		SELECT 'keep_local_set', 'SELECT ' || (EXISTS (SELECT 1 FROM bdr.conflict_resolvers r
			WHERE r.resolver = 'keep_local' AND r.conflict_type IN ('update_update', 'update_delete')))::text
	LOOP
		IF body IS DISTINCT FROM (SELECT pg_catalog.btrim(p.prosrc) FROM pg_catalog.pg_proc p
				JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
				WHERE n.nspname = 'bdr' AND p.proname = fn AND p.pronargs = 0) THEN
			EXECUTE pg_catalog.format('CREATE OR REPLACE FUNCTION bdr.%I() RETURNS boolean LANGUAGE sql IMMUTABLE AS %L', fn, body);
		END IF;
	END LOOP;
	RETURN NULL;
END
$$;

CREATE TRIGGER conflict_resolvers_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON bdr.conflict_resolvers
	FOR EACH STATEMENT EXECUTE FUNCTION bdr.conflict_resolvers_changed();
-- Also when bdrd applies a setting made on another node, or copies them at
-- join (session_replication_role = replica).
ALTER TABLE bdr.conflict_resolvers ENABLE ALWAYS TRIGGER conflict_resolvers_changed;

-- Raised by the apply statements for a conflict whose resolver is error:
-- the remote transaction is parked (bdr.apply_errors) and the stream goes on.
CREATE FUNCTION bdr.conflict_resolver_error(conflict_type text, reason text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'bdr: % conflict not resolved (resolver error): %', conflict_type, reason
		USING ERRCODE = 'BR003',
		      HINT = 'Set another resolver with bdr.alter_table_conflict_resolver and retry the parked transaction (bdrctl errors retry), or discard it.';
END
$$;
`
