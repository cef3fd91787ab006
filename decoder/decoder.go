package decoder

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pglogrepl"
)

// DefaultMemLimit is the per-transaction in-memory limit used when
// Config.MemLimit is zero.
const DefaultMemLimit = 64 << 20

// Config configures a Decoder.
type Config struct {
	// SpillDir holds the spill files of large and streamed transactions.
	// Required; created (0700) if missing. Several Decoders may share it.
	SpillDir string
	// MemLimit is how many bytes of changes a non-streamed transaction may
	// hold in memory before it moves to a spill file. Zero means
	// DefaultMemLimit. Streamed transactions always spill.
	MemLimit int64
	// SkipSchemas lists schemas whose changes are dropped (e.g. "bdr").
	SkipSchemas []string
	// KeepTables lists tables, as "schema.table", whose changes are kept
	// although their schema is in SkipSchemas (bdr's replicated tables).
	KeepTables []string
	// Logger receives spill and state messages; nil discards them.
	Logger *slog.Logger
}

// Validate reports whether the configuration is usable.
func (c *Config) Validate() error {
	if c.SpillDir == "" {
		return errors.New("spill dir is required")
	}
	if c.MemLimit < 0 {
		return fmt.Errorf("mem limit %d is negative", c.MemLimit)
	}
	return nil
}

// ErrProtocol matches (errors.Is) every error caused by a message stream
// that breaks the pgoutput protocol: malformed or unsupported messages,
// unknown relations, and messages out of order. The stream cannot continue
// past such an error; restart it with a new Decoder.
var ErrProtocol = errors.New("pgoutput protocol violation")

type protocolError struct{ msg string }

func (e *protocolError) Error() string        { return e.msg }
func (e *protocolError) Is(target error) bool { return target == ErrProtocol }

func protoErrorf(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...)}
}

var errDecoderClosed = errors.New("decoder closed")

// Decoder turns pgoutput (protocol version 2) messages into transactions.
// See the package documentation for its concurrency contract.
type Decoder struct {
	memLimit int64
	skip     map[string]bool
	keep     map[string]bool // "schema.table" kept in a skipped schema
	log      *slog.Logger

	rels    map[uint32]*Relation // relation cache, by relation id
	spill   *spiller
	cur     *Txn            // non-streamed transaction between Begin and Commit
	streams map[uint32]*Txn // streamed transactions in progress, by top-level xid
	block   *Txn            // streamed transaction whose stream block is open
	closed  bool
}

// New returns a Decoder. It removes spill files that a previous process
// left in cfg.SpillDir (files of live Decoders are kept).
func New(cfg Config) (*Decoder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("new decoder: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sp, err := newSpiller(cfg.SpillDir, log)
	if err != nil {
		return nil, fmt.Errorf("new decoder: %w", err)
	}
	d := &Decoder{
		memLimit: cfg.MemLimit,
		skip:     make(map[string]bool, len(cfg.SkipSchemas)),
		keep:     make(map[string]bool, len(cfg.KeepTables)),
		log:      log,
		rels:     make(map[uint32]*Relation),
		spill:    sp,
		streams:  make(map[uint32]*Txn),
	}
	if d.memLimit == 0 {
		d.memLimit = DefaultMemLimit
	}
	for _, s := range cfg.SkipSchemas {
		d.skip[s] = true
	}
	for _, t := range cfg.KeepTables {
		d.keep[t] = true
	}
	return d, nil
}

// InTxn reports whether a non-streamed transaction is between its Begin
// and Commit. The receiver must not confirm positions while it is.
func (d *Decoder) InTxn() bool { return d.cur != nil }

// Close discards every unfinished transaction and removes its spill file.
// Transactions already returned by Decode stay valid until their own Close.
// Close is idempotent; Decode fails after it.
func (d *Decoder) Close() error {
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	if d.cur != nil {
		errs = append(errs, d.discard(d.cur))
		d.cur = nil
	}
	for xid, txn := range d.streams {
		errs = append(errs, d.discard(txn))
		delete(d.streams, xid)
	}
	d.block = nil
	errs = append(errs, d.spill.release())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close decoder: %w", err)
	}
	return nil
}

// Decode consumes one pgoutput message (the WALData of an XLogData message).
// It returns the transaction the message completed, or nil. The returned
// Txn belongs to the caller, who must Close it.
func (d *Decoder) Decode(data []byte) (*Txn, error) {
	if d.closed {
		return nil, fmt.Errorf("decode: %w", errDecoderClosed)
	}
	if len(data) == 0 {
		return nil, protoErrorf("decode: empty message")
	}
	if d.block == nil && d.cur != nil && d.cur.Filtered() && isRowChange(data[0]) {
		// A change of a transaction dropped by origin: not even parsed (on
		// PostgreSQL 15 every transaction a node applies comes back from each
		// peer this way).
		return nil, nil
	}
	name := msgName(data[0])
	msg, err := parse(data, d.block != nil)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", name, err)
	}
	switch m := msg.(type) {
	case *pglogrepl.BeginMessage:
		return nil, d.begin(m)
	case *pglogrepl.CommitMessage:
		return d.commit(m)
	case *pglogrepl.OriginMessage:
		return nil, d.origin(m)
	case *pglogrepl.RelationMessageV2:
		d.relation(m)
		return nil, nil
	case *pglogrepl.InsertMessageV2:
		return nil, d.insert(m)
	case *pglogrepl.UpdateMessageV2:
		return nil, d.update(m)
	case *pglogrepl.DeleteMessageV2:
		return nil, d.delete(m)
	case *pglogrepl.TruncateMessageV2:
		return nil, d.truncate(m)
	case *pglogrepl.StreamStartMessageV2:
		return nil, d.streamStart(m)
	case *pglogrepl.StreamStopMessageV2:
		return nil, d.streamStop()
	case *pglogrepl.StreamCommitMessageV2:
		return d.streamCommit(m)
	case *pglogrepl.StreamAbortMessageV2:
		return nil, d.streamAbort(m)
	case *pglogrepl.TypeMessageV2, *pglogrepl.LogicalDecodingMessageV2:
		return nil, nil // not used: types come with the relation, messages are not replicated
	}
	return nil, protoErrorf("decode %s: unexpected message %T", name, msg)
}

// parse runs pglogrepl.ParseV2, turning its panics on truncated input
// into errors.
func parse(data []byte, inStream bool) (msg pglogrepl.Message, err error) {
	if msgName(data[0]) == "" {
		return nil, protoErrorf("unsupported message type %q", data[0])
	}
	defer func() {
		if r := recover(); r != nil {
			msg, err = nil, protoErrorf("malformed message: %v", r)
		}
	}()
	msg, err = pglogrepl.ParseV2(data, inStream)
	if err != nil {
		return nil, &protocolError{msg: err.Error()}
	}
	return msg, nil
}

func isRowChange(t byte) bool {
	switch pglogrepl.MessageType(t) {
	case pglogrepl.MessageTypeInsert, pglogrepl.MessageTypeUpdate, pglogrepl.MessageTypeDelete, pglogrepl.MessageTypeTruncate:
		return true
	}
	return false
}

// msgName names the message types Decode accepts, "" for the others
// (two-phase messages among them: they carry changes we would lose).
func msgName(t byte) string {
	switch pglogrepl.MessageType(t) {
	case pglogrepl.MessageTypeBegin:
		return "begin"
	case pglogrepl.MessageTypeCommit:
		return "commit"
	case pglogrepl.MessageTypeOrigin:
		return "origin"
	case pglogrepl.MessageTypeRelation:
		return "relation"
	case pglogrepl.MessageTypeType:
		return "type"
	case pglogrepl.MessageTypeInsert:
		return "insert"
	case pglogrepl.MessageTypeUpdate:
		return "update"
	case pglogrepl.MessageTypeDelete:
		return "delete"
	case pglogrepl.MessageTypeTruncate:
		return "truncate"
	case pglogrepl.MessageTypeMessage:
		return "message"
	case pglogrepl.MessageTypeStreamStart:
		return "stream start"
	case pglogrepl.MessageTypeStreamStop:
		return "stream stop"
	case pglogrepl.MessageTypeStreamCommit:
		return "stream commit"
	case pglogrepl.MessageTypeStreamAbort:
		return "stream abort"
	}
	return ""
}

func (d *Decoder) begin(m *pglogrepl.BeginMessage) error {
	if d.block != nil {
		return protoErrorf("decode begin of txn %d: inside stream block of txn %d", m.Xid, d.block.Xid)
	}
	if d.cur != nil {
		return protoErrorf("decode begin of txn %d: txn %d still in progress", m.Xid, d.cur.Xid)
	}
	d.cur = newTxn(m.Xid, false)
	return nil
}

func (d *Decoder) commit(m *pglogrepl.CommitMessage) (*Txn, error) {
	if d.block != nil {
		return nil, protoErrorf("decode commit: inside stream block of txn %d", d.block.Xid)
	}
	if d.cur == nil {
		return nil, protoErrorf("decode commit: no transaction in progress")
	}
	txn := d.cur
	d.cur = nil
	txn.CommitLSN, txn.EndLSN, txn.CommitTime = m.CommitLSN, m.TransactionEndLSN, m.CommitTime
	if err := d.finish(txn); err != nil {
		return nil, fmt.Errorf("decode commit of txn %d: %w", txn.Xid, err)
	}
	return txn, nil
}

func (d *Decoder) origin(m *pglogrepl.OriginMessage) error {
	txn := d.block
	if txn == nil {
		txn = d.cur
	}
	if txn == nil {
		return protoErrorf("decode origin %q: outside a transaction", m.Name)
	}
	if txn.Origin == m.Name {
		return nil
	}
	txn.Origin = m.Name
	if m.Name == "" {
		return nil
	}
	d.log.Debug("filtering transaction from origin", "xid", txn.Xid, "origin", m.Name, "streamed", txn.Streamed)
	d.spill.forget(txn.changes)
	if err := txn.changes.dropAll(); err != nil {
		return fmt.Errorf("decode origin of txn %d: %w", txn.Xid, err)
	}
	return nil
}

func (d *Decoder) relation(m *pglogrepl.RelationMessageV2) {
	rel := &Relation{
		ID:              m.RelationID,
		Schema:          m.Namespace,
		Name:            m.RelationName,
		ReplicaIdentity: m.ReplicaIdentity,
		Columns:         make([]Column, len(m.Columns)),
	}
	for i, c := range m.Columns {
		rel.Columns[i] = Column{Name: c.Name, TypeOID: c.DataType, TypeMod: c.TypeModifier, Key: c.Flags&1 != 0}
	}
	d.rels[rel.ID] = rel
	d.log.Debug("relation", "id", rel.ID, "relation", rel.String(), "columns", len(rel.Columns))
}

func (d *Decoder) streamStart(m *pglogrepl.StreamStartMessageV2) error {
	if d.block != nil {
		return protoErrorf("decode stream start of txn %d: stream block of txn %d still open", m.Xid, d.block.Xid)
	}
	if d.cur != nil {
		return protoErrorf("decode stream start of txn %d: inside txn %d", m.Xid, d.cur.Xid)
	}
	txn := d.streams[m.Xid]
	switch {
	case m.FirstSegment != 0 && txn != nil:
		return protoErrorf("decode stream start of txn %d: first segment of a txn already streaming", m.Xid)
	case m.FirstSegment != 0:
		txn = newTxn(m.Xid, true)
		d.streams[m.Xid] = txn
	case txn == nil:
		return protoErrorf("decode stream start of txn %d: unknown txn", m.Xid)
	}
	d.block = txn
	return nil
}

func (d *Decoder) streamStop() error {
	if d.block == nil {
		return protoErrorf("decode stream stop: no stream block open")
	}
	txn := d.block
	d.block = nil
	if err := d.spill.detach(txn.changes); err != nil {
		return fmt.Errorf("decode stream stop of txn %d: %w", txn.Xid, err)
	}
	return nil
}

func (d *Decoder) streamCommit(m *pglogrepl.StreamCommitMessageV2) (*Txn, error) {
	txn, err := d.streamed("stream commit", m.Xid)
	if err != nil {
		return nil, err
	}
	delete(d.streams, m.Xid)
	txn.CommitLSN, txn.EndLSN, txn.CommitTime = m.CommitLSN, m.TransactionEndLSN, m.CommitTime
	if err := d.finish(txn); err != nil {
		return nil, fmt.Errorf("decode stream commit of txn %d: %w", txn.Xid, err)
	}
	return txn, nil
}

func (d *Decoder) streamAbort(m *pglogrepl.StreamAbortMessageV2) error {
	txn, err := d.streamed("stream abort", m.Xid)
	if err != nil {
		return err
	}
	if m.SubXid != m.Xid {
		txn.changes.abortSub(m.SubXid)
		return nil
	}
	delete(d.streams, m.Xid)
	d.log.Debug("streamed transaction aborted", "xid", m.Xid, "changes", txn.Len())
	if err := d.discard(txn); err != nil {
		return fmt.Errorf("decode stream abort of txn %d: %w", m.Xid, err)
	}
	return nil
}

// streamed finds the streamed transaction a stream commit or abort ends.
func (d *Decoder) streamed(op string, xid uint32) (*Txn, error) {
	if d.block != nil {
		return nil, protoErrorf("decode %s of txn %d: inside stream block of txn %d", op, xid, d.block.Xid)
	}
	if d.cur != nil {
		return nil, protoErrorf("decode %s of txn %d: inside txn %d", op, xid, d.cur.Xid)
	}
	txn := d.streams[xid]
	if txn == nil {
		return nil, protoErrorf("decode %s of txn %d: unknown txn", op, xid)
	}
	return txn, nil
}

// finish makes a transaction ready to hand out: its spill file, if any,
// is flushed and no longer shared with the decoder.
func (d *Decoder) finish(txn *Txn) error {
	if err := d.spill.detach(txn.changes); err != nil {
		_ = d.discard(txn)
		return err
	}
	return nil
}

// discard drops an unfinished transaction and its spill file.
func (d *Decoder) discard(txn *Txn) error {
	d.spill.forget(txn.changes)
	return txn.changes.close()
}

func newTxn(xid uint32, streamed bool) *Txn {
	return &Txn{Xid: xid, Streamed: streamed, changes: newChangeLog(xid, streamed)}
}
