package apply

import (
	"fmt"
	"strings"

	"github.com/bdr-dev/bdr/conflict"
)

// Fast statements apply a change only when it is no conflict (package
// conflict: the row exists and was last written by the remote node or
// before the remote change; an INSERT finds no row). Each applied row is
// counted in the setting bdr.applied; stmtCheck, sent before COMMIT,
// raises SQLSTATE BR001 when fewer rows were applied than changes sent, and
// the transaction is applied again with resolving statements.
//
// Parameters: the key values (UPDATE, DELETE) or all column values
// (INSERT), then for UPDATE the values of the present columns, then for
// UPDATE and DELETE the remote commit time. Without a key the statements
// are plain and do not count.

// countApplied counts an applied row.
var countApplied = fmt.Sprintf("pg_catalog.set_config('%s', (pg_catalog.current_setting('%s')::int + 1)::text, true)", setApplied, setApplied)

func (p *plan) insertSQL() string {
	vals := make([]string, len(p.cols))
	for i := range p.cols {
		vals[i] = placeholder(i+1, p.types[i])
	}
	if !p.resolving() {
		return fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s)", p.table, strings.Join(p.cols, ", "), strings.Join(vals, ", "))
	}
	// A key with a tombstone goes to the resolving INSERT, which compares
	// the versions.
	// So does a new row colliding with a deleted row on a unique index.
	return fmt.Sprintf("INSERT INTO %s (%s) SELECT %s WHERE %s AND %s RETURNING %s",
		p.table, strings.Join(p.cols, ", "), strings.Join(vals, ", "), p.noTombstone(p.keyParams(true, 1)),
		p.noGhost(p.keyParams(true, 1), func(c int) (int, bool) { return c + 1, true }), countApplied)
}

// updateSQL is the UPDATE of the columns present in mask.
func (p *plan) updateSQL(mask string) string {
	if p.hasDelta() {
		return p.deltaUpdateSQL(mask)
	}
	next := len(p.keys) + 1
	var sets []string
	params := map[int]int{}
	for i, c := range p.cols {
		if mask[i] == '1' {
			sets = append(sets, fmt.Sprintf("%s = %s", c, placeholder(next, p.types[i])))
			params[i] = next
			next++
		}
	}
	if p.full {
		return fmt.Sprintf("UPDATE ONLY %s t SET %s WHERE t.ctid = (SELECT x.ctid FROM ONLY %s x WHERE %s LIMIT 1)",
			p.table, strings.Join(sets, ", "), p.table, p.keyConds("x", p.keyParams(false, 1)))
	}
	// A new value colliding with a deleted row on a unique index sends
	// the change to the resolving statements.
	ghost := p.noGhost(p.keyParams(false, 1), func(c int) (int, bool) { n, ok := params[c]; return n, ok })
	return fmt.Sprintf("UPDATE ONLY %s t SET %s WHERE %s AND %s AND %s RETURNING %s",
		p.table, strings.Join(sets, ", "), p.keyConds("t", p.keyParams(false, 1)),
		p.clean("t", placeholder(next, "timestamptz"), conflict.UpdateSQL), ghost, countApplied)
}

func (p *plan) deleteSQL() string {
	if p.full {
		return fmt.Sprintf("DELETE FROM ONLY %s t WHERE t.ctid = (SELECT x.ctid FROM ONLY %s x WHERE %s LIMIT 1)",
			p.table, p.table, p.keyConds("x", p.keyParams(false, 1)))
	}
	return fmt.Sprintf("DELETE FROM ONLY %s t WHERE %s AND %s RETURNING %s",
		p.table, p.keyConds("t", p.keyParams(false, 1)),
		p.clean("t", placeholder(len(p.keys)+1, "timestamptz"), conflict.DeleteSQL), countApplied)
}

// clean is true when changing the row version alias is no conflict with a
// remote change committed at rts, under the resolver of the kind of change
// (decide is conflict.UpdateSQL or conflict.DeleteSQL).
func (p *plan) clean(alias, rts string, decide func(conflict.Inputs) conflict.DecisionSQL) string {
	if p.hasDelta() {
		return decide(p.rowInputs(alias, rts, fastResolvers(alias))).Clean
	}
	return fmt.Sprintf("(%s OR %s)", mine(alias+".xmin"),
		onVersion(alias+".xmin", rts, fastResolvers(alias), func(in conflict.Inputs) string { return decide(in).Clean }))
}
