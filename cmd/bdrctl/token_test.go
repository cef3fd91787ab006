package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bdr-dev/bdr/internal/adminapi"
	"github.com/bdr-dev/bdr/internal/checksum"
)

// fakeBackend answers status and checksums; the other methods are not set
// and panic (the nil embedded Backend).
type fakeBackend struct {
	adminapi.Backend
	status    func(ctx context.Context, group bool) (adminapi.Status, error)
	checksums func(ctx context.Context) (adminapi.Checksums, error)
}

func (f *fakeBackend) Status(ctx context.Context, group bool) (adminapi.Status, error) {
	return f.status(ctx, group)
}
func (f *fakeBackend) Checksums(ctx context.Context) (adminapi.Checksums, error) {
	return f.checksums(ctx)
}

// fakeMember serves the admin API of a member named name that requires
// token; members are the group its status lists.
func fakeMember(t *testing.T, name, token string, members *[]adminapi.Node) string {
	t.Helper()
	b := &fakeBackend{
		status: func(context.Context, bool) (adminapi.Status, error) {
			return adminapi.Status{Node: adminapi.Info{Name: name, ID: 1, State: "active"}, Nodes: *members}, nil
		},
		checksums: func(context.Context) (adminapi.Checksums, error) {
			return adminapi.Checksums{Node: name, Tables: map[string]checksum.Sum{"public.t": {Rows: 1, Hash: "abc"}}}, nil
		},
	}
	srv := httptest.NewServer(adminapi.NewHandler(b, nil, nil, adminapi.Auth{Operator: token}))
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()
	*members = append(*members, adminapi.Node{ID: int32(len(*members) + 1), Name: name, State: "active", AdminAddr: addr})
	return addr
}

// TestToken: bdrctl presents the token from --token-file, $BDRCTL_TOKEN or
// $BDRCTL_TOKEN_FILE, to every bdrd it talks to; a refusal is one line.
func TestToken(t *testing.T) {
	const token = "the-operator-token"
	var members []adminapi.Node
	a := fakeMember(t, "a", token, &members)
	fakeMember(t, "b", token, &members)
	dir := t.TempDir()
	file := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good, wrong, empty := file("good", "\n "+token+" \n"), file("wrong", "nope\n"), file("empty", "\n")
	refusal := "bdrctl: " + a + ": missing or wrong admin token (set BDRCTL_TOKEN or --token-file)\n"

	tests := []struct {
		name                string
		envToken, envFile   string
		args                []string
		wantCode            int
		wantStdout, wantErr string
	}{
		{name: "no token", args: []string{"--node", a, "status"}, wantCode: 1, wantErr: refusal},
		{name: "wrong BDRCTL_TOKEN", envToken: "nope", args: []string{"--node", a, "status"}, wantCode: 1, wantErr: refusal},
		{name: "wrong --token-file", args: []string{"--node", a, "--token-file", wrong, "status"}, wantCode: 1, wantErr: refusal},
		{name: "BDRCTL_TOKEN", envToken: " " + token + "\n", args: []string{"--node", a, "status"}, wantStdout: "node a (id 1, active)"},
		{name: "BDRCTL_TOKEN_FILE", envFile: good, args: []string{"--node", a, "status"}, wantStdout: "node a (id 1, active)"},
		{name: "--token-file", args: []string{"--node", a, "--token-file", good, "status"}, wantStdout: "node a (id 1, active)"},
		{name: "--token-file after the command", args: []string{"status", "--node", a, "--token-file", good}, wantStdout: "node a (id 1, active)"},
		{name: "--token-file wins over BDRCTL_TOKEN", envToken: "nope", args: []string{"--node", a, "--token-file", good, "status"},
			wantStdout: "node a (id 1, active)"},
		{name: "BDRCTL_TOKEN wins over BDRCTL_TOKEN_FILE", envToken: token, envFile: wrong, args: []string{"--node", a, "status"},
			wantStdout: "node a (id 1, active)"},
		{name: "missing --token-file", args: []string{"--node", a, "--token-file", filepath.Join(dir, "none"), "status"}, wantCode: 1,
			wantErr: "bdrctl: --token-file " + filepath.Join(dir, "none") + ": no such file or directory\n"},
		{name: "empty --token-file", args: []string{"--node", a, "--token-file", empty, "status"}, wantCode: 1,
			wantErr: "bdrctl: --token-file " + empty + " is empty\n"},
		{name: "checksum of every member", args: []string{"--node", a, "--token-file", good, "checksum"},
			wantStdout: "all 2 members are identical"},
		{name: "part refused", args: []string{"--node", a, "part", "b"}, wantCode: 1, wantErr: refusal},
		{name: "init refused", args: []string{"--node", a, "init"}, wantCode: 1, wantErr: refusal},
		{name: "join refused", args: []string{"--node", a, "join", "--via", "127.0.0.1:1"}, wantCode: 1, wantErr: refusal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("BDRCTL_TOKEN", tt.envToken)
			t.Setenv("BDRCTL_TOKEN_FILE", tt.envFile)
			code, stdout, stderr := bdrctl(t, tt.args...)
			if code != tt.wantCode || !strings.Contains(stdout, tt.wantStdout) || (tt.wantErr != "" && stderr != tt.wantErr) {
				t.Errorf("bdrctl %v: exit %d\nstdout %q\nstderr %q\nwant exit %d, stdout with %q, stderr %q",
					tt.args, code, stdout, stderr, tt.wantCode, tt.wantStdout, tt.wantErr)
			}
			if strings.Contains(stderr, token) {
				t.Errorf("the token shows: %q", stderr)
			}
		})
	}
}

// TestTokenChecksumFanOut: a member that refuses the token is named in the
// one-line refusal.
func TestTokenChecksumFanOut(t *testing.T) {
	var members []adminapi.Node
	a := fakeMember(t, "a", "token-a", &members)
	b := fakeMember(t, "b", "token-b", &members)
	t.Setenv("BDRCTL_TOKEN", "token-a")
	t.Setenv("BDRCTL_TOKEN_FILE", "")
	code, _, stderr := bdrctl(t, "--node", a, "checksum")
	if want := "bdrctl: " + b + ": missing or wrong admin token (set BDRCTL_TOKEN or --token-file)\n"; code != 1 || stderr != want {
		t.Errorf("checksum: exit %d, stderr %q; want 1, %q", code, stderr, want)
	}
}

// TestUnixSocketNode: --node unix:/path talks to a bdrd on a Unix socket.
func TestUnixSocketNode(t *testing.T) {
	addr := "unix:" + filepath.Join(t.TempDir(), "bdrd.sock")
	ln, err := adminapi.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	b := &fakeBackend{status: func(context.Context, bool) (adminapi.Status, error) {
		return adminapi.Status{Node: adminapi.Info{Name: "local", ID: 1, State: "active"}}, nil
	}}
	srv := &http.Server{Handler: adminapi.NewHandler(b, nil, nil, adminapi.Auth{Open: true})}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	t.Setenv("BDRCTL_TOKEN", "")
	t.Setenv("BDRCTL_TOKEN_FILE", "")
	if code, out, stderr := bdrctl(t, "--node", addr, "status"); code != 0 || !strings.Contains(out, "node local (id 1, active)") {
		t.Errorf("status over %s: exit %d\n%s%s", addr, code, out, stderr)
	}
}
