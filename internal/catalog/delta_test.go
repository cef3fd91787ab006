package catalog

import (
	"context"
	"strings"
	"testing"

	"github.com/bdr-dev/bdr/internal/pgtest"
)

// TestDeltaDeclaration checks what bdr.alter_column_set_delta accepts and
// refuses, and that it switches the replica identity to FULL and back.
func TestDeltaDeclaration(t *testing.T) {
	ctx := context.Background()
	_, dsn := pgtest.NewDB(t, pgtest.Shared(t, 0))
	conn := pgtest.Conn(t, dsn)
	if err := Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		`CREATE TABLE acc (id int PRIMARY KEY, bal bigint, n numeric(12, 2), s smallint, f float8, label text)`,
		`CREATE TABLE nokey (bal int)`,
		`CREATE TABLE "Odd ""t""" ("k 1" int, "k 2" int, "the count" int, PRIMARY KEY ("k 1", "k 2"))`,
	} {
		if _, err := conn.Exec(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	identity := func(table string) string {
		t.Helper()
		var ident string
		if err := conn.QueryRow(ctx, `SELECT relreplident::text FROM pg_catalog.pg_class WHERE oid = $1::regclass`, table).Scan(&ident); err != nil {
			t.Fatal(err)
		}
		return ident
	}
	tests := []struct {
		table, column string
		err           string // "" accepted
	}{
		{"acc", "bal", ""},
		{"acc", "n", ""},
		{"acc", "s", ""},
		{"acc", "bal", ""}, // again: nothing changes
		{`"Odd ""t"""`, "the count", ""},
		{"acc", "f", "must be smallint, integer, bigint or numeric"},
		{"acc", "label", "must be smallint, integer, bigint or numeric"},
		{"acc", "id", "part of the primary key"},
		{"acc", "missing", "does not exist"},
		{"nokey", "bal", "has no primary key"},
		{`"Odd ""t"""`, "k 2", "part of the primary key"},
	}
	for _, tt := range tests {
		_, err := conn.Exec(ctx, `SELECT bdr.alter_column_set_delta($1, $2)`, tt.table, tt.column)
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("set_delta(%s, %s): %v", tt.table, tt.column, err)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("set_delta(%s, %s) = %v, want an error with %q", tt.table, tt.column, err, tt.err)
		}
	}
	got := pgtest.Strings(t, dsn, `SELECT schema_name || '.' || table_name || '.' || column_name FROM bdr.delta_columns ORDER BY 1`)
	want := []string{`public.Odd "t".the count`, "public.acc.bal", "public.acc.n", "public.acc.s"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("declarations %q, want %q", got, want)
	}
	if identity("acc") != "f" || identity(`"Odd ""t"""`) != "f" || identity("nokey") != "d" {
		t.Errorf("replica identities acc %s, odd %s, nokey %s; want f, f, d", identity("acc"), identity(`"Odd ""t"""`), identity("nokey"))
	}
	for _, c := range []string{"bal", "n"} {
		if _, err := conn.Exec(ctx, `SELECT bdr.alter_column_unset_delta('acc', $1)`, c); err != nil {
			t.Fatal(err)
		}
	}
	if identity("acc") != "f" {
		t.Error("acc still has a delta column but its identity changed")
	}
	if _, err := conn.Exec(ctx, `SELECT bdr.alter_column_unset_delta('acc', 's')`); err != nil {
		t.Fatal(err)
	}
	if identity("acc") != "d" {
		t.Errorf("acc has no delta column left but identity %s, want d", identity("acc"))
	}
}

func TestReplicatedTables(t *testing.T) {
	for _, tt := range []struct {
		schema, table string
		want          bool
	}{{"bdr", "delta_columns", true}, {"bdr", "conflict_resolvers", true}, {"bdr", "row_versions", false}, {"bdr", "conflict_history", false}, {"public", "delta_columns", false}} {
		if got := IsReplicated(tt.schema, tt.table); got != tt.want {
			t.Errorf("IsReplicated(%s, %s) = %v", tt.schema, tt.table, got)
		}
	}
}
