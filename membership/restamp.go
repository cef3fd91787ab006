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

// restamp gives the copied rows of a table the version they have on the via
// node: the origin (the member that wrote them last) and the commit time.
// The conflict rule compares those, so without them a change made
// concurrently with a row's last version elsewhere would beat the copy here
// and lose on the via node: the group would diverge. Rows whose commit time
// the via node no longer knows (frozen, or written before commit
// timestamps were tracked) keep copyTime, and so do versions older than
// stamp.after (see copyStamp), the bulk of a table. Each distinct version is one
// local transaction, bound to the origin and stamped with the time, that
// rewrites its rows unchanged; tables without a primary key are skipped
// (they only ever take INSERTs).
func restamp(ctx context.Context, src, dst *pgx.Conn, t tableCopy, stamp copyStamp, created map[string]bool) (int, error) {
	var key []string
	if err := src.QueryRow(ctx, `SELECT coalesce(array_agg(a.attname::text ORDER BY k.i), '{}')
		FROM pg_catalog.pg_index x
		CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, i)
		JOIN pg_catalog.pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
		WHERE x.indrelid = $1::regclass AND x.indisprimary`, t.name).Scan(&key); err != nil {
		return 0, fmt.Errorf("restamp %s: primary key: %w", t.name, err)
	}
	if len(key) == 0 {
		return 0, nil
	}
	cols := make([]string, len(key))
	join := make([]string, len(key))
	for i, k := range key {
		cols[i] = pgx.Identifier{k}.Sanitize()
		join[i] = "t." + cols[i] + " = v." + cols[i]
	}
	keyList := strings.Join(cols, ", ")

	// The versions of the via node's rows, as of the snapshot, newer than
	// stamp.after (a setting, so that COPY can use it as a value).
	if _, err := src.Exec(ctx, `SELECT pg_catalog.set_config('bdr.restamp_after', $1, true)`,
		stamp.after.UTC().Format(time.RFC3339Nano)); err != nil {
		return 0, fmt.Errorf("restamp %s: %w", t.name, err)
	}
	if _, err := dst.Exec(ctx, `DROP TABLE IF EXISTS pg_temp.bdr_versions`); err != nil {
		return 0, err
	}
	if _, err := dst.Exec(ctx, fmt.Sprintf(`CREATE TEMP TABLE bdr_versions AS SELECT %s FROM ONLY %s WITH NO DATA`, keyList, t.name)); err != nil {
		return 0, fmt.Errorf("restamp %s: %w", t.name, err)
	}
	if _, err := dst.Exec(ctx, `ALTER TABLE pg_temp.bdr_versions ADD COLUMN via_origin text, ADD COLUMN ts timestamptz`); err != nil {
		return 0, fmt.Errorf("restamp %s: %w", t.name, err)
	}
	err := pipeCopy(ctx, src.PgConn(), dst.PgConn(),
		fmt.Sprintf(`COPY (SELECT %s, coalesce(o.roname, ''), c.timestamp
			FROM ONLY %s AS t
			CROSS JOIN LATERAL pg_catalog.pg_xact_commit_timestamp_origin(t.xmin) AS c
			LEFT JOIN pg_catalog.pg_replication_origin o ON o.roident = c.roident
			WHERE c.timestamp >= pg_catalog.current_setting('bdr.restamp_after')::timestamptz) TO STDOUT`, prefixed("t.", cols), t.name),
		fmt.Sprintf(`COPY pg_temp.bdr_versions (%s, via_origin, ts) FROM STDIN`, keyList), nil)
	if err != nil {
		return 0, fmt.Errorf("restamp %s: read versions: %w", t.name, err)
	}
	if _, err := dst.Exec(ctx, `CREATE INDEX ON pg_temp.bdr_versions (via_origin, ts)`); err != nil {
		return 0, err
	}
	rows, err := dst.Query(ctx, `SELECT via_origin, ts FROM pg_temp.bdr_versions GROUP BY 1, 2 ORDER BY 2, 1`)
	if err != nil {
		return 0, err
	}
	type version struct {
		ViaOrigin string
		TS        time.Time
	}
	versions, err := pgx.CollectRows(rows, pgx.RowToStructByPos[version])
	if err != nil {
		return 0, fmt.Errorf("restamp %s: %w", t.name, err)
	}

	update := fmt.Sprintf(`UPDATE %s AS t SET %s = t.%s FROM pg_temp.bdr_versions v
		WHERE v.via_origin = $1 AND v.ts = $2 AND %s`, t.name, cols[0], cols[0], strings.Join(join, " AND "))
	// One transaction per version, sent in pipelined batches; the session
	// is bound to the origin of each version in turn.
	bound := ""
	defer func() {
		if bound != "" {
			_, _ = dst.Exec(context.WithoutCancel(ctx), `SELECT pg_catalog.pg_replication_origin_session_reset()`)
		}
	}()
	for _, v := range versions {
		origin, lsn := stamp.origin(v.ViaOrigin)
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
	for i, v := range versions {
		origin, lsn := stamp.origin(v.ViaOrigin)
		if origin != bound {
			if bound != "" {
				batch.Queue(`SELECT pg_catalog.pg_replication_origin_session_reset()`)
			}
			batch.Queue(`SELECT pg_catalog.pg_replication_origin_session_setup($1)`, origin)
			bound = origin
		}
		batch.Queue(`BEGIN`)
		batch.Queue(`SELECT pg_catalog.pg_replication_origin_xact_setup($1::text::pg_lsn, $2)`, lsn.String(), v.TS)
		batch.Queue(update, v.ViaOrigin, v.TS)
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
	_, err = dst.Exec(ctx, `DROP TABLE pg_temp.bdr_versions`)
	return len(versions), err
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

func prefixed(p string, cols []string) string {
	out := make([]string, len(cols))
	for i, c := range cols {
		out[i] = p + c
	}
	return strings.Join(out, ", ")
}
