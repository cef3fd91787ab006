package catalog

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// execFunc returns a function that runs a statement on conn and fails the
// test on an error.
func execFunc(t *testing.T, conn *pgx.Conn) func(sql string) {
	return func(sql string) {
		t.Helper()
		if _, err := conn.Exec(context.Background(), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
}
