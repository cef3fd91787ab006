package membership

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/bdr-dev/bdr/internal/catalog"
)

// copyStamp says how copied rows get their version: the origin names on
// the joining node and the progress each one is set to.
type copyStamp struct {
	localOID uint32
	via      string                   // the via node's name
	viaOID   uint32                   // its database's oid
	progress map[string]pglogrepl.LSN // per member (via included): where its stream to us starts
	// after: every change that reaches us after the copy was committed
	// after this time (our slots were created then), less a margin for
	// clock skew. A row version older than that loses to every one of
	// them on the via node as it does against copyTime here, so only
	// newer versions need restamping.
	after time.Time
}

// restampMargin allows for clocks of members that run behind ours.
const restampMargin = 10 * time.Second

// origin maps an origin name on the via node ("" for the via node's own
// writes) to the name of the joining node's origin for the same member.
func (c copyStamp) origin(viaOrigin string) (string, pglogrepl.LSN) {
	member := c.via
	if name, ok := strings.CutPrefix(viaOrigin, catalog.ReplName(c.viaOID, "")); ok {
		if _, known := c.progress[name]; known {
			member = name
		}
	}
	return catalog.OriginName(c.localOID, member), c.progress[member]
}

// versions are the recent row versions of one table on the via node,
// held in a temporary table of the restamp session (keys as text: the
// table itself exists there only once the copy commits).
type versions struct {
	t     tableCopy
	keys  []string // quoted primary key columns; none: nothing to restamp
	names []string // the same, unquoted
	temp  string   // the temporary table
	count int64    // rows in it
}

// collectVersions reads, on the via node under the snapshot (src), the
// version of every row of t that is newer than stamp.after (the commit of
// its xmin, or the version bdr.row_versions keeps for it): its primary
// key, the origin that wrote it there ("" for the via node itself) and its
// commit time, into temporary table number i of dst. It runs while the
// rows are copied, on connections of its own.
func collectVersions(ctx context.Context, src, dst *pgx.Conn, t tableCopy, i int, stamp copyStamp) (versions, error) {
	v := versions{t: t, temp: fmt.Sprintf("pg_temp.bdr_versions_%d", i)}
	var key []string
	if err := src.QueryRow(ctx, `SELECT coalesce(array_agg(a.attname::text ORDER BY k.i), '{}')
		FROM pg_catalog.pg_index x
		CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, i)
		JOIN pg_catalog.pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
		WHERE x.indrelid = $1::regclass AND x.indisprimary`, t.name).Scan(&key); err != nil {
		return v, fmt.Errorf("restamp %s: primary key: %w", t.name, err)
	}
	if len(key) == 0 {
		return v, nil // no key: the table only ever takes INSERTs
	}
	defs := make([]string, len(key))
	texts := make([]string, len(key))
	for i, k := range key {
		q := pgx.Identifier{k}.Sanitize()
		v.keys, v.names = append(v.keys, q), append(v.names, k)
		defs[i] = q + " text"
		texts[i] = "t." + q + "::text"
	}
	keyList := strings.Join(v.keys, ", ")
	if _, err := dst.Exec(ctx, fmt.Sprintf(`CREATE TEMP TABLE %s (%s, via_origin text, ts timestamptz)`,
		strings.TrimPrefix(v.temp, "pg_temp."), strings.Join(defs, ", "))); err != nil {
		return v, fmt.Errorf("restamp %s: %w", t.name, err)
	}
	// stamp.after is a setting so that COPY can use it as a value.
	if _, err := src.Exec(ctx, `SELECT pg_catalog.set_config('bdr.restamp_after', $1, true)`,
		stamp.after.UTC().Format(time.RFC3339Nano)); err != nil {
		return v, fmt.Errorf("restamp %s: %w", t.name, err)
	}
	// Every row's commit time is read with the scalar function (reading
	// the record of pg_xact_commit_timestamp_origin through a lateral
	// join costs four times as much on every row, and this scan runs
	// beside the row copy); the origin only for the few recent rows.
	const ts = `CASE WHEN v.relid IS NULL THEN pg_catalog.pg_xact_commit_timestamp(t.xmin) ELSE v.commit_time END`
	err := pipeCopy(ctx, src.PgConn(), dst.PgConn(),
		fmt.Sprintf(`COPY (SELECT %s,
				coalesce((SELECT o.roname FROM pg_catalog.pg_replication_origin o WHERE o.roident =
					CASE WHEN v.relid IS NULL THEN (pg_catalog.pg_xact_commit_timestamp_origin(t.xmin)).roident ELSE v.roident END), ''),
				%s
			FROM ONLY %s AS t
			LEFT JOIN bdr.row_versions AS v ON v.relid = t.tableoid AND v.tid = t.ctid AND v.row_xmin = t.xmin
			WHERE %s >= (SELECT pg_catalog.current_setting('bdr.restamp_after')::timestamptz)) TO STDOUT`,
			strings.Join(texts, ", "), ts, t.name, ts),
		fmt.Sprintf(`COPY %s (%s, via_origin, ts) FROM STDIN`, v.temp, keyList),
		func(rows, _ int64) { v.count += rows })
	if err != nil {
		return v, fmt.Errorf("restamp %s: read versions: %w", t.name, err)
	}
	return v, nil
}

// restamp gives the copied rows of a table the version they have on the via
// node: the origin (the member that wrote them last) and the commit time.
// The conflict rule compares those, so without them a change made
// concurrently with a row's last version elsewhere would beat the copy here
// and lose on the via node: the group would diverge. Rows whose commit time
// the via node no longer knows (frozen, or written before commit
// timestamps were tracked) keep copyTime, and so do versions older than
// stamp.after (see copyStamp), the bulk of a table. Each distinct version is one
// local transaction, bound to the origin and stamped with the time, that
// rewrites its rows unchanged. It runs after the copy committed, on the
// session that holds the versions.
func restamp(ctx context.Context, dst *pgx.Conn, v versions, stamp copyStamp, created map[string]bool) (int, error) {
	t := v.t
	if len(v.keys) == 0 || v.count == 0 {
		return 0, nil
	}
	// The key columns' types, to compare the text of the versions.
	join := make([]string, len(v.keys))
	for i, k := range v.keys {
		var typ string
		if err := dst.QueryRow(ctx, `SELECT pg_catalog.format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute
			WHERE attrelid = $1::regclass AND attname = $2`, t.name, v.names[i]).Scan(&typ); err != nil {
			return 0, fmt.Errorf("restamp %s: type of %s: %w", t.name, k, err)
		}
		join[i] = fmt.Sprintf("t.%s = v.%s::%s", k, k, typ)
	}
	if _, err := dst.Exec(ctx, fmt.Sprintf(`CREATE INDEX ON %s (via_origin, ts)`, v.temp)); err != nil {
		return 0, err
	}
	if _, err := dst.Exec(ctx, `ANALYZE `+v.temp); err != nil {
		return 0, err
	}
	rows, err := dst.Query(ctx, fmt.Sprintf(`SELECT via_origin, ts FROM %s GROUP BY 1, 2 ORDER BY 2, 1`, v.temp))
	if err != nil {
		return 0, err
	}
	type version struct {
		ViaOrigin string
		TS        time.Time
	}
	list, err := pgx.CollectRows(rows, pgx.RowToStructByPos[version])
	if err != nil {
		return 0, fmt.Errorf("restamp %s: %w", t.name, err)
	}

	update := fmt.Sprintf(`UPDATE %s AS t SET %s = t.%s FROM %s v
		WHERE v.via_origin = $1 AND v.ts = $2 AND %s`, t.name, v.keys[0], v.keys[0], v.temp, strings.Join(join, " AND "))
	// One transaction per version, sent in pipelined batches; the session
	// is bound to the origin of each version in turn.
	bound := ""
	defer func() {
		if bound != "" {
			_, _ = dst.Exec(context.WithoutCancel(ctx), `SELECT pg_catalog.pg_replication_origin_session_reset()`)
		}
	}()
	for _, x := range list {
		origin, lsn := stamp.origin(x.ViaOrigin)
		if err := setOriginOnce(ctx, dst, origin, lsn, created); err != nil {
			return 0, err
		}
	}
	batch := &pgx.Batch{}
	flush := func() error {
		if batch.Len() == 0 {
			return nil
		}
		err := dst.SendBatch(ctx, batch).Close()
		batch = &pgx.Batch{}
		return err
	}
	for i, x := range list {
		origin, lsn := stamp.origin(x.ViaOrigin)
		if origin != bound {
			if bound != "" {
				batch.Queue(`SELECT pg_catalog.pg_replication_origin_session_reset()`)
			}
			batch.Queue(`SELECT pg_catalog.pg_replication_origin_session_setup($1)`, origin)
			bound = origin
		}
		batch.Queue(`BEGIN`)
		batch.Queue(`SELECT pg_catalog.pg_replication_origin_xact_setup($1::text::pg_lsn, $2)`, lsn.String(), x.TS)
		batch.Queue(update, x.ViaOrigin, x.TS)
		batch.Queue(`COMMIT`)
		if (i+1)%restampBatch == 0 {
			if err := flush(); err != nil {
				return 0, fmt.Errorf("restamp %s: %w", t.name, err)
			}
		}
	}
	if err := flush(); err != nil {
		return 0, fmt.Errorf("restamp %s: %w", t.name, err)
	}
	_, err = dst.Exec(ctx, `DROP TABLE `+v.temp)
	return len(list), err
}

// restampBatch is how many versions go to the server in one pipeline.
const restampBatch = 500

// setOriginOnce creates origin name with progress lsn the first time a
// copy needs it.
func setOriginOnce(ctx context.Context, db *pgx.Conn, name string, lsn pglogrepl.LSN, created map[string]bool) error {
	if created[name] {
		return nil
	}
	if err := setOrigin(ctx, db, name, lsn); err != nil {
		return err
	}
	created[name] = true
	return nil
}
