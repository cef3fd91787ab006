package apply_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgcluster"
	"github.com/bdr-dev/bdr/internal/pgtest"
	"github.com/bdr-dev/bdr/internal/proc"
)

// TestLargeTransaction replicates one INSERT of two million rows. The
// provider sends it at commit (PostgreSQL 15; 16 and later stream it while
// in progress, see pluginArgs); bdrd spills it to disk, so its peak RSS
// stays under 200 MB.
func TestLargeTransaction(t *testing.T) {
	t.Parallel()
	const rows = 2_000_000
	servers := []*pgcluster.Server{pgtest.Shared(t, 1), pgtest.Shared(t, 2)}
	nodes := grouptest.Group(t, servers, "large", grouptest.Options{Bdrd: bdrdBinary}, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE big (id bigint PRIMARY KEY, v text NOT NULL)`)
	})
	start := time.Now()
	// Two million rows take longer than pgtest's statement timeout when the
	// other packages' tests load the machine.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := pgtest.Conn(t, nodes[0].DSN).Exec(ctx, `INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, $1::int) g`, rows); err != nil {
		t.Fatalf("insert %d rows on %s: %v", rows, nodes[0].Name, err)
	}
	t.Logf("%d rows inserted in %s", rows, time.Since(start).Round(time.Millisecond))
	grouptest.WaitQuiet(t, nodes, 10*time.Minute)
	t.Logf("%d rows replicated in %s", rows, time.Since(start).Round(time.Millisecond))
	grouptest.AssertConverged(t, nodes)
	if got := nodes[1].QueryInt(`SELECT count(*) FROM big`); got != rows {
		t.Fatalf("%s has %d rows, want %d", nodes[1].Name, got, rows)
	}
	// The applied transaction's spill file is gone (it was once left until
	// the stream stopped).
	spilled, err := filepath.Glob(filepath.Join(nodes[1].DataDir, "spill", "*", "*.spill"))
	if err != nil {
		t.Fatal(err)
	}
	if len(spilled) > 0 {
		t.Errorf("spill files left after the transaction was applied: %v", spilled)
	}
	rss, err := proc.PeakRSS(nodes[1].PID())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("peak RSS of the applying bdrd: %d MB", rss>>20)
	if rss > 200<<20 {
		t.Errorf("peak RSS of the applying bdrd is %d MB, over 200 MB", rss>>20)
	}
}
