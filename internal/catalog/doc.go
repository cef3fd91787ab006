// Package catalog owns the bdr schema inside the replicated database: its
// versioned migrations, the node catalog (bdr.nodes), the stream status table
// behind the bdr.node_status view, and the server settings check.
//
// What must survive a crash together with the data lives here (DESIGN
// "State"). Everything is plain SQL that bdrd installs itself: no C extension.
//
// Functions take a DB (a *pgx.Conn, pool or transaction) and hold no state;
// they are safe for concurrent use as far as the DB they are given is.
package catalog
