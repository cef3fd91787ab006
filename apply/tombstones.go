package apply

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Tombstone collection. A tombstone (plan_tombstone.go) matters only to a
// remote change older than the delete it stands for; once every peer's
// stream has gone past the delete's commit time, no such change can come
// (each peer sends its own changes in commit order), and it can go. Each
// stream's tracker knows how far its provider's commits are done here
// (tracker.horizon: the commit time of the last transaction done, or the
// time of a keepalive received with nothing pending); the collection keeps
// every tombstone younger than the earliest of them, less
// tombstoneMargin, and younger than any transaction still parked (its
// retry compares with them).
//
// Nothing is removed while a peer has no stream running or its stream has
// not yet reached a keepalive or a transaction: a peer that is down keeps
// the tombstones of the deletes it has not seen, as its slot keeps WAL.
// Nor while the node has no peer: a node that joins compares nothing with
// the tombstones of the node it copies from.

// DefaultTombstoneEvery is how often tombstones are collected.
const DefaultTombstoneEvery = 30 * time.Second

// tombstoneMargin covers commits whose time was taken before a keepalive
// but whose record was written after it.
const tombstoneMargin = 10 * time.Second

// horizon returns the stream's tracker horizon; zero between runs.
func (s *stream) horizon() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.track == nil {
		return time.Time{}
	}
	return s.track.horizonAt()
}

// tombstoneHorizon is the time before which tombstones can go, and false
// when none can.
func (m *Manager) tombstoneHorizon() (time.Time, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.streams) == 0 {
		return time.Time{}, false
	}
	var earliest time.Time
	for _, r := range m.streams {
		h := r.s.horizon()
		if h.IsZero() {
			return time.Time{}, false
		}
		if earliest.IsZero() || h.Before(earliest) {
			earliest = h
		}
	}
	return earliest.Add(-tombstoneMargin), true
}

// collectTombstones removes the tombstones before the horizon.
func (m *Manager) collectTombstones(ctx context.Context) error {
	before, ok := m.tombstoneHorizon()
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, m.cfg.Local.DSN)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.Background()) }()
	tag, err := conn.Exec(ctx, `DELETE FROM bdr.tombstones t
		WHERE coalesce(pg_catalog.pg_xact_commit_timestamp(t.xmin), '-infinity') < least($1::timestamptz,
			(SELECT pg_catalog.min(e.remote_commit_time) FROM bdr.apply_errors e WHERE e.state = 'parked'))`, before)
	if err != nil {
		return fmt.Errorf("remove tombstones before %s: %w", before.UTC().Format(time.RFC3339), err)
	}
	if n := tag.RowsAffected(); n > 0 {
		m.log.Debug("removed tombstones", "count", n, "before", before)
	}
	// The versions unique collisions are compared with (catalog migration
	// 10) go by the same horizon: a version older than one of them that
	// has not arrived yet would come from before it.
	tag, err = conn.Exec(ctx, `DELETE FROM bdr.unique_history h
		WHERE coalesce(h.row_time, '-infinity') < least($1::timestamptz,
			(SELECT pg_catalog.min(e.remote_commit_time) FROM bdr.apply_errors e WHERE e.state = 'parked'))`, before)
	if err != nil {
		return fmt.Errorf("remove unique history before %s: %w", before.UTC().Format(time.RFC3339), err)
	}
	if n := tag.RowsAffected(); n > 0 {
		m.log.Debug("removed unique history", "count", n, "before", before)
	}
	return nil
}
