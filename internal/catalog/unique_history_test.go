package catalog

import (
	"context"
	"testing"

	"github.com/bdr-dev/bdr/internal/pgtest"
)

// TestUniqueHistory: a table with a unique index other than its key gets
// the trigger bdr_tombstone_unique (when the index exists before the
// migration, and when CREATE UNIQUE INDEX or ADD UNIQUE makes it later),
// a table without one does not; the old row of a delete and of a change
// of a unique column goes to bdr.unique_history with its version, a change
// of other columns and a row inserted and changed in one transaction (a
// version nobody saw) do not.
func TestUniqueHistory(t *testing.T) {
	ctx := context.Background()
	_, dsn := pgtest.NewDB(t, pgtest.Shared(t, 0))
	conn := pgtest.Conn(t, dsn)
	exec := execFunc(t, conn)
	exec(`CREATE TABLE before (id int PRIMARY KEY, name text UNIQUE, v int)`)
	if err := Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	exec(`CREATE TABLE plain (id int PRIMARY KEY, v int)`)
	exec(`CREATE TABLE indexed (id int PRIMARY KEY, a int, b int)`)
	exec(`CREATE UNIQUE INDEX indexed_ab ON indexed (a, b)`)
	exec(`CREATE TABLE constrained (id int PRIMARY KEY, code text)`)
	exec(`ALTER TABLE constrained ADD UNIQUE (code)`)
	exec(`CREATE TABLE partial (id int PRIMARY KEY, code text)`)
	exec(`CREATE UNIQUE INDEX partial_code ON partial (code) WHERE code <> ''`)
	exec(`CREATE TABLE keyonly (id int PRIMARY KEY, v int)`)
	exec(`CREATE UNIQUE INDEX keyonly_id ON keyonly (id)`)

	trigger := func(table string) string {
		t.Helper()
		var s string
		if err := conn.QueryRow(ctx, `SELECT coalesce(string_agg(tgname || ':' || tgenabled::text, ','), '')
			FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname = 'bdr_tombstone_unique'`, table).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	const on = "bdr_tombstone_unique:A"
	for table, want := range map[string]string{"before": on, "indexed": on, "constrained": on, "plain": "", "partial": "", "keyonly": ""} {
		if got := trigger(table); got != want {
			t.Errorf("unique trigger of %s = %q, want %q", table, got, want)
		}
	}

	exec(`INSERT INTO before VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3)`)
	exec(`UPDATE before SET v = 10 WHERE id = 1`)      // not a unique column: no entry
	exec(`UPDATE before SET name = 'bb' WHERE id = 2`) // old row (2, 'b', 2)
	exec(`SET session_replication_role = replica`)
	exec(`DELETE FROM before WHERE id = 3`) // old row (3, 'c', 3)
	exec(`RESET session_replication_role`)
	exec(`BEGIN`)
	exec(`INSERT INTO before VALUES (4, 'd', 4)`)
	exec(`UPDATE before SET name = 'dd' WHERE id = 4`) // (4, 'd') was never committed: no entry
	exec(`COMMIT`)
	exec(`INSERT INTO indexed VALUES (1, 1, 1)`)
	exec(`UPDATE indexed SET b = 2`)

	var got string
	if err := conn.QueryRow(ctx, `SELECT string_agg(relid::regclass || ' ' || key::text || ' ' || row::text, '; '
			ORDER BY relid::regclass::text, key::text)
		FROM bdr.unique_history WHERE row_time IS NOT NULL`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	want := `before {"id": 2} {"v": 2, "id": 2, "name": "b"}; before {"id": 3} {"v": 3, "id": 3, "name": "c"}; indexed {"id": 1} {"a": 1, "b": 1, "id": 1}`
	if got != want {
		t.Errorf("unique history = %q, want %q", got, want)
	}
	var all int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM bdr.unique_history`).Scan(&all); err != nil {
		t.Fatal(err)
	}
	if all != 3 {
		t.Errorf("%d entries, want 3 (none for the row inserted and changed in one transaction)", all)
	}
}
