// Package checksum computes per-table checksums of a database, used to check
// that the nodes of a cluster have converged (tests, bdrctl checksum, the
// demo, benchmarks).
//
// A table's [Sum] is its row count and an order-independent hash of its rows:
// the sum over the rows of the first 64 bits of md5 of the row's text form.
// Equal multisets of rows give equal sums whatever their physical order. The
// text form of a row depends on its column order, so two nodes only compare
// equal when their tables have the same columns in the same order; session
// settings that change the text of values (TimeZone, DateStyle,
// IntervalStyle, extra_float_digits, bytea_output, lc_monetary, search_path)
// are pinned while checksumming.
//
// The package owns no state and starts no goroutines. [Tables] uses the
// connection it is given for the duration of the call, so the caller must not
// use that connection concurrently; [Diff] is a pure function.
package checksum
