package adminapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const (
	operatorToken = "operator-token"
	groupToken    = "group-token"
)

// routeCase is one route of the admin API with a body it accepts.
type routeCase struct {
	method, path, body string
	internal           bool // the group token is enough
}

var allRoutes = []routeCase{
	{http.MethodGet, "/v1/node", "", true},
	{http.MethodGet, "/v1/status", "", true},
	{http.MethodGet, "/v1/join", "", false},
	{http.MethodGet, "/v1/checksums", "", false},
	{http.MethodGet, "/v1/errors", "", false},
	{http.MethodPost, "/v1/errors", `{"id":1,"action":"discard"}`, false},
	{http.MethodPost, "/v1/init", `{}`, false},
	{http.MethodPost, "/v1/join", `{"via":"b:7801"}`, false},
	{http.MethodPost, "/v1/part", `{"name":"b"}`, false},
	{http.MethodPost, "/v1/leave", `{}`, false},
	{http.MethodPost, "/v1/internal/admit", `{"name":"c","public_dsn":"dbname=x","admin_addr":"c:7801"}`, true},
	{http.MethodPost, "/v1/internal/propose", `{"op":"part","node":{"name":"c"}}`, true},
	{http.MethodPost, "/v1/internal/pause", `{"lease_ms":100}`, true},
	{http.MethodPost, "/v1/internal/resume", `{}`, true},
	{http.MethodPost, "/v1/internal/wait", `{"peer":"a","lsn":"0/1"}`, true},
	{http.MethodPost, "/v1/internal/leave", `{}`, true},
	{http.MethodGet, "/metrics", "", false},
}

// counter is a fake metrics handler that counts its calls.
type counter struct{ calls atomic.Int64 }

func (c *counter) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	c.calls.Add(1)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"metrics":true}`))
}

// call serves one request with authorization header authz ("" for none)
// and returns the recorded answer.
func call(h http.Handler, method, path, body, authz string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	if authz != "" {
		r.Header.Set("Authorization", authz)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestAuth(t *testing.T) {
	internal := func() string { return groupToken }
	tests := []struct {
		name  string
		auth  Auth
		authz string
		// allowed reports whether the request may reach the backend.
		allowed func(routeCase) bool
	}{
		{"missing token", Auth{Operator: operatorToken, Internal: internal}, "", never},
		{"wrong token", Auth{Operator: operatorToken, Internal: internal}, "Bearer wrong-token", never},
		{"token without the Bearer scheme", Auth{Operator: operatorToken, Internal: internal}, operatorToken, never},
		{"basic auth", Auth{Operator: operatorToken, Internal: internal}, "Basic b3BlcmF0b3ItdG9rZW4=", never},
		{"empty bearer", Auth{Operator: operatorToken, Internal: func() string { return "" }}, "Bearer ", never},
		{"operator token prefix", Auth{Operator: operatorToken, Internal: internal}, "Bearer operator-tok", never},
		{"operator token", Auth{Operator: operatorToken, Internal: internal}, "Bearer " + operatorToken, always},
		{"operator token, scheme in lower case", Auth{Operator: operatorToken}, "bearer " + operatorToken, always},
		{"group token", Auth{Operator: operatorToken, Internal: internal}, "Bearer " + groupToken,
			func(rc routeCase) bool { return rc.internal }},
		{"group token, no group yet", Auth{Operator: operatorToken, Internal: func() string { return "" }}, "Bearer " + groupToken, never},
		{"group token, no Internal", Auth{Operator: operatorToken}, "Bearer " + groupToken, never},
		{"no operator token, group token", Auth{Internal: internal}, "Bearer " + groupToken,
			func(rc routeCase) bool { return rc.internal }},
		{"open", Auth{Open: true}, "", always},
		{"open, any token", Auth{Open: true, Operator: operatorToken}, "Bearer whatever", always},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, rc := range allRoutes {
				b, m := &backend{}, &counter{}
				w := call(NewHandler(b, m, nil, tt.auth), rc.method, rc.path, rc.body, tt.authz)
				calls := b.calls.Load() + m.calls.Load()
				if tt.allowed(rc) {
					if w.Code == http.StatusUnauthorized || calls != 1 {
						t.Errorf("%s %s: status %d, %d backend calls; want it served", rc.method, rc.path, w.Code, calls)
					}
					continue
				}
				if w.Code != http.StatusUnauthorized || calls != 0 {
					t.Errorf("%s %s: status %d, %d backend calls; want 401 and none", rc.method, rc.path, w.Code, calls)
				}
				var e Error
				if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Message != "missing or wrong admin token" {
					t.Errorf("%s %s: 401 body %q", rc.method, rc.path, w.Body)
				}
				if w.Header().Get("WWW-Authenticate") == "" {
					t.Errorf("%s %s: 401 without WWW-Authenticate", rc.method, rc.path)
				}
			}
		})
	}
}

func never(routeCase) bool  { return false }
func always(routeCase) bool { return true }

// TestAuthUnknownRoutes: unknown paths and methods are refused without a
// token, and answered in JSON with one.
func TestAuthUnknownRoutes(t *testing.T) {
	h := NewHandler(&backend{}, nil, nil, Auth{Operator: operatorToken, Internal: func() string { return groupToken }})
	tests := []struct {
		method, path, authz string
		want                int
	}{
		{http.MethodGet, "/v1/nope", "", http.StatusUnauthorized},
		{http.MethodGet, "/v1/nope", "Bearer " + operatorToken, http.StatusNotFound},
		{http.MethodGet, "/v1/internal/nope", "Bearer " + groupToken, http.StatusUnauthorized},
		{http.MethodDelete, "/v1/part", "", http.StatusUnauthorized},
		{http.MethodDelete, "/v1/part", "Bearer " + operatorToken, http.StatusMethodNotAllowed},
		{http.MethodPost, "/v1/status", "Bearer " + groupToken, http.StatusUnauthorized},
		{http.MethodGet, "/v1/internal/../part", "Bearer " + groupToken, http.StatusUnauthorized},
		{http.MethodGet, "/metrics", "Bearer " + operatorToken, http.StatusNotFound}, // no metrics handler
	}
	for _, tt := range tests {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Method, r.URL.Path = tt.method, tt.path
		if tt.authz != "" {
			r.Header.Set("Authorization", tt.authz)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tt.want || !json.Valid(w.Body.Bytes()) {
			t.Errorf("%s %s (%q): %d %q, want %d and JSON", tt.method, tt.path, tt.authz, w.Code, w.Body, tt.want)
		}
	}
}

// TestTokenInContext: the backend sees the token the request presented.
func TestTokenInContext(t *testing.T) {
	var seen string
	b := &backend{status: func(ctx context.Context, _ bool) (Status, error) {
		seen = TokenFromContext(ctx)
		return Status{}, nil
	}}
	h := NewHandler(b, nil, nil, Auth{Operator: operatorToken, Internal: func() string { return groupToken }})
	for _, token := range []string{operatorToken, groupToken} {
		if w := call(h, http.MethodGet, "/v1/status", "", "Bearer "+token); w.Code != http.StatusOK || seen != token {
			t.Errorf("token %q: status %d, backend saw %q", token, w.Code, seen)
		}
	}
	if TokenFromContext(context.Background()) != "" {
		t.Error("a token in a plain context")
	}
}

// TestRefusalLog: a refused request is logged without the token it presented.
func TestRefusalLog(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	h := NewHandler(&backend{}, nil, log, Auth{Operator: operatorToken})
	call(h, http.MethodPost, "/v1/part", `{"name":"b"}`, "Bearer s3cret-guess")
	if !strings.Contains(buf.String(), "refused") || strings.Contains(buf.String(), "s3cret") {
		t.Errorf("log: %s", buf.String())
	}
}

// TestClientToken: the client presents its token; a refusal is an *Error 401.
func TestClientToken(t *testing.T) {
	srv := httptest.NewServer(NewHandler(&backend{}, nil, nil, Auth{Operator: operatorToken}))
	defer srv.Close()
	ctx := context.Background()
	plain := NewClient(srv.URL, 5*time.Second)
	for _, c := range []*Client{plain, plain.WithToken("wrong"), plain.WithToken(operatorToken).WithToken("")} {
		_, err := c.Info(ctx)
		var e *Error
		if !errors.As(err, &e) || e.Status != http.StatusUnauthorized || e.Message != "missing or wrong admin token" || Unreachable(err) {
			t.Errorf("Info without the right token: %v", err)
		}
	}
	if info, err := plain.WithToken(operatorToken).Info(ctx); err != nil || info.Name != "a" {
		t.Errorf("Info with the token = %+v, %v", info, err)
	}
}

// TestUnixSocket: Listen on a Unix socket, only for its owner, and a client
// that talks to it; stale sockets are replaced, live ones and other files
// are not.
func TestUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "admin.sock")
	addr := "unix:" + path
	if !Loopback(addr) {
		t.Error("a unix socket is not loopback")
	}
	// A stale socket file, as a crashed bdrd leaves it.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	_ = stale.Close()

	ln, err := Listen(addr)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	if ln.Addr().String() != addr || ln.Addr().Network() != "unix" {
		t.Errorf("Addr = %s %s, want unix %s", ln.Addr().Network(), ln.Addr(), addr)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode: %v %v, want 0600", fi.Mode(), err)
	}
	srv := NewServer(addr, NewHandler(&backend{}, nil, nil, Auth{Operator: operatorToken}))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})

	ctx := context.Background()
	c := NewClient(addr, 5*time.Second)
	if c.Addr() != addr {
		t.Errorf("Addr = %q", c.Addr())
	}
	if info, err := c.WithToken(operatorToken).Info(ctx); err != nil || info.Name != "a" {
		t.Fatalf("Info over the socket = %+v, %v", info, err)
	}
	var e *Error
	if _, err := c.Info(ctx); !errors.As(err, &e) || e.Status != http.StatusUnauthorized {
		t.Errorf("Info over the socket without a token: %v", err)
	}
	if _, err := Listen(addr); err == nil || !strings.Contains(err.Error(), "another process listens there") {
		t.Errorf("Listen on a live socket: %v", err)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen("unix:" + file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen on a regular file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep me" {
		t.Error("Listen clobbered a regular file")
	}
	if _, err := NewClient("unix:"+filepath.Join(t.TempDir(), "none.sock"), time.Second).Info(ctx); !Unreachable(err) {
		t.Errorf("a missing socket: %v", err)
	}
}

func TestLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:7801": true, "127.9.9.9:1": true, "[::1]:7801": true, "localhost:7801": true,
		"LOCALHOST:1": true, "unix:/run/bdrd.sock": true,
		"0.0.0.0:7801": false, ":7801": false, "[::]:7801": false, "10.0.0.1:7801": false,
		"example.com:7801": false, "nonsense": false, "": false, "127.0.0.1": false,
	} {
		if got := Loopback(addr); got != want {
			t.Errorf("Loopback(%q) = %v, want %v", addr, got, want)
		}
	}
}
