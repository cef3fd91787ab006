package membership

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/bdr-dev/bdr/internal/catalog"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

func TestPlanCopy(t *testing.T) {
	const mb = 1 << 20
	pgbench := []tableCopy{ // scale 50: accounts is 99% of it
		{name: "a", bytes: 640 * mb, blocks: 81968},
		{name: "b", bytes: 40 << 10, blocks: 5},
		{name: "h", bytes: 0, blocks: 0},
		{name: "t", bytes: 56 << 10, blocks: 7},
	}
	tests := []struct {
		name     string
		tables   []tableCopy
		workers  int
		minPart  int64
		sessions int
		parts    int // of table 0
	}{
		{"one worker: one session, whole tables", pgbench, 1, 64 * mb, 1, 1},
		{"small database: one session", []tableCopy{{bytes: 100 * mb, blocks: 12800}, {bytes: 20 * mb, blocks: 2560}}, 4, 64 * mb, 1, 1},
		{"pgbench, 2 workers: parts of a quarter of a share", pgbench, 2, 64 * mb, 2, 8},
		{"pgbench, 4 workers: parts of at least minPart", pgbench, 4, 64 * mb, 4, 10},
		{"many small tables: sessions share whole tables", []tableCopy{{bytes: 70 * mb, blocks: 8960}, {bytes: 70 * mb, blocks: 8960}, {bytes: 70 * mb, blocks: 8960}}, 2, 64 * mb, 2, 2},
		{"no more sessions than parts", []tableCopy{{bytes: 130 * mb, blocks: 16640}}, 8, 64 * mb, 3, 3},
		{"tiny parts for tests", []tableCopy{{bytes: 1 * mb, blocks: 128}, {bytes: 8 << 10, blocks: 1}}, 4, 64 << 10, 4, 16},
		{"a part is at least a block", []tableCopy{{bytes: 10 * mb, blocks: 3}}, 4, 1 << 10, 3, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := planCopy(tt.tables, tt.workers, tt.minPart)
			if p.sessions != tt.sessions {
				t.Errorf("sessions = %d, want %d", p.sessions, tt.sessions)
			}
			// Every table's blocks are covered exactly once, in order,
			// the last part open-ended.
			for i, tc := range tt.tables {
				var mine []copyPart
				for _, part := range p.parts {
					if part.table == i {
						mine = append(mine, part)
					}
				}
				if len(mine) == 0 {
					t.Fatalf("table %d has no part", i)
				}
				if i == 0 && len(mine) != tt.parts {
					t.Errorf("table 0 in %d parts, want %d", len(mine), tt.parts)
				}
				if len(mine) == 1 {
					if mine[0].lo != 0 || mine[0].hi != 0 {
						t.Errorf("table %d in one part %d-%d, want the whole table", i, mine[0].lo, mine[0].hi)
					}
					continue
				}
				next := int64(0)
				for j, part := range mine {
					if part.lo != next {
						t.Errorf("table %d part %d starts at block %d, want %d", i, j, part.lo, next)
					}
					last := j == len(mine)-1
					if last != (part.hi == 0) {
						t.Errorf("table %d part %d ends at %d (last: %v)", i, j, part.hi, last)
					}
					next = part.hi
				}
				if mine[len(mine)-1].lo >= tc.blocks {
					t.Errorf("table %d: last part starts at %d, past its %d blocks", i, mine[len(mine)-1].lo, tc.blocks)
				}
			}
			// One session copies table by table, in order; several take
			// the largest parts first.
			for j := 1; p.sessions > 1 && j < len(p.parts); j++ {
				if p.parts[j].bytes > p.parts[j-1].bytes {
					t.Errorf("part %d (%d bytes) after a smaller one (%d)", j, p.parts[j].bytes, p.parts[j-1].bytes)
				}
			}
		})
	}
}

func TestCopyPartSource(t *testing.T) {
	tc := tableCopy{name: `"s"."t"`, columns: `"a", "b"`}
	for _, tt := range []struct {
		p    copyPart
		want string
	}{
		{copyPart{}, `COPY (SELECT "a", "b" FROM ONLY "s"."t") TO STDOUT`},
		{copyPart{lo: 0, hi: 10}, `COPY (SELECT "a", "b" FROM ONLY "s"."t" WHERE ctid >= '(0,0)'::tid AND ctid < '(10,0)'::tid) TO STDOUT`},
		{copyPart{lo: 10}, `COPY (SELECT "a", "b" FROM ONLY "s"."t" WHERE ctid >= '(10,0)'::tid) TO STDOUT`},
	} {
		if got := tt.p.source(tc); got != tt.want {
			t.Errorf("source(%+v) = %s, want %s", tt.p, got, tt.want)
		}
	}
}

func TestCopyOriginName(t *testing.T) {
	name := catalog.CopyOriginName(16384, 2)
	if name != "bdr_16384__copy2" || !strings.HasPrefix(name, catalog.CopyOriginPrefix(16384)) {
		t.Errorf("CopyOriginName = %q", name)
	}
	// Never a node's origin: a node name starts with a letter.
	suffix := strings.TrimPrefix(name, catalog.ReplName(16384, ""))
	if NamePattern.MatchString(suffix) {
		t.Errorf("%q is a valid node name", suffix)
	}
}

// TestCopyGuard checks the guard of a parallel copy: once the transaction
// that guards the tables commits, other sessions can neither write nor
// truncate them (partitions and their parent included), sessions with
// session_replication_role replica can, and when the guarding session ends
// the guard goes with it.
func TestCopyGuard(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, dsn := pgtest.NewDB(t, pgtest.Shared(t, 0))
	pgtest.Exec(t, dsn, `CREATE SCHEMA "s x";
		CREATE TABLE "s x"."t 1" (id int PRIMARY KEY);
		CREATE TABLE p (id int) PARTITION BY RANGE (id);
		CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (100);
		CREATE UNLOGGED TABLE u (id int)`)
	guard := pgtest.Conn(t, dsn)
	tx, err := guard.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n, err := guardTables(ctx, tx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("guarded %d tables, want 3 (the unlogged one is not copied)", n)
	}
	other := pgtest.Conn(t, dsn)
	for _, sql := range []string{
		`INSERT INTO "s x"."t 1" VALUES (1)`,
		`UPDATE "s x"."t 1" SET id = 2`,
		`DELETE FROM "s x"."t 1"`,
		`TRUNCATE "s x"."t 1"`,
		`INSERT INTO p VALUES (1)`,
		`INSERT INTO p1 VALUES (1)`,
	} {
		_, err := other.Exec(ctx, sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "55000" || !strings.Contains(pgErr.Message, "is being copied by a join") {
			t.Errorf("%s: %v, want the guard's error", sql, err)
		}
	}
	if _, err := other.Exec(ctx, `INSERT INTO u VALUES (1)`); err != nil {
		t.Errorf("unlogged table: %v", err)
	}
	copier := pgtest.Conn(t, dsn)
	if _, err := copier.Exec(ctx, `SET session_replication_role = replica`); err != nil {
		t.Fatal(err)
	}
	if _, err := copier.Exec(ctx, `INSERT INTO "s x"."t 1" VALUES (1); INSERT INTO p VALUES (1)`); err != nil {
		t.Errorf("a copy session: %v", err)
	}

	// Unguarded by the guarding session, then guarded again and unguarded
	// by its end.
	tx, err = guard.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := unguardTables(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Exec(ctx, `INSERT INTO "s x"."t 1" VALUES (2)`); err != nil {
		t.Errorf("after unguard: %v", err)
	}
	tx, err = guard.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := guardTables(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Exec(ctx, `INSERT INTO "s x"."t 1" VALUES (3)`); err == nil {
		t.Error("guarded again, a write went through")
	}
	if err := guard.Close(ctx); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, 10*time.Second, "the guard to go with its session", func() (bool, error) {
		var n int
		err := other.QueryRow(ctx, `SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgname = 'bdr_copy_guard'`).Scan(&n)
		return n == 0, err
	})
	if _, err := other.Exec(ctx, `INSERT INTO "s x"."t 1" VALUES (4)`); err != nil {
		t.Errorf("after the guarding session ended: %v", err)
	}
}
