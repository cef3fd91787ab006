package apply

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/bdr-dev/bdr/decoder"
	"github.com/bdr-dev/bdr/internal/catalog"
	"github.com/bdr-dev/bdr/replsets"
)

// statusInterval is how often the receiver reports its position to the
// provider even when nothing happens; well under wal_sender_timeout.
const statusInterval = time.Second

// receiver reads the peer's slot and feeds decoded transactions to the relay.
type receiver struct {
	peer   Peer
	local  Local
	binary bool
	conn   *pgconn.PgConn
	dec    *decoder.Decoder
	relay  *relay
	track  *tracker
	met    *streamMetrics
	log    *slog.Logger

	lastStatus time.Time
}

// connectReplication opens a replication connection to dsn.
func connectReplication(ctx context.Context, dsn, appName string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse dsn: %w", err)
	}
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["application_name"] = appName
	cfg.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
		return pgproto3.NewFrontend(&coalescingReader{r: r, wait: coalesceWait}, w)
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return conn, nil
}

// replDatabaseOID is the oid of the database of a replication connection.
func replDatabaseOID(ctx context.Context, conn *pgconn.PgConn) (uint32, error) {
	res, err := conn.Exec(ctx, catalog.DatabaseOIDQuery).ReadAll()
	if err != nil {
		return 0, fmt.Errorf("read the database oid: %w", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 {
		return 0, errors.New("read the database oid: no answer")
	}
	oid, err := strconv.ParseUint(string(res[0].Rows[0][0]), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("read the database oid: %w", err)
	}
	return uint32(oid), nil
}

// pluginArgs are the pgoutput options: protocol 2, optionally binary
// values. From PostgreSQL 16 the provider itself drops changes that did not
// originate on it (DESIGN rule 2), and large in-progress transactions are
// streamed. Before 16 they are not: PostgreSQL 15 streams an in-progress
// transaction without its origin when the transaction begins with catalog
// changes (a join's copy of schema and data into a database being
// replaced: its rows would come back to every member as local inserts), so
// the provider's walsender spills large transactions to disk and sends them
// at commit, with their origin.
func pluginArgs(serverVersion int, binary bool) []string {
	pubs := make([]string, 0, 1)
	for _, p := range replsets.Publications() {
		pubs = append(pubs, `"`+p+`"`)
	}
	args := []string{
		"proto_version '2'",
		"publication_names '" + strings.Join(pubs, ",") + "'",
	}
	if binary {
		args = append(args, "binary 'true'")
	}
	if serverVersion >= 160000 {
		args = append(args, "streaming 'on'", "origin 'none'")
	}
	return args
}

func serverVersion(conn *pgconn.PgConn) int {
	v, _ := strconv.Atoi(conn.ParameterStatus("server_version_num"))
	if v == 0 {
		// server_version_num is not reported at startup before PostgreSQL 17;
		// server_version is ("15.18 (Debian ...)").
		major, _ := strconv.Atoi(strings.SplitN(conn.ParameterStatus("server_version"), ".", 2)[0])
		v = major * 10000
	}
	return v
}

// start begins streaming from the slot at start (0: the slot's position).
func (r *receiver) start(ctx context.Context, start decoder.LSN) error {
	oid, err := replDatabaseOID(ctx, r.conn)
	if err != nil {
		return fmt.Errorf("on %s: %w", r.peer.Name, err)
	}
	slot := catalog.SlotName(oid, r.local.Name)
	err = pglogrepl.StartReplication(ctx, r.conn, slot, start, pglogrepl.StartReplicationOptions{
		Mode:       pglogrepl.LogicalReplication,
		PluginArgs: pluginArgs(serverVersion(r.conn), r.binary),
	})
	if err != nil {
		return fmt.Errorf("start replication from slot %s on %s: %w", slot, r.peer.Name, err)
	}
	return nil
}

// run receives until ctx ends or the connection fails.
func (r *receiver) run(ctx context.Context) error {
	var w window
	defer w.close()
	for {
		if time.Since(r.lastStatus) >= statusInterval {
			if err := r.sendStatus(false); err != nil {
				return err
			}
		}
		msg, err := r.conn.ReceiveMessage(w.until(ctx, r.lastStatus.Add(statusInterval)))
		if err != nil {
			if pgconn.Timeout(err) && ctx.Err() == nil {
				continue
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("receive from %s: %w", r.peer.Name, err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if err := r.handle(ctx, msg.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("stream from %s: %w", r.peer.Name, pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return fmt.Errorf("stream from %s: provider ended the stream", r.peer.Name)
		}
	}
}

// window is a receive context with a deadline, made once per deadline
// rather than once per message.
type window struct {
	ctx      context.Context
	cancel   context.CancelFunc
	deadline time.Time
}

func (w *window) until(parent context.Context, deadline time.Time) context.Context {
	if w.ctx == nil || !w.deadline.Equal(deadline) {
		w.close()
		w.deadline = deadline
		w.ctx, w.cancel = context.WithDeadline(parent, deadline)
	}
	return w.ctx
}

func (w *window) close() {
	if w.cancel != nil {
		w.cancel()
	}
}

func (r *receiver) handle(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	r.met.received.Add(float64(len(data)))
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("keepalive from %s: %w", r.peer.Name, err)
		}
		r.track.serverPosition(ka.ServerWALEnd, r.dec.InTxn())
		r.track.keepalive(ka.ServerTime)
		if ka.ReplyRequested {
			return r.sendStatus(false)
		}
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("wal data from %s: %w", r.peer.Name, err)
		}
		txn, err := r.dec.Decode(xld.WALData)
		if err != nil {
			return fmt.Errorf("stream from %s: %w", r.peer.Name, err)
		}
		r.track.serverPosition(xld.ServerWALEnd, r.dec.InTxn())
		if txn != nil {
			return r.deliver(ctx, txn)
		}
	}
	return nil
}

// deliver hands txn to the applier, reporting status to the provider while
// the relay is full so the provider does not time the connection out.
func (r *receiver) deliver(ctx context.Context, txn *decoder.Txn) error {
	if skipped(txn) && r.track.skip(txn.EndLSN, txn.CommitTime) {
		// Nothing to apply and nothing before it pending: done here, without
		// waking the applier (on PostgreSQL 15 every transaction this node
		// applied comes back from each peer, to be dropped by origin).
		r.met.skipped.Inc()
		return txn.Close()
	}
	r.track.received(txn.EndLSN, txn.CommitTime)
	for {
		ok, err := r.relay.put(ctx, txn, statusInterval)
		if err != nil {
			_ = txn.Close()
			return err
		}
		if ok {
			return nil
		}
		if err := r.sendStatus(false); err != nil {
			_ = txn.Close()
			return err
		}
	}
}

// sendStatus confirms what is committed and flushed locally (never what was
// merely received).
func (r *receiver) sendStatus(reply bool) error {
	pos := r.track.confirmable(!r.dec.InTxn())
	r.lastStatus = time.Now()
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), r.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pos,
		WALFlushPosition: pos,
		WALApplyPosition: pos,
		ReplyRequested:   reply,
	})
	if err != nil {
		return fmt.Errorf("send status to %s: %w", r.peer.Name, err)
	}
	return nil
}
