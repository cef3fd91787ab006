package membership

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/bdr-dev/bdr/internal/groupkey"
)

func TestClockCodec(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)
	got, err := decodeClock(encodeClock(now))
	if err != nil || !got.Equal(now) {
		t.Fatalf("round trip: %v %v, want %v", got, err, now)
	}
	good := encodeClock(now)
	negative := append([]byte{clockVersion}, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	for name, bad := range map[string][]byte{
		"nil": nil, "empty": {}, "version 2": append([]byte{2}, good[1:]...), "short": good[:5],
		"long": append(append([]byte{}, good...), 0), "zero time": make([]byte, clockPayloadLen),
		"negative time": negative, "json": []byte(`{"v":1,"t":1}`),
	} {
		if name == "zero time" {
			bad[0] = clockVersion
		}
		if _, err := decodeClock(bad); err == nil {
			t.Errorf("decodeClock(%s %x) accepted", name, bad)
		}
	}
}

func FuzzDecodeClock(f *testing.F) {
	f.Add(encodeClock(time.Now()))
	f.Add([]byte{})
	f.Add([]byte{1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		at, err := decodeClock(b)
		if err == nil && (len(b) != clockPayloadLen || b[0] != clockVersion || at.UnixNano() != int64(binary.BigEndian.Uint64(b[1:]))) {
			t.Fatalf("accepted %x as %v", b, at)
		}
	})
}

// probe is one fake probe: the member's clock is offset ahead of ours, the
// ping takes out to arrive, the answer back to return.
func probe(t1 time.Time, offset, out, back time.Duration) clockSample {
	remote := t1.Add(out).Add(offset) // the member reads its clock when it answers
	t4 := t1.Add(out + back)
	return sampleClock(remote, t4, t4.Sub(t1))
}

// TestSkewEstimator: the offset is recovered despite asymmetric delays,
// from the sample with the smallest round trip among the recent ones.
func TestSkewEstimator(t *testing.T) {
	const offset = 3 * time.Second
	base := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	ms := time.Millisecond
	cases := []struct {
		name      string
		delays    [][2]time.Duration // out, back of each probe, one a second
		wantRTT   time.Duration      // of the estimate
		tolerance time.Duration
	}{
		{"symmetric", [][2]time.Duration{{10 * ms, 10 * ms}}, 20 * ms, 0},
		{"one sample, asymmetric", [][2]time.Duration{{90 * ms, 10 * ms}}, 100 * ms, 40 * ms},
		{"best of several asymmetric", [][2]time.Duration{{50 * ms, 2 * ms}, {2 * ms, 90 * ms}, {3 * ms, 2 * ms},
			{200 * ms, 1 * ms}, {1 * ms, 300 * ms}}, 5 * ms, ms},
		{"queued one way every time but one", [][2]time.Duration{{400 * ms, 1 * ms}, {400 * ms, 1 * ms}, {1 * ms, 1 * ms},
			{400 * ms, 1 * ms}, {400 * ms, 1 * ms}}, 2 * ms, 0},
	}
	for _, c := range cases {
		var e skewEstimator
		now := base
		for i, d := range c.delays {
			now = base.Add(time.Duration(i) * time.Second)
			e.add(probe(now, offset, d[0], d[1]))
		}
		est, ok := e.estimate(now)
		if !ok {
			t.Fatalf("%s: no estimate", c.name)
		}
		if est.RTT != c.wantRTT || (est.Offset-offset).Abs() > c.tolerance || (est.Offset-offset).Abs() > est.RTT/2 {
			t.Errorf("%s: estimate %s (rtt %s); want %s within %s, rtt %s", c.name, est.Offset, est.RTT, offset, c.tolerance, c.wantRTT)
		}
		// A member behind ours: the same with the sign flipped.
		var neg skewEstimator
		for i, d := range c.delays {
			neg.add(probe(base.Add(time.Duration(i)*time.Second), -offset, d[0], d[1]))
		}
		if est, _ := neg.estimate(now); (est.Offset + offset).Abs() > c.tolerance {
			t.Errorf("%s: estimate of a clock behind %s, want %s", c.name, est.Offset, -offset)
		}
	}

	// Random asymmetric delays: every estimate is within half its round
	// trip, and that round trip is the smallest of the window.
	rng := rand.New(rand.NewPCG(1, 2))
	var e skewEstimator
	var rtts []time.Duration
	for i := range 200 {
		out := time.Duration(rng.Int64N(int64(200 * ms)))
		back := time.Duration(rng.Int64N(int64(20 * ms)))
		now := base.Add(time.Duration(i) * time.Second)
		e.add(probe(now, offset, out, back))
		rtts = append(rtts, out+back)
		est, _ := e.estimate(now)
		window := rtts[max(0, len(rtts)-skewSamples):]
		if est.RTT != minDuration(window) || (est.Offset-offset).Abs() > est.RTT/2 {
			t.Fatalf("probe %d: estimate %s rtt %s; want within rtt/2 of %s, rtt the window's least %s", i, est.Offset, est.RTT, offset, minDuration(window))
		}
	}
}

func minDuration(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds[1:] {
		m = min(m, d)
	}
	return m
}

// TestSkewWindow: old samples go, by count and by age; a clock step
// replaces the samples it makes wrong at once.
func TestSkewWindow(t *testing.T) {
	base := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	ms := time.Millisecond
	var e skewEstimator
	e.add(probe(base, 0, ms, ms)) // the best sample, then eight worse
	for i := 1; i <= skewSamples; i++ {
		e.add(probe(base.Add(time.Duration(i)*time.Second), 0, 10*ms, 10*ms))
	}
	if est, _ := e.estimate(base.Add(10 * time.Second)); est.RTT != 20*ms {
		t.Errorf("after %d newer samples the estimate still has rtt %s; want 20ms (the best one dropped)", skewSamples, est.RTT)
	}
	if _, ok := e.estimate(base.Add(skewSamples*time.Second + skewWindow + time.Second)); ok {
		t.Error("samples older than the window still give an estimate")
	}
	e = skewEstimator{}
	e.add(probe(base.Add(-skewWindow-time.Second), 0, ms, ms))
	e.add(probe(base, 0, 30*ms, 30*ms))
	if est, _ := e.estimate(base); est.RTT != 60*ms {
		t.Errorf("a sample older than the window was used: rtt %s", est.RTT)
	}

	// The member's clock is set back by 5 s: the next sample is the estimate
	// even though the older ones had smaller round trips.
	e = skewEstimator{}
	for i := range 4 {
		e.add(probe(base.Add(time.Duration(i)*time.Second), 5*time.Second, ms, ms))
	}
	e.add(probe(base.Add(5*time.Second), 0, 40*ms, 40*ms))
	if est, _ := e.estimate(base.Add(5 * time.Second)); est.Offset.Abs() > 40*ms || len(e.samples) != 1 {
		t.Errorf("after a step of the member's clock: estimate %s from %d samples; want about 0 from 1", est.Offset, len(e.samples))
	}
}

// TestSkewBound: over the bound is flagged once, and cleared once the skew
// is back under 90% of it.
func TestSkewBound(t *testing.T) {
	var e skewEstimator
	bound := time.Second
	for _, step := range []struct {
		skew          time.Duration
		changed, over bool
	}{
		{200 * time.Millisecond, false, false},
		{-1100 * time.Millisecond, true, true},
		{-1200 * time.Millisecond, false, true},
		{950 * time.Millisecond, false, true}, // hovering at the bound
		{850 * time.Millisecond, true, false},
		{999 * time.Millisecond, false, false},
		{1001 * time.Millisecond, true, true},
	} {
		if changed := e.check(clockSample{Offset: step.skew}, bound); changed != step.changed || e.over != step.over {
			t.Errorf("skew %s: changed %v over %v; want %v %v", step.skew, changed, e.over, step.changed, step.over)
		}
	}
}

// TestMalformedClockIgnored: an answer with a malformed clock, or none,
// counts as an answer but gives no sample; nothing panics.
func TestMalformedClockIgnored(t *testing.T) {
	var logs lockedBuffer
	g := &gossip{cfg: gossipConfig{Name: "a", Now: time.Now, MaxSkew: time.Second,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))},
		alive: map[string]memberMeta{"b": {Name: "b"}}, lastAck: map[string]time.Time{}, skews: map[string]*skewEstimator{}}
	d := &pingDelegate{g: g}
	node := &memberlist.Node{Name: "b"}
	for _, p := range [][]byte{nil, {}, {clockVersion}, {9, 1, 2, 3, 4, 5, 6, 7, 8}, bytes.Repeat([]byte{0xff}, 100)} {
		d.NotifyPingComplete(node, time.Millisecond, p)
	}
	if len(g.skews) != 0 || g.lastAck["b"].IsZero() {
		t.Errorf("malformed clocks: %d estimators, last answer %v; want none, an answer", len(g.skews), g.lastAck["b"])
	}
	if !strings.Contains(logs.String(), "gossip probe answer without a clock") {
		t.Errorf("no debug line for the malformed payloads:\n%s", logs.String())
	}
	d.NotifyPingComplete(&memberlist.Node{Name: "stranger"}, time.Millisecond, encodeClock(time.Now()))
	d.NotifyPingComplete(node, time.Millisecond, encodeClock(time.Now()))
	if len(g.skews) != 1 || g.skews["b"] == nil {
		t.Errorf("a good clock from b and one from a non-member: estimators %v; want b only", g.skews)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// count is the number of log lines holding every part.
func (l *lockedBuffer) count(parts ...string) int { return len(l.lines(parts...)) }

func (l *lockedBuffer) lines(parts ...string) []string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

var skewAttr = regexp.MustCompile(` skew=(\S+)`)

// skews are the skew attributes of the log lines holding every part.
func (l *lockedBuffer) skews(parts ...string) []time.Duration {
	var out []time.Duration
	for _, line := range l.lines(parts...) {
		if m := skewAttr.FindStringSubmatch(line); m != nil {
			if d, err := time.ParseDuration(m[1]); err == nil {
				out = append(out, d)
			}
		}
	}
	return out
}

// TestGossipClockSkew runs real gossip between three members, b's clock
// 3 s ahead: a sees b +3 s and c about 0, b sees a -3 s; each crossing of
// the bound is logged once; when b's clock is set right, a sees it back
// under the bound at the next probes.
func TestGossipClockSkew(t *testing.T) {
	k, _ := groupkey.New()
	key := k.GossipKey()
	var up atomic.Bool
	up.Store(true)
	var bOffset atomic.Int64
	bOffset.Store(int64(3 * time.Second))
	start := func(name string, now func() time.Time, logs *lockedBuffer) (*gossip, string) {
		addr := freeTCP(t)
		g, err := startGossip(gossipConfig{Name: name, Bind: addr, Key: key, Now: now,
			Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
			Meta: func() memberMeta {
				return memberMeta{Name: name, Admin: "127.0.0.1:1", Version: "test", DBUp: up.Load()}
			}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(g.shutdown)
		return g, addr
	}
	var aLog, bLog, cLog lockedBuffer
	a, aAddr := start("a", nil, &aLog)
	b, _ := start("b", func() time.Time { return time.Now().Add(time.Duration(bOffset.Load())) }, &bLog)
	c, _ := start("c", nil, &cLog)
	for _, g := range []*gossip{b, c} {
		if err := g.join([]string{aAddr}); err != nil {
			t.Fatal(err)
		}
	}
	expect := []string{"a", "b", "c"}
	skewOf := func(g *gossip, name string) *clockSkew { return g.states(expect)[name].Clock }
	waitFor(t, "a and b to compare clocks with each other and c", func() bool {
		return skewOf(a, "b") != nil && skewOf(a, "c") != nil && skewOf(b, "a") != nil
	})
	const tolerance = 200 * time.Millisecond
	for _, c := range []struct {
		from     *gossip
		of       string
		want     time.Duration
		wantOver bool
	}{{a, "b", 3 * time.Second, true}, {b, "a", -3 * time.Second, true}, {a, "c", 0, false}} {
		got := skewOf(c.from, c.of)
		if (got.Offset-c.want).Abs() > tolerance || got.Over != c.wantOver {
			t.Errorf("%s sees %s's clock %s (rtt %s, over %v); want %s ± %s, over %v",
				c.from.cfg.Name, c.of, got.Offset, got.RTT, got.Over, c.want, tolerance, c.wantOver)
		}
		t.Logf("%s sees %s's clock %+.4fs (rtt %s)", c.from.cfg.Name, c.of, got.Offset.Seconds(), got.RTT)
	}
	// Several more probes: still one line per crossing.
	time.Sleep(3 * time.Second)
	for _, c := range []struct {
		log      *lockedBuffer
		of       string
		want     time.Duration
		observer string
	}{{&aLog, "b", 3 * time.Second, "a"}, {&bLog, "a", -3 * time.Second, "b"}} {
		skews := c.log.skews("level=WARN", "member clock skew over the bound", "member="+c.of+" ")
		if len(skews) != 1 || (skews[0]-c.want).Abs() > tolerance {
			t.Errorf("%s logged %s over the bound with skews %v; want once, %s:\n%s", c.observer, c.of, skews, c.want, c.log.String())
		}
	}
	if n := aLog.count("clock skew", "member=c "); n != 0 {
		t.Errorf("a logged about c, whose clock is right:\n%s", aLog.String())
	}

	bOffset.Store(0) // b's clock is set right
	waitFor(t, "a to see b's clock right", func() bool {
		s := skewOf(a, "b")
		return s != nil && !s.Over && s.Offset.Abs() < tolerance
	})
	if n := aLog.count("level=INFO", "member clock skew back under the bound", "member=b"); n != 1 {
		t.Errorf("a logged b back under the bound %d times; want once:\n%s", n, aLog.String())
	}
}
