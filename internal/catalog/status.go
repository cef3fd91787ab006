package catalog

import (
	"context"
	"fmt"
	"time"
)

// StreamStatus is what bdrd publishes about one incoming stream in
// bdr.stream_status (read through the bdr.node_status view).
type StreamStatus struct {
	Peer           string
	State          string
	LagBytes       int64
	LagSeconds     float64
	LastCommitTime time.Time // zero: nothing applied since start
	LastError      string
	Parked         int64 // parked transactions from the peer
}

// WriteStreamStatus replaces the stream status rows with statuses.
func WriteStreamStatus(ctx context.Context, db DB, statuses []StreamStatus) error {
	peers := make([]string, 0, len(statuses))
	for _, s := range statuses {
		peers = append(peers, s.Peer)
		var last *time.Time
		if !s.LastCommitTime.IsZero() {
			t := s.LastCommitTime
			last = &t
		}
		var lastErr *string
		if s.LastError != "" {
			lastErr = &s.LastError
		}
		_, err := db.Exec(ctx, `INSERT INTO bdr.stream_status
			(peer_name, state, lag_bytes, lag_seconds, last_applied_commit_time, last_error, parked, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, now())
			ON CONFLICT (peer_name) DO UPDATE SET state = excluded.state, lag_bytes = excluded.lag_bytes,
				lag_seconds = excluded.lag_seconds, last_applied_commit_time = excluded.last_applied_commit_time,
				last_error = excluded.last_error, parked = excluded.parked, updated_at = excluded.updated_at`,
			s.Peer, s.State, s.LagBytes, s.LagSeconds, last, lastErr, s.Parked)
		if err != nil {
			return fmt.Errorf("write stream status of %s: %w", s.Peer, err)
		}
	}
	if _, err := db.Exec(ctx, `DELETE FROM bdr.stream_status WHERE NOT (peer_name = ANY ($1))`, peers); err != nil {
		return fmt.Errorf("write stream status: %w", err)
	}
	return nil
}

// MemberStatus is the liveness of a member as gossip sees it.
type MemberStatus struct {
	Name  string
	State string
	Since time.Time
	// ClockSkew is the member's clock minus this node's in seconds, nil
	// until gossip measured it.
	ClockSkew *float64
}

// WriteMemberStatus replaces the member status rows with members.
func WriteMemberStatus(ctx context.Context, db DB, members []MemberStatus) error {
	names := make([]string, 0, len(members))
	for _, m := range members {
		names = append(names, m.Name)
		if _, err := db.Exec(ctx, `INSERT INTO bdr.member_status (node_name, state, since, clock_skew_seconds, updated_at)
			VALUES ($1, $2, $3, $4, now())
			ON CONFLICT (node_name) DO UPDATE SET state = excluded.state, since = excluded.since,
				clock_skew_seconds = excluded.clock_skew_seconds, updated_at = now()`,
			m.Name, m.State, m.Since, m.ClockSkew); err != nil {
			return fmt.Errorf("write member status of %s: %w", m.Name, err)
		}
	}
	if _, err := db.Exec(ctx, `DELETE FROM bdr.member_status WHERE NOT (node_name = ANY ($1))`, names); err != nil {
		return fmt.Errorf("write member status: %w", err)
	}
	return nil
}
