package adminapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
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
	Checksums(ctx context.Context) (Checksums, error)

	// Internal, between members.
	Admit(ctx context.Context, r AdmitRequest) (AdmitResponse, error)
	UpsertNode(ctx context.Context, n Node) error
	Pause(ctx context.Context, r PauseRequest) error
	Resume(ctx context.Context) error
	WaitProcessed(ctx context.Context, r WaitRequest) error
	DropNode(ctx context.Context, r NameRequest) error
	Leave(ctx context.Context) error
}

// maxBody bounds request bodies.
const maxBody = 1 << 20

// NewHandler routes the admin API to b; metrics, when not nil, serves
// /metrics.
func NewHandler(b Backend, metrics http.Handler, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	get := func(path string, fn func(ctx context.Context, r *http.Request) (any, error)) {
		mux.HandleFunc("GET "+path, func(w http.ResponseWriter, r *http.Request) {
			v, err := fn(r.Context(), r)
			reply(w, log, v, err)
		})
	}
	post := func(path string, fn func(ctx context.Context, body []byte) (any, error)) {
		mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
			if err != nil {
				reply(w, log, nil, BadRequest("read request: %v", err))
				return
			}
			v, err := fn(r.Context(), body)
			reply(w, log, v, err)
		})
	}
	get("/v1/node", func(ctx context.Context, _ *http.Request) (any, error) { return b.Info(ctx) })
	get("/v1/status", func(ctx context.Context, r *http.Request) (any, error) {
		return b.Status(ctx, r.URL.Query().Get("scope") != "local")
	})
	get("/v1/join", func(ctx context.Context, _ *http.Request) (any, error) { return b.JoinProgress(ctx) })
	get("/v1/checksums", func(ctx context.Context, _ *http.Request) (any, error) { return b.Checksums(ctx) })
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
	post("/v1/internal/admit", func(ctx context.Context, body []byte) (any, error) {
		var req AdmitRequest
		if err := decode(body, &req); err != nil {
			return nil, err
		}
		return b.Admit(ctx, req)
	})
	post("/v1/internal/nodes", func(ctx context.Context, body []byte) (any, error) {
		var req Node
		if err := decode(body, &req); err != nil {
			return nil, err
		}
		return struct{}{}, b.UpsertNode(ctx, req)
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
	post("/v1/internal/drop-node", func(ctx context.Context, body []byte) (any, error) {
		var req NameRequest
		if err := decode(body, &req); err != nil {
			return nil, err
		}
		return struct{}{}, b.DropNode(ctx, req)
	})
	post("/v1/internal/leave", func(ctx context.Context, _ []byte) (any, error) { return struct{}{}, b.Leave(ctx) })
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	return mux
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
	return nil
}

func reply(w http.ResponseWriter, log *slog.Logger, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
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
	_ = json.NewEncoder(w).Encode(v)
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
