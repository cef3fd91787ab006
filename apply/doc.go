// Package apply runs the incoming streams of a node: for every peer, a
// receiver reads pgoutput from the peer's slot, the decoder turns it into
// transactions, a bounded relay hands them to an applier, and the applier
// commits each one in its own local transaction stamped with the peer's
// replication origin (DESIGN rules 1 and 2).
//
// Applying is pipelined: many remote transactions are sent to PostgreSQL in
// one pipeline, each row as an optimistic prepared statement that succeeds
// only when the local row is the one the remote node changed (same origin).
// A transaction whose rows were changed locally aborts with SQLSTATE BR001
// and is applied again on the conflict path, row by row, where package
// conflict decides the winner and the conflict is written to
// bdr.conflict_history in the same local transaction.
//
// The resolver of each table and conflict type (bdr.conflict_resolvers,
// replicated) is read at run time by those statements; see resolvers.go.
//
// Delta (counter) columns of a table (bdr.delta_columns) add the remote
// increment (new - old, from the old row that REPLICA IDENTITY FULL logs)
// instead of being overwritten; see plan_delta.go.
//
// The slot is confirmed only up to transactions whose local commit is
// flushed to disk, so a crash of either server loses nothing.
//
// A supervisor owns each stream: it restarts it from the origin's progress
// after an error, with backoff, and parks it in a visible error state when
// the same transaction keeps failing.
//
// Concurrency: a Manager is safe for concurrent use. Each stream runs two
// goroutines (receiver, applier) joined by the relay; the Manager's Run owns
// and waits for all of them.
package apply
