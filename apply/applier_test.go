package apply

import (
	"context"
	"encoding/binary"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/decoder"
	"github.com/bdr-dev/bdr/internal/catalog"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

// A few pgoutput messages, enough to build transactions for the applier.

func msg(t byte, parts ...[]byte) []byte {
	b := []byte{t}
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}
func u16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
func cs(s string) []byte  { return append([]byte(s), 0) }
func pgts(ts time.Time) []byte {
	return u64(uint64(ts.Sub(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)).Microseconds()))
}

// tuple encodes text values; "" is NULL and "\x00u" an unchanged TOAST value.
func tuple(vals ...string) []byte {
	b := u16(uint16(len(vals)))
	for _, v := range vals {
		switch v {
		case "":
			b = append(b, 'n')
		case "\x00u":
			b = append(b, 'u')
		default:
			b = append(append(append(b, 't'), u32(uint32(len(v)))...), v...)
		}
	}
	return b
}

// kvTxn decodes one provider transaction on table kv(k int key, v text).
func kvTxn(t *testing.T, d *decoder.Decoder, xid uint32, end uint64, commit time.Time, changes ...[]byte) *decoder.Txn {
	t.Helper()
	msgs := [][]byte{
		msg('B', u64(end-8), pgts(commit), u32(xid)),
		msg('R', u32(16384), cs("public"), cs("kv"), []byte{'d'}, u16(2),
			[]byte{1}, cs("k"), u32(23), u32(0xffffffff), []byte{0}, cs("v"), u32(25), u32(0xffffffff)),
	}
	msgs = append(msgs, changes...)
	msgs = append(msgs, msg('C', []byte{0}, u64(end-8), u64(end), pgts(commit)))
	var txn *decoder.Txn
	for _, m := range msgs {
		got, err := d.Decode(m)
		if err != nil {
			t.Fatal(err)
		}
		if got != nil {
			txn = got
		}
	}
	if txn == nil {
		t.Fatal("no transaction decoded")
	}
	return txn
}

func insert(k, v string) []byte { return msg('I', u32(16384), []byte{'N'}, tuple(k, v)) }
func update(k, v string) []byte { return msg('U', u32(16384), []byte{'N'}, tuple(k, v)) }
func del(k string) []byte       { return msg('D', u32(16384), []byte{'K'}, tuple(k, "")) }

// testApplier connects an applier for peer "p" (node 2) to a fresh database
// with the bdr schema and table kv, as local node "l" (node 1).
func testApplier(t *testing.T) (*applier, *pgx.Conn) {
	t.Helper()
	_, dsn := pgtest.NewDB(t, pgtest.Shared(t, 0))
	conn := pgtest.Conn(t, dsn)
	ctx := context.Background()
	if err := catalog.Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE kv (k int PRIMARY KEY, v text)`); err != nil {
		t.Fatal(err)
	}
	peer := Peer{Name: pgtest.UniqueName(t, "p"), NodeID: 2}
	a, _, err := connectApplier(ctx, peer, Local{Name: "l", NodeID: 1, DSN: dsn}, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = a.conn.Close(context.Background())
		_, _ = conn.Exec(context.Background(), `SELECT pg_replication_origin_drop(bdr.repl_name($1))`, peer.Name)
	})
	a.log = slog.New(slog.DiscardHandler)
	a.met = newMetrics(nil).stream(peer.Name)
	a.track = newTracker(0)
	a.pause = newPauser()
	a.trace = &[]op{}
	return a, conn
}

func newDecoder(t *testing.T) *decoder.Decoder {
	d, err := decoder.New(decoder.Config{SpillDir: t.TempDir(), SkipSchemas: []string{"bdr"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// sequence renders the traced statements: kind and statement kind.
func sequence(a *applier) string {
	var parts []string
	for _, o := range *a.trace {
		switch o.kind {
		case opBegin:
			parts = append(parts, "BEGIN")
		case opSetup:
			parts = append(parts, "origin-setup")
		case opChange:
			parts = append(parts, "fast "+o.change.String())
		case opResolve:
			parts = append(parts, "resolving "+o.change.String())
		case opCheck:
			parts = append(parts, "check")
		case opCommit:
			parts = append(parts, "COMMIT")
		case opPosition:
			parts = append(parts, "position")
		}
	}
	*a.trace = nil
	return strings.Join(parts, ", ")
}

// TestStatementSequence asserts what the applier sends for a transaction:
// each remote transaction is one local transaction stamped with the
// origin, fast statements checked before COMMIT, and the resolving path
// when one of them meets a conflict.
func TestStatementSequence(t *testing.T) {
	a, conn := testApplier(t)
	d := newDecoder(t)
	ctx := context.Background()
	t0 := time.Now().UTC().Truncate(time.Microsecond)
	apply := func(txns ...*decoder.Txn) {
		t.Helper()
		for _, x := range txns {
			a.track.received(x.EndLSN, x.CommitTime)
		}
		if err := a.applyBatch(ctx, txns); err != nil {
			t.Fatal(err)
		}
	}

	apply(kvTxn(t, d, 700, 0x1000, t0, insert("1", "a"), insert("2", "b")),
		kvTxn(t, d, 701, 0x2000, t0.Add(time.Millisecond), update("1", "a2"), del("2")))
	// The first change of a relation ends the pipeline chunk (position) to
	// read the local catalog for its plan.
	if got, want := sequence(a), "BEGIN, origin-setup, position, fast INSERT, fast INSERT, check, COMMIT, "+
		"BEGIN, origin-setup, fast UPDATE, fast DELETE, check, COMMIT, position"; got != want {
		t.Errorf("statements:\n got %s\nwant %s", got, want)
	}
	var progress string
	if err := conn.QueryRow(ctx, `SELECT pg_replication_origin_progress(bdr.repl_name($1), false)::text`,
		a.peer.Name).Scan(&progress); err != nil || progress != "0/2000" {
		t.Errorf("origin progress %q (%v), want 0/2000: the end of the last transaction", progress, err)
	}
	var ts time.Time
	var roident uint32
	if err := conn.QueryRow(ctx, `SELECT c.timestamp, c.roident FROM kv, pg_xact_commit_timestamp_origin(kv.xmin) c WHERE k = 1`).
		Scan(&ts, &roident); err != nil || !ts.Equal(t0.Add(time.Millisecond)) || roident != a.origin {
		t.Errorf("row version stamped %v by origin %d (%v), want the remote commit %v by origin %d", ts, roident, err, t0.Add(time.Millisecond), a.origin)
	}

	// A local change newer than the remote one: the fast UPDATE does not
	// apply, the check aborts, and the transaction is applied again with
	// resolving statements, which keep the local row and record why.
	if _, err := conn.Exec(ctx, `UPDATE kv SET v = 'local' WHERE k = 1`); err != nil {
		t.Fatal(err)
	}
	apply(kvTxn(t, d, 702, 0x3000, t0.Add(2*time.Millisecond), update("1", "remote"), insert("3", "c")))
	// (The COMMIT and position sent after the failed check are skipped by
	// the server.)
	if got, want := sequence(a), "BEGIN, origin-setup, fast UPDATE, fast INSERT, check, COMMIT, position, "+
		"BEGIN, origin-setup, resolving UPDATE, resolving INSERT, COMMIT, position"; got != want {
		t.Errorf("statements after a conflict:\n got %s\nwant %s", got, want)
	}
	var v, typ, res string
	if err := conn.QueryRow(ctx, `SELECT v FROM kv WHERE k = 1`).Scan(&v); err != nil || v != "local" {
		t.Errorf("k=1 is %q (%v), want the newer local value", v, err)
	}
	if err := conn.QueryRow(ctx, `SELECT conflict_type, resolution FROM bdr.conflict_history`).Scan(&typ, &res); err != nil ||
		typ != "update_update" || res != "last_update_wins_keep_local" {
		t.Errorf("conflict record %q %q (%v)", typ, res, err)
	}
	if n := a.resolveNext; n != resolveWindow-1 {
		t.Errorf("resolving window %d after one transaction, want %d", n, resolveWindow-1)
	}
}
