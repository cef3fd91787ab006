// Package pgerr is the one place that maps PostgreSQL errors to what bdr
// does about them: retry, resolve as a conflict, or stop and report.
//
// Functions are pure and safe for concurrent use.
package pgerr

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Class is what the caller should do about an error.
type Class int

const (
	// Fatal errors do not go away by retrying the same work: a missing table
	// or column, a type error, a permission problem. Report them.
	Fatal Class = iota
	// Retryable errors are transient: lost connections, serialization
	// failures, deadlocks, lock timeouts, a server shutting down.
	Retryable
	// Conflict errors mean the local data disagrees with a remote change in
	// a way the row-level resolution did not settle (a unique or exclusion
	// violation, e.g. against a row inserted locally at the same moment).
	Conflict
)

func (c Class) String() string {
	switch c {
	case Retryable:
		return "retryable"
	case Conflict:
		return "conflict"
	}
	return "fatal"
}

// Classify maps err to a Class.
func Classify(err error) Class {
	if err == nil {
		return Retryable
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return classifyCode(pgErr.Code)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return Retryable
	}
	var netErr net.Error
	if errors.As(err, &netErr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return Retryable
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) || pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return Retryable
	}
	// pgconn reports a connection that broke mid-conversation with plain
	// errors; they are worth a retry.
	msg := err.Error()
	for _, s := range []string{"conn closed", "connection reset", "broken pipe", "unexpected EOF", "conn busy", "timeout"} {
		if strings.Contains(msg, s) {
			return Retryable
		}
	}
	return Fatal
}

func classifyCode(code string) Class {
	switch code {
	case "40001", // serialization_failure
		"40P01", // deadlock_detected
		"55P03", // lock_not_available
		"55006", // object_in_use (a slot or origin still held by a dying session)
		"57P01", // admin_shutdown
		"57P02", // crash_shutdown
		"57P03", // cannot_connect_now
		"57014", // query_canceled
		"53300", // too_many_connections
		"53100", // disk_full
		"53200", // out_of_memory
		"58030": // io_error
		return Retryable
	case "23505", "23P01", // unique_violation, exclusion_violation
		Unapplied:
		return Conflict
	case ResolverError:
		// The table's resolver says so: retrying changes nothing until an
		// operator sets another one; the transaction is parked at once.
		return Fatal
	}
	if strings.HasPrefix(code, "08") { // connection exceptions
		return Retryable
	}
	return Fatal
}

// Unapplied is the SQLSTATE bdr.check_applied raises when a fast apply
// statement found a conflict or a missing row.
const Unapplied = "BR001"

// ResolverError is the SQLSTATE of a conflict whose resolver is error
// (bdr.conflict_resolver_error; conflict.ErrorSQLState).
const ResolverError = "BR003"

// Code returns the SQLSTATE of err, or "" when err is not a PostgreSQL error.
func Code(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}
