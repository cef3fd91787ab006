package conflict

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/bdr-dev/bdr/internal/catalog"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, 1)) }

// TestSQLMatchesDecide evaluates the SQL form of the rule on a real server
// for every combination of inputs, under every resolver (and one that no
// type takes), and checks it agrees with DecideWith: the same conflict,
// type, resolution, reason and outcome, and for the error resolver the
// same error (SQLSTATE BR003, raised by the catalog's function).
func TestSQLMatchesDecide(t *testing.T) {
	ctx := context.Background()
	_, dsn := pgtest.NewDB(t, pgtest.Shared(t, 0))
	conn := pgtest.Conn(t, dsn)
	if err := catalog.Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}

	t0 := time.Date(2026, 11, 21, 10, 0, 0, 123456000, time.UTC)
	times := []*time.Time{nil, &t0, ptr(t0.Add(time.Microsecond)), ptr(t0.Add(-time.Hour))}
	// res is the resolver of the types that compare two versions, mres the
	// one of update_missing and delete_missing.
	resolverOf := func(t Type) string {
		if t == UpdateMissing || t == DeleteMissing {
			return "mres"
		}
		return "res"
	}
	in := Inputs{Found: "found", Same: "same", LocalTS: "lts", LocalNode: "lnode", RemoteTS: "rts", RemoteNode: "rnode",
		Resolver: resolverOf}
	ops := map[Op]DecisionSQL{Insert: InsertSQL(in), Update: UpdateSQL(in), Delete: DeleteSQL(in)}
	resolvers := []Resolver{ResolverLastUpdateWins, ResolverFirstUpdateWins, ResolverKeepLocal, ResolverApplyRemote, ResolverError, "bogus"}
	missingResolvers := []Resolver{ResolverLastUpdateWins, ResolverError, ResolverKeepLocal}

	cases, errs := 0, 0
	for op, dec := range ops {
		query := fmt.Sprintf(`SELECT %s, %s, CASE WHEN %s THEN %s END, CASE WHEN %s THEN %s END, CASE WHEN %s THEN %s END
			FROM (SELECT $1::bool AS found, $2::bool AS same, $3::timestamptz AS lts, $4::int AS lnode,
			             $5::timestamptz AS rts, $6::int AS rnode, $7::text AS res, $8::text AS mres) v`,
			dec.Record, dec.Apply, dec.Record, dec.Type, dec.Record, dec.Resolution, dec.Record, dec.Reason)
		for _, res := range resolvers {
			for _, mres := range missingResolvers {
				decideWith := func(t Type) Resolver {
					if resolverOf(t) == "mres" {
						return mres
					}
					return res
				}
				for _, found := range []bool{false, true} {
					for _, same := range []bool{false, true} {
						if same && !found {
							continue
						}
						for _, lts := range times {
							for _, lnode := range []int32{1, 2, 3} {
								for _, rts := range times[1:] {
									for _, rnode := range []int32{1, 2, 3} {
										local := Local{Found: found, Same: same}
										if found && lts != nil {
											local.Version = Version{Known: true, CommitTime: *lts, NodeID: lnode}
										}
										var sqlLTS *time.Time
										if found {
											sqlLTS = lts
										}
										want := DecideWith(op, local, Version{Known: true, CommitTime: *rts, NodeID: rnode}, decideWith)
										var got Decision
										var typ, resolution, reason *string
										err := conn.QueryRow(ctx, query, found, same, sqlLTS, lnode, *rts, rnode, string(res), string(mres)).
											Scan(&got.Conflict, &got.ApplyRemote, &typ, &resolution, &reason)
										var pgErr *pgconn.PgError
										switch {
										case errors.As(err, &pgErr) && pgErr.Code == ErrorSQLState:
											// The error resolver: the message must be Decide's.
											errs++
											got = Decision{Conflict: true, Error: true, Type: want.Type, Reason: want.Reason}
											if pgErr.Message != ErrorMessage(want) {
												got.Reason = pgErr.Message
											}
										case err != nil:
											t.Fatal(err)
										case got.Conflict:
											got.Type, got.Resolution, got.Reason = Type(*typ), Resolution(*resolution), *reason
										}
										if !want.Conflict {
											want.Type, want.Resolution, want.Reason = "", "", ""
										}
										if got != want {
											t.Errorf("op %d resolvers %s/%s found=%v same=%v local=%v remote=%v@%d:\n SQL:    %+v\n Decide: %+v",
												op, res, mres, found, same, local.Version, *rts, rnode, got, want)
										}
										cases++
									}
								}
							}
						}
					}
				}
			}
		}
	}
	if errs == 0 {
		t.Error("no case raised the error resolver's error")
	}
	t.Logf("%d cases agree (%d raise the error resolver's error)", cases, errs)
}

// TestSQLWithoutResolvers checks that Inputs without a Resolver decide by
// last_update_wins without reading any resolver (the expressions of tables
// with delta columns, and of the catalog's own, are today's), and that
// with one, every type that takes other resolvers reads it.
func TestSQLWithoutResolvers(t *testing.T) {
	in := Inputs{Found: "found", Same: "same", LocalTS: "lts", LocalNode: "lnode", RemoteTS: "rts", RemoteNode: "rnode"}
	with := in
	with.Resolver = func(t Type) string { return "r_" + string(t) }
	for i, d := range []DecisionSQL{InsertSQL(in), UpdateSQL(in), DeleteSQL(in)} {
		for _, e := range []string{d.Record, d.Apply, d.Clean, d.Type, d.Resolution, d.Reason} {
			if strings.Contains(e, "WHEN '") && strings.Contains(e, "keep_local'") && !strings.Contains(e, "last_update_wins_keep_local") {
				t.Errorf("decision %d without resolvers reads one: %s", i, e)
			}
		}
	}
	for _, c := range []struct {
		expr string
		typ  Type
	}{
		{InsertSQL(with).Apply, InsertInsert}, {UpdateSQL(with).Clean, UpdateUpdate}, {DeleteSQL(with).Apply, UpdateDelete},
		{UpdateSQL(with).Resolution, UpdateMissing}, {DeleteSQL(with).Resolution, DeleteMissing},
	} {
		if !strings.Contains(c.expr, "CASE r_"+string(c.typ)+" WHEN") {
			t.Errorf("the expression of %s does not read its resolver: %s", c.typ, c.expr)
		}
	}
}

func ptr[T any](v T) *T { return &v }
