package checksum

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/jackc/pgx/v5"
)

// Sum is the checksum of one table.
type Sum struct {
	Rows int64  // number of rows
	Hash string // order-independent hash of the rows, a decimal number
}

// listTables lists the user tables holding rows: ordinary tables and
// partitions (relkind 'r'), not partitioned parents, temporary tables or the
// tables of schema bdr, which hold node-local state.
const listTables = `
SELECT n.nspname, c.relname
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'bdr')
ORDER BY 1, 2`

// pinSettings makes the text form of values independent of session settings.
const pinSettings = `
SET LOCAL TimeZone = 'UTC';
SET LOCAL DateStyle = 'ISO, YMD';
SET LOCAL IntervalStyle = 'postgres';
SET LOCAL extra_float_digits = 1;
SET LOCAL bytea_output = 'hex';
SET LOCAL lc_monetary = 'C';
SET LOCAL search_path = pg_catalog`

// Tables returns the checksum of every user table in conn's database, keyed
// by "schema.table". All tables are read in one REPEATABLE READ READ ONLY
// transaction, so the sums come from one snapshot.
func Tables(ctx context.Context, conn *pgx.Conn) (map[string]Sum, error) {
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("checksum: begin: %w", err)
	}
	// A no-op after Commit; on an error path the error returned matters more.
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, pinSettings); err != nil {
		return nil, fmt.Errorf("checksum: pin settings: %w", err)
	}
	rows, err := tx.Query(ctx, listTables)
	if err != nil {
		return nil, fmt.Errorf("checksum: list tables: %w", err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowToStructByPos[struct{ Schema, Name string }])
	if err != nil {
		return nil, fmt.Errorf("checksum: list tables: %w", err)
	}
	sums := make(map[string]Sum, len(tables))
	for _, t := range tables {
		// (r.*) is the whole row even if a column is named r.
		q := `SELECT count(*), coalesce(sum(('x' || substr(md5((r.*)::text), 1, 16))::bit(64)::bigint), 0)::text FROM ONLY ` +
			pgx.Identifier{t.Schema, t.Name}.Sanitize() + ` AS r`
		var s Sum
		if err := tx.QueryRow(ctx, q).Scan(&s.Rows, &s.Hash); err != nil {
			return nil, fmt.Errorf("checksum %s.%s: %w", t.Schema, t.Name, err)
		}
		sums[t.Schema+"."+t.Name] = s
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("checksum: commit: %w", err)
	}
	return sums, nil
}

// Diff returns the differences between the checksums a and b of two
// databases, one line per differing table, sorted by table: tables missing on
// one side, different row counts, or same row counts with different contents.
// It returns nil when they are equal.
func Diff(a, b map[string]Sum) []string {
	all := maps.Clone(a)
	if all == nil {
		all = map[string]Sum{}
	}
	maps.Copy(all, b)
	var out []string
	for _, table := range slices.Sorted(maps.Keys(all)) {
		sa, inA := a[table]
		sb, inB := b[table]
		switch {
		case !inB:
			out = append(out, fmt.Sprintf("%s: missing in b (%d rows in a)", table, sa.Rows))
		case !inA:
			out = append(out, fmt.Sprintf("%s: missing in a (%d rows in b)", table, sb.Rows))
		case sa.Rows != sb.Rows:
			out = append(out, fmt.Sprintf("%s: %d rows in a, %d in b", table, sa.Rows, sb.Rows))
		case sa.Hash != sb.Hash:
			out = append(out, fmt.Sprintf("%s: same %d rows, different contents (hash %s in a, %s in b)", table, sa.Rows, sa.Hash, sb.Hash))
		}
	}
	return out
}
