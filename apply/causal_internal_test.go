package apply

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/decoder"
)

func TestDepStateNote(t *testing.T) {
	var s depState
	s.note([]decoder.Dependency{{Node: 1, LSN: 0x20}, {Node: 2, LSN: 0x10}})
	s.note(nil)
	s.note([]decoder.Dependency{{Node: 1, LSN: 0x10}, {Node: 3, LSN: 0x5}})
	s.note([]decoder.Dependency{{Node: 2, LSN: 0x30}})
	if got, want := fmt.Sprint(s.pending), "[{1 0/20} {2 0/30} {3 0/5}]"; got != want {
		t.Errorf("pending %s, want %s (the newest per node)", got, want)
	}
}

// TestCausalityReached: a dependency on this node or on a node it does not
// stream from is met; one on a peer is met once that stream's tracker has
// processed the position, and the waiter is woken when it moves.
func TestCausalityReached(t *testing.T) {
	c := newCausality(time.Second)
	a := &stream{peer: Peer{Name: "a", NodeID: 1}}
	b := &stream{peer: Peer{Name: "b", NodeID: 2}}
	c.set(3, map[string]*running{"a": {s: a}, "b": {s: b}})
	for _, tc := range []struct {
		dep          decoder.Dependency
		ok, relevant bool
	}{
		{decoder.Dependency{Node: 3, LSN: 0x100}, true, false}, // this node
		{decoder.Dependency{Node: 9, LSN: 0x100}, true, false}, // not a peer (parted)
		{decoder.Dependency{Node: 2, LSN: 0x100}, false, true}, // a peer whose stream is not running
	} {
		if ok, relevant, _ := c.reached(tc.dep); ok != tc.ok || relevant != tc.relevant {
			t.Errorf("reached(%v) = %v, %v; want %v, %v", tc.dep, ok, relevant, tc.ok, tc.relevant)
		}
	}
	tr := newTracker(0x50)
	a.track = tr
	if ok, _, _ := c.reached(decoder.Dependency{Node: 1, LSN: 0x50}); !ok {
		t.Error("a dependency at the stream's start position is not met")
	}
	dep := decoder.Dependency{Node: 1, LSN: 0x100}
	ok, _, wake := c.reached(dep)
	if ok || wake == nil {
		t.Fatalf("reached(%v) = %v, wake %v; want false and a channel", dep, ok, wake)
	}
	if c.satisfied([]decoder.Dependency{{Node: 3, LSN: 1}, dep}) {
		t.Error("satisfied with a dependency not met")
	}
	tr.received(0x80, time.Now())
	tr.received(0x100, time.Now())
	tr.done(0x1000, true)
	<-wake // moved to 0x80
	if ok, _, _ := c.reached(dep); ok {
		t.Error("met at 0x80")
	}
	tr.done(0x1100, true)
	if ok, _, _ := c.reached(dep); !ok || !c.satisfied([]decoder.Dependency{{Node: 3, LSN: 1}, dep}) {
		t.Error("not met once the transaction ending at 0x100 is done")
	}
}

// TestPauserYield: an applier waiting inside a batch lets a pause in, and
// is inside again once it ends.
func TestPauserYield(t *testing.T) {
	p := newPauser()
	ctx := context.Background()
	if err := p.yield(ctx); err != nil { // no pause: nothing happens
		t.Fatal(err)
	}
	if err := p.enter(ctx); err != nil {
		t.Fatal(err)
	}
	paused := make(chan uint64)
	go func() {
		gen, _ := p.pause(ctx)
		paused <- gen
	}()
	for !p.isPaused() {
		time.Sleep(time.Millisecond)
	}
	yielded := make(chan error)
	go func() { yielded <- p.yield(ctx) }()
	gen := <-paused // the yielding applier let the pause in
	select {
	case <-yielded:
		t.Fatal("yield returned while paused")
	case <-time.After(20 * time.Millisecond):
	}
	p.resume(gen)
	if err := <-yielded; err != nil {
		t.Fatal(err)
	}
	// Inside again: a new pause waits for the applier to leave.
	go func() {
		gen, _ := p.pause(ctx)
		paused <- gen
	}()
	select {
	case <-paused:
		t.Fatal("pause returned while the applier was inside after yield")
	case <-time.After(20 * time.Millisecond):
	}
	p.leave()
	p.resume(<-paused)

	cctx, cancel := context.WithCancel(ctx)
	if err := p.enter(ctx); err != nil {
		t.Fatal(err)
	}
	go func() { gen, _ := p.pause(ctx); paused <- gen }()
	for !p.isPaused() {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := p.yield(cctx); err == nil {
		t.Error("yield ignored a cancelled context")
	}
	p.leave() // inside again after the cancelled yield: leaving balances enter
	gen = <-paused
	p.mu.Lock()
	active := p.active
	p.mu.Unlock()
	if active != 0 {
		t.Errorf("%d appliers inside after leaving, want 0", active)
	}
	p.resume(gen)
}
