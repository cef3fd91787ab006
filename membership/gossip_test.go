package membership

import (
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/bdr-dev/bdr/internal/groupkey"
)

func testGossip(t *testing.T, name string, key []byte, dbUp *atomic.Bool) (*gossip, string) {
	t.Helper()
	addr := freeTCP(t) // memberlist binds TCP and UDP on the same port
	g, err := startGossip(gossipConfig{Name: name, Bind: addr, Key: key, Logger: slog.New(slog.DiscardHandler),
		Meta: func() memberMeta {
			return memberMeta{Name: name, Admin: "127.0.0.1:1", Version: "test", DBUp: dbUp.Load()}
		}})
	if err != nil {
		t.Fatal(err)
	}
	return g, addr
}

// TestGossipLiveness: members see each other up, see a member whose
// database is down as db-down, and a silent member suspect then down within
// ten seconds; a member with another key is not let in.
func TestGossipLiveness(t *testing.T) {
	k, _ := groupkey.New()
	key := k.GossipKey()
	var up, bUp atomic.Bool
	up.Store(true)
	bUp.Store(true)
	a, aAddr := testGossip(t, "a", key, &up)
	defer a.shutdown()
	b, _ := testGossip(t, "b", key, &bUp)
	c, _ := testGossip(t, "c", key, &up)
	defer b.shutdown()
	for _, g := range []*gossip{b, c} {
		if err := g.join([]string{aAddr}); err != nil {
			t.Fatal(err)
		}
	}
	expect := []string{"a", "b", "c"}
	waitFor(t, "all up", func() bool {
		s := a.states(expect)
		return s["b"].State == LiveUp && s["c"].State == LiveUp
	})
	bUp.Store(false)
	b.update()
	waitFor(t, "b db-down", func() bool { return a.states(expect)["b"].State == LiveDBDown })

	close(c.stop) // c vanishes without a word
	<-c.done
	_ = c.ml.Shutdown()
	start := time.Now()
	sawSuspect := false
	waitFor(t, "c down", func() bool {
		st := a.states(expect)["c"].State
		sawSuspect = sawSuspect || st == LiveSuspect
		return st == LiveDown
	})
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("c declared down after %s, want under 10s", d)
	}
	if !sawSuspect {
		t.Error("c went down without showing suspect first")
	}
	t.Logf("c down after %s", time.Since(start).Round(10*time.Millisecond))
	if since := a.states(expect)["c"].Since; time.Since(since) > 10*time.Second {
		t.Errorf("down since %v: not the time of the change", since)
	}

	other, _ := groupkey.New()
	var u atomic.Bool
	u.Store(true)
	x, _ := testGossip(t, "x", other.GossipKey(), &u)
	defer x.shutdown()
	if err := x.join([]string{aAddr}); err == nil {
		t.Error("a member with another key joined the gossip")
	}
}

func TestMetaCodec(t *testing.T) {
	m := memberMeta{Name: "tokyo", ID: 3, Admin: "10.0.0.1:7801", DB: "10.0.0.1:5432", Version: "0.1.0", State: "active", DBUp: true}
	b, err := encodeMeta(m, memberlist.MetaMaxSize)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeMeta(b)
	m.V = metaVersion
	if err != nil || got != m {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	if _, err := encodeMeta(memberMeta{Name: "a", Admin: strings.Repeat("x", 600)}, memberlist.MetaMaxSize); err == nil {
		t.Fatal("oversized metadata encoded")
	}
	for _, bad := range [][]byte{nil, {}, {2, '{', '}'}, append([]byte{1}, `{"v":1,"n":"Bad"}`...),
		append([]byte{1}, `{"v":1,"n":"a","extra":1}`...), append([]byte{1}, `{"v":1`...)} {
		if _, err := decodeMeta(bad); err == nil {
			t.Errorf("decodeMeta(%q) accepted", bad)
		}
	}
}

func FuzzDecodeMeta(f *testing.F) {
	good, _ := encodeMeta(memberMeta{Name: "a", Admin: "x", Version: "v", DBUp: true}, memberlist.MetaMaxSize)
	f.Add(good)
	f.Add([]byte{1, '{', '}'})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMeta(b)
		if err == nil && (!NamePattern.MatchString(m.Name) || m.V != metaVersion) {
			t.Fatalf("accepted invalid metadata %+v", m)
		}
	})
}
