// Package pgtest is the shared harness for integration tests against real
// PostgreSQL servers, so that every package starts and uses servers the same
// way.
//
// A package's TestMain starts its shared servers once with [Main]; tests get
// them with [Shared] and isolate themselves with a fresh database from
// [NewDB] and names from [UniqueName] (replication slot names are
// server-wide). Tests that stop, crash or restart a server use their own
// [Private] server. Tests are skipped only when no PostgreSQL binaries can be
// found; a server that fails to start fails the test.
//
// Server logs are kept in files under os.TempDir(): the path of a server's
// log is printed when a test using it fails, and the file is kept when the
// package's tests fail and deleted otherwise.
//
// It owns two pieces of package state: the set of shared servers, written
// once by [Main] before any test runs and read-only afterwards, and the
// atomic counter behind [UniqueName]. All functions are safe for concurrent
// use by parallel tests; like testing.T.Fatal, the helpers that fail a test
// must be called from the test's goroutine.
package pgtest
