package adminapi

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"
)

// unixPrefix marks an admin address that is a Unix socket: "unix:/path".
const unixPrefix = "unix:"

// unixPath is the socket path of a "unix:" address.
func unixPath(addr string) (string, bool) { return strings.CutPrefix(addr, unixPrefix) }

// Listen listens on an admin address: "unix:/path/to.sock" is a Unix socket
// that only the owner may use (a stale socket file is replaced; a live one,
// or a file that is not a socket, is an error), anything else a TCP
// host:port. The listener's Addr().String() has the same form as addr.
func Listen(addr string) (net.Listener, error) {
	path, ok := unixPath(addr)
	if !ok {
		return net.Listen("tcp", addr)
	}
	if path == "" {
		return nil, errors.New("listen unix: empty socket path")
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("listen %s: the file exists and is not a socket", addr)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("listen %s: another process listens there", addr)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("listen %s: remove the stale socket: %w", addr, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	// The socket is created with the umask's permissions; keep the
	// directory private too, so nobody connects before this.
	if err := os.Chmod(path, 0o600); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return &unixListener{Listener: ln, addr: unixAddr(addr)}, nil
}

// unixListener reports its address as "unix:/path", the form NewClient takes.
type unixListener struct {
	net.Listener
	addr unixAddr
}

func (l *unixListener) Addr() net.Addr { return l.addr }

type unixAddr string

func (a unixAddr) Network() string { return "unix" }
func (a unixAddr) String() string  { return string(a) }

// Loopback reports whether only this host can reach addr: a "unix:" socket,
// or a TCP address whose host is a loopback IP or "localhost". An empty host
// or 0.0.0.0 listens on every interface and is not loopback.
func Loopback(addr string) bool {
	if _, ok := unixPath(addr); ok {
		return true
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
