package catalog

import (
	"context"
	"fmt"
	"strconv"
)

// MinSenders is the least max_replication_slots / max_wal_senders bdrd
// accepts at start: one per peer plus room for a join. Each join checks again
// for the slots it needs.
const MinSenders = 4

// Problem is one server setting bdrd cannot work with, and how to fix it.
type Problem struct {
	Setting string
	Have    string
	Fix     string
}

func (p Problem) String() string {
	return fmt.Sprintf("%s is %s: %s", p.Setting, p.Have, p.Fix)
}

// ServerInfo is what CheckServer learned about the server.
type ServerInfo struct {
	VersionNum int // server_version_num, e.g. 150018
}

// CheckServer reads the settings bdrd depends on and returns every problem
// found (none means the server is usable).
func CheckServer(ctx context.Context, db DB) (ServerInfo, []Problem, error) {
	rows, err := db.Query(ctx, `SELECT name, setting FROM pg_catalog.pg_settings
		WHERE name IN ('server_version_num', 'wal_level', 'track_commit_timestamp',
		               'max_replication_slots', 'max_wal_senders')`)
	if err != nil {
		return ServerInfo{}, nil, fmt.Errorf("read server settings: %w", err)
	}
	settings := map[string]string{}
	for rows.Next() {
		var name, value string
		if err := rows.Scan(&name, &value); err != nil {
			return ServerInfo{}, nil, fmt.Errorf("read server settings: %w", err)
		}
		settings[name] = value
	}
	if err := rows.Err(); err != nil {
		return ServerInfo{}, nil, fmt.Errorf("read server settings: %w", err)
	}
	var super bool
	if err := db.QueryRow(ctx, `SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user`).Scan(&super); err != nil {
		return ServerInfo{}, nil, fmt.Errorf("read role: %w", err)
	}

	var info ServerInfo
	info.VersionNum, _ = strconv.Atoi(settings["server_version_num"])
	var problems []Problem
	if info.VersionNum < 150000 {
		problems = append(problems, Problem{"server_version_num", settings["server_version_num"],
			"bdr needs PostgreSQL 15 or newer; upgrade the server"})
	}
	if v := settings["wal_level"]; v != "logical" {
		problems = append(problems, Problem{"wal_level", v,
			"set wal_level = logical (ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL"})
	}
	if v := settings["track_commit_timestamp"]; v != "on" {
		problems = append(problems, Problem{"track_commit_timestamp", v,
			"set track_commit_timestamp = on (ALTER SYSTEM SET track_commit_timestamp = on) and restart PostgreSQL"})
	}
	for _, name := range []string{"max_replication_slots", "max_wal_senders"} {
		if n, _ := strconv.Atoi(settings[name]); n < MinSenders {
			problems = append(problems, Problem{name, settings[name], fmt.Sprintf(
				"set %s to at least %d (one per peer node plus two), then restart PostgreSQL", name, MinSenders)})
		}
	}
	if !super {
		problems = append(problems, Problem{"role", "not a superuser",
			"connect bdrd as a superuser: it creates publications, replication slots and origins"})
	}
	return info, problems, nil
}
