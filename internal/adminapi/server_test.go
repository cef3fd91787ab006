package adminapi

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// backend is a fake Backend: struct of function fields, nil ones fail.
type backend struct {
	part func(ctx context.Context, r PartRequest) (PartResult, error)
}

var errNotHere = errors.New("not in this fake")

func (b *backend) Info(context.Context) (Info, error)           { return Info{Name: "a"}, nil }
func (b *backend) Status(context.Context, bool) (Status, error) { return Status{}, errNotHere }
func (b *backend) Init(context.Context) (Info, error)           { return Info{}, errNotHere }
func (b *backend) JoinProgress(context.Context) (JoinProgress, error) {
	return JoinProgress{}, errNotHere
}
func (b *backend) Checksums(context.Context) (Checksums, error) { return Checksums{}, errNotHere }
func (b *backend) Join(context.Context, JoinRequest) (JoinProgress, error) {
	return JoinProgress{}, errNotHere
}
func (b *backend) Part(ctx context.Context, r PartRequest) (PartResult, error) { return b.part(ctx, r) }
func (b *backend) Admit(context.Context, AdmitRequest) (AdmitResponse, error) {
	return AdmitResponse{}, errNotHere
}
func (b *backend) UpsertNode(context.Context, Node) error           { return errNotHere }
func (b *backend) Pause(context.Context, PauseRequest) error        { return errNotHere }
func (b *backend) Resume(context.Context) error                     { return errNotHere }
func (b *backend) WaitProcessed(context.Context, WaitRequest) error { return errNotHere }
func (b *backend) DropNode(context.Context, NameRequest) error      { return errNotHere }
func (b *backend) Leave(context.Context) error                      { return errNotHere }

var _ Backend = (*backend)(nil)

func TestServerAndClient(t *testing.T) {
	b := &backend{part: func(_ context.Context, r PartRequest) (PartResult, error) {
		if r.Name == "ghost" {
			return PartResult{}, NotFound("no node named %q in the group", r.Name)
		}
		return PartResult{Name: r.Name, Done: []string{"b"}}, nil
	}}
	srv := httptest.NewServer(NewHandler(b, nil, nil))
	defer srv.Close()
	c := NewClient(srv.URL, 0)
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
	for _, body := range []string{`{"name":`, `{"name": "c", "extra": 1}`, `[1]`} {
		resp, err := http.Post(srv.URL+"/v1/part", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("malformed body %q: status %d, want 400", body, resp.StatusCode)
		}
	}
	resp, err := http.Post(srv.URL+"/v1/part", "application/json", strings.NewReader(strings.Repeat("x", 2<<20)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("oversized body: status %d, want 400", resp.StatusCode)
	}
	if _, err := NewClient("127.0.0.1:1", 0).Info(ctx); !Unreachable(err) || !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("a dead address: %v", err)
	}
}
