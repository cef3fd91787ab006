#!/usr/bin/env bash
# Three PostgreSQL nodes and their bdrd on this machine, replicating in a
# full mesh: init, two joins, pgbench on all nodes at once, convergence check.
#
#   scripts/demo.sh start   (make demo)
#   scripts/demo.sh stop    (make demo-stop): stops everything, removes the dir
set -euo pipefail

DIR=${BDR_DEMO_DIR:-/tmp/bdr-demo}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/bin
PGBIN=${PG_BINDIR:-$(pg_config --bindir)}
NAMES=(tokyo singapore sydney)
PG_PORTS=(5441 5442 5443)
ADMIN=(127.0.0.1:7801 127.0.0.1:7802 127.0.0.1:7803)
GOSSIP=(127.0.0.1:7901 127.0.0.1:7902 127.0.0.1:7903)
RAFT=(127.0.0.1:7911 127.0.0.1:7912 127.0.0.1:7913)
TOKEN_FILE=$DIR/admin.token
SECONDS_OF_LOAD=${BDR_DEMO_SECONDS:-10}

# PostgreSQL refuses to run as root: run it as the postgres user then.
as_pg() {
	if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

dsn() { echo "host=127.0.0.1 port=${PG_PORTS[$1]} user=postgres dbname=demo sslmode=disable"; }

stop() {
	[ -d "$DIR" ] || { echo "no demo running"; return 0; }
	for i in 0 1 2; do
		pidfile=$DIR/bdrd-${NAMES[$i]}.pid
		if [ -f "$pidfile" ]; then
			pid=$(cat "$pidfile")
			kill "$pid" 2>/dev/null || true
			for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
			kill -9 "$pid" 2>/dev/null || true
		fi
	done
	for i in 0 1 2; do
		[ -d "$DIR/pg-${NAMES[$i]}" ] && as_pg "$PGBIN/pg_ctl" -D "$DIR/pg-${NAMES[$i]}" -m fast -w stop >/dev/null 2>&1 || true
	done
	rm -rf "$DIR"
	echo "demo stopped; $DIR removed"
}

start() {
	[ -x "$BIN/bdrd" ] || { echo "build first: make build" >&2; exit 1; }
	if [ -d "$DIR" ]; then stop; fi
	mkdir -p "$DIR"
	[ "$(id -u)" = 0 ] && chown postgres "$DIR"
	chmod 755 "$DIR"

	for i in 0 1 2; do
		n=${NAMES[$i]}
		echo "== PostgreSQL $n on port ${PG_PORTS[$i]}"
		as_pg "$PGBIN/initdb" -D "$DIR/pg-$n" -U postgres --auth=trust -N >/dev/null
		cat >>"$DIR/pg-$n/postgresql.conf" <<EOF
port = ${PG_PORTS[$i]}
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
wal_level = logical
track_commit_timestamp = on
max_replication_slots = 10
max_wal_senders = 10
fsync = off
EOF
		as_pg "$PGBIN/pg_ctl" -D "$DIR/pg-$n" -l "$DIR/pg-$n.log" -w start >/dev/null
		"$PGBIN/psql" -X -q -h 127.0.0.1 -p "${PG_PORTS[$i]}" -U postgres -c "CREATE DATABASE demo" postgres
	done

	# One admin token for the group: bdrctl sends it, and a join passes it on.
	head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$TOKEN_FILE"
	chmod 600 "$TOKEN_FILE"
	export BDRCTL_TOKEN_FILE=$TOKEN_FILE
	for i in 0 1 2; do
		n=${NAMES[$i]}
		echo "== bdrd $n, admin API at ${ADMIN[$i]}"
		nohup "$BIN/bdrd" --node-name "$n" --dsn "$(dsn "$i")" --admin-listen "${ADMIN[$i]}" \
			--admin-token-file "$TOKEN_FILE" --gossip-listen "${GOSSIP[$i]}" --raft-listen "${RAFT[$i]}" \
			--data-dir "$DIR/bdrd-$n" >"$DIR/bdrd-$n.log" 2>&1 &
		echo $! >"$DIR/bdrd-$n.pid"
	done
	for i in 0 1 2; do
		for _ in $(seq 100); do "$BIN/bdrctl" --node "${ADMIN[$i]}" status >/dev/null 2>&1 && break; sleep 0.1; done
	done

	echo "== bdrctl init on ${NAMES[0]}; pgbench tables there"
	"$BIN/bdrctl" --node "${ADMIN[0]}" init
	"$PGBIN/pgbench" -q -i -s 5 -h 127.0.0.1 -p "${PG_PORTS[0]}" -U postgres demo 2>&1 | tail -1
	echo "== bdrctl join: ${NAMES[1]} via ${NAMES[0]}, ${NAMES[2]} via ${NAMES[1]}"
	"$BIN/bdrctl" --node "${ADMIN[1]}" join --via "${ADMIN[0]}"
	"$BIN/bdrctl" --node "${ADMIN[2]}" join --via "${ADMIN[1]}"

	echo "== pgbench on all three nodes at once for ${SECONDS_OF_LOAD}s"
	pids=()
	for i in 0 1 2; do
		"$PGBIN/pgbench" -n -c 4 -T "$SECONDS_OF_LOAD" -h 127.0.0.1 -p "${PG_PORTS[$i]}" -U postgres demo \
			>"$DIR/pgbench-${NAMES[$i]}.log" 2>&1 &
		pids+=($!)
	done
	for i in 0 1 2; do
		wait "${pids[$i]}"
		echo "${NAMES[$i]}: $(grep -E '^tps' "$DIR/pgbench-${NAMES[$i]}.log" | head -1)"
	done

	echo "== waiting for the group to be quiet"
	for _ in $(seq 120); do
		if "$BIN/bdrctl" --node "${ADMIN[0]}" checksum >/dev/null 2>&1; then break; fi
		sleep 1
	done
	echo
	"$BIN/bdrctl" --node "${ADMIN[0]}" status
	echo
	echo "== conflicts recorded (bdr.conflict_history, per node)"
	for i in 0 1 2; do
		"$PGBIN/psql" -X -q -A -t -h 127.0.0.1 -p "${PG_PORTS[$i]}" -U postgres demo \
			-c "SELECT '${NAMES[$i]}: ' || count(*) || ' conflicts' FROM bdr.conflict_history"
	done
	echo
	echo "== per-table checksums"
	"$BIN/bdrctl" --node "${ADMIN[0]}" checksum
	cat <<EOF

Connect:
  psql -h 127.0.0.1 -p ${PG_PORTS[0]} -U postgres demo    # ${NAMES[0]}
  psql -h 127.0.0.1 -p ${PG_PORTS[1]} -U postgres demo    # ${NAMES[1]}
  psql -h 127.0.0.1 -p ${PG_PORTS[2]} -U postgres demo    # ${NAMES[2]}
  BDRCTL_TOKEN_FILE=$TOKEN_FILE $BIN/bdrctl --node ${ADMIN[1]} status
  SELECT * FROM bdr.node_status;  SELECT * FROM bdr.conflict_history LIMIT 5;
Logs: $DIR/*.log
Stop: make demo-stop
EOF
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
