package adminapi

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// backend is a fake Backend: struct of function fields, nil ones fail
// (Info answers a fixed node). calls counts every call of any method.
type backend struct {
	info   func(ctx context.Context) (Info, error)
	status func(ctx context.Context, group bool) (Status, error)
	part   func(ctx context.Context, r PartRequest) (PartResult, error)
	calls  atomic.Int64
}

var errNotHere = errors.New("not in this fake")

func (b *backend) Info(ctx context.Context) (Info, error) {
	b.calls.Add(1)
	if b.info == nil {
		return Info{Name: "a"}, nil
	}
	return b.info(ctx)
}
func (b *backend) Status(ctx context.Context, group bool) (Status, error) {
	b.calls.Add(1)
	if b.status == nil {
		return Status{}, errNotHere
	}
	return b.status(ctx, group)
}
func (b *backend) Part(ctx context.Context, r PartRequest) (PartResult, error) {
	b.calls.Add(1)
	if b.part == nil {
		return PartResult{}, errNotHere
	}
	return b.part(ctx, r)
}
func (b *backend) Init(context.Context) (Info, error) { b.calls.Add(1); return Info{}, errNotHere }
func (b *backend) LeaveGroup(context.Context) (PartResult, error) {
	b.calls.Add(1)
	return PartResult{}, errNotHere
}

func (b *backend) JoinProgress(context.Context) (JoinProgress, error) {
	b.calls.Add(1)
	return JoinProgress{}, errNotHere
}
func (b *backend) Checksums(context.Context) (Checksums, error) {
	b.calls.Add(1)
	return Checksums{}, errNotHere
}
func (b *backend) Join(context.Context, JoinRequest) (JoinProgress, error) {
	b.calls.Add(1)
	return JoinProgress{}, errNotHere
}
func (b *backend) Admit(context.Context, AdmitRequest) (AdmitResponse, error) {
	b.calls.Add(1)
	return AdmitResponse{}, errNotHere
}
func (b *backend) Propose(context.Context, ProposeRequest) (Node, error) {
	b.calls.Add(1)
	return Node{}, errNotHere
}
func (b *backend) Pause(context.Context, PauseRequest) error { b.calls.Add(1); return errNotHere }
func (b *backend) Resume(context.Context) error              { b.calls.Add(1); return errNotHere }
func (b *backend) WaitProcessed(context.Context, WaitRequest) error {
	b.calls.Add(1)
	return errNotHere
}
func (b *backend) Leave(context.Context) error { b.calls.Add(1); return errNotHere }
func (b *backend) ApplyErrors(context.Context, bool) (ApplyErrors, error) {
	b.calls.Add(1)
	return ApplyErrors{}, errNotHere
}
func (b *backend) ApplyErrorAction(context.Context, ErrorActionRequest) (ApplyError, error) {
	b.calls.Add(1)
	return ApplyError{}, errNotHere
}

var _ Backend = (*backend)(nil)

func TestServerAndClient(t *testing.T) {
	b := &backend{part: func(_ context.Context, r PartRequest) (PartResult, error) {
		if r.Name == "ghost" {
			return PartResult{}, NotFound("no node named %q in the group", r.Name)
		}
		return PartResult{Name: r.Name, Done: []string{"b"}}, nil
	}}
	const token = "operator-token"
	srv := httptest.NewServer(NewHandler(b, nil, nil, Auth{Operator: token}))
	defer srv.Close()
	c := NewClient(srv.URL, 0).WithToken(token)
	ctx := context.Background()

	if res, err := c.Part(ctx, "c"); err != nil || res.Name != "c" || len(res.Done) != 1 {
		t.Fatalf("Part = %+v, %v", res, err)
	}
	_, err := c.Part(ctx, "ghost")
	var e *Error
	if !errors.As(err, &e) || e.Status != http.StatusNotFound || e.Message != `no node named "ghost" in the group` {
		t.Fatalf("Part(ghost) = %v", err)
	}
	if _, err := c.Init(ctx); err == nil || !strings.Contains(err.Error(), "not in this fake") {
		t.Fatalf("a plain backend error did not come through: %v", err)
	}
	post := func(body string) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, srv.URL+"/v1/part", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	calls := b.calls.Load()
	for _, body := range []string{`{"name":`, `{"name": "c", "extra": 1}`, `[1]`, `{"name": "c"} {}`, `{"name": "c"}x`, strings.Repeat("x", 2<<20)} {
		if status := post(body); status != http.StatusBadRequest {
			t.Errorf("malformed body %.40q: status %d, want 400", body, status)
		}
	}
	if got := b.calls.Load() - calls; got != 0 {
		t.Errorf("malformed bodies reached the backend %d times", got)
	}
	if _, err := NewClient("127.0.0.1:1", 0).Info(ctx); !Unreachable(err) || !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("a dead address: %v", err)
	}
}
