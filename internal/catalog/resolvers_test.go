package catalog

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/bdr-dev/bdr/conflict"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

// TestConflictResolverSetting checks what bdr.alter_table_conflict_resolver
// accepts (exactly conflict.Resolvers, for every type), refuses (with
// SQLSTATE BR004 and a message that says why), stores (the table's name,
// quoted where it needs to be, or the empty name for the group-wide
// default) and resets, and what bdr.conflict_resolver reads back.
func TestConflictResolverSetting(t *testing.T) {
	ctx := context.Background()
	_, dsn := pgtest.NewDB(t, pgtest.Shared(t, 0))
	conn := pgtest.Conn(t, dsn)
	if err := Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		`CREATE TABLE kv (k int PRIMARY KEY, v text)`,
		`CREATE SCHEMA "Odd schema"`,
		`CREATE TABLE "Odd schema"."we""ird" (k int PRIMARY KEY)`,
	} {
		if _, err := conn.Exec(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	set := func(table any, typ, res any) error {
		_, err := conn.Exec(ctx, `SELECT bdr.alter_table_conflict_resolver($1, $2, $3)`, table, typ, res)
		return err
	}
	effective := func(table any, typ string) string {
		t.Helper()
		var r string
		if err := conn.QueryRow(ctx, `SELECT bdr.conflict_resolver($1, $2)`, table, typ).Scan(&r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	code := func(err error) string {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return pgErr.Code
		}
		return ""
	}

	types := []conflict.Type{conflict.InsertInsert, conflict.UpdateUpdate, conflict.UpdateDelete, conflict.UpdateMissing,
		conflict.DeleteMissing, conflict.UniqueSecondary, conflict.MultipleUnique, conflict.PKChange}
	all := []conflict.Resolver{conflict.ResolverLastUpdateWins, conflict.ResolverFirstUpdateWins, conflict.ResolverKeepLocal,
		conflict.ResolverApplyRemote, conflict.ResolverError, "skip", "Last_Update_Wins"}
	for _, typ := range types {
		for _, r := range all {
			err := set("kv", string(typ), string(r))
			want := slices.Contains(conflict.Resolvers(typ), r)
			switch {
			case want && err != nil:
				t.Errorf("%s %s refused: %v", typ, r, err)
			case !want && err == nil:
				t.Errorf("%s %s accepted", typ, r)
			case !want && (code(err) != "BR004" || !strings.Contains(err.Error(), "cannot resolve "+string(typ))):
				t.Errorf("%s %s: %v, want SQLSTATE BR004 saying it cannot resolve %s", typ, r, err, typ)
			case want && effective("kv", string(typ)) != string(r):
				t.Errorf("%s %s set, but bdr.conflict_resolver reads %s", typ, r, effective("kv", string(typ)))
			}
		}
	}
	if err := set("kv", "update_update", "first_update_wins"); err == nil || !strings.Contains(err.Error(), "cannot tell") {
		t.Errorf("first_update_wins on update_update: %v, want the reason", err)
	}
	for _, typ := range []any{"insert-insert", "", nil} {
		if err := set("kv", typ, "keep_local"); code(err) != "BR004" || !strings.Contains(err.Error(), "unknown conflict type") {
			t.Errorf("conflict type %v: %v, want BR004 unknown conflict type", typ, err)
		}
	}
	if err := set("bdr.conflict_history", "insert_insert", "keep_local"); code(err) != "BR004" {
		t.Errorf("a resolver on a table of schema bdr: %v, want BR004", err)
	}
	if err := set("missing_table", "insert_insert", "keep_local"); code(err) != "42P01" {
		t.Errorf("a missing table: %v, want 42P01", err)
	}
	// The CHECK constraint holds the same list for rows that do not come
	// through the function (applied from a peer, copied at join).
	if _, err := conn.Exec(ctx, `INSERT INTO bdr.conflict_resolvers (schema_name, table_name, conflict_type, resolver)
		VALUES ('public', 'kv', 'update_update', 'first_update_wins')`); code(err) != "23514" {
		t.Errorf("an invalid row inserted directly: %v, want a check violation", err)
	}

	// Defaults, overrides, odd names, resets.
	if _, err := conn.Exec(ctx, `DELETE FROM bdr.conflict_resolvers`); err != nil {
		t.Fatal(err)
	}
	odd := `"Odd schema"."we""ird"`
	for _, s := range []struct {
		table    any
		typ, res string
	}{
		{nil, "update_update", "keep_local"},
		{nil, "insert_insert", "first_update_wins"},
		{"kv", "update_update", "apply_remote"},
		{odd, "insert_insert", "error"},
		{odd, "update_delete", "keep_local"},
	} {
		if err := set(s.table, s.typ, s.res); err != nil {
			t.Fatalf("set %v %s %s: %v", s.table, s.typ, s.res, err)
		}
	}
	rows := pgtest.Strings(t, dsn, `SELECT format('%s|%s|%s|%s', schema_name, table_name, conflict_type, resolver)
		FROM bdr.conflict_resolvers ORDER BY 1`)
	want := []string{`Odd schema|we"ird|insert_insert|error`, `Odd schema|we"ird|update_delete|keep_local`,
		"public|kv|update_update|apply_remote", "||insert_insert|first_update_wins", "||update_update|keep_local"}
	if strings.Join(rows, "\n") != strings.Join(want, "\n") {
		t.Errorf("rows:\n%s\nwant:\n%s", strings.Join(rows, "\n"), strings.Join(want, "\n"))
	}
	for _, e := range []struct {
		table any
		typ   string
		want  string
	}{
		{"kv", "update_update", "apply_remote"},      // its own
		{"kv", "insert_insert", "first_update_wins"}, // the default
		{"kv", "update_delete", "last_update_wins"},  // neither
		{odd, "update_update", "keep_local"},         // the default
		{odd, "insert_insert", "error"},              // its own over the default
		{odd, "update_delete", "keep_local"},         // its own
		{nil, "update_update", "keep_local"},         // the default itself
		{nil, "delete_missing", "last_update_wins"},  // none
	} {
		if got := effective(e.table, e.typ); got != e.want {
			t.Errorf("bdr.conflict_resolver(%v, %s) = %s, want %s", e.table, e.typ, got, e.want)
		}
	}
	// Setting the same resolver again changes nothing (no change to replicate).
	var before, after string
	pgtest.Scan(t, dsn, `SELECT xmin::text FROM bdr.conflict_resolvers WHERE table_name = 'kv'`, nil, &before)
	if err := set("kv", "update_update", "apply_remote"); err != nil {
		t.Fatal(err)
	}
	pgtest.Scan(t, dsn, `SELECT xmin::text FROM bdr.conflict_resolvers WHERE table_name = 'kv'`, nil, &after)
	if before != after {
		t.Error("setting the same resolver again wrote the row")
	}
	// Resets: 'default' and NULL remove the table's row, then the default's.
	if err := set("kv", "update_update", "default"); err != nil {
		t.Fatal(err)
	}
	if got := effective("kv", "update_update"); got != "keep_local" {
		t.Errorf("after the reset of kv: %s, want the default keep_local", got)
	}
	if err := set(nil, "update_update", nil); err != nil {
		t.Fatal(err)
	}
	if got := effective("kv", "update_update"); got != "last_update_wins" {
		t.Errorf("after the reset of the default: %s, want last_update_wins", got)
	}
	if n := len(pgtest.Strings(t, dsn, `SELECT conflict_type FROM bdr.conflict_resolvers`)); n != 3 {
		t.Errorf("%d rows left, want 3", n)
	}

	// bdr.keep_local_set() follows the keep_local settings of update_update
	// and update_delete, and a statement prepared before a change is
	// planned again with the new value.
	keepLocalSet := func() bool {
		t.Helper()
		var b, some bool
		if err := conn.QueryRow(ctx, `SELECT bdr.keep_local_set(), bdr.resolvers_set()`).Scan(&b, &some); err != nil {
			t.Fatal(err)
		}
		if n := len(pgtest.Strings(t, dsn, `SELECT conflict_type FROM bdr.conflict_resolvers`)); some != (n > 0) {
			t.Errorf("bdr.resolvers_set() = %v with %d settings", some, n)
		}
		return b
	}
	other := pgtest.Conn(t, dsn)
	if _, err := other.Prepare(ctx, "kls", `SELECT bdr.keep_local_set()`); err != nil {
		t.Fatal(err)
	}
	prepared := func() bool {
		t.Helper()
		var b bool
		if err := other.QueryRow(ctx, "kls").Scan(&b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	steps := []struct {
		table     any
		typ, res  string
		want      bool
		wantAfter string
	}{
		{odd, "update_delete", "default", false, "no keep_local left"},
		{"kv", "insert_insert", "keep_local", false, "keep_local for inserts only"},
		{nil, "update_update", "keep_local", true, "a default keep_local"},
		{"kv", "update_delete", "keep_local", true, "a second one"},
		{nil, "update_update", "default", true, "one left"},
		{"kv", "update_delete", "error", false, "none left"},
	}
	for _, s := range steps {
		if err := set(s.table, s.typ, s.res); err != nil {
			t.Fatal(err)
		}
		if got, gotPrepared := keepLocalSet(), prepared(); got != s.want || gotPrepared != s.want {
			t.Errorf("after %s: bdr.keep_local_set() = %v, prepared %v; want %v", s.wantAfter, got, gotPrepared, s.want)
		}
	}
	if _, err := conn.Exec(ctx, `INSERT INTO bdr.conflict_resolvers (schema_name, table_name, conflict_type, resolver)
		VALUES ('', '', 'update_delete', 'keep_local')`); err != nil {
		t.Fatal(err)
	}
	if !keepLocalSet() || !prepared() {
		t.Error("a row inserted directly did not set bdr.keep_local_set()")
	}
	if _, err := conn.Exec(ctx, `TRUNCATE bdr.conflict_resolvers`); err != nil {
		t.Fatal(err)
	}
	if keepLocalSet() || prepared() {
		t.Error("TRUNCATE did not reset bdr.keep_local_set()")
	}
	var some bool
	if err := conn.QueryRow(ctx, `SELECT bdr.resolvers_set()`).Scan(&some); err != nil || some {
		t.Errorf("bdr.resolvers_set() = %v (%v) on an empty table", some, err)
	}
}
