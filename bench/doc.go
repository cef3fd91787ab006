// Package bench runs bdr's benchmarks on this machine: each sets up its own
// PostgreSQL servers (internal/pgcluster) and bdrd processes, measures bdr
// side by side with the reference in the same run, reports, and removes
// everything it started.
//
// Today it has the apply benchmark (RunApply): catch-up speed of bdrd
// against PostgreSQL's own logical replication on the same pgbench changes.
//
// Functions are safe for concurrent use; each run owns its servers.
package bench
