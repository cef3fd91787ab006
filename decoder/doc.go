// Package decoder turns pgoutput messages (logical replication protocol
// version 2, parsed with pglogrepl.ParseV2) into committed transactions:
// Txn, a sequence of Change values with the commit position and time.
//
// It owns:
//
//   - The relation cache: every Relation message replaces the cached
//     description of its relation id with a new immutable *Relation, so a
//     Change carries the description that was current when it was decoded.
//   - The origin filter (DESIGN rule 2, for PostgreSQL 15): a transaction
//     during which an Origin message arrives was replicated into the
//     provider from another node; its changes are dropped as they arrive and
//     only its envelope (xid, positions, Origin) is returned at commit, so
//     the stream can still account for its position. Changes to relations
//     in Config.SkipSchemas are dropped the same way, but for the tables
//     of Config.KeepTables.
//   - Buffering: a transaction's changes stay in memory up to
//     Config.MemLimit, then move to a spill file in Config.SpillDir.
//     Streamed in-progress transactions (pgoutput "streaming on") always go
//     to a spill file, one per top-level xid, whatever the interleaving of
//     their stream blocks with each other and with ordinary transactions;
//     a stream abort discards the whole transaction or the changes of one
//     subtransaction. Memory use does not grow with the size of a
//     transaction.
//   - Column values as pgoutput sends them: Null, Text, Binary, and the
//     Unchanged marker of a TOASTed value that was not sent and must be
//     left alone by the applier.
//
// It only reads: no network, no SQL. Messages it does not use (Type, and
// logical decoding messages) are ignored; messages it does not know
// (e.g. two-phase commit ones) and messages out of protocol order are
// errors matching ErrProtocol.
//
// Spill files are removed by Txn.Close, or by Decoder.Close for unfinished
// transactions. Each Decoder holds a lock file in the spill directory while
// it or any of its transactions is open, so that New, which removes what a
// crashed process left behind, never touches the files of a live Decoder
// sharing the directory.
//
// # Concurrency
//
// A Decoder is used by one goroutine. A Txn returned by Decode shares no
// mutable state with the Decoder: it may be handed to another goroutine
// and read there (Len, Bytes, Each, several times, then Close) while the
// Decoder goes on with later messages. A Txn is owned by one goroutine at
// a time; Close must not run concurrently with Each. The Changes that Each
// passes are read-only, and must not be retained when the transaction was
// spilled (they are decoded into reused storage).
package decoder
