package adminapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// Client talks to one bdrd's admin API.
type Client struct {
	addr  string
	base  string
	http  *http.Client
	token string
}

// NewClient returns a client for the bdrd at addr: host:port, a URL, or
// "unix:/path/to.sock". timeout bounds each call; 0 means no bound (for long
// waits). It sends no token: see WithToken.
func NewClient(addr string, timeout time.Duration) *Client {
	if path, ok := unixPath(addr); ok {
		// One connection per call: a Unix socket costs little to connect to,
		// and a client made per call leaves no idle connections behind.
		tr := &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
			DisableKeepAlives: true,
		}
		return &Client{addr: addr, base: "http://unix", http: &http.Client{Timeout: timeout, Transport: tr}}
	}
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &Client{addr: addr, base: strings.TrimRight(base, "/"), http: &http.Client{Timeout: timeout}}
}

// WithToken returns a copy of c that presents token ("Authorization:
// Bearer token") on every call; "" presents none.
func (c *Client) WithToken(token string) *Client {
	cp := *c
	cp.token = token
	return &cp
}

// WithDialer returns a copy of c that connects with dial (TCP addresses
// only; tests use it to inject network faults).
func (c *Client) WithDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *Client {
	if _, ok := unixPath(c.addr); ok {
		return c
	}
	cp := *c
	cp.http = &http.Client{Timeout: c.http.Timeout, Transport: &http.Transport{DialContext: dial}}
	return &cp
}

// WithTimeout returns a copy of c whose calls are bounded by timeout (0:
// no bound, for long waits).
func (c *Client) WithTimeout(timeout time.Duration) *Client {
	cp := *c
	h := *c.http
	h.Timeout = timeout
	cp.http = &h
	return &cp
}

// Addr is the address the client talks to.
func (c *Client) Addr() string { return c.addr }

// Unreachable reports whether err means the bdrd could not be reached at all.
func Unreachable(err error) bool {
	var ue *url.Error
	var ne net.Error
	var e *Error
	return !errors.As(err, &e) && (errors.As(err, &ue) || errors.As(err, &ne))
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	data, err := c.send(ctx, method, path, in)
	if err != nil || out == nil {
		return err
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("bdrd at %s: malformed answer: %w", c.addr, err)
	}
	return nil
}

// send makes one request and returns the body of a successful answer.
func (c *Client) send(ctx context.Context, method, path string, in any) ([]byte, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("bdrd at %s: %w", c.addr, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("bdrd at %s is unreachable: %w", c.addr, unwrapURL(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("bdrd at %s: read answer: %w", c.addr, err)
	}
	if resp.StatusCode >= 300 {
		var e Error
		if json.Unmarshal(data, &e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("bdrd at %s answered %s", c.addr, resp.Status)
		}
		e.Status = resp.StatusCode
		return nil, &e
	}
	return data, nil
}

// Metrics returns the bdrd's Prometheus metrics page.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	b, err := c.send(ctx, http.MethodGet, "/metrics", nil)
	return string(b), err
}

// unwrapURL keeps the cause of a transport error and drops the repeated URL.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return &netError{ue.Err}
	}
	return err
}

type netError struct{ err error }

func (e *netError) Error() string   { return e.err.Error() }
func (e *netError) Unwrap() error   { return e.err }
func (e *netError) Timeout() bool   { var ne net.Error; return errors.As(e.err, &ne) && ne.Timeout() }
func (e *netError) Temporary() bool { return false }

// Info asks the bdrd about itself.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var out Info
	return out, c.do(ctx, http.MethodGet, "/v1/node", nil, &out)
}

// Status returns the group's status as this bdrd sees it (group) or only
// its own streams.
func (c *Client) Status(ctx context.Context, group bool) (Status, error) {
	var out Status
	path := "/v1/status"
	if !group {
		path += "?scope=local"
	}
	return out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// Init makes the node the first member of a new group.
func (c *Client) Init(ctx context.Context) (Info, error) {
	var out Info
	return out, c.do(ctx, http.MethodPost, "/v1/init", struct{}{}, &out)
}

// Join starts a join of the node through via.
func (c *Client) Join(ctx context.Context, r JoinRequest) (JoinProgress, error) {
	var out JoinProgress
	return out, c.do(ctx, http.MethodPost, "/v1/join", r, &out)
}

// JoinProgress reports the node's join.
func (c *Client) JoinProgress(ctx context.Context) (JoinProgress, error) {
	var out JoinProgress
	return out, c.do(ctx, http.MethodGet, "/v1/join", nil, &out)
}

// Part removes node name from the group.
func (c *Client) Part(ctx context.Context, name string) (PartResult, error) {
	var out PartResult
	return out, c.do(ctx, http.MethodPost, "/v1/part", PartRequest{Name: name}, &out)
}

// LeaveGroup has the group part the node, from its own side.
func (c *Client) LeaveGroup(ctx context.Context) (PartResult, error) {
	var out PartResult
	return out, c.do(ctx, http.MethodPost, "/v1/leave", struct{}{}, &out)
}

// Checksums returns per-table checksums of the node's database.
func (c *Client) Checksums(ctx context.Context) (Checksums, error) {
	var out Checksums
	return out, c.do(ctx, http.MethodGet, "/v1/checksums", nil, &out)
}

// ApplyErrors lists the node's parked transactions (all: also the ones
// applied or discarded since).
func (c *Client) ApplyErrors(ctx context.Context, all bool) (ApplyErrors, error) {
	var out ApplyErrors
	path := "/v1/errors"
	if all {
		path += "?all=1"
	}
	return out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// ApplyErrorAction retries or discards parked transaction id.
func (c *Client) ApplyErrorAction(ctx context.Context, id int64, action string) (ApplyError, error) {
	var out ApplyError
	return out, c.do(ctx, http.MethodPost, "/v1/errors", ErrorActionRequest{ID: id, Action: action}, &out)
}

// Admit asks a member to admit a joining node.
func (c *Client) Admit(ctx context.Context, r AdmitRequest) (AdmitResponse, error) {
	var out AdmitResponse
	return out, c.do(ctx, http.MethodPost, "/v1/internal/admit", r, &out)
}

// Propose asks the group's leader to commit a decision.
func (c *Client) Propose(ctx context.Context, r ProposeRequest) (Node, error) {
	var out Node
	return out, c.do(ctx, http.MethodPost, "/v1/internal/propose", r, &out)
}

// Pause holds the member's appliers for at most lease.
func (c *Client) Pause(ctx context.Context, lease time.Duration) error {
	return c.do(ctx, http.MethodPost, "/v1/internal/pause", PauseRequest{LeaseMillis: lease.Milliseconds()}, nil)
}

// Resume releases the member's appliers.
func (c *Client) Resume(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/v1/internal/resume", struct{}{}, nil)
}

// WaitProcessed waits until the member's stream from peer is past lsn.
func (c *Client) WaitProcessed(ctx context.Context, peer, lsn string) error {
	return c.do(ctx, http.MethodPost, "/v1/internal/wait", WaitRequest{Peer: peer, LSN: lsn}, nil)
}

// Leave makes the node stop replicating and drop its own slots and origins.
func (c *Client) Leave(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/v1/internal/leave", struct{}{}, nil)
}

// notDone is the error of a join still under way when ctx ended: the
// wait's end, not the node, is the cause.
func notDone(ctx context.Context, jp JoinProgress) error {
	return fmt.Errorf("join not done when the wait ended (%w): still %s: %s", ctx.Err(), jp.Phase, jp.Message)
}

// JoinAndWait starts the join r of the node and follows it until it ends,
// calling progress (when not nil) with every report it polls. It returns
// the join's failure, if any.
func (c *Client) JoinAndWait(ctx context.Context, r JoinRequest, poll time.Duration, progress func(JoinProgress)) error {
	jp, err := c.Join(ctx, r)
	for err == nil {
		if progress != nil {
			progress(jp)
		}
		if jp.Done {
			break
		}
		select {
		case <-ctx.Done():
			return notDone(ctx, jp)
		case <-time.After(poll):
		}
		last := jp
		if jp, err = c.JoinProgress(ctx); err != nil && ctx.Err() != nil {
			return notDone(ctx, last)
		}
	}
	if err != nil {
		return err
	}
	if jp.Error != "" {
		return fmt.Errorf("join failed: %s", jp.Error)
	}
	return nil
}
