package apply

import (
	"fmt"
	"strings"

	"github.com/bdr-dev/bdr/conflict"
)

// Resolving statements apply one row change and resolve any conflict
// inside PostgreSQL, in one statement:
//
//   - the decision (package conflict) is a condition of the UPDATE, the
//     DELETE or the INSERT ... ON CONFLICT DO UPDATE itself, evaluated on
//     the row version the statement changes; when a local transaction
//     changes the row concurrently, PostgreSQL re-evaluates it on the newer
//     version, so the decision always sees the version it replaces;
//   - when the change is not applied (or, for a DELETE, when the deleted
//     version was newer), the same statement writes the conflict to
//     bdr.conflict_history; only then is the local row looked up for the
//     record.
//
// They return the type of the conflict recorded, or NULL. Parameters: $1
// schema and $2 table name (for the record), then the key values (UPDATE,
// DELETE) or all column values (INSERT), then for UPDATE the values of the
// present columns.

// lookup describes, for the conflict record, the local row with the key
// params as the statement's snapshot sees it: l.found, l.row, l.c (its
// commit time and origin), l.node (the node that wrote it, read once: the
// decision expressions use it many times) and l.mine.
func (p *plan) lookup(params []int) string {
	return fmt.Sprintf(`(SELECT true AS found, t AS row, %s AS mine, c, %s AS node
	FROM ONLY %s t LEFT JOIN LATERAL pg_catalog.pg_xact_commit_timestamp_origin(t.xmin) c ON true
	WHERE %s LIMIT 1)`, mine("t.xmin"), nodeOf("c.roident"), p.table, p.keyConds("t", params))
}

// record inserts the conflict_history row of a conflict; the FROM clause
// must provide l (see lookup) and the decision expressions.
func (p *plan) record(dec conflict.DecisionSQL, resolution, tuple, from string) string {
	return p.recordWith(dec, resolution, tuple, from, "(l.c).timestamp", "(l.c).roident")
}

// recordWith is record for a FROM clause whose l gives the local version's
// commit time and origin as the expressions lts and lro.
func (p *plan) recordWith(dec conflict.DecisionSQL, resolution, tuple, from, lts, lro string) string {
	return fmt.Sprintf(`h AS (
	INSERT INTO bdr.conflict_history (local_node_id, local_node_name, remote_node_id, remote_node_name,
		schema_name, table_name, conflict_type, resolution, reason, local_tuple, local_commit_time,
		local_origin_node_id, remote_tuple, remote_xid, remote_commit_time, remote_commit_lsn)
	SELECT %s, %s, %s, %s, $1::text, $2::text, %s, %s, %s,
		pg_catalog.to_jsonb(l.row), %s, CASE WHEN %s IS NOT NULL THEN %s END,
		%s, %s, %s, %s
	%s
	RETURNING conflict_type
)`, setting(setLocalID, "int"), setting(setLocalName, "text"), setting(setRemoteID, "int"), setting(setRemoteName, "text"),
		dec.Type, resolution, dec.Reason, lts, lts, nodeOf(lro), tuple,
		setting(setXid, "bigint"), setting(setCommitTS, "timestamptz"), setting(setCommitLSN, "pg_lsn"), from)
}

// recordInputs are the decision inputs of the looked-up row l, under the
// resolvers of the statement's table (resolversCTE).
func recordInputs() conflict.Inputs {
	in := inputs("coalesce(l.found, false)", "l.mine", "(l.c)", remoteTS)
	in.LocalNode = "l.node"
	in.Resolver = stmtResolvers
	return in
}

// tupleJSON is the jsonb of the columns at positions cols, whose values are
// the parameters from first on.
func (p *plan) tupleJSON(cols []int, first int) string {
	items := make([]string, len(cols))
	for i, c := range cols {
		items[i] = fmt.Sprintf("%s AS %s", placeholder(first+i, p.types[c]), p.cols[c])
	}
	return fmt.Sprintf("(SELECT pg_catalog.to_jsonb(r) FROM (SELECT %s) r)", strings.Join(items, ", "))
}

func (p *plan) resolvingInsertSQL() string {
	all := make([]int, len(p.cols))
	vals := make([]string, len(p.cols))
	sets := make([]string, len(p.cols))
	for i, c := range p.cols {
		all[i] = i
		vals[i] = placeholder(i+3, p.types[i])
		sets[i] = fmt.Sprintf("%s = excluded.%s", c, c)
	}
	keyCols := make([]string, len(p.keys))
	for i, k := range p.keys {
		keyCols[i] = p.cols[k]
	}
	wins := conflict.WinsSQL(p.rowInputs("t", remoteTS, stmtResolvers), conflict.InsertInsert)
	dec := conflict.InsertSQL(recordInputs())
	source, notSkip := "VALUES ("+strings.Join(vals, ", ")+")", ""
	if len(p.uniques) > 0 {
		// After the unique statement (plan_unique.go), which may have
		// decided that the row is not inserted.
		source = fmt.Sprintf("SELECT %s WHERE %s", strings.Join(vals, ", "), notSkipped)
		notSkip = " AND " + notSkipped
	}
	return fmt.Sprintf(`WITH %s, i AS (
	INSERT INTO %s AS t (%s) %s
	ON CONFLICT (%s) DO UPDATE SET %s WHERE %s
	RETURNING t.xmax = 0 AS inserted
), %s
SELECT (SELECT conflict_type FROM h)`,
		resolversCTE(conflict.InsertInsert), p.table, strings.Join(p.cols, ", "), source,
		strings.Join(keyCols, ", "), strings.Join(sets, ", "), wins,
		p.record(dec, conflict.ResolutionSQL(recordInputs(), conflict.InsertInsert, "EXISTS (SELECT 1 FROM i)"),
			p.tupleJSON(all, 3),
			fmt.Sprintf("FROM (SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM i WHERE i.inserted)%s) g LEFT JOIN LATERAL %s l ON true",
				notSkip, p.lookup(p.keyParams(true, 3)))))
}

// resolvingUpdateSQL is the UPDATE of the columns present in mask; with
// afterUnique set, it follows a unique statement (plan_unique.go), which
// may have decided that the change is not applied. An UPDATE that changes
// the key has its own (keyChangeSQL).
func (p *plan) resolvingUpdateSQL(mask string, afterUnique, keyChange bool) string {
	if p.hasDelta() {
		return p.resolvingDeltaUpdateSQL(mask)
	}
	if keyChange {
		return p.keyChangeSQL(mask)
	}
	sets, present := p.updateSets(mask)
	apply := onVersion("t.xmin", remoteTS, stmtResolvers, func(in conflict.Inputs) string { return conflict.UpdateSQL(in).Apply })
	dec := conflict.UpdateSQL(recordInputs())
	notSkip := ""
	if afterUnique {
		notSkip = " AND " + notSkipped
	}
	return fmt.Sprintf(`WITH %s, u AS (
	UPDATE ONLY %s t SET %s WHERE %s%s AND (%s OR %s) RETURNING 1
), %s
SELECT (SELECT conflict_type FROM h)`,
		resolversCTE(conflict.UpdateUpdate, conflict.UpdateMissing), p.table, strings.Join(sets, ", "), p.keyConds("t", p.keyParams(false, 3)), notSkip, mine("t.xmin"), apply,
		p.record(dec, dec.Resolution, p.tupleJSON(present, len(p.keys)+3),
			fmt.Sprintf("FROM (SELECT 1 WHERE (NOT EXISTS (SELECT 1 FROM u) OR %s)%s) g LEFT JOIN LATERAL %s l ON true WHERE NOT EXISTS (SELECT 1 FROM u) OR %s",
				appliedConflict(), notSkip, p.lookup(p.keyParams(false, 3)), dec.Record)))
}

// updateSets are the SET items of the UPDATE of the columns in mask, whose
// values are the parameters after the key's, and the present columns.
func (p *plan) updateSets(mask string) (sets []string, present []int) {
	next := len(p.keys) + 3
	for i, c := range p.cols {
		if mask[i] == '1' {
			sets = append(sets, fmt.Sprintf("%s = %s", c, placeholder(next, p.types[i])))
			present = append(present, i)
			next++
		}
	}
	return sets, present
}

// keyChangeSQL is the resolving UPDATE that changes the key. A key change
// is a delete and an insert, and resolves as they do on every node:
//
//   - over a concurrent update of the row, it wins whatever the times, as
//     a delete would (recorded update_update, key_change_wins): the node
//     that made the key change skips the update, whose key is gone;
//   - with no row under the old key (deleted or changed concurrently), its
//     row is inserted under the new key, as it exists on the nodes where
//     the change applied (update_missing, key_change_inserted); when the
//     change does not carry every column (unchanged TOAST values) it is
//     skipped as before.
//
// Collisions on the new key are settled by the unique statement before.
func (p *plan) keyChangeSQL(mask string) string {
	sets, present := p.updateSets(mask)
	oldKey := p.keyParams(false, 3)
	insert, inserted := "", "false"
	if !strings.Contains(mask, "0") {
		vals := make([]string, len(p.cols))
		for i := range p.cols {
			vals[i] = placeholder(len(p.keys)+3+i, p.types[i])
		}
		insert = fmt.Sprintf(`, i AS (
	INSERT INTO %s (%s) SELECT %s
	WHERE NOT EXISTS (SELECT 1 FROM u) AND %s AND NOT EXISTS (SELECT 1 FROM ONLY %s x WHERE %s)
	ON CONFLICT DO NOTHING RETURNING 1
)`, p.table, strings.Join(p.cols, ", "), strings.Join(vals, ", "), notSkipped, p.table, p.keyConds("x", oldKey))
		inserted = "EXISTS (SELECT 1 FROM i)"
	}
	tuple := p.tupleJSON(present, len(p.keys)+3)
	missing := conflict.UpdateSQL(recordInputs())
	missing.Resolution = fmt.Sprintf("CASE WHEN %s THEN '%s' ELSE %s END", inserted, conflict.KeyChangeInserted, missing.Resolution)
	missing.Reason = fmt.Sprintf("CASE WHEN %s THEN 'no local row with the old key; the key change inserts its row under the new key, as on the nodes where it applied' ELSE %s END",
		inserted, missing.Reason)
	won := conflict.DecisionSQL{
		Type:       fmt.Sprintf("'%s'", conflict.UpdateUpdate),
		Resolution: fmt.Sprintf("'%s'", conflict.KeyChangeWins),
		Reason: fmt.Sprintf("'a key change wins over a concurrent update, as a delete does (local ' || %s || ', remote ' || %s || ')'",
			conflict.VersionSQL("(l.c).timestamp", nodeOf("(l.c).roident")), conflict.VersionSQL(remoteTS, setting(setRemoteID, "int"))),
	}
	wonRecord := strings.Replace(p.record(won, won.Resolution, tuple,
		fmt.Sprintf("FROM (SELECT true AS found, u.row, u.mine, u.c, %s AS node FROM u) l WHERE NOT %s", nodeOf("(u.c).roident"), conflict.CleanSQL(recordInputs()))),
		"h AS (", "h2 AS (", 1)
	return fmt.Sprintf(`WITH %s, u AS (
	UPDATE ONLY %s t SET %s
	FROM (SELECT x.ctid AS tid, x AS row, %s AS mine, c FROM ONLY %s x
		LEFT JOIN LATERAL pg_catalog.pg_xact_commit_timestamp_origin(x.xmin) c ON true WHERE %s) o
	WHERE t.ctid = o.tid AND %s
	RETURNING o.row, o.mine, o.c
)%s, %s, %s
SELECT coalesce((SELECT conflict_type FROM h), (SELECT conflict_type FROM h2))`,
		resolversCTE(conflict.UpdateUpdate, conflict.UpdateMissing), p.table, strings.Join(sets, ", "), mine("x.xmin"), p.table, p.keyConds("x", oldKey), notSkipped,
		insert,
		p.record(missing, missing.Resolution, tuple,
			fmt.Sprintf("FROM (SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM u) AND %s) g LEFT JOIN LATERAL %s l ON true",
				notSkipped, p.lookup(oldKey))),
		wonRecord)
}

// resolvingDeleteSQL deletes the row when the resolver says so (last
// update wins: always) and records a conflict on the row it deleted, or
// on the row it left.
func (p *plan) resolvingDeleteSQL() string {
	dec := conflict.DeleteSQL(recordInputs())
	keys := p.keyConds("t", p.keyParams(false, 3))
	return fmt.Sprintf(`WITH %s, x AS (
	DELETE FROM ONLY %s t WHERE %s AND (%s OR %s) RETURNING t AS row, t.xmin AS xm
), %s
SELECT (SELECT conflict_type FROM h)`,
		resolversCTE(conflict.UpdateDelete, conflict.DeleteMissing), p.table, keys, mine("t.xmin"), conflict.DeleteSQL(p.rowInputs("t", remoteTS, stmtResolvers)).Apply,
		p.record(dec, dec.Resolution, p.tupleJSON(p.keys, 3),
			fmt.Sprintf(`FROM (SELECT 1) g LEFT JOIN LATERAL (
		SELECT true AS found, v.row, %s AS mine, c, %s AS node FROM (
			SELECT x.row, x.xm FROM x
			UNION ALL
			(SELECT t, t.xmin FROM ONLY %s t WHERE %s AND NOT EXISTS (SELECT 1 FROM x) LIMIT 1)
		) v LEFT JOIN LATERAL pg_catalog.pg_xact_commit_timestamp_origin(v.xm) c ON true
	) l ON true
	WHERE %s`, mine("v.xm"), nodeOf("c.roident"), p.table, keys, dec.Record)))
}
