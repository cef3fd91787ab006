package adminapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// Ways a fuzzed request presents a token.
const (
	authNone     = iota // no Authorization header
	authOperator        // the operator's token
	authGroup           // the group token
	authToken           // "Bearer " + the fuzzed token
	authRaw             // the fuzzed token as the whole header value
	authModes
)

// FuzzHandler sends random requests to the admin API: it never panics,
// answers with a status in 200-599 and a JSON body, and a request without
// a token valid for its route does nothing.
func FuzzHandler(f *testing.F) {
	seeds := []struct {
		method, path, query string
		mode                uint8
		token, header       string
		body                []byte
		open                bool
	}{
		{"GET", "/v1/status", "scope=local", authGroup, "", "", nil, false},
		{"GET", "/v1/node", "", authOperator, "", "", nil, false},
		{"GET", "/metrics", "", authGroup, "", "", nil, false},
		{"POST", "/v1/part", "", authOperator, "", "application/json", []byte(`{"name":"b"}`), false},
		{"POST", "/v1/part", "", authGroup, "", "application/json", []byte(`{"name":"b"}`), false},
		{"POST", "/v1/part", "", authNone, "", "", []byte(`{"name":"b"}`), false},
		{"POST", "/v1/part", "", authToken, "operator-tokeN", "", []byte(`{"name":"b"}`), false},
		{"POST", "/v1/part", "", authRaw, "Basic b3BlcmF0b3ItdG9rZW4=", "", []byte(`{"name":"b"}`), false},
		{"POST", "/v1/part", "", authOperator, "", "", []byte(`{"name":`), false},
		{"POST", "/v1/part", "", authOperator, "", "", []byte(`{"name":"b"} {"name":"c"}`), false},
		{"POST", "/v1/part", "", authOperator, "", "", []byte(`{"name":"b","extra":[1,2,{}]}`), false},
		{"POST", "/v1/part", "", authOperator, "", "", []byte("null"), false},
		{"POST", "/v1/part", "", authOperator, "", "", []byte("\xff\xfe\x00"), false},
		{"POST", "/v1/init", "", authNone, "", "", nil, true},
		{"POST", "/v1/join", "", authOperator, "", "", []byte(`{"via":"127.0.0.1:1"}`), false},
		{"POST", "/v1/internal/admit", "", authGroup, "", "", []byte(`{"name":"c","public_dsn":"password=x","admin_addr":"c:1"}`), false},
		{"POST", "/v1/internal/pause", "", authGroup, "", "", []byte(`{"lease_ms":-1}`), false},
		{"POST", "/v1/internal/wait", "", authGroup, "", "", []byte(`{"peer":1}`), false},
		{"POST", "/v1/internal/propose", "", authToken, "", "", []byte(`{"op":"admit","node":{"id":99999999999}}`), false},
		{"DELETE", "/v1/part", "", authOperator, "", "", nil, false},
		{"GET", "/v1/internal/../part", "", authGroup, "", "", nil, false},
		{"GET", "//v1//node", "", authOperator, "", "", nil, false},
		{"GET", "/v1/status", "scope=%zz&scope=local", authOperator, "", "", nil, false},
		{"", "", "", authRaw, "Bearer ", "", nil, false},
		{"PO\nST", "/v1/part\x00", "", authRaw, "bearer operator-token", "text/plain", []byte("{}"), false},
	}
	for _, s := range seeds {
		f.Add(s.method, s.path, s.query, s.mode, s.token, s.header, s.body, s.open)
	}
	f.Fuzz(func(t *testing.T, method, path, query string, mode uint8, token, header string, body []byte, open bool) {
		b := &backend{
			status: func(context.Context, bool) (Status, error) { return Status{Node: Info{Name: "a"}}, nil },
			part: func(_ context.Context, r PartRequest) (PartResult, error) {
				return PartResult{Name: r.Name, Done: []string{"a"}}, nil
			},
		}
		m := &counter{}
		auth := Auth{Operator: operatorToken, Internal: func() string { return groupToken }, Open: open}
		r := httptest.NewRequest(http.MethodGet, "/", bytes.NewReader(body))
		r.Method, r.URL.Path, r.URL.RawQuery = method, path, query
		r.Header.Set("Content-Type", header)
		authz := ""
		switch mode % authModes {
		case authOperator:
			authz = "Bearer " + operatorToken
		case authGroup:
			authz = "Bearer " + groupToken
		case authToken:
			authz = "Bearer " + token
		case authRaw:
			authz = token
		}
		if authz != "" {
			r.Header.Set("Authorization", authz)
		}
		w := httptest.NewRecorder()
		NewHandler(b, m, nil, auth).ServeHTTP(w, r)

		if w.Code < 200 || w.Code > 599 {
			t.Fatalf("status %d", w.Code)
		}
		if !json.Valid(w.Body.Bytes()) {
			t.Fatalf("status %d, body not JSON: %q", w.Code, w.Body)
		}
		calls := b.calls.Load() + m.calls.Load()
		if w.Code == http.StatusUnauthorized && calls != 0 {
			t.Fatalf("refused, yet the backend was called %d times", calls)
		}
		internal := strings.HasPrefix(path, "/v1/internal/") || method == http.MethodGet && (path == "/v1/node" || path == "/v1/status")
		valid := strings.Contains(authz, operatorToken) || internal && strings.Contains(authz, groupToken)
		if !open && !valid && (w.Code != http.StatusUnauthorized || calls != 0) {
			t.Fatalf("authorization %q on %s %q: status %d, %d backend calls; want 401 and none", authz, method, path, w.Code, calls)
		}
	})
}
