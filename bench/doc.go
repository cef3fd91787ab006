// Package bench runs bdr's benchmarks on this machine: each sets up its own
// PostgreSQL servers (internal/pgcluster) and bdrd processes, measures bdr
// side by side with the reference in the same run, reports, and removes
// everything it started.
//
//   - RunApply: catch-up speed of bdrd against PostgreSQL's own logical
//     replication on the same pgbench changes.
//   - RunJoin: a join under load against pg_dump | psql.
//   - RunWAN: pgbench across emulated WAN links (in-process toxiproxy
//     proxies, one per service of each site, with a toxic of our own for
//     delay, jitter and bandwidth that also counts the bytes, and a UDP
//     relay for gossip): streaming replication with the client writing to
//     the remote primary, multi-master with the client at its near node
//     (at one site, then at all at once), and one server without
//     replication; TPS and latency from pgbench's per-transaction logs,
//     replication lag from a heartbeat table, conflicts, bytes per link.
//     Each site runs on CPUs of its own (cgroup v1 cpusets, cgroup.go),
//     the baseline on site 1's, and the sites' CPU use is measured
//     (cpuacct, cpu.go).
//   - RunSites: the same measurements against an existing group (real
//     sites), pgbench from this host to one member and the lag between
//     every pair of members.
//
// Functions are safe for concurrent use; each run owns its servers,
// processes, proxies and cgroups, and removes them also when its context
// is cancelled.
package bench
