package membership

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/internal/adminapi"
)

// The parked transactions of this node (bdr.apply_errors; see package
// apply): listed, retried and discarded for bdrctl errors.

const applyErrorColumns = `error_id, origin_node_name, origin_node_id, remote_xid, remote_commit_lsn::text,
	remote_commit_time, tables, change_count, coalesce(sqlstate, ''), error, state, attempts, parked_at,
	last_attempt_at, next_retry_at, resolved_at, coalesce(resolved_by, '')`

func scanApplyError(row pgx.Row) (adminapi.ApplyError, error) {
	var e adminapi.ApplyError
	err := row.Scan(&e.ID, &e.Origin, &e.OriginID, &e.Xid, &e.CommitLSN, &e.CommitTime, &e.Tables, &e.Changes,
		&e.SQLState, &e.Error, &e.State, &e.Attempts, &e.ParkedAt, &e.LastAttempt, &e.NextRetry, &e.ResolvedAt, &e.ResolvedBy)
	return e, err
}

// ApplyErrors lists the parked transactions, oldest first; all adds those
// applied or discarded since.
func (s *Service) ApplyErrors(ctx context.Context, all bool) (adminapi.ApplyErrors, error) {
	out := adminapi.ApplyErrors{Node: s.cfg.NodeName, Errors: []adminapi.ApplyError{}}
	rows, err := s.pool.Query(ctx, `SELECT `+applyErrorColumns+` FROM bdr.apply_errors
		WHERE $1 OR state = 'parked' ORDER BY error_id`, all)
	if err != nil {
		return out, fmt.Errorf("list parked transactions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		e, err := scanApplyError(rows)
		if err != nil {
			return out, fmt.Errorf("list parked transactions: %w", err)
		}
		out.Errors = append(out.Errors, e)
	}
	return out, rows.Err()
}

// retryWait is how long a retry asked by the operator is waited for.
const retryWait = 30 * time.Second

// ApplyErrorAction retries or discards parked transaction r.ID. A retry is
// done by the stream from its origin (only it may stamp the changes with
// the origin): it is asked to retry now, and the answer is the row once
// the attempt is made.
func (s *Service) ApplyErrorAction(ctx context.Context, r adminapi.ErrorActionRequest) (adminapi.ApplyError, error) {
	if r.Action != adminapi.ErrorRetry && r.Action != adminapi.ErrorDiscard {
		return adminapi.ApplyError{}, adminapi.BadRequest("unknown action %q: want %s or %s", r.Action, adminapi.ErrorRetry, adminapi.ErrorDiscard)
	}
	get := func() (adminapi.ApplyError, error) {
		e, err := scanApplyError(s.pool.QueryRow(ctx, `SELECT `+applyErrorColumns+` FROM bdr.apply_errors WHERE error_id = $1`, r.ID))
		if errors.Is(err, pgx.ErrNoRows) {
			return e, adminapi.NotFound("no parked transaction %d on %s", r.ID, s.cfg.NodeName)
		}
		return e, err
	}
	e, err := get()
	if err != nil {
		return e, err
	}
	if e.State != "parked" {
		return e, adminapi.Conflict("transaction %d is not parked any more: %s", r.ID, e.State)
	}
	switch r.Action {
	case adminapi.ErrorDiscard:
		tag, err := s.pool.Exec(ctx, `UPDATE bdr.apply_errors SET state = 'discarded',
			resolved_at = pg_catalog.clock_timestamp(), resolved_by = $2 WHERE error_id = $1 AND state = 'parked'`,
			r.ID, "operator")
		if err != nil {
			return e, fmt.Errorf("discard transaction %d: %w", r.ID, err)
		}
		if tag.RowsAffected() == 0 {
			e, _ = get()
			return e, adminapi.Conflict("transaction %d is not parked any more: %s", r.ID, e.State)
		}
		s.log.Warn("parked transaction discarded by the operator", "id", r.ID, "origin", e.Origin, "xid", e.Xid)
		return get()
	case adminapi.ErrorRetry:
		if err := s.streams.RetryParked(e.Origin); err != nil {
			return e, adminapi.Conflict("transaction %d cannot be retried here: %v (discard it, or wait for the stream)", r.ID, err)
		}
		ctx, cancel := context.WithTimeout(ctx, retryWait)
		defer cancel()
		for {
			now, err := get()
			if err != nil || now.State != "parked" || now.LastAttempt.After(e.LastAttempt) {
				return now, err
			}
			select {
			case <-ctx.Done():
				return now, adminapi.Errorf(http.StatusGatewayTimeout, "transaction %d: the stream from %s did not retry it within %s", r.ID, e.Origin, retryWait)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return e, nil
}
