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
	keys := p.keyParams(true, 3)
	// A row an UPDATE inserted before this INSERT arrived (insert_update)
	// is decided by last update wins whatever the resolver of insert_insert.
	overtaken := "EXISTS (SELECT 1 FROM d WHERE NOT d.deleted)"
	wins := fmt.Sprintf("CASE WHEN %s THEN %s ELSE %s END", overtaken,
		conflict.RemoteWinsSQL(p.rowInputs("t", remoteTS, stmtResolvers)), conflict.WinsSQL(p.rowInputs("t", remoteTS, stmtResolvers), conflict.InsertInsert))
	dec := conflict.InsertSQL(recordInputs())
	dec.Type = fmt.Sprintf("CASE WHEN %s THEN '%s' ELSE '%s' END", overtaken, conflict.InsertUpdate, conflict.InsertInsert)
	resolution := fmt.Sprintf("CASE WHEN %s THEN CASE WHEN EXISTS (SELECT 1 FROM i) THEN '%s' ELSE '%s' END ELSE %s END", overtaken,
		conflict.KeepRemote, conflict.KeepLocal, conflict.ResolutionSQL(recordInputs(), conflict.InsertInsert, "EXISTS (SELECT 1 FROM i)"))
	newerDelete := fmt.Sprintf("EXISTS (SELECT 1 FROM d WHERE d.deleted AND NOT %s)", conflict.CleanSQL(tombstoneInputs("d")))
	source := fmt.Sprintf("SELECT %s WHERE NOT %s", strings.Join(vals, ", "), newerDelete)
	notSkip := ""
	if len(p.uniques) > 0 {
		// After the unique statement (plan_unique.go), which may have
		// decided that the row is not inserted.
		source += " AND " + notSkipped
		notSkip = " AND " + notSkipped
	}
	deletedRecord := p.insertDeleteRecord(p.tupleJSON(all, 3), newerDelete+notSkip, "")
	// Not inserted, and no row in the snapshot: a concurrent transaction
	// inserted it; the record would read nothing (apply it again).
	concurrent := fmt.Sprintf("(SELECT %s WHERE NOT EXISTS (SELECT 1 FROM i) AND NOT %s%s AND NOT EXISTS %s)",
		p.concurrentlyChanged(), newerDelete, notSkip, p.lookup(keys))
	return fmt.Sprintf(`WITH %s, %s, i AS (
	INSERT INTO %s AS t (%s) %s
	ON CONFLICT (%s) DO UPDATE SET %s WHERE %s
	RETURNING t.xmax = 0 AS inserted
), %s, %s
SELECT coalesce((SELECT conflict_type FROM h), (SELECT conflict_type FROM h2), %s)`,
		resolversCTE(conflict.InsertInsert), p.tombstoneCTE(keys), p.table, strings.Join(p.cols, ", "), source,
		p.keyColumnList(), strings.Join(sets, ", "), wins,
		p.record(dec, resolution, p.tupleJSON(all, 3),
			fmt.Sprintf("FROM (SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM i WHERE i.inserted) AND NOT %s%s) g JOIN LATERAL %s l ON true",
				newerDelete, notSkip, p.lookup(keys))),
		deletedRecord, concurrent)
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
	keys := p.keyParams(false, 3)
	apply := onVersion("t.xmin", remoteTS, stmtResolvers, func(in conflict.Inputs) string { return conflict.UpdateSQL(in).Apply })
	dec := conflict.UpdateSQL(recordInputs())
	notSkip := ""
	if afterUnique {
		notSkip = " AND " + notSkipped
	}
	// No row: the tombstone decides (plan_tombstone.go).
	missingRow := fmt.Sprintf("NOT EXISTS (SELECT 1 FROM u) AND NOT EXISTS (SELECT 1 FROM ONLY %s x WHERE %s)%s", p.table, p.keyConds("x", keys), notSkip)
	dIn, lIn := tombstoneInputs("d"), tombstoneInputs("l")
	dIn.Resolver, lIn.Resolver = stmtResolvers, stmtResolvers
	insert, inserted, insertOK := "", "false", "false"
	if !strings.Contains(mask, "0") {
		vals := make([]string, len(p.cols))
		for i := range p.cols {
			vals[i] = placeholder(len(p.keys)+3+i, p.types[i])
		}
		insertOK = fmt.Sprintf("CASE WHEN EXISTS (SELECT 1 FROM d WHERE d.deleted) THEN (SELECT %s OR %s FROM d WHERE d.deleted) ELSE %s <> '%s' END",
			dIn.Same, conflict.WinsSQL(dIn, conflict.UpdateDelete), stmtResolvers(conflict.UpdateMissing), conflict.ResolverError)
		insert = fmt.Sprintf(`, i AS (
	INSERT INTO %s (%s) SELECT %s WHERE %s AND %s
	ON CONFLICT (%s) DO NOTHING RETURNING 1
), m AS (
	INSERT INTO bdr.tombstones (relid, key, deleted) SELECT %s, %s, false FROM i
	ON CONFLICT (relid, key) DO UPDATE SET deleted = false, at_time = NULL, at_origin = NULL
)`, p.table, strings.Join(p.cols, ", "), strings.Join(vals, ", "), missingRow, insertOK, p.keyColumnList(), p.relid(), p.tombstoneKey(keys))
		inserted = "EXISTS (SELECT 1 FROM i)"
	}
	noRowReason := dec.Reason
	if strings.Contains(mask, "0") {
		noRowReason = "'" + reasonUpdateToast + "'"
	}
	missing := conflict.DecisionSQL{
		Type: fmt.Sprintf("CASE WHEN l.found THEN '%s' ELSE '%s' END", conflict.UpdateDelete, conflict.UpdateMissing),
		Reason: fmt.Sprintf("CASE WHEN l.found THEN 'the row was deleted here: ' || %s WHEN %s THEN '%s' ELSE %s END",
			conflict.ReasonSQL(lIn, conflict.UpdateDelete), inserted, reasonInsertMissing, noRowReason),
	}
	missingRes := fmt.Sprintf("CASE WHEN l.found THEN %s WHEN %s THEN '%s' ELSE %s END",
		conflict.ResolutionSQL(lIn, conflict.UpdateDelete, inserted), inserted, conflict.InsertMissing, dec.Resolution)
	if insert != "" {
		// Decided to insert the row, yet not inserted: a row that
		// collides with it (its key, or a unique value) was inserted
		// concurrently since the snapshot; apply the transaction again.
		missingRes = fmt.Sprintf("CASE WHEN NOT %s AND %s THEN %s ELSE %s END", inserted, insertOK, p.concurrentlyChanged(), missingRes)
	}
	missingRecord := strings.Replace(p.record(missing, missingRes, p.tupleJSON(present, len(p.keys)+3),
		fmt.Sprintf("FROM (SELECT 1 WHERE %s) g LEFT JOIN LATERAL (SELECT * FROM d WHERE d.deleted) l ON true", missingRow)),
		"h AS (", "h2 AS (", 1)
	return fmt.Sprintf(`WITH %s, %s, u AS (
	UPDATE ONLY %s t SET %s WHERE %s%s AND (%s OR %s) RETURNING 1
)%s, %s, %s
SELECT coalesce((SELECT conflict_type FROM h), (SELECT conflict_type FROM h2))`,
		resolversCTE(conflict.UpdateUpdate, conflict.UpdateDelete, conflict.UpdateMissing), p.tombstoneCTE(keys),
		p.table, strings.Join(sets, ", "), p.keyConds("t", keys), notSkip, mine("t.xmin"), apply,
		insert,
		p.record(dec, fmt.Sprintf("CASE WHEN NOT EXISTS (SELECT 1 FROM u) AND %s THEN %s ELSE %s END", dec.Apply, p.concurrentlyChanged(), dec.Resolution),
			p.tupleJSON(present, len(p.keys)+3),
			fmt.Sprintf("FROM (SELECT 1 WHERE (NOT EXISTS (SELECT 1 FROM u) OR %s)%s) g JOIN LATERAL %s l ON true WHERE NOT EXISTS (SELECT 1 FROM u) OR %s",
				appliedConflict(), notSkip, p.lookup(keys), dec.Record)),
		missingRecord)
}

// keyColumnList is the quoted key columns, for ON CONFLICT: an insert
// that meets a row under its key does nothing, while one colliding on
// another unique index fails (unique_violation), and is applied again with
// a new snapshot (the unique statement then sees the row), then parked.
func (p *plan) keyColumnList() string {
	cols := make([]string, len(p.keys))
	for i, k := range p.keys {
		cols[i] = p.cols[k]
	}
	return strings.Join(cols, ", ")
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
// is a delete of the old key and an insert of the new one, and resolves as
// they do on every node:
//
//   - over an older local row under the old key, it is applied;
//   - over a newer one (changed concurrently, later), that row stays, as it
//     would over the delete (update_update, last_update_wins_keep_local),
//     and the key change's row is inserted under the new key, as the insert;
//   - with no row under the old key (deleted or changed concurrently), its
//     row is inserted under the new key, as it exists on the nodes where
//     the change applied (update_missing, key_change_inserted).
//
// The insert needs every column: a change that does not carry them all
// (unchanged TOAST values) is skipped instead. Collisions on the new key
// are settled by the unique statement before.
func (p *plan) keyChangeSQL(mask string) string {
	sets, present := p.updateSets(mask)
	oldKey := p.keyParams(false, 3)
	// The new key's values are among the present columns' (a key change
	// carries its key).
	param := map[int]int{}
	for i, c := range present {
		param[c] = len(p.keys) + 3 + i
	}
	newKey := make([]int, len(p.keys))
	for i, k := range p.keys {
		newKey[i] = param[k]
	}
	apply := onVersion("t.xmin", remoteTS, stmtResolvers, func(in conflict.Inputs) string { return conflict.UpdateSQL(in).Apply })
	// The insert under the new key loses to a newer delete of that key
	// (its tombstone, d): the row under the old key is then deleted, as
	// the key change's delete, when that wins.
	newerDelete := fmt.Sprintf("EXISTS (SELECT 1 FROM d WHERE d.deleted AND NOT %s)", conflict.CleanSQL(tombstoneInputs("d")))
	insert, inserted := "", "false"
	if !strings.Contains(mask, "0") {
		vals := make([]string, len(p.cols))
		for i := range p.cols {
			vals[i] = placeholder(len(p.keys)+3+i, p.types[i])
		}
		insert = fmt.Sprintf(`, i AS (
	INSERT INTO %s (%s) SELECT %s
	WHERE NOT EXISTS (SELECT 1 FROM u) AND %s AND NOT %s
	ON CONFLICT (%s) DO NOTHING RETURNING 1
)`, p.table, strings.Join(p.cols, ", "), strings.Join(vals, ", "), notSkipped, newerDelete, p.keyColumnList())
		inserted = "EXISTS (SELECT 1 FROM i)"
	}
	tuple := p.tupleJSON(present, len(p.keys)+3)
	dec := conflict.UpdateSQL(recordInputs())
	// A row under the old key that the decision applies to but the UPDATE
	// did not change was changed or deleted concurrently since the
	// snapshot: apply the transaction again (as resolvingUpdateSQL does).
	dec.Resolution = fmt.Sprintf("CASE WHEN coalesce(l.found, false) AND NOT EXISTS (SELECT 1 FROM u) AND %s THEN %s WHEN NOT coalesce(l.found, false) AND %s THEN '%s' ELSE %s END",
		dec.Apply, p.concurrentlyChanged(), inserted, conflict.KeyChangeInserted, dec.Resolution)
	dec.Reason = fmt.Sprintf(`CASE WHEN NOT coalesce(l.found, false) AND %s
		THEN 'no local row with the old key; the key change inserts its row under the new key, as on the nodes where it applied'
		WHEN %s THEN %s || '; the key change''s row is inserted under its new key'
		ELSE %s END`, inserted, inserted, dec.Reason, dec.Reason)
	deletedRecord := p.insertDeleteRecord(tuple, newerDelete+" AND "+notSkipped, "the new key was deleted here later: ")
	// With no row under the old key, the key change's delete leaves its
	// tombstone there, as a DELETE does.
	return fmt.Sprintf(`WITH %s, %s, u AS (
	UPDATE ONLY %s t SET %s WHERE %s AND %s AND NOT %s AND (%s OR %s) RETURNING 1
), x AS (
	DELETE FROM ONLY %s t WHERE %s AND %s AND %s AND (%s OR %s) RETURNING 1
), %s%s, %s, %s
SELECT coalesce((SELECT conflict_type FROM h), (SELECT conflict_type FROM h2))`,
		resolversCTE(conflict.UpdateUpdate, conflict.UpdateMissing), p.tombstoneCTE(newKey),
		p.table, strings.Join(sets, ", "), p.keyConds("t", oldKey), notSkipped, newerDelete, mine("t.xmin"), apply,
		p.table, p.keyConds("t", oldKey), notSkipped, newerDelete, mine("t.xmin"), apply,
		p.leaveTombstone(oldKey, notSkipped, ""),
		insert,
		p.record(dec, dec.Resolution, tuple,
			fmt.Sprintf("FROM (SELECT 1 WHERE (NOT EXISTS (SELECT 1 FROM u) OR %s) AND %s AND NOT %s) g LEFT JOIN LATERAL %s l ON true WHERE NOT EXISTS (SELECT 1 FROM u) OR %s",
				appliedConflict(), notSkipped, newerDelete, p.lookup(oldKey), dec.Record)),
		deletedRecord)
}

// resolvingDeleteSQL deletes the row when the resolver says so (last
// update wins: always) and records a conflict on the row it deleted, or
// on the row it left.
func (p *plan) resolvingDeleteSQL() string {
	dec := conflict.DeleteSQL(recordInputs())
	dec.Type = fmt.Sprintf("CASE WHEN l.found THEN '%s' WHEN EXISTS (SELECT 1 FROM d WHERE d.deleted) THEN '%s' ELSE '%s' END",
		conflict.UpdateDelete, conflict.DeleteDelete, conflict.DeleteMissing)
	params := p.keyParams(false, 3)
	keys := p.keyConds("t", params)
	// With no row, the delete leaves its tombstone (plan_tombstone.go).
	return fmt.Sprintf(`WITH %s, %s, x AS (
	DELETE FROM ONLY %s t WHERE %s AND (%s OR %s) RETURNING t AS row, t.xmin AS xm
), %s, %s
SELECT coalesce((SELECT conflict_type FROM h), %s)`,
		resolversCTE(conflict.UpdateDelete, conflict.DeleteMissing), p.tombstoneCTE(params),
		p.table, keys, mine("t.xmin"), conflict.DeleteSQL(p.rowInputs("t", remoteTS, stmtResolvers)).Apply,
		p.leaveTombstone(params, "NOT EXISTS (SELECT 1 FROM x)", ""),
		p.record(dec, dec.Resolution, p.tupleJSON(p.keys, 3),
			fmt.Sprintf(`FROM (SELECT 1) g LEFT JOIN LATERAL (
		SELECT true AS found, v.row, %s AS mine, c, %s AS node FROM (
			SELECT x.row, x.xm FROM x
			UNION ALL
			(SELECT t, t.xmin FROM ONLY %s t WHERE %s AND NOT EXISTS (SELECT 1 FROM x) LIMIT 1)
		) v LEFT JOIN LATERAL pg_catalog.pg_xact_commit_timestamp_origin(v.xm) c ON true
	) l ON true
	WHERE %s`, mine("v.xm"), nodeOf("c.roident"), p.table, keys, dec.Record)),
		// The row of the snapshot, which the delete would have deleted,
		// was changed or deleted concurrently: apply it again.
		fmt.Sprintf("(SELECT %s FROM %s l WHERE NOT EXISTS (SELECT 1 FROM x) AND %s)",
			p.concurrentlyChanged(), p.lookup(params), dec.Apply))
}
