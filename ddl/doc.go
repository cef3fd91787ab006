// Package ddl will own DDL replication: capture through an event trigger and
// pg_logical_emit_message, replay on the peers, and the global DDL lock.
// Nothing is implemented yet: schema changes must be run on every node.
package ddl
