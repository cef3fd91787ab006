package bench

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/Shopify/toxiproxy/v2/stream"
	"github.com/Shopify/toxiproxy/v2/toxics"
	"github.com/rs/zerolog"
)

// Shape is what a WAN link does to traffic, each way.
type Shape struct {
	RTT       time.Duration // round trip; each direction gets half
	Jitter    time.Duration // +/- on each direction's delay
	Bandwidth int64         // bits a second each way; 0 = unlimited
}

// oneWay is the average delay of one direction.
func (s Shape) oneWay() time.Duration { return s.RTT / 2 }

// delays are the delays of the two directions, whole milliseconds (what
// toxiproxy takes) adding up to the round trip: the way there gets the
// odd millisecond.
func (s Shape) delays() (there, back time.Duration) {
	back = (s.RTT / 2).Truncate(time.Millisecond)
	return s.RTT - back, back
}

// String is the shape as the flags spell it.
func (s Shape) String() string {
	bw := "unlimited"
	if s.Bandwidth > 0 {
		bw = FormatBandwidth(s.Bandwidth)
	}
	return fmt.Sprintf("rtt %s, jitter %s, bandwidth %s", s.RTT, s.Jitter, bw)
}

// ParseBandwidth reads a bandwidth like 160mbit, 1gbit, 500kbit or 2000000
// (bits a second); 0 and "unlimited" mean no limit.
func ParseBandwidth(s string) (int64, error) {
	v := strings.ToLower(strings.TrimSpace(s))
	if v == "unlimited" {
		return 0, nil
	}
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}} {
		if strings.HasSuffix(v, u.suffix) {
			v, mult = strings.TrimSuffix(v, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseFloat(v, 64)
	if err != nil || n < 0 || n*float64(mult) > 1e12 {
		return 0, fmt.Errorf("bandwidth %q: want a number of bits a second like 160mbit, 1gbit, 500kbit, or 0 for unlimited", s)
	}
	bits := int64(n * float64(mult))
	if bits > 0 && bits < 8 {
		return 0, fmt.Errorf("bandwidth %q: below one byte a second", s)
	}
	return bits, nil
}

// FormatBandwidth writes bits a second as ParseBandwidth reads them.
func FormatBandwidth(bits int64) string {
	switch {
	case bits == 0:
		return "unlimited"
	case bits%1e9 == 0:
		return fmt.Sprintf("%dgbit", bits/1e9)
	case bits%1e6 == 0:
		return fmt.Sprintf("%dmbit", bits/1e6)
	case bits%1e3 == 0:
		return fmt.Sprintf("%dkbit", bits/1e3)
	}
	return fmt.Sprintf("%dbit", bits)
}

// LinkBytes is the traffic through one proxy: everything a site sends to
// one service of another site, and the answers.
type LinkBytes struct {
	Name    string `json:"name"`     // e.g. "site2 postgres"
	To      int    `json:"to_site"`  // the site the service is at
	Service string `json:"service"`  // postgres, admin, raft, gossip
	Sent    int64  `json:"sent"`     // bytes towards the service's site
	Replies int64  `json:"received"` // bytes back from it
}

// wan is the emulated network between the sites: one toxiproxy proxy per
// service of each site, which the other sites reach it through. Every
// proxy delays each direction by half the round trip (plus jitter) and
// limits its bandwidth. Gossip's UDP half goes through a relay on the same
// port that applies the delay (not the bandwidth: gossip packets are
// small). Safe for concurrent use.
type wan struct {
	shape Shape
	srv   *toxiproxy.ApiServer

	mu      sync.Mutex
	proxies []*wanProxy
}

type wanProxy struct {
	LinkBytes
	p        *toxiproxy.Proxy
	up, down *linkToxic
	udp      *udpRelay
	leg      *unixLeg // the last hop to a Unix socket, if any
}

// The link toxic's type, registered once in toxiproxy's registry (the
// registry is toxiproxy's, global; registering the same type again would
// be harmless).
const linkToxicType = "bdr_bench_link"

var registerLink sync.Once

func newWAN(shape Shape) *wan {
	registerLink.Do(func() { toxics.Register(linkToxicType, new(linkToxic)) })
	return &wan{shape: shape, srv: toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())}
}

// addUnix starts a proxy to the service at site to listening on the Unix
// socket at path (a PostgreSQL server), through a unixLeg, and returns the
// address the other sites use instead.
func (w *wan) addUnix(to int, service, path string) (string, error) {
	leg, err := startUnixLeg(path)
	if err != nil {
		return "", fmt.Errorf("proxy to site%d %s: %w", to, service, err)
	}
	addr, err := w.addWith(to, service, leg.addr(), false, leg)
	if err != nil {
		leg.close()
	}
	return addr, err
}

// add starts a proxy to upstream, the service at site to, and returns the
// address the other sites use instead. With udp, UDP datagrams to the same
// port are relayed to upstream too.
func (w *wan) add(to int, service, upstream string, udp bool) (string, error) {
	return w.addWith(to, service, upstream, udp, nil)
}

// addWith is add, the proxy owning leg (closed with it), if any.
func (w *wan) addWith(to int, service, upstream string, udp bool, leg *unixLeg) (string, error) {
	name := fmt.Sprintf("site%d %s", to, service)
	for attempt := 0; ; attempt++ {
		p := toxiproxy.NewProxy(w.srv, name, "127.0.0.1:0", upstream)
		if err := p.Start(); err != nil {
			return "", fmt.Errorf("proxy to %s: %w", name, err)
		}
		wp := &wanProxy{LinkBytes: LinkBytes{Name: name, To: to, Service: service}, p: p, leg: leg}
		if err := w.shapeProxy(wp); err != nil {
			p.Stop()
			return "", fmt.Errorf("proxy to %s: %w", name, err)
		}
		if udp {
			r, err := startUDPRelay(p.Listen, upstream, w.shape)
			if err != nil {
				p.Stop()
				if attempt < 5 {
					continue // the port is taken for UDP: another one
				}
				return "", fmt.Errorf("udp relay to %s: %w", name, err)
			}
			wp.udp = r
		}
		w.mu.Lock()
		w.proxies = append(w.proxies, wp)
		w.mu.Unlock()
		return p.Listen, nil
	}
}

// shapeProxy adds the link's toxic on each direction.
func (w *wan) shapeProxy(wp *wanProxy) error {
	there, back := w.shape.delays()
	for _, d := range []struct {
		dir   string
		delay time.Duration
		count **linkToxic
	}{{"upstream", there, &wp.up}, {"downstream", back, &wp.down}} {
		js := fmt.Sprintf(`{"name": "wan_%s", "type": %q, "stream": %q, "toxicity": 1, "attributes": {"latency_us": %d, "jitter_us": %d, "rate": %d}}`,
			d.dir, linkToxicType, d.dir, d.delay.Microseconds(), w.shape.Jitter.Microseconds(), w.shape.Bandwidth/8)
		t, err := wp.p.Toxics.AddToxicJson(strings.NewReader(js))
		if err != nil {
			return err
		}
		*d.count = t.Toxic.(*linkToxic)
	}
	return nil
}

// links returns the bytes each proxy has carried so far.
func (w *wan) links() []LinkBytes {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]LinkBytes, 0, len(w.proxies))
	for _, p := range w.proxies {
		lb := p.LinkBytes
		lb.Sent, lb.Replies = p.up.n.Load(), p.down.n.Load()
		if p.udp != nil {
			lb.Sent += p.udp.sent.Load()
			lb.Replies += p.udp.replies.Load()
		}
		out = append(out, lb)
	}
	return out
}

// drop stops and forgets the proxies listening on addrs.
func (w *wan) drop(addrs ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	kept := w.proxies[:0]
	for _, p := range w.proxies {
		if !slices.Contains(addrs, p.p.Listen) {
			kept = append(kept, p)
			continue
		}
		p.stop()
	}
	w.proxies = kept
}

// stop stops the proxy and what it owns.
func (p *wanProxy) stop() {
	p.p.Stop()
	if p.udp != nil {
		p.udp.close()
	}
	if p.leg != nil {
		p.leg.close()
	}
}

// close stops every proxy and relay, closing their connections.
func (w *wan) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.proxies {
		p.stop()
	}
}

// linkToxic is one direction of a WAN link, as a toxiproxy toxic: each
// chunk goes on the wire when the previous one has left it (bandwidth),
// then arrives after the delay (plus or minus jitter), never before the
// chunk sent ahead of it (TCP keeps the order). Chunks due together leave
// as one, which keeps the proxy cheap on small writes (one pgoutput
// message is often one write). It counts the bytes it passes.
type linkToxic struct {
	LatencyUs int64 `json:"latency_us"`
	JitterUs  int64 `json:"jitter_us"`
	Rate      int64 `json:"rate"` // bytes a second; 0 = unlimited

	n atomic.Int64
}

func (t *linkToxic) GetBufferSize() int { return 4096 }

// mergeMax bounds a merged chunk: toxiproxy's stream.ChanReader (v2.5.0)
// loses the end of a chunk more than twice as large as the buffer it is
// read into (32 KB, io.Copy's), so merged chunks stay well under it.
const mergeMax = 16 << 10

type dueChunk struct {
	c   *stream.StreamChunk
	due time.Time
}

func (t *linkToxic) Pipe(stub *toxics.ToxicStub) {
	var queue []dueChunk
	var wireFree, lastDue time.Time
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	input := stub.Input
	// flush sends the chunks due by now (all with force), merged into
	// chunks of up to mergeMax bytes.
	flush := func(force bool) {
		now := time.Now()
		for len(queue) > 0 && (force || !queue[0].due.After(now)) {
			i, size := 1, len(queue[0].c.Data)
			for i < len(queue) && (force || !queue[i].due.After(now)) && size+len(queue[i].c.Data) <= mergeMax {
				size += len(queue[i].c.Data)
				i++
			}
			out := queue[0].c
			if i > 1 {
				data := make([]byte, 0, size)
				for _, q := range queue[:i] {
					data = append(data, q.c.Data...)
				}
				out = &stream.StreamChunk{Data: data, Timestamp: queue[0].c.Timestamp}
			}
			queue = queue[i:]
			t.n.Add(int64(len(out.Data)))
			stub.Output <- out
		}
	}
	for {
		var wake <-chan time.Time
		if len(queue) > 0 {
			timer.Reset(time.Until(queue[0].due))
			wake = timer.C
		}
		select {
		case <-stub.Interrupt:
			flush(true)
			return
		case c := <-input:
			if c == nil {
				if len(queue) == 0 {
					stub.Close()
					return
				}
				input = nil // deliver what is queued, then close
				continue
			}
			start := c.Timestamp
			if wireFree.After(start) {
				start = wireFree
			}
			if t.Rate > 0 {
				wireFree = start.Add(time.Duration(len(c.Data)) * time.Second / time.Duration(t.Rate))
				start = wireFree
			}
			delay := t.LatencyUs
			if t.JitterUs > 0 {
				delay += rand.Int64N(2*t.JitterUs+1) - t.JitterUs
			}
			due := start.Add(time.Duration(delay) * time.Microsecond)
			if due.Before(lastDue) {
				due = lastDue
			}
			lastDue = due
			queue = append(queue, dueChunk{c, due})
		case <-wake:
			flush(false)
			if input == nil && len(queue) == 0 {
				stub.Close()
				return
			}
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// udpRelay forwards datagrams sent to its port to upstream after the
// link's delay, from one socket per sender, and the answers back.
type udpRelay struct {
	shape    Shape
	conn     *net.UDPConn
	upstream *net.UDPAddr
	sent     atomic.Int64
	replies  atomic.Int64

	mu     sync.Mutex
	closed bool
	peers  map[string]*net.UDPConn
	wg     sync.WaitGroup
}

func startUDPRelay(listen, upstream string, shape Shape) (*udpRelay, error) {
	la, err := net.ResolveUDPAddr("udp", listen)
	if err != nil {
		return nil, err
	}
	ua, err := net.ResolveUDPAddr("udp", upstream)
	if err != nil {
		return nil, err
	}
	conn, err := net.ListenUDP("udp", la)
	if err != nil {
		return nil, err
	}
	r := &udpRelay{shape: shape, conn: conn, upstream: ua, peers: map[string]*net.UDPConn{}}
	r.wg.Go(r.serve)
	return r, nil
}

func (r *udpRelay) delay(there bool) time.Duration {
	d, back := r.shape.delays()
	if !there {
		d = back
	}
	if j := r.shape.Jitter; j > 0 {
		d += time.Duration(rand.Int64N(int64(2*j))) - j
	}
	return max(d, 0)
}

func (r *udpRelay) serve() {
	buf := make([]byte, 64<<10)
	for {
		n, src, err := r.conn.ReadFromUDP(buf)
		if err != nil {
			return // closed
		}
		out, err := r.peer(src)
		if err != nil {
			continue
		}
		pkt := append([]byte(nil), buf[:n]...)
		r.sent.Add(int64(n))
		time.AfterFunc(r.delay(true), func() { _, _ = out.Write(pkt) })
	}
}

// peer returns the socket that relays src's datagrams to upstream, making
// it (and its reader of answers) on first use.
func (r *udpRelay) peer(src *net.UDPAddr) (*net.UDPConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, errors.New("closed")
	}
	if c, ok := r.peers[src.String()]; ok {
		return c, nil
	}
	c, err := net.DialUDP("udp", nil, r.upstream)
	if err != nil {
		return nil, err
	}
	r.peers[src.String()] = c
	r.wg.Go(func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // ICMP port unreachable while upstream restarts
			}
			pkt := append([]byte(nil), buf[:n]...)
			r.replies.Add(int64(n))
			time.AfterFunc(r.delay(false), func() { _, _ = r.conn.WriteToUDP(pkt, src) })
		}
	})
	return c, nil
}

func (r *udpRelay) close() {
	r.mu.Lock()
	r.closed = true
	_ = r.conn.Close()
	for _, c := range r.peers {
		_ = c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
