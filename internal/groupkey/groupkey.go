// Package groupkey owns the group's shared secret: a random 32-byte key made
// by `bdrctl init` and handed to each joining node over the admin API. From
// it come the gossip encryption key, the token members use on each other's
// admin API, and mutual TLS for the consensus traffic: every member derives
// the same certificate authority from the key and signs its own certificate,
// so only holders of the key can take part.
//
// Functions are pure or touch only the file they are given; they are safe
// for concurrent use.
package groupkey

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Size is the length of a group key.
const Size = 32

// Key is a group key.
type Key []byte

// New makes a random key.
func New() (Key, error) {
	k := make(Key, Size)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("make group key: %w", err)
	}
	return k, nil
}

// Parse reads a key in its text form (base64).
func Parse(s string) (Key, error) {
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(k) != Size {
		return nil, errors.New("group key: want 32 bytes in base64")
	}
	return k, nil
}

// String is the text form of the key. Never log it.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k) }

// Read reads a key file; ok is false when the file does not exist.
func Read(path string) (Key, bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read group key: %w", err)
	}
	k, err := Parse(string(b))
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", path, err)
	}
	return k, true, nil
}

// Write writes a key file readable by its owner only, replacing it
// atomically.
func Write(path string, k Key) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("write group key: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(k.String()+"\n"), 0o600); err != nil {
		return fmt.Errorf("write group key: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write group key: %w", err)
	}
	return nil
}

// derive makes n bytes for one purpose from the key.
func (k Key) derive(purpose string, n int) []byte {
	b, err := hkdf.Key(sha256.New, k, nil, "bdr "+purpose, n)
	if err != nil {
		panic(err) // only for n too large, which callers never ask
	}
	return b
}

// GossipKey is the AES-256 key gossip is encrypted with.
func (k Key) GossipKey() []byte { return k.derive("gossip", 32) }

// InternalToken is the bearer token members present on each other's admin
// API.
func (k Key) InternalToken() string { return hex.EncodeToString(k.derive("admin internal token", 32)) }

// serverName is the name in every member certificate.
const serverName = "bdr-member"

// ca derives the group's certificate authority: the same on every member.
func (k Key) ca() (*x509.Certificate, ed25519.PrivateKey, error) {
	priv := ed25519.NewKeyFromSeed(k.derive("consensus ca", ed25519.SeedSize))
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "bdr group"},
		NotBefore:             time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(bytes.NewReader(nil), tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		return nil, nil, fmt.Errorf("group ca: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("group ca: %w", err)
	}
	return cert, priv, nil
}

// TLS returns the server and client configurations for mutual TLS between
// members: a fresh certificate for node, signed by the group CA; peers must
// present one too.
func (k Key) TLS(node string) (server, client *tls.Config, err error) {
	ca, caKey, err := k.ca()
	if err != nil {
		return nil, nil, err
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("member certificate: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, nil, fmt.Errorf("member certificate: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: node},
		DNSNames:     []string{serverName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("member certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
	server = &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS13,
	}
	client = &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   serverName,
		MinVersion:   tls.VersionTLS13,
	}
	return server, client, nil
}
