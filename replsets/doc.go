// Package replsets maps replication sets to PostgreSQL publications.
//
// Today there is one set, "default": every table outside schema bdr, present
// and future, published through the publication bdr_default (FOR ALL TABLES,
// so a table created later joins it by itself; the decoder drops schema bdr).
// Named sets with per-table membership and their SQL functions come later.
//
// Functions hold no state and are safe for concurrent use.
package replsets
