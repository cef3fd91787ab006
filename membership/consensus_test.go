package membership

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/catalog"
	"github.com/bdr-dev/bdr/internal/groupkey"
)

func freeTCP(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func testConsensus(t *testing.T, name string, key groupkey.Key) (*consensus, string) {
	t.Helper()
	addr := freeTCP(t)
	c, err := openConsensus(consensusConfig{Name: name, Dir: filepath.Join(t.TempDir(), name), Bind: addr, Changed: make(chan struct{}, 1),
		Key: key, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	return c, addr
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestConsensus: one node bootstraps, two more are admitted as nonvoters and
// become voters; the state is the same everywhere; a minority cannot decide;
// a member of another group cannot take part.
func TestConsensus(t *testing.T) {
	key, _ := groupkey.New()
	a, aAddr := testConsensus(t, "a", key)
	if err := a.bootstrap("a"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.waitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	admit := func(name, raftAddr string) groupNode {
		t.Helper()
		n, err := a.apply(command{Op: opAdmit, Node: groupNode{Name: name, RaftAddr: raftAddr}, At: at})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := admit("a", aAddr); n.ID != 1 || n.State != catalog.StateJoining {
		t.Fatalf("first node %+v", n)
	}
	if _, err := a.apply(command{Op: opActivate, Node: groupNode{Name: "a"}, At: at}); err != nil {
		t.Fatal(err)
	}
	b, bAddr := testConsensus(t, "b", key)
	c, cAddr := testConsensus(t, "c", key)
	for _, x := range []struct{ name, addr string }{{"b", bAddr}, {"c", cAddr}} {
		n := admit(x.name, x.addr)
		if err := a.setVoter(x.name, x.addr, false); err != nil {
			t.Fatal(err)
		}
		waitFor(t, x.name+" to follow the log", func() bool {
			node := map[string]*consensus{"b": b, "c": c}[x.name]
			_, ok := node.fsm.current().Nodes[x.name]
			return ok
		})
		if _, err := a.apply(command{Op: opActivate, Node: groupNode{Name: x.name}, At: at}); err != nil {
			t.Fatal(err)
		}
		if err := a.setVoter(x.name, x.addr, true); err != nil {
			t.Fatal(err)
		}
		if n.ID == 0 {
			t.Fatal("no id")
		}
	}
	if _, err := a.apply(command{Op: opAdmit, Node: groupNode{Name: "b"}, At: at}); err == nil || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("admitting a current name again: %v", err)
	}
	if _, err := b.apply(command{Op: opPart, Node: groupNode{Name: "c"}, At: at}); !errors.Is(err, errNoLeader) {
		t.Fatalf("apply on a follower = %v, want errNoLeader", err)
	}
	waitFor(t, "every member to agree", func() bool {
		for _, x := range []*consensus{b, c} {
			s := x.fsm.current()
			if len(s.Nodes) != 3 || s.NextID != 4 || s.Nodes["c"].State != catalog.StateActive {
				return false
			}
		}
		return true
	})
	servers, err := a.servers()
	if err != nil || len(servers) != 3 || !servers["b"] || !servers["c"] {
		t.Fatalf("configuration %v %v", servers, err)
	}

	// An outsider with another key cannot join the conversation.
	other, _ := groupkey.New()
	x, xAddr := testConsensus(t, "x", other)
	_ = x
	if err := a.setVoter("x", xAddr, false); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if _, ok := x.fsm.current().Nodes["a"]; ok {
		t.Fatal("a node with another group's key received the log")
	}
	if err := a.remove("x"); err != nil {
		t.Fatal(err)
	}

	// The leader goes away: the two others elect one and go on deciding.
	a.close()
	waitFor(t, "a new leader", func() bool { return b.isLeader() || c.isLeader() })
	leader := b
	if c.isLeader() {
		leader = c
	}
	if _, err := leader.apply(command{Op: opPart, Node: groupNode{Name: "a"}, Reason: "test", At: at}); err != nil {
		t.Fatalf("the majority could not part a: %v", err)
	}
	// With only one voter of three left, nothing can be decided.
	follower := c
	if leader == c {
		follower = b
	}
	leader.close()
	time.Sleep(2 * time.Second)
	if follower.isLeader() {
		t.Fatal("a single voter of three became leader")
	}
	if _, err := follower.apply(command{Op: opAdmit, Node: groupNode{Name: "d"}, At: at}); !errors.Is(err, errNoLeader) {
		t.Fatalf("minority apply = %v, want errNoLeader", err)
	}
}

func TestGroupStateApply(t *testing.T) {
	var s groupState
	at := time.Now()
	steps := []struct {
		c       command
		wantErr string
	}{
		{command{Op: opAdmit, Node: groupNode{Name: "a"}, At: at}, ""},
		{command{Op: opAdmit, Node: groupNode{Name: "Bad"}, At: at}, "invalid"},
		{command{Op: opAdmit, Node: groupNode{Name: "a"}, At: at}, "already used"},
		{command{Op: opActivate, Node: groupNode{Name: "b"}, At: at}, "no node"},
		{command{Op: opPart, Node: groupNode{Name: "a"}, At: at}, ""},
		{command{Op: opPart, Node: groupNode{Name: "a"}, At: at}, "no node"},
		{command{Op: opAdmit, Node: groupNode{Name: "a"}, At: at}, ""}, // a parted name joins again
		{command{Op: "nonsense", Node: groupNode{Name: "a"}, At: at}, "unknown"},
	}
	for i, st := range steps {
		res := s.apply(st.c)
		if (res.Err == nil) != (st.wantErr == "") || (res.Err != nil && !strings.Contains(res.Err.Error(), st.wantErr)) {
			t.Fatalf("step %d (%s %s): %v, want %q", i, st.c.Op, st.c.Node.Name, res.Err, st.wantErr)
		}
	}
	if s.Nodes["a"].ID != 2 || s.NextID != 3 {
		t.Fatalf("rejoined a has id %d (next %d); ids must not be reused", s.Nodes["a"].ID, s.NextID)
	}
}

// TestGroupStateRetriedRequest checks that a decision proposed again with
// the same request id (after the leader was lost mid-commit, not knowing
// whether it committed) is answered with the decision taken, not refused
// nor taken twice; another request is still refused.
func TestGroupStateRetriedRequest(t *testing.T) {
	var s groupState
	at := time.Now()
	admit := command{Op: opAdmit, Node: groupNode{Name: "a"}, At: at, Request: "r1"}
	first := s.apply(admit)
	again := s.apply(admit)
	if first.Err != nil || again.Err != nil || again.Node.ID != first.Node.ID || s.NextID != 2 {
		t.Fatalf("admit retried: %v / %v, ids %d and %d, next id %d; want the same node once",
			first.Err, again.Err, first.Node.ID, again.Node.ID, s.NextID)
	}
	if res := s.apply(command{Op: opAdmit, Node: groupNode{Name: "a"}, At: at, Request: "r2"}); res.Err == nil {
		t.Fatal("a second admit of the same name with another request was accepted")
	}
	part := command{Op: opPart, Node: groupNode{Name: "a"}, At: at, Request: "r3"}
	for i := range 2 {
		if res := s.apply(part); res.Err != nil || res.Node.State != catalog.StateParted {
			t.Fatalf("part (try %d): %v, state %q", i+1, res.Err, res.Node.State)
		}
	}
	if res := s.apply(command{Op: opPart, Node: groupNode{Name: "a"}, At: at, Request: "r4"}); res.Err == nil {
		t.Fatal("a new part of a parted node was accepted")
	}
}
