// Package pgcluster starts and stops real, throw-away PostgreSQL servers on
// the local machine. Tests (through internal/pgtest), benchmarks and demos use
// it to get servers configured for logical replication.
//
// It owns each server's temporary directory (data directory, Unix socket,
// default log file) and its postmaster process, which runs as a direct child
// of the calling process rather than as a daemon, so that it can be stopped
// cleanly ([Server.Stop], [Server.ImmediateStop]), crashed ([Server.Kill]) and
// started again on the same data directory and port ([Server.Restart]).
//
// When the caller runs as root, initdb and postgres run as the "postgres" OS
// user, the server's directories are owned by that user, and the ancestors of
// the server's directory get the search (x) permission for others if they
// lack it, because PostgreSQL refuses to run as root.
//
// The postmaster is started with a parent-death signal (SIGQUIT), so a server
// shuts down immediately if the process that started it dies without calling
// [Server.Remove].
//
// Concurrency: the accessors of a [Server] (Port, Host, DSN, DataDir, BinDir,
// LogPath, Running, Command) and CreateDatabase/DropDatabase are safe for
// concurrent use. Start, Stop, ImmediateStop, Kill, Restart and Remove change
// the server's state and must not be called concurrently with each other.
package pgcluster
