package bench

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// echoServer echoes every connection until the test ends.
func echoServer(t *testing.T) string { return echoOn(t, "tcp", "127.0.0.1:0") }

// echoOn is echoServer listening on network at addr.
func echoOn(t *testing.T, network, addr string) string {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	return l.Addr().String()
}

// dialLink connects to target through a link of shape into site, both
// closed when the test ends.
func dialLink(t *testing.T, shape Shape, site int, name, target string) (*wan, net.Conn) {
	t.Helper()
	w := newWAN(shape)
	t.Cleanup(w.close)
	addr, err := w.add(site, name, target, false)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return w, c
}

func TestLinkDelayBandwidthAndCount(t *testing.T) {
	w, c := dialLink(t, Shape{RTT: 40 * time.Millisecond, Bandwidth: 80e6}, 2, "echo", echoServer(t)) // 10 MB/s each way

	// A small message: one round trip.
	start := time.Now()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if rtt := time.Since(start); rtt < 40*time.Millisecond || rtt > 200*time.Millisecond {
		t.Errorf("round trip %s, want about 40ms", rtt)
	}

	// 2 MB each way at 10 MB/s: about 0.2 s plus the round trip.
	data := make([]byte, 2<<20)
	_, _ = rand.Read(data)
	start = time.Now()
	go func() { _, _ = c.Write(data) }()
	got := make([]byte, len(data))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if !bytes.Equal(got, data) {
		t.Fatal("the data came back changed")
	}
	if took < 200*time.Millisecond || took > 3*time.Second {
		t.Errorf("2 MB took %s, want about 0.25s at 10 MB/s", took)
	}
	links := w.links()
	if len(links) != 1 || links[0].Sent != int64(len(data))+4 || links[0].Replies != int64(len(data))+4 {
		t.Errorf("links %+v, want %d bytes each way", links, len(data)+4)
	}
}

// TestLinkManySmallWrites: answers larger than 64 KB written 100 bytes at a
// time arrive whole (merged chunks once lost their ends in toxiproxy's
// reader).
func TestLinkManySmallWrites(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var n [4]byte
				for {
					if _, err := io.ReadFull(c, n[:]); err != nil {
						return
					}
					buf := make([]byte, 100)
					for left := int(binary.BigEndian.Uint32(n[:])); left > 0; left -= len(buf) {
						if _, err := c.Write(buf[:min(left, len(buf))]); err != nil {
							return
						}
					}
				}
			}()
		}
	}()
	_, c := dialLink(t, Shape{RTT: 2 * time.Millisecond, Bandwidth: 1e9}, 1, "server", l.Addr().String())
	for _, size := range []int{10, 70 << 10, 300 << 10, 1 << 20, 5} {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(size))
		if _, err := c.Write(n[:]); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, size)); err != nil {
			t.Fatalf("answer of %d bytes: %v", size, err)
		}
	}
}

// TestUnixLeg carries connections from TCP to a Unix socket both ways, and
// closing it ends them.
func TestUnixLeg(t *testing.T) {
	path := echoOn(t, "unix", t.TempDir()+"/echo.sock")
	leg, err := startUnixLeg(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", leg.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 100_000)
	_, _ = rand.Read(msg)
	go func() { _, _ = c.Write(msg) }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through the leg: %v (equal %v)", err, bytes.Equal(got, msg))
	}
	leg.close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(got); err == nil {
		t.Fatalf("read %d bytes after the leg closed; want the connection ended", n)
	}
	if _, err := net.Dial("tcp", leg.addr()); err == nil {
		t.Fatal("the leg still accepts connections after close")
	}
}
