package adminapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Backend does what the admin API asks.
type Backend interface {
	Info(ctx context.Context) (Info, error)
	Status(ctx context.Context, group bool) (Status, error)
	Init(ctx context.Context) (Info, error)
	Join(ctx context.Context, r JoinRequest) (JoinProgress, error)
	JoinProgress(ctx context.Context) (JoinProgress, error)
	Part(ctx context.Context, r PartRequest) (PartResult, error)
	// LeaveGroup has the group part this node, from its own side.
	LeaveGroup(ctx context.Context) (PartResult, error)
	Checksums(ctx context.Context) (Checksums, error)
	// ApplyErrors lists the parked transactions (all: also those applied
	// or discarded since).
	ApplyErrors(ctx context.Context, all bool) (ApplyErrors, error)
	// ApplyErrorAction retries or discards a parked transaction and returns
	// it as it is afterwards.
	ApplyErrorAction(ctx context.Context, r ErrorActionRequest) (ApplyError, error)

	// Internal, between members.
	Admit(ctx context.Context, r AdmitRequest) (AdmitResponse, error)
	Propose(ctx context.Context, r ProposeRequest) (Node, error)
	Pause(ctx context.Context, r PauseRequest) error
	Resume(ctx context.Context) error
	WaitProcessed(ctx context.Context, r WaitRequest) error
	Leave(ctx context.Context) error
}

// maxBody bounds request bodies.
const maxBody = 1 << 20

// Auth says who may call the admin API.
type Auth struct {
	// Operator is the operator's token, valid on every route; "" when none.
	Operator string
	// Internal returns this node's group token, which members present to
	// each other. It is valid only on /v1/internal/..., GET /v1/node and
	// GET /v1/status. Internal may be nil, and may return "" (no group yet).
	Internal func() string
	// Open requires no token at all (a Unix socket, or a loopback address
	// the operator declared safe).
	Open bool
}

// errToken is the answer to a request without a valid token.
const errToken = "missing or wrong admin token"

type tokenKey struct{}

// TokenFromContext is the token the request handled under ctx presented
// ("" when none): a join forwards the operator's token to the member it
// joins through.
func TokenFromContext(ctx context.Context) string {
	t, _ := ctx.Value(tokenKey{}).(string)
	return t
}

// route is one method of one path.
type route struct {
	internal bool // the group token is enough
	serve    http.HandlerFunc
}

// handler authorizes every request, then routes it. Every answer it makes
// itself is JSON.
type handler struct {
	auth   Auth
	log    *slog.Logger
	routes map[string]map[string]route // path -> method -> route
}

// NewHandler routes the admin API to b; metrics, when not nil, serves
// /metrics. Every route, /metrics included, needs the header
// "Authorization: Bearer TOKEN" with a token auth accepts there, unless
// auth.Open; a request without one gets 401 and does nothing.
func NewHandler(b Backend, metrics http.Handler, log *slog.Logger, auth Auth) http.Handler {
	h := &handler{auth: auth, log: log, routes: map[string]map[string]route{}}
	add := func(method, path string, internal bool, serve http.HandlerFunc) {
		if h.routes[path] == nil {
			h.routes[path] = map[string]route{}
		}
		h.routes[path][method] = route{internal: internal, serve: serve}
	}
	get := func(path string, internal bool, fn func(ctx context.Context, r *http.Request) (any, error)) {
		add(http.MethodGet, path, internal, func(w http.ResponseWriter, r *http.Request) {
			v, err := fn(r.Context(), r)
			reply(w, log, v, err)
		})
	}
	post := func(path string, fn func(ctx context.Context, body []byte) (any, error)) {
		internal := strings.HasPrefix(path, "/v1/internal/")
		add(http.MethodPost, path, internal, func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
			if err != nil {
				reply(w, log, nil, BadRequest("read request: %v", err))
				return
			}
			v, err := fn(r.Context(), body)
			reply(w, log, v, err)
		})
	}
	get("/v1/node", true, func(ctx context.Context, _ *http.Request) (any, error) { return b.Info(ctx) })
	get("/v1/status", true, func(ctx context.Context, r *http.Request) (any, error) {
		return b.Status(ctx, r.URL.Query().Get("scope") != "local")
	})
	get("/v1/join", false, func(ctx context.Context, _ *http.Request) (any, error) { return b.JoinProgress(ctx) })
	get("/v1/checksums", false, func(ctx context.Context, _ *http.Request) (any, error) { return b.Checksums(ctx) })
	get("/v1/errors", false, func(ctx context.Context, r *http.Request) (any, error) {
		return b.ApplyErrors(ctx, r.URL.Query().Get("all") == "1")
	})
	post("/v1/errors", func(ctx context.Context, body []byte) (any, error) {
		var req ErrorActionRequest
		if err := decode(body, &req); err != nil {
			return nil, err
		}
		return b.ApplyErrorAction(ctx, req)
	})
	post("/v1/init", func(ctx context.Context, _ []byte) (any, error) { return b.Init(ctx) })
	post("/v1/join", func(ctx context.Context, body []byte) (any, error) {
		var req JoinRequest
		if err := decode(body, &req); err != nil {
			return nil, err
		}
		return b.Join(ctx, req)
	})
	post("/v1/part", func(ctx context.Context, body []byte) (any, error) {
		var req PartRequest
		if err := decode(body, &req); err != nil {
			return nil, err
		}
		return b.Part(ctx, req)
	})
	post("/v1/leave", func(ctx context.Context, _ []byte) (any, error) { return b.LeaveGroup(ctx) })
	post("/v1/internal/admit", func(ctx context.Context, body []byte) (any, error) {
		var req AdmitRequest
		if err := decode(body, &req); err != nil {
			return nil, err
		}
		return b.Admit(ctx, req)
	})
	post("/v1/internal/propose", func(ctx context.Context, body []byte) (any, error) {
		var req ProposeRequest
		if err := decode(body, &req); err != nil {
			return nil, err
		}
		return b.Propose(ctx, req)
	})
	post("/v1/internal/pause", func(ctx context.Context, body []byte) (any, error) {
		var req PauseRequest
		if err := decode(body, &req); err != nil {
			return nil, err
		}
		return struct{}{}, b.Pause(ctx, req)
	})
	post("/v1/internal/resume", func(ctx context.Context, _ []byte) (any, error) { return struct{}{}, b.Resume(ctx) })
	post("/v1/internal/wait", func(ctx context.Context, body []byte) (any, error) {
		var req WaitRequest
		if err := decode(body, &req); err != nil {
			return nil, err
		}
		return struct{}{}, b.WaitProcessed(ctx, req)
	})
	post("/v1/internal/leave", func(ctx context.Context, _ []byte) (any, error) { return struct{}{}, b.Leave(ctx) })
	if metrics != nil {
		add(http.MethodGet, "/metrics", false, metrics.ServeHTTP)
	}
	return h
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	methods := h.routes[r.URL.Path]
	rt, found := methods[r.Method]
	token, ok := h.authorize(r, found && rt.internal)
	if !ok {
		if h.log != nil {
			h.log.Warn("admin request refused: "+errToken, "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="bdrd"`)
		reply(w, nil, nil, Errorf(http.StatusUnauthorized, errToken))
		return
	}
	switch {
	case methods == nil:
		reply(w, h.log, nil, NotFound("no such admin API path"))
	case !found:
		allow := slices.Sorted(maps.Keys(methods))
		w.Header().Set("Allow", strings.Join(allow, ", "))
		reply(w, h.log, nil, Errorf(http.StatusMethodNotAllowed, "method not allowed: use %s", strings.Join(allow, " or ")))
	default:
		rt.serve(w, r.WithContext(context.WithValue(r.Context(), tokenKey{}, token)))
	}
}

// authorize returns the token r presents and whether it may make r:
// always when the API is open; the operator's token anywhere; the group
// token on internal routes only.
func (h *handler) authorize(r *http.Request, internalRoute bool) (string, bool) {
	token := bearer(r.Header.Get("Authorization"))
	if h.auth.Open {
		return token, true
	}
	if token == "" {
		return "", false
	}
	if sameToken(token, h.auth.Operator) {
		return token, true
	}
	if internalRoute && h.auth.Internal != nil && sameToken(token, h.auth.Internal()) {
		return token, true
	}
	return "", false
}

// bearer is the token of an Authorization header value, "" when it holds none.
func bearer(header string) string {
	const scheme = "Bearer "
	if len(header) < len(scheme) || !strings.EqualFold(header[:len(scheme)], scheme) {
		return ""
	}
	return strings.TrimSpace(header[len(scheme):])
}

// sameToken compares in constant time (over hashes, so not even the length
// of want shows); an empty want matches nothing.
func sameToken(got, want string) bool {
	if want == "" {
		return false
	}
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

func decode(body []byte, v any) error {
	if len(body) == 0 {
		body = []byte("{}")
	}
	dec := json.NewDecoder(bytesReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return BadRequest("malformed request: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return BadRequest("malformed request: more than one JSON value")
	}
	return nil
}

func reply(w http.ResponseWriter, log *slog.Logger, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	var body []byte
	if err == nil {
		if body, err = json.Marshal(v); err != nil {
			err = fmt.Errorf("encode answer: %w", err)
		}
	}
	if err != nil {
		status := http.StatusInternalServerError
		var e *Error
		if errors.As(err, &e) {
			status = e.Status
		} else if errors.Is(err, context.DeadlineExceeded) {
			status = http.StatusGatewayTimeout
		}
		if status >= 500 && log != nil {
			log.Warn("admin request failed", "err", err)
		}
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(Error{Message: err.Error()})
		return
	}
	_, _ = w.Write(append(body, '\n'))
}

// NewServer returns an http.Server for h with conservative timeouts; long
// internal calls (waits, data copies) stream nothing, so the write timeout
// leaves them room.
func NewServer(addr string, h http.Handler) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
}
