package grouptest

import (
	"context"
	"errors"
	"log"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Network injects partitions into the control plane of in-process nodes:
// their gossip, consensus and member-to-member admin calls. (Replication
// connections between the databases are not cut: a partition here decides
// what the group can decide, not what data flows.)
//
// A Network is safe for concurrent use.
type Network struct {
	mu    sync.Mutex
	addrs map[string]string // address -> node name
	side  map[string]int    // node name -> side of the partition; absent: no partition
}

// NewNetwork returns a network without partitions.
func NewNetwork() *Network {
	return &Network{addrs: map[string]string{}, side: map[string]int{}}
}

// register records the addresses of a node.
func (nw *Network) register(name string, addrs ...string) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	for _, a := range addrs {
		nw.addrs[a] = name
	}
}

// Partition splits the nodes into sides that cannot reach each other;
// nodes not named are on no side and reach everyone.
func (nw *Network) Partition(sides ...[]*Node) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.side = map[string]int{}
	for i, s := range sides {
		for _, n := range s {
			nw.side[n.Name] = i + 1
		}
	}
}

// Heal removes every partition.
func (nw *Network) Heal() { nw.Partition() }

// blocked reports whether node from cannot reach address to.
func (nw *Network) blocked(from, to string) bool {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	target, ok := nw.addrs[to]
	if !ok {
		return false
	}
	a, b := nw.side[from], nw.side[target]
	return a != 0 && b != 0 && a != b
}

var errPartitioned = errors.New("network partitioned (test)")

// Dialer is the dialer of node from.
func (nw *Network) Dialer(from string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if nw.blocked(from, addr) {
			return nil, errPartitioned
		}
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &cutConn{Conn: c, nw: nw, from: from, to: addr}, nil
	}
}

// cutConn fails once a partition separates its ends, as a broken network
// would (pooled connections must not outlive a partition).
type cutConn struct {
	net.Conn
	nw       *Network
	from, to string

	mu       sync.Mutex
	deadline time.Time // the caller's read deadline
}

func (c *cutConn) check() error {
	if c.nw.blocked(c.from, c.to) {
		_ = c.Conn.Close()
		return errPartitioned
	}
	return nil
}

// Read blocks at most a moment at a time so that it notices a partition,
// and honours the caller's deadline.
func (c *cutConn) Read(b []byte) (int, error) {
	for {
		if err := c.check(); err != nil {
			return 0, err
		}
		c.mu.Lock()
		limit := c.deadline
		c.mu.Unlock()
		next := time.Now().Add(200 * time.Millisecond)
		callers := !limit.IsZero() && limit.Before(next)
		if callers {
			next = limit
		}
		_ = c.Conn.SetReadDeadline(next)
		n, err := c.Conn.Read(b)
		var ne net.Error
		if n == 0 && errors.As(err, &ne) && ne.Timeout() && !callers {
			continue
		}
		return n, err
	}
}

func (c *cutConn) Write(b []byte) (int, error) {
	if err := c.check(); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

func (c *cutConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return nil
}

func (c *cutConn) SetDeadline(t time.Time) error {
	_ = c.SetReadDeadline(t)
	return c.Conn.SetWriteDeadline(t)
}

// Transport is the gossip transport of node from.
func (nw *Network) Transport(from string) func(bind string) (memberlist.NodeAwareTransport, error) {
	return func(bind string) (memberlist.NodeAwareTransport, error) {
		host, port, err := net.SplitHostPort(bind)
		if err != nil {
			return nil, err
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, err
		}
		inner, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{host}, BindPort: p, Logger: log.New(discard{}, "", 0)})
		if err != nil {
			return nil, err
		}
		t := &cutTransport{NetTransport: inner, nw: nw, from: from, packets: make(chan *memberlist.Packet), done: make(chan struct{})}
		go t.filter()
		return t, nil
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// cutTransport is memberlist's network transport with packets and streams
// to and from the other side of a partition dropped.
type cutTransport struct {
	*memberlist.NetTransport
	nw      *Network
	from    string
	packets chan *memberlist.Packet
	done    chan struct{}
}

// filter passes on incoming packets that are not from across a partition;
// it ends with Shutdown.
func (t *cutTransport) filter() {
	for {
		select {
		case <-t.done:
			return
		case p := <-t.NetTransport.PacketCh():
			if t.nw.blocked(t.from, p.From.String()) {
				continue
			}
			select {
			case t.packets <- p:
			case <-t.done:
				return
			}
		}
	}
}

func (t *cutTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }

func (t *cutTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if t.nw.blocked(t.from, addr) {
		return time.Now(), nil // lost on the way
	}
	return t.NetTransport.WriteTo(b, addr)
}

func (t *cutTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	return t.WriteTo(b, a.Addr)
}

func (t *cutTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if t.nw.blocked(t.from, addr) {
		return nil, errPartitioned
	}
	c, err := t.NetTransport.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	return &cutConn{Conn: c, nw: t.nw, from: t.from, to: addr}, nil
}

func (t *cutTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return t.DialTimeout(a.Addr, timeout)
}

// Shutdown stops the inner transport first: its UDP listener only ends
// once its last packet is taken, so filter must go on draining until then.
func (t *cutTransport) Shutdown() error {
	err := t.NetTransport.Shutdown()
	close(t.done)
	return err
}
