package apply

import (
	"context"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/decoder"
)

// TestTrackerConfirmsOnlyFlushed checks DESIGN rule 1 at the unit level:
// the confirmable position never passes a transaction whose local commit is
// not flushed, and skipped transactions are confirmable once everything
// before them is.
func TestTrackerConfirmsOnlyFlushed(t *testing.T) {
	now := time.Now()
	tr := newTracker(100)
	tr.received(200, now)
	tr.received(300, now) // will be skipped (filtered)
	tr.received(400, now)
	if got := tr.confirmable(true); got != 100 {
		t.Fatalf("confirmable before anything applied = %d, want 100", got)
	}
	tr.done(5000, true) // applied, local commit at 5000
	tr.done(0, false)   // skipped
	if got := tr.confirmable(true); got != 100 {
		t.Fatalf("confirmed %d before the local commit was flushed", got)
	}
	tr.flushed(4999)
	if got := tr.confirmable(true); got != 100 {
		t.Fatalf("confirmed %d with the flush just short of the commit", got)
	}
	tr.flushed(5000)
	if got := tr.confirmable(true); got != 300 {
		t.Fatalf("confirmable = %d, want 300 (the applied and the skipped one)", got)
	}
	if b, s := tr.lag(now.Add(time.Second)); s < 0.9 || b != 0 {
		t.Errorf("lag = %d bytes %.1fs, want ~1s behind on the pending transaction", b, s)
	}
	tr.serverPosition(900, false)
	if got := tr.confirmable(true); got != 300 {
		t.Fatalf("confirmed %d past a received transaction not applied", got)
	}
	tr.done(6000, true)
	tr.flushed(7000)
	if got := tr.confirmable(false); got != 400 {
		t.Fatalf("confirmable = %d, want 400", got)
	}
	// Idle, decoder between transactions: the provider's position is confirmable.
	if got := tr.confirmable(true); got != 900 {
		t.Fatalf("idle confirmable = %d, want 900", got)
	}
	if !tr.processedPast(900) || tr.processedPast(901) {
		t.Error("processedPast is wrong")
	}
	if b, s := tr.lag(time.Now()); b != 0 || s != 0 {
		t.Errorf("lag when idle = %d bytes %.1fs, want 0", b, s)
	}
}

func TestRelayBounds(t *testing.T) {
	ctx := context.Background()
	r := newRelay(2, 1<<20)
	txn := func() *decoder.Txn { return &decoder.Txn{} }
	for i := 0; i < 2; i++ {
		if ok, err := r.put(ctx, txn(), time.Millisecond); !ok || err != nil {
			t.Fatalf("put %d: %v %v", i, ok, err)
		}
	}
	if ok, _ := r.put(ctx, txn(), 10*time.Millisecond); ok {
		t.Fatal("put past the count bound")
	}
	got, err := r.take(ctx, time.Millisecond, 1)
	if err != nil || len(got) != 1 {
		t.Fatalf("take at most 1 = %d, %v; want one", len(got), err)
	}
	if ok, _ := r.put(ctx, txn(), time.Millisecond); !ok {
		t.Fatal("put refused after a take made room")
	}
	got, err = r.take(ctx, time.Millisecond, 0)
	if err != nil || len(got) != 2 {
		t.Fatalf("take = %d, %v; want everything queued", len(got), err)
	}
	if got, _ := r.take(ctx, 10*time.Millisecond, 0); len(got) != 0 {
		t.Fatal("take from an empty relay returned something")
	}
	// A taker waiting is woken by a put.
	done := make(chan int)
	go func() {
		got, _ := r.take(ctx, time.Minute, 0)
		done <- len(got)
	}()
	time.Sleep(10 * time.Millisecond)
	if ok, _ := r.put(ctx, txn(), time.Second); !ok {
		t.Fatal("put to an empty relay refused")
	}
	if n := <-done; n != 1 {
		t.Fatalf("woken taker got %d", n)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := r.take(cctx, time.Minute, 0); err == nil {
		t.Fatal("take ignored a cancelled context")
	}
}

func TestPauser(t *testing.T) {
	p := newPauser()
	ctx := context.Background()
	if err := p.enter(ctx); err != nil {
		t.Fatal(err)
	}
	paused := make(chan uint64)
	go func() {
		gen, _ := p.pause(ctx)
		paused <- gen
	}()
	select {
	case <-paused:
		t.Fatal("pause returned while an applier was inside a transaction")
	case <-time.After(20 * time.Millisecond):
	}
	p.leave()
	gen := <-paused
	entered := make(chan struct{})
	go func() {
		_ = p.enter(ctx)
		close(entered)
	}()
	select {
	case <-entered:
		t.Fatal("an applier entered while paused")
	case <-time.After(20 * time.Millisecond):
	}
	p.resume(gen - 1) // a stale resume does not end this pause
	select {
	case <-entered:
		t.Fatal("a stale resume ended the pause")
	case <-time.After(20 * time.Millisecond):
	}
	p.resume(gen)
	<-entered
}

// TestTrackerSkip checks that a skipped transaction is done at once only
// when nothing received before it is pending, so the confirmable position
// never passes a transaction not yet applied.
func TestTrackerSkip(t *testing.T) {
	now := time.Now()
	tr := newTracker(100)
	if !tr.skip(200, now) {
		t.Fatal("skip with nothing pending was refused")
	}
	if got := tr.confirmable(false); got != 200 {
		t.Fatalf("confirmable after a skip = %d, want 200", got)
	}
	tr.received(300, now)
	if tr.skip(400, now) {
		t.Fatal("skip passed a transaction still to apply")
	}
	tr.received(400, now) // the receiver then queues it for the applier
	tr.done(5000, true)
	tr.done(0, false)
	tr.flushed(5000)
	if got := tr.confirmable(false); got != 400 {
		t.Fatalf("confirmable = %d, want 400", got)
	}
	// Applied but not flushed is still pending for the confirmation, not
	// for skipping: the skip is confirmable only after the flush.
	tr.received(500, now)
	tr.done(6000, true)
	if !tr.skip(600, now) {
		t.Fatal("skip after everything was applied was refused")
	}
	if got := tr.confirmable(false); got != 400 {
		t.Fatalf("confirmed %d past an applied transaction not flushed", got)
	}
	tr.flushed(6000)
	if got := tr.confirmable(false); got != 600 {
		t.Fatalf("confirmable = %d, want 600", got)
	}
	if !tr.processedPast(600) {
		t.Error("processedPast(600) is false after the skip")
	}
}

// TestTombstoneHorizon: a stream's horizon follows the commits done and the
// keepalives received with nothing pending; the node's is the earliest of
// its streams', less the margin, and there is none while a stream has no
// run (its peer is down) or no horizon yet, or there is no stream.
func TestTombstoneHorizon(t *testing.T) {
	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	tr := newTracker(100)
	if !tr.horizonAt().IsZero() {
		t.Fatal("a new tracker has a horizon")
	}
	tr.received(200, t0)
	tr.keepalive(t0.Add(time.Minute)) // a transaction is pending
	if !tr.horizonAt().IsZero() {
		t.Fatalf("horizon %s with a transaction pending", tr.horizonAt())
	}
	tr.done(150, true)
	if got := tr.horizonAt(); !got.Equal(t0) {
		t.Fatalf("horizon %s after the transaction of %s", got, t0)
	}
	tr.flushed(150)
	tr.serverPosition(300, true) // the decoder is inside a transaction
	tr.keepalive(t0.Add(time.Minute))
	if got := tr.horizonAt(); !got.Equal(t0) {
		t.Fatalf("horizon %s with a transaction being received", got)
	}
	tr.serverPosition(300, false)
	tr.keepalive(t0.Add(time.Minute))
	if got := tr.horizonAt(); !got.Equal(t0.Add(time.Minute)) {
		t.Fatalf("horizon %s after an idle keepalive", got)
	}

	m := &Manager{streams: map[string]*running{}}
	if _, ok := m.tombstoneHorizon(); ok {
		t.Fatal("a horizon without streams")
	}
	up := &stream{track: tr}
	m.streams["b"] = &running{s: up}
	m.streams["c"] = &running{s: &stream{}} // not running: its peer is down
	if _, ok := m.tombstoneHorizon(); ok {
		t.Fatal("a horizon while a stream is not running")
	}
	other := newTracker(100)
	m.streams["c"].s.track = other
	if _, ok := m.tombstoneHorizon(); ok {
		t.Fatal("a horizon while a stream has none yet")
	}
	other.keepalive(t0.Add(30 * time.Second))
	if got, ok := m.tombstoneHorizon(); !ok || !got.Equal(t0.Add(30*time.Second-tombstoneMargin)) {
		t.Fatalf("horizon %s, %v; want the earliest stream's less the margin", got, ok)
	}
}
