package apply_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

// TestPermanentErrorVisible: a change that cannot be applied (its table
// does not exist on the subscriber) puts the stream in the error state,
// visible in bdrctl status, bdr.node_status and the metrics, without a
// crash loop; once the cause is fixed the stream resumes by itself and
// nothing is lost.
func TestPermanentErrorVisible(t *testing.T) {
	t.Parallel()
	nodes := grouptest.Group(t, shared(t)[:2], "err", grouptest.Options{ErrorRetry: 2 * time.Second}, nil)
	a, b := nodes[0], nodes[1]
	a.Exec(`CREATE TABLE only_a (id int PRIMARY KEY)`)
	a.Exec(`INSERT INTO only_a VALUES (1)`)

	var lastErr string
	pgtest.WaitFor(t, time.Minute, "the stream from a to show the error", func() (bool, error) {
		st, err := b.Client().Status(context.Background(), false)
		if err != nil {
			return false, err
		}
		for _, s := range st.Streams {
			if s.From == a.Name && s.State == "error" {
				lastErr = s.LastError
				return true, nil
			}
		}
		return false, nil
	})
	if !strings.Contains(lastErr, "only_a") || !strings.Contains(lastErr, "does not exist on this node") {
		t.Errorf("last error %q does not name the missing table", lastErr)
	}
	pgtest.WaitFor(t, 10*time.Second, "bdr.node_status to show the error", func() (bool, error) {
		return b.QueryInt(`SELECT count(*) FROM bdr.node_status WHERE peer = $1 AND direction = 'incoming'
			AND state = 'error' AND last_error LIKE '%only_a%'`, a.Name) == 1, nil
	})
	if m := scrape(t, b); !strings.Contains(m, `bdr_stream_errors_total{class="fatal",node="`+b.Name+`",peer="`+a.Name+`"}`) {
		t.Errorf("no fatal stream error counted in the metrics")
	}

	b.Exec(`CREATE TABLE only_a (id int PRIMARY KEY)`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	if b.QueryInt(`SELECT count(*) FROM only_a`) != 1 {
		t.Error("the change that failed was not applied after the table was created")
	}
	grouptest.AssertConverged(t, nodes)
}
