package pgerr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestClassify(t *testing.T) {
	pg := func(code string) error { return fmt.Errorf("apply: %w", &pgconn.PgError{Code: code}) }
	tests := []struct {
		err  error
		want Class
	}{
		{pg("40001"), Retryable},
		{pg("40P01"), Retryable},
		{pg("55P03"), Retryable},
		{pg("57P01"), Retryable},
		{pg("08006"), Retryable},
		{pg("23505"), Conflict},
		{pg("23P01"), Conflict},
		{pg(Unapplied), Conflict},
		{pg(ResolverError), Fatal},
		{pg("42P01"), Fatal},
		{pg("42703"), Fatal},
		{pg("22P02"), Fatal},
		{fmt.Errorf("read: %w", io.ErrUnexpectedEOF), Retryable},
		{context.DeadlineExceeded, Retryable},
		{errors.New("something odd"), Fatal},
	}
	for _, tt := range tests {
		if got := Classify(tt.err); got != tt.want {
			t.Errorf("Classify(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
	if Code(pg("23505")) != "23505" || Code(errors.New("x")) != "" {
		t.Error("Code does not unwrap")
	}
}
