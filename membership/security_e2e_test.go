package membership_test

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bdr-dev/bdr/internal/groupkey"
	"github.com/bdr-dev/bdr/internal/grouptest"
	"github.com/bdr-dev/bdr/internal/pgcluster"
	"github.com/bdr-dev/bdr/internal/pgtest"
)

// TestAdminAuth: every admin call to a member of a running group, without a
// token, with a wrong one, or with the group's internal token where the
// operator's is needed, is refused with 401 and changes nothing; what the
// API answers the operator shows no password, token or key.
func TestAdminAuth(t *testing.T) {
	t.Parallel()
	servers := []*pgcluster.Server{pgtest.Shared(t, 0), pgtest.Shared(t, 1)}
	nodes := grouptest.Group(t, servers, "sec", grouptest.Options{}, func(first *grouptest.Node) {
		first.Exec(`CREATE TABLE kv (k int PRIMARY KEY)`)
	})
	a, b := nodes[0], nodes[1]
	key, ok, err := groupkey.Read(filepath.Join(a.DataDir, "group.key"))
	if err != nil || !ok {
		t.Fatalf("read the group key of %s: %v", a.Name, err)
	}
	internal := key.InternalToken()
	snapshot := func(n *grouptest.Node) string {
		return strings.Join(pgtest.Strings(t, n.DSN, `
			SELECT node_name || ' ' || state FROM bdr.nodes
			UNION ALL SELECT slot_name FROM pg_catalog.pg_replication_slots WHERE database = pg_catalog.current_database()
			UNION ALL SELECT roname FROM pg_catalog.pg_replication_origin WHERE pg_catalog.starts_with(roname, bdr.repl_name(''))
			ORDER BY 1`), ", ")
	}
	before := map[string]string{a.Name: snapshot(a), b.Name: snapshot(b)}
	if !strings.Contains(before[a.Name], "bdr_") {
		t.Fatalf("%s has no slot or origin: %s", a.Name, before[a.Name])
	}
	for _, path := range []string{"/v1/node", "/v1/status", "/metrics"} {
		if code := call(t, a.Admin, "GET", path, "", a.Token); code != http.StatusOK {
			t.Fatalf("GET %s with the operator's token: %d", path, code)
		}
	}

	calls := []struct{ method, path, body string }{
		{"GET", "/v1/node", ""},
		{"GET", "/v1/status", ""},
		{"GET", "/v1/join", ""},
		{"GET", "/v1/checksums", ""},
		{"GET", "/metrics", ""},
		{"POST", "/v1/init", "{}"},
		{"POST", "/v1/join", `{"via":"` + b.Admin + `"}`},
		{"POST", "/v1/part", `{"name":"` + b.Name + `"}`},
		{"POST", "/v1/leave", "{}"},
		{"POST", "/v1/internal/admit", `{"name":"intruder","public_dsn":"host=127.0.0.1","admin_addr":"127.0.0.1:1"}`},
		{"POST", "/v1/internal/propose", `{"op":"part","node":{"name":"` + b.Name + `"}}`},
		{"POST", "/v1/internal/pause", `{"lease":"1m"}`},
		{"POST", "/v1/internal/resume", "{}"},
		{"POST", "/v1/internal/leave", "{}"},
	}
	// The internal token may read a node's identity and status and make the
	// internal calls; nothing an operator does.
	internalMay := map[string]bool{"/v1/node": true, "/v1/status": true}
	for _, c := range calls {
		tokens := map[string]string{"no token": "", "a wrong token": "not-the-token"}
		if !internalMay[c.path] && !strings.HasPrefix(c.path, "/v1/internal/") {
			tokens["the internal token"] = internal
		}
		for what, token := range tokens {
			code := call(t, a.Admin, c.method, c.path, c.body, token)
			if code != http.StatusUnauthorized {
				t.Errorf("%s %s with %s: %d; want 401", c.method, c.path, what, code)
			}
		}
	}
	time.Sleep(time.Second) // anything wrongly started would show by now
	for _, n := range nodes {
		if got := snapshot(n); got != before[n.Name] {
			t.Errorf("refused calls changed %s:\nbefore %s\nafter  %s", n.Name, before[n.Name], got)
		}
	}
	a.Exec(`INSERT INTO kv VALUES (1)`)
	grouptest.WaitQuiet(t, nodes, time.Minute)
	grouptest.AssertConverged(t, nodes)

	// What the operator reads holds no secret.
	ctx := context.Background()
	st, err := a.Client().Status(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	info, err := a.Client().Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stJSON, _ := json.Marshal(st)
	infoJSON, _ := json.Marshal(info)
	pages := map[string]string{"status": string(stJSON), "node info": string(infoJSON), "metrics": a.Metrics()}
	password := regexp.MustCompile(`password=(\S+)`)
	for _, n := range nodes {
		secrets := map[string]string{"admin token": n.Token, "group key": key.String(), "internal token": internal}
		if m := password.FindStringSubmatch(n.DSN); m != nil {
			secrets["database password of "+n.Name] = m[1]
		} else {
			t.Fatalf("the DSN of %s has no password to look for", n.Name)
		}
		for page, text := range pages {
			for what, secret := range secrets {
				if strings.Contains(text, secret) {
					t.Errorf("the %s of %s shows the %s", page, a.Name, what)
				}
			}
		}
	}
}

// call makes one admin API request and returns the HTTP status.
func call(t *testing.T, addr, method, path, body, token string) int {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
