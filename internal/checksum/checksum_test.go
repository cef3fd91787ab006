package checksum_test

import (
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/bdr-dev/bdr/internal/checksum"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, 1)) }

func TestDiff(t *testing.T) {
	s := func(rows int64, hash string) checksum.Sum { return checksum.Sum{Rows: rows, Hash: hash} }
	tests := []struct {
		name string
		a, b map[string]checksum.Sum
		want []string
	}{
		{"both empty", nil, nil, nil},
		{"equal", map[string]checksum.Sum{"public.t": s(2, "7")}, map[string]checksum.Sum{"public.t": s(2, "7")}, nil},
		{
			"all kinds, sorted",
			map[string]checksum.Sum{"public.z": s(1, "1"), "public.rows": s(1, "1"), "public.hash": s(3, "1"), "public.same": s(0, "0")},
			map[string]checksum.Sum{"public.a": s(4, "1"), "public.rows": s(2, "1"), "public.hash": s(3, "2"), "public.same": s(0, "0")},
			[]string{
				"public.a: missing in a (4 rows in b)",
				"public.hash: same 3 rows, different contents (hash 1 in a, 2 in b)",
				"public.rows: 1 rows in a, 2 in b",
				"public.z: missing in b (1 rows in a)",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := checksum.Diff(tt.a, tt.b); !slices.Equal(got, tt.want) {
				t.Errorf("Diff =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

// schema creates the same tables in every database.
const schema = `
CREATE SCHEMA "My Schema";
CREATE SCHEMA bdr;
CREATE TABLE bdr.state (id int);
CREATE TABLE "My Schema"."Mixed ""Case""" (r int, v text);
CREATE TABLE empty (id int);
CREATE TABLE parted (id int, v text) PARTITION BY RANGE (id);
CREATE TABLE parted_lo PARTITION OF parted FOR VALUES FROM (0) TO (50);
CREATE TABLE parted_hi PARTITION OF parted FOR VALUES FROM (50) TO (1000);
CREATE TABLE t (id int PRIMARY KEY, txt text, ts timestamptz, f float8, b bytea, j jsonb, iv interval);
`

// fill inserts the same rows, in ascending or descending order.
func fill(t *testing.T, dsn string, desc bool) {
	order := "ASC"
	if desc {
		order = "DESC"
	}
	pgtest.Exec(t, dsn, `INSERT INTO t
		SELECT g, CASE WHEN g % 7 = 0 THEN NULL WHEN g = 3 THEN repeat(md5(g::text), 40000) ELSE 'row ' || g END,
		       CASE WHEN g % 5 = 0 THEN NULL ELSE '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour' END,
		       g / 3.0, decode(md5(g::text), 'hex'), jsonb_build_object('g', g), g * interval '1 minute'
		FROM generate_series(1, 200) g ORDER BY g `+order)
	pgtest.Exec(t, dsn, `INSERT INTO parted SELECT g, 'p' || g FROM generate_series(0, 99) g ORDER BY g `+order)
	pgtest.Exec(t, dsn, `INSERT INTO "My Schema"."Mixed ""Case""" SELECT g, NULL FROM generate_series(1, 5) g ORDER BY g `+order)
	pgtest.Exec(t, dsn, `INSERT INTO bdr.state VALUES ($1)`, map[bool]int{false: 1, true: 2}[desc])
}

func TestTables(t *testing.T) {
	t.Parallel()
	s := pgtest.Shared(t, 0)
	_, dsnA := pgtest.NewDB(t, s)
	_, dsnB := pgtest.NewDB(t, s)
	for _, dsn := range []string{dsnA, dsnB} {
		pgtest.Exec(t, dsn, schema)
	}
	fill(t, dsnA, false)
	fill(t, dsnB, true)
	connA, connB := pgtest.Conn(t, dsnA), pgtest.Conn(t, dsnB)
	// Session settings must not change the sums, nor temporary tables.
	if _, err := connB.Exec(t.Context(), `SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'German'; SET extra_float_digits = -3; CREATE TEMP TABLE tmp (id int); INSERT INTO tmp VALUES (1)`); err != nil {
		t.Fatal(err)
	}

	a, err := checksum.Tables(t.Context(), connA)
	if err != nil {
		t.Fatal(err)
	}
	b, err := checksum.Tables(t.Context(), connB)
	if err != nil {
		t.Fatal(err)
	}
	wantTables := []string{`My Schema.Mixed "Case"`, "public.empty", "public.parted_hi", "public.parted_lo", "public.t"}
	if got := slices.Sorted(maps.Keys(a)); !slices.Equal(got, wantTables) {
		t.Fatalf("tables = %q, want %q", got, wantTables)
	}
	if d := checksum.Diff(a, b); d != nil {
		t.Fatalf("same rows in another order differ:\n%s", strings.Join(d, "\n"))
	}
	if got := a["public.t"].Rows; got != 200 {
		t.Errorf("public.t has %d rows, want 200", got)
	}
	if got := a["public.empty"]; got != (checksum.Sum{Rows: 0, Hash: "0"}) {
		t.Errorf("empty table sum = %+v", got)
	}

	pgtest.Exec(t, dsnB, `UPDATE t SET txt = txt || '.' WHERE id = 3`)
	b, err = checksum.Tables(t.Context(), connB)
	if err != nil {
		t.Fatal(err)
	}
	d := checksum.Diff(a, b)
	if len(d) != 1 || !strings.HasPrefix(d[0], "public.t: same 200 rows, different contents") {
		t.Fatalf("after changing one value, Diff = %q", d)
	}

	pgtest.Exec(t, dsnB, `UPDATE t SET txt = NULL WHERE id = 8; DELETE FROM parted WHERE id = 99`)
	b, err = checksum.Tables(t.Context(), connB)
	if err != nil {
		t.Fatal(err)
	}
	if d := checksum.Diff(a, b); len(d) != 2 || !strings.HasPrefix(d[0], "public.parted_hi: 50 rows in a, 49 in b") {
		t.Fatalf("after a delete, Diff = %q", d)
	}
}
