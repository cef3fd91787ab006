package membership

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// userObjectsSQL lists, in drop order, the objects a join replaces with
// the group's: schemas other than public, extensions, then what lives in
// public (relations, routines, types). Objects that belong to an extension
// go with it; bdr's own schema stays.
const userObjectsSQL = `
SELECT 1, 'SCHEMA', format('%I', n.nspname)
	FROM pg_catalog.pg_namespace n
	WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'public', 'bdr')
	  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'
	  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
		WHERE d.classid = 'pg_catalog.pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e')
UNION ALL
SELECT 2, 'EXTENSION', format('%I', e.extname)
	FROM pg_catalog.pg_extension e WHERE e.extname <> 'plpgsql'
UNION ALL
SELECT 3, CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
		WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, format('%I.%I', n.nspname, c.relname)
	FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
	WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
UNION ALL
SELECT 4, CASE p.prokind WHEN 'a' THEN 'AGGREGATE' WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
		p.oid::pg_catalog.regprocedure::text
	FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
	WHERE n.nspname = 'public'
UNION ALL
SELECT 5, CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, format('%I.%I', n.nspname, t.typname)
	FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
	LEFT JOIN pg_catalog.pg_class c ON c.oid = t.typrelid
	WHERE n.nspname = 'public' AND t.typtype IN ('c', 'd', 'e', 'r', 'm') AND (c.oid IS NULL OR c.relkind = 'c')
	  AND t.typelem = 0
ORDER BY 1, 3`

// dropUserObjects drops every user object of the database (DESIGN "Join":
// a node that joins takes the group's schema and data), inside tx, so that
// a join that fails before its copy commits leaves them as they were. It
// returns how many top-level objects it dropped.
func dropUserObjects(ctx context.Context, tx pgx.Tx) (int, error) {
	// regprocedure names its schema only when not on the search path.
	if _, err := tx.Exec(ctx, "SET LOCAL search_path TO pg_catalog"); err != nil {
		return 0, err
	}
	rows, err := tx.Query(ctx, userObjectsSQL)
	if err != nil {
		return 0, fmt.Errorf("list the objects to replace: %w", err)
	}
	type object struct {
		Order      int
		Kind, Name string
	}
	objs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[object])
	if err != nil {
		return 0, fmt.Errorf("list the objects to replace: %w", err)
	}
	for _, o := range objs {
		// Names come from format('%I') or regprocedure output, quoted by
		// the server; kinds are constants of the query above. IF EXISTS: a
		// cascade may have dropped the object already.
		if _, err := tx.Exec(ctx, fmt.Sprintf("DROP %s IF EXISTS %s CASCADE", o.Kind, o.Name)); err != nil {
			return 0, fmt.Errorf("drop %s %s: %w", o.Kind, o.Name, err)
		}
	}
	return len(objs), nil
}
