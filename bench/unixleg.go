package bench

import (
	"io"
	"net"
	"sync"
)

// unixLeg is the last hop of a WAN link to a site's PostgreSQL: the
// link's proxy connects to it over TCP, and it carries each connection on
// to the server's Unix socket. The server's side of a link is then a Unix
// socket, whose send() costs the sending process (a walsender: one send
// per pgoutput message) about what handing a segment to a NIC does. Over
// loopback TCP the sender's send() also runs the receiving half of the
// TCP stack, the far machine's work on a real network: the walsender of
// a saturated site spent half its CPU there, CPU the site's clients lost.
// The leg runs in bdrctl, with the rest of the network.
type unixLeg struct {
	ln   net.Listener
	path string

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// startUnixLeg listens on a free loopback port for connections to carry to
// the Unix socket at path.
func startUnixLeg(path string) (*unixLeg, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &unixLeg{ln: ln, path: path, conns: map[net.Conn]struct{}{}}
	l.wg.Add(1)
	go l.serve()
	return l, nil
}

func (l *unixLeg) addr() string { return l.ln.Addr().String() }

func (l *unixLeg) serve() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return // closed
		}
		u, err := net.Dial("unix", l.path)
		if err != nil {
			c.Close() // the server is gone: the client sees the link drop
			continue
		}
		if !l.track(c, u) {
			return
		}
		l.wg.Add(2)
		go l.pipe(u, c)
		go l.pipe(c, u)
	}
}

// track remembers an open pair, false (closing it) once the leg is closed.
func (l *unixLeg) track(cs ...net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		l.conns[c] = struct{}{}
	}
	return true
}

// pipe copies from src to dst until either ends, then closes both: the
// other direction's pipe ends with them. It copies through a buffer of its
// own: io.Copy between a Unix and a TCP socket would splice through pipes
// the runtime keeps pooled, open files that outlive the leg.
func (l *unixLeg) pipe(dst, src net.Conn) {
	defer l.wg.Done()
	buf := make([]byte, 64<<10)
	_, _ = io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf)
	l.mu.Lock()
	delete(l.conns, dst)
	delete(l.conns, src)
	l.mu.Unlock()
	dst.Close()
	src.Close()
}

// close stops listening, closes every connection and waits for the pipes.
func (l *unixLeg) close() {
	l.mu.Lock()
	l.closed = true
	l.ln.Close()
	for c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
}
