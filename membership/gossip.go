package membership

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Liveness of a member, as bdrctl status, bdr.node_status and the metrics
// show it.
const (
	LiveUp      = "up"
	LiveSuspect = "suspect" // missed probes; not yet declared down
	LiveDown    = "down"    // its bdrd (or host) does not answer
	LiveDBDown  = "db-down" // its bdrd answers but its PostgreSQL does not
)

// metaVersion is the version of the gossip metadata payload; decoders
// refuse other versions.
const metaVersion = 1

// memberMeta is what each bdrd gossips about itself.
type memberMeta struct {
	V       int    `json:"v"`
	Name    string `json:"n"`
	ID      int32  `json:"id,omitempty"`
	Admin   string `json:"a"`
	DB      string `json:"db,omitempty"` // host:port of its public database, no credentials
	Version string `json:"ver"`
	State   string `json:"s,omitempty"`
	DBUp    bool   `json:"dbup"`
}

// encodeMeta is the payload: the version byte, then JSON; it must fit limit.
func encodeMeta(m memberMeta, limit int) ([]byte, error) {
	m.V = metaVersion
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	b = append([]byte{metaVersion}, b...)
	if len(b) > limit {
		return nil, fmt.Errorf("gossip metadata is %d bytes, over the %d byte limit", len(b), limit)
	}
	return b, nil
}

// decodeMeta reads a payload from a peer; anything malformed is an error,
// never a panic.
func decodeMeta(b []byte) (memberMeta, error) {
	var m memberMeta
	if len(b) == 0 {
		return m, errors.New("empty gossip metadata")
	}
	if len(b) > memberlist.MetaMaxSize {
		return m, fmt.Errorf("gossip metadata of %d bytes is too large", len(b))
	}
	if b[0] != metaVersion {
		return m, fmt.Errorf("gossip metadata version %d is not %d", b[0], metaVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(b[1:]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return m, fmt.Errorf("gossip metadata: %w", err)
	}
	if m.V != metaVersion || !NamePattern.MatchString(m.Name) {
		return m, fmt.Errorf("gossip metadata: bad version %d or name %q", m.V, m.Name)
	}
	return m, nil
}

// dbAddr is host:port of a connection string, without credentials.
func dbAddr(host string, port uint16) string {
	return net.JoinHostPort(host, strconv.Itoa(int(port)))
}

// liveness is what gossip knows of one member.
type liveness struct {
	State string
	Since time.Time
	Meta  memberMeta
	Clock *clockSkew // nil until a probe answered with its clock
	// neverSeen: down because gossip has not met it since this bdrd
	// started (a member that just joined, or one down since before),
	// not because it went silent.
	neverSeen bool
}

// gossipConfig configures the gossip of one bdrd.
type gossipConfig struct {
	Name      string
	Bind      string // host:port for TCP and UDP
	Advertise string // host:port peers use; "" = Bind
	Key       []byte // AES-256 gossip key
	Meta      func() memberMeta
	Logger    *slog.Logger
	// Transport replaces the network (tests inject faults); nil = UDP/TCP.
	Transport memberlist.NodeAwareTransport
	// MaxSkew is the bound on a member's clock skew over which it is
	// logged and flagged; 0 = DefaultMaxClockSkew.
	MaxSkew time.Duration
	// Now is the wall clock this node answers probes with and compares the
	// members' clocks to; nil = time.Now (tests set a skewed one).
	Now func() time.Time
}

// Every heartbeatEvery each bdrd pings every member it has alive directly
// (memberlist's own probes visit one member per interval, so with five
// members a given one is probed only every few seconds). A member that
// answered none of them for suspectAfter shows as suspect, and for
// downAfter as down; memberlist may declare it dead sooner, with the help of
// the other members. (On the minority side of a partition few members are
// left to confirm a suspicion, and memberlist took over 15 s to declare a
// member of the majority dead: downAfter keeps the 10 s promise.)
const (
	heartbeatEvery = 500 * time.Millisecond
	suspectAfter   = 2 * time.Second
	downAfter      = 7 * time.Second
)

// gossip runs memberlist for one bdrd: failure detection and metadata.
// What memberlist reports comes through its event and ping delegates,
// which it calls under its own locks: the node structures it hands out
// elsewhere change under its feet.
type gossip struct {
	ml    *memberlist.Memberlist
	cfg   gossipConfig
	start time.Time

	mu       sync.Mutex
	alive    map[string]memberMeta // members memberlist has alive
	addrs    map[string]string     // their gossip addresses
	lastAck  map[string]time.Time  // last answered probe or heartbeat
	met      map[string]bool       // members memberlist has had alive since the start
	inFlight map[string]bool       // heartbeats waiting for an answer
	known    map[string]liveness   // what states reported last, by member name
	skews    map[string]*skewEstimator

	stop chan struct{}
	done chan struct{}
}

func splitHostPort(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", port, err)
	}
	return host, p, nil
}

// startGossip starts memberlist with timings that declare a silent member
// down within a few seconds.
func startGossip(cfg gossipConfig) (*gossip, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxSkew <= 0 {
		cfg.MaxSkew = DefaultMaxClockSkew
	}
	g := &gossip{cfg: cfg, start: time.Now(), known: map[string]liveness{}, skews: map[string]*skewEstimator{},
		alive: map[string]memberMeta{}, addrs: map[string]string{}, lastAck: map[string]time.Time{}, met: map[string]bool{},
		inFlight: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	host, port, err := splitHostPort(cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("gossip listen address %q: %w", cfg.Bind, err)
	}
	mc.BindAddr, mc.BindPort = host, port
	adv := cfg.Advertise
	if adv == "" && host != "0.0.0.0" && host != "::" && host != "" {
		adv = cfg.Bind
	}
	if adv != "" {
		if mc.AdvertiseAddr, mc.AdvertisePort, err = splitHostPort(adv); err != nil {
			return nil, fmt.Errorf("gossip advertise address %q: %w", adv, err)
		}
	}
	mc.SecretKey = cfg.Key
	mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	mc.ProbeInterval = time.Second
	mc.ProbeTimeout = 500 * time.Millisecond
	mc.SuspicionMult = 3
	mc.GossipInterval = 200 * time.Millisecond
	mc.PushPullInterval = 15 * time.Second
	mc.TCPTimeout = 5 * time.Second
	mc.DeadNodeReclaimTime = time.Second // a restarted member may come back at once
	mc.Delegate = &metaDelegate{g: g}
	mc.Events = &eventDelegate{g: g}
	mc.Ping = &pingDelegate{g: g}
	mc.Logger = log.New(&logWriter{log: cfg.Logger.With("component", "gossip")}, "", 0)
	if cfg.Transport != nil {
		mc.Transport = cfg.Transport
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("start gossip on %s: %w", cfg.Bind, err)
	}
	g.ml = ml
	go g.heartbeats()
	return g, nil
}

// heartbeats pings every alive member directly, for the suspect state.
func (g *gossip) heartbeats() {
	defer close(g.done)
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
		}
		g.mu.Lock()
		for name, addr := range g.addrs {
			if name == g.cfg.Name || g.inFlight[name] {
				continue
			}
			g.inFlight[name] = true
			wg.Go(func() { g.heartbeat(name, addr) })
		}
		g.mu.Unlock()
	}
}

func (g *gossip) heartbeat(name, addr string) {
	_, err := g.ml.Ping(name, udpAddr(addr))
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.inFlight, name)
	if _, ok := g.alive[name]; ok && err == nil {
		g.lastAck[name] = time.Now()
	}
}

// udpAddr is a gossip address as memberlist's Ping takes it.
type udpAddr string

func (udpAddr) Network() string  { return "udp" }
func (a udpAddr) String() string { return string(a) }

// join contacts the given members' gossip addresses; it succeeds when at
// least one answers.
func (g *gossip) join(seeds []string) error {
	if len(seeds) == 0 {
		return nil
	}
	if _, err := g.ml.Join(seeds); err != nil {
		return fmt.Errorf("gossip join: %w", err)
	}
	return nil
}

// update broadcasts changed metadata of this node.
func (g *gossip) update() {
	if err := g.ml.UpdateNode(2 * time.Second); err != nil {
		g.cfg.Logger.Debug("gossip metadata update", "err", err)
	}
}

// shutdown leaves the cluster politely and stops.
func (g *gossip) shutdown() {
	close(g.stop)
	<-g.done
	_ = g.ml.Leave(time.Second)
	_ = g.ml.Shutdown()
}

// healthScore is memberlist's awareness score: 0 is healthy.
func (g *gossip) healthScore() int { return g.ml.GetHealthScore() }

// states returns the liveness of every member in expect (and any other
// member gossip knows), updating since-times on changes. A member never
// heard of is down since this bdrd started.
func (g *gossip) states(expect []string) map[string]liveness {
	now, wall := time.Now(), g.cfg.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	seen := map[string]liveness{}
	for name, meta := range g.alive {
		st := LiveUp
		ack, acked := g.lastAck[name]
		silent := now.Sub(ack)
		switch {
		case acked && silent > downAfter && name != g.cfg.Name:
			st = LiveDown
		case acked && silent > suspectAfter && name != g.cfg.Name:
			st = LiveSuspect
		case !meta.DBUp:
			st = LiveDBDown
		}
		l := liveness{State: st, Meta: meta}
		if e := g.skews[name]; e != nil {
			if est, ok := e.estimate(wall); ok {
				l.Clock = &clockSkew{Offset: est.Offset, RTT: est.RTT, Over: e.over}
			}
		}
		seen[name] = l
	}
	for _, name := range expect {
		if _, ok := seen[name]; !ok {
			seen[name] = liveness{State: LiveDown, Meta: g.known[name].Meta, neverSeen: !g.met[name]}
		}
	}
	for name := range g.known {
		if _, ok := seen[name]; !ok {
			seen[name] = liveness{State: LiveDown, Meta: g.known[name].Meta, neverSeen: !g.met[name]}
		}
	}
	out := make(map[string]liveness, len(seen))
	for name, l := range seen {
		prev, ok := g.known[name]
		switch {
		case !ok && l.State == LiveDown:
			l.Since = g.start
		case !ok || prev.State != l.State:
			l.Since = now
			if ok {
				g.cfg.Logger.Info("member state changed", "member", name, "from", prev.State, "to", l.State)
			}
		default:
			l.Since = prev.Since
		}
		g.known[name] = l
		out[name] = l
	}
	return out
}

// eventDelegate records memberlist's view of the members.
type eventDelegate struct{ g *gossip }

func (d *eventDelegate) NotifyJoin(n *memberlist.Node)   { d.record(n, true) }
func (d *eventDelegate) NotifyUpdate(n *memberlist.Node) { d.record(n, true) }
func (d *eventDelegate) NotifyLeave(n *memberlist.Node)  { d.record(n, false) }

func (d *eventDelegate) record(n *memberlist.Node, alive bool) {
	meta, err := decodeMeta(n.Meta)
	d.g.mu.Lock()
	defer d.g.mu.Unlock()
	switch {
	case !alive:
		delete(d.g.alive, n.Name)
		delete(d.g.addrs, n.Name)
		delete(d.g.lastAck, n.Name)
		delete(d.g.skews, n.Name) // its clock may be another when it is back
	case err != nil:
		// A member of another version or a malformed payload: not one of ours.
		d.g.cfg.Logger.Debug("gossip member ignored", "member", n.Name, "err", err)
	default:
		if _, ok := d.g.alive[n.Name]; !ok {
			d.g.lastAck[n.Name] = time.Now()
		}
		d.g.alive[n.Name] = meta
		d.g.met[n.Name] = true
		d.g.addrs[n.Name] = n.Address()
	}
}

// pingDelegate records answered probes, for the suspect state, and the
// members' clocks their answers carry.
type pingDelegate struct{ g *gossip }

// AckPayload is this node's clock, in every answer to a probe.
func (d *pingDelegate) AckPayload() []byte { return encodeClock(d.g.cfg.Now()) }

func (d *pingDelegate) NotifyPingComplete(n *memberlist.Node, rtt time.Duration, payload []byte) {
	wall := d.g.cfg.Now()
	d.g.mu.Lock()
	defer d.g.mu.Unlock()
	if _, ok := d.g.alive[n.Name]; !ok {
		return
	}
	d.g.lastAck[n.Name] = time.Now()
	remote, err := decodeClock(payload)
	if err != nil {
		// A member of an earlier version, or a malformed payload.
		d.g.cfg.Logger.Debug("gossip probe answer without a clock", "member", n.Name, "err", err)
		return
	}
	d.g.clockSample(n.Name, sampleClock(remote, wall, rtt))
}

// clockSample records a sample of a member's clock and logs when its skew
// goes over the bound or comes back under it. The caller holds g.mu.
func (g *gossip) clockSample(name string, s clockSample) {
	e := g.skews[name]
	if e == nil {
		e = &skewEstimator{}
		g.skews[name] = e
	}
	e.add(s)
	est, ok := e.estimate(s.At)
	if !ok || !e.check(est, g.cfg.MaxSkew) {
		return
	}
	attrs := []any{"member", name, "skew", est.Offset, "bound", g.cfg.MaxSkew, "rtt", est.RTT}
	if e.over {
		g.cfg.Logger.Warn("member clock skew over the bound: last update wins may pick the older change", attrs...)
	} else {
		g.cfg.Logger.Info("member clock skew back under the bound", attrs...)
	}
}

// metaDelegate gives memberlist this node's metadata.
type metaDelegate struct{ g *gossip }

func (d *metaDelegate) NodeMeta(limit int) []byte {
	b, err := encodeMeta(d.g.cfg.Meta(), limit)
	if err != nil {
		d.g.cfg.Logger.Warn("gossip metadata not sent", "err", err)
		return nil
	}
	return b
}
func (d *metaDelegate) NotifyMsg([]byte)                    {}
func (d *metaDelegate) GetBroadcasts(int, int) [][]byte     { return nil }
func (d *metaDelegate) LocalState(bool) []byte              { return nil }
func (d *metaDelegate) MergeRemoteState(buf []byte, _ bool) {}

// logWriter turns the standard-library logging of memberlist and raft into
// debug records of the injected logger.
type logWriter struct{ log *slog.Logger }

func (w *logWriter) Write(p []byte) (int, error) {
	w.log.Log(context.Background(), slog.LevelDebug, string(bytes.TrimSpace(p)))
	return len(p), nil
}
