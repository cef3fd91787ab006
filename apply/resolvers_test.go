package apply

import (
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/bdr-dev/bdr/conflict"
	"github.com/bdr-dev/bdr/internal/pgerr"
)

// TestResolverErrorParksAtOnce: the error of the error resolver is one to
// park, and not a conflict, which applyBatch would first retry in place
// (with resolving statements, then up to txnRetries times); the park
// records it in conflict_history under the type of the conflict.
func TestResolverErrorParksAtOnce(t *testing.T) {
	if pgerr.ResolverError != conflict.ErrorSQLState {
		t.Fatalf("pgerr says %s, conflict %s", pgerr.ResolverError, conflict.ErrorSQLState)
	}
	err := &txnFailed{txn: 0, err: fmt.Errorf("apply txn 7 from b: INSERT on \"public\".\"kv\": %w",
		&pgconn.PgError{Code: conflict.ErrorSQLState, Message: conflict.ErrorMessage(conflict.Decision{Type: conflict.InsertInsert, Reason: "local ..., remote ..."})})}
	if !parkable(err) {
		t.Error("not parkable")
	}
	if c := pgerr.Classify(err); c != pgerr.Fatal {
		t.Errorf("classified %v: applyBatch would retry it before parking", c)
	}
	code := conflict.ErrorSQLState
	if typ := parkedType(&code, err); typ != conflict.InsertInsert {
		t.Errorf("recorded as %s, want insert_insert", typ)
	}
}
