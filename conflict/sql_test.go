package conflict

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, 1)) }

// TestSQLMatchesDecide evaluates the SQL form of the rule on a real server
// for every combination of inputs and checks it agrees with Decide.
func TestSQLMatchesDecide(t *testing.T) {
	_, dsn := pgtest.NewDB(t, pgtest.Shared(t, 0))
	conn := pgtest.Conn(t, dsn)
	ctx := context.Background()

	t0 := time.Date(2026, 11, 21, 10, 0, 0, 123456000, time.UTC)
	times := []*time.Time{nil, &t0, ptr(t0.Add(time.Microsecond)), ptr(t0.Add(-time.Hour))}
	in := Inputs{Found: "found", Same: "same", LocalTS: "lts", LocalNode: "lnode", RemoteTS: "rts", RemoteNode: "rnode"}
	ops := map[Op]DecisionSQL{Insert: InsertSQL(in), Update: UpdateSQL(in), Delete: DeleteSQL(in)}

	cases := 0
	for op, dec := range ops {
		query := fmt.Sprintf(`SELECT %s, %s, %s, %s, %s
			FROM (SELECT $1::bool AS found, $2::bool AS same, $3::timestamptz AS lts, $4::int AS lnode,
			             $5::timestamptz AS rts, $6::int AS rnode) v`,
			dec.Record, dec.Apply, dec.Type, dec.Resolution, dec.Reason)
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
								want := Decide(op, local, Version{Known: true, CommitTime: *rts, NodeID: rnode})
								var got Decision
								var typ, res, reason *string
								if err := conn.QueryRow(ctx, query, found, same, sqlLTS, lnode, *rts, rnode).
									Scan(&got.Conflict, &got.ApplyRemote, &typ, &res, &reason); err != nil {
									t.Fatal(err)
								}
								if got.Conflict {
									got.Type, got.Resolution, got.Reason = Type(*typ), Resolution(*res), *reason
								}
								if !want.Conflict {
									want.Type, want.Resolution, want.Reason = "", "", ""
								}
								if got != want {
									t.Errorf("op %d found=%v same=%v local=%v remote=%v@%d:\n SQL:    %+v\n Decide: %+v",
										op, found, same, local.Version, *rts, rnode, got, want)
								}
								cases++
							}
						}
					}
				}
			}
		}
	}
	t.Logf("%d cases agree", cases)
}

func ptr[T any](v T) *T { return &v }
