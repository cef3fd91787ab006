package replsets

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DefaultSet is the replication set every table belongs to.
const DefaultSet = "default"

// Publication is the PostgreSQL publication behind a replication set.
func Publication(set string) string { return "bdr_" + set }

// Execer runs a statement.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// EnsureDefault creates the default set's publication if it is missing.
func EnsureDefault(ctx context.Context, db Execer) error {
	name := Publication(DefaultSet)
	var exists bool
	if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1)`, name).Scan(&exists); err != nil {
		return fmt.Errorf("check publication %s: %w", name, err)
	}
	if exists {
		return nil
	}
	if _, err := db.Exec(ctx, `CREATE PUBLICATION `+pgx.Identifier{name}.Sanitize()+` FOR ALL TABLES`); err != nil {
		return fmt.Errorf("create publication %s: %w", name, err)
	}
	return nil
}

// Publications lists the publications a subscriber streams, for the
// pgoutput publication_names option.
func Publications() []string { return []string{Publication(DefaultSet)} }
