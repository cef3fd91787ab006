package groupkey

import (
	"crypto/tls"
	"io"
	"net"
	"path/filepath"
	"testing"
)

func TestKeyFile(t *testing.T) {
	k, err := New()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "sub", "gossip.key")
	if _, ok, err := Read(path); ok || err != nil {
		t.Fatalf("Read of a missing file = %v, %v", ok, err)
	}
	if err := Write(path, k); err != nil {
		t.Fatal(err)
	}
	got, ok, err := Read(path)
	if err != nil || !ok || got.String() != k.String() {
		t.Fatalf("Read = %v %v %v", got, ok, err)
	}
	if _, err := Parse("not a key"); err == nil {
		t.Fatal("Parse accepted garbage")
	}
	if k.InternalToken() == (Key(make([]byte, Size))).InternalToken() || len(k.GossipKey()) != 32 {
		t.Fatal("derived secrets do not depend on the key")
	}
}

// TestMutualTLS: members of one group talk; a holder of another key cannot.
func TestMutualTLS(t *testing.T) {
	k1, _ := New()
	k2, _ := New()
	srv, _, err := k1.TLS("a")
	if err != nil {
		t.Fatal(err)
	}
	_, good, _ := k1.TLS("b")
	_, bad, _ := k2.TLS("x")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	try := func(cfg *tls.Config) error {
		c, err := tls.DialWithDialer(&net.Dialer{}, "tcp", ln.Addr().String(), cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte("x")); err != nil {
			return err
		}
		_, err = c.Read(make([]byte, 1))
		return err
	}
	if err := try(good); err != nil {
		t.Fatalf("a member could not connect: %v", err)
	}
	if err := try(bad); err == nil {
		t.Fatal("a holder of another group's key connected")
	}
	if err := try(&tls.Config{InsecureSkipVerify: true}); err == nil {
		t.Fatal("a client without a certificate connected")
	}
}
