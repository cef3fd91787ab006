package decoder

import (
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"
)

// AppliedPrefix is the prefix of the transactional logical message an
// applier writes in every remote transaction it applies: the provider's
// later transactions may depend on what that one changed (see Dependency).
const AppliedPrefix = "bdr.applied"

// Dependency says that the provider had applied every transaction of node
// Node up to LSN (the end of the one applied, on Node) before the
// transactions that follow it in the provider's stream. A subscriber that
// also streams from Node applies those after its own stream from Node
// reaches LSN: a change of a row must not overtake the insert that made it.
type Dependency struct {
	Node int32
	LSN  LSN
}

// AppliedContent is the content of an AppliedPrefix message for a
// transaction of node that ended at end.
func AppliedContent(node int32, end LSN) string {
	return strconv.FormatInt(int64(node), 10) + ":" + end.String()
}

func parseApplied(content []byte) (Dependency, bool) {
	node, lsn, ok := strings.Cut(string(content), ":")
	if !ok {
		return Dependency{}, false
	}
	id, err := strconv.ParseInt(node, 10, 32)
	if err != nil {
		return Dependency{}, false
	}
	pos, err := pglogrepl.ParseLSN(lsn)
	if err != nil {
		return Dependency{}, false
	}
	return Dependency{Node: int32(id), LSN: pos}, true
}

// message keeps the dependency an AppliedPrefix message carries, in
// filtered transactions too; other logical decoding messages are ignored.
// A message of a streamed transaction counts for the whole transaction,
// even when the subtransaction that wrote it aborts: waiting for it is
// merely unneeded.
func (d *Decoder) message(m *pglogrepl.LogicalDecodingMessageV2) error {
	if !m.Transactional || m.Prefix != AppliedPrefix {
		return nil
	}
	txn := d.block
	if txn == nil {
		txn = d.cur
	}
	if txn == nil {
		return protoErrorf("decode message %q: transactional, outside a transaction", m.Prefix)
	}
	dep, ok := parseApplied(m.Content)
	if !ok {
		d.log.Warn("ignoring a malformed applied message", "xid", txn.Xid, "content", string(m.Content))
		return nil
	}
	txn.addDependency(dep)
	return nil
}

// addDependency keeps the newest dependency per node.
func (t *Txn) addDependency(dep Dependency) {
	for i := range t.Applied {
		if t.Applied[i].Node == dep.Node {
			t.Applied[i].LSN = max(t.Applied[i].LSN, dep.LSN)
			return
		}
	}
	t.Applied = append(t.Applied, dep)
}
