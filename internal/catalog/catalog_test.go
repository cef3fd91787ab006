package catalog

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, 1)) }

func TestMigrate(t *testing.T) {
	ctx := context.Background()
	_, dsn := pgtest.NewDB(t, pgtest.Shared(t, 0))
	// Concurrent first runs serialize on the advisory lock.
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Go(func() { errs[i] = Migrate(ctx, pgtest.Conn(t, dsn)) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	conn := pgtest.Conn(t, dsn)
	if err := Migrate(ctx, conn); err != nil {
		t.Fatalf("second run: %v", err)
	}
	var versions int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM bdr.schema_version`).Scan(&versions); err != nil || versions != Version() {
		t.Fatalf("%d versions recorded (%v), want %d", versions, err, Version())
	}
	if _, err := conn.Exec(ctx, `INSERT INTO bdr.schema_version (version) VALUES ($1)`, Version()+1); err != nil {
		t.Fatal(err)
	}
	if err := Migrate(ctx, conn); err == nil || !strings.Contains(err.Error(), "newer than this bdrd") {
		t.Fatalf("Migrate on a newer schema = %v", err)
	}
}

func TestNodes(t *testing.T) {
	ctx := context.Background()
	_, dsn := pgtest.NewDB(t, pgtest.Shared(t, 0))
	conn := pgtest.Conn(t, dsn)
	if err := Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := LocalNode(ctx, conn); err != nil || ok {
		t.Fatalf("LocalNode before init = %v, %v", ok, err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(UpsertNode(ctx, conn, Node{ID: 1, Name: "a", State: StateActive, IsLocal: true, PublicDSN: "x", AdminAddr: "y"}))
	must(UpsertNode(ctx, conn, Node{ID: 2, Name: "b", State: StateJoining, PublicDSN: "x", AdminAddr: "y"}))
	if err := UpsertNode(ctx, conn, Node{ID: 3, Name: "b", State: StateActive, PublicDSN: "x", AdminAddr: "y"}); err == nil {
		t.Fatal("two current nodes with one name")
	}
	if err := UpsertNode(ctx, conn, Node{ID: 4, Name: "Bad", State: StateActive, PublicDSN: "x", AdminAddr: "y"}); err == nil {
		t.Fatal("an invalid node name was accepted")
	}
	must(SetNodeState(ctx, conn, 2, StateParted))
	must(UpsertNode(ctx, conn, Node{ID: 3, Name: "b", State: StateActive, PublicDSN: "x", AdminAddr: "y"})) // a parted name joins again
	nodes, err := Nodes(ctx, conn)
	if err != nil || len(nodes) != 3 {
		t.Fatalf("Nodes = %v, %v", nodes, err)
	}
	self, ok, err := LocalNode(ctx, conn)
	if err != nil || !ok || self.Name != "a" {
		t.Fatalf("LocalNode = %+v %v %v", self, ok, err)
	}
	var id *int
	must(conn.QueryRow(ctx, `SELECT bdr.origin_node_id(0)`).Scan(&id))
	if id != nil {
		t.Fatalf("origin 0 maps to node %d; local writes are the caller's to map", *id)
	}
	must(WriteStreamStatus(ctx, conn, []StreamStatus{{Peer: "b", State: "streaming", LagBytes: 5}}))
	must(WriteStreamStatus(ctx, conn, []StreamStatus{{Peer: "b", State: "error", LastError: "boom"}}))
	var state, lastErr string
	must(conn.QueryRow(ctx, `SELECT state, last_error FROM bdr.node_status WHERE peer = 'b' AND direction = 'incoming'`).Scan(&state, &lastErr))
	if state != "error" || lastErr != "boom" {
		t.Fatalf("node_status incoming b = %s %q", state, lastErr)
	}
	must(conn.QueryRow(ctx, `SELECT state FROM bdr.node_status WHERE peer = 'b' AND direction = 'outgoing'`).Scan(&state))
	if state != "missing" {
		t.Fatalf("outgoing stream without a slot shows %q, want missing", state)
	}
	skew := -2.5
	for _, want := range []*float64{nil, &skew, nil} {
		must(WriteMemberStatus(ctx, conn, []MemberStatus{{Name: "b", State: "up", Since: time.Now(), ClockSkew: want}}))
		rows, err := conn.Query(ctx, `SELECT peer_clock_skew_seconds FROM bdr.node_status WHERE peer = 'b'`)
		must(err)
		got, err := pgx.CollectRows(rows, pgx.RowTo[*float64])
		must(err)
		if len(got) != 2 {
			t.Fatalf("node_status has %d rows for b; want 2", len(got))
		}
		for _, g := range got {
			if (g == nil) != (want == nil) || (want != nil && *g != *want) {
				t.Fatalf("node_status peer_clock_skew_seconds of b = %v; want %v in both directions", g, want)
			}
		}
	}
}

func TestCheckServer(t *testing.T) {
	conn := pgtest.Conn(t, pgtest.Shared(t, 0).DSN("postgres"))
	info, problems, err := CheckServer(context.Background(), conn)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) != 0 || info.VersionNum < 150000 {
		t.Fatalf("a correctly set up test server has problems %v (version %d)", problems, info.VersionNum)
	}
}
