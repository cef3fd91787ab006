# bdr: multi-master logical replication for PostgreSQL.
#
#   make demo        three nodes on this machine, replicating (make demo-stop ends it)
#   make test        lint and the whole test suite against real PostgreSQL servers
#   make test-long   the randomized convergence test for 50 rounds (make test runs 5)
#   make bench-apply apply benchmark: bdrd against PostgreSQL's own logical replication
#   make bench-join  join under load against pg_dump | pg_restore (pgbench scale 50)
#   make bench-wan   pgbench across emulated WAN links: multi-master against streaming replication

SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)

GO          ?= go
BIN         := bin
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
TEST_FLAGS  ?= -race -timeout 15m

.PHONY: all build deps test test-long lint unit demo demo-stop bench-apply bench-join bench-wan clean

all: build

# deps installs what a fresh Debian machine lacks: PostgreSQL's server
# binaries (initdb, postgres, pgbench, pg_dump, psql).
deps:
	@if ! command -v $(GO) >/dev/null; then echo "Go is missing: install Go 1.24 or newer" >&2; exit 1; fi
	@if [ -z "$$PG_BINDIR" ] && ! ( command -v pg_config >/dev/null && [ -x "$$(pg_config --bindir)/initdb" ] ); then \
		echo "installing PostgreSQL (Debian package postgresql)"; \
		SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql postgresql-contrib; \
	fi

build: deps
	$(GO) build -o $(BIN)/ ./cmd/...

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted" >&2; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# test runs every package's tests with the race detector; integration tests
# start their own PostgreSQL servers (as the postgres user when run as root).
# Every password, token and key the test harness hands out is recorded in
# $(SECRETS): the whole test output must show none of them (the harness
# checks every bdrd and PostgreSQL log the same way). Then short fuzz runs
# of the admin API, of gossip metadata and of clock payload decoding (counted in executions,
# not seconds: a time budget trips golang/go#75804 on a busy machine).
SECRETS  := $(abspath $(BIN))/test-secrets
TEST_OUT := $(BIN)/test-output.log

test: build lint
	@rm -f $(SECRETS) $(TEST_OUT)
	@set -o pipefail; BDR_TEST_SECRETS=$(SECRETS) $(GO) test $(TEST_FLAGS) -v ./... 2>&1 | tee $(TEST_OUT); rc=$$?; \
		echo "== summary (whole output in $(TEST_OUT))"; grep -E '^(ok|FAIL|--- FAIL|panic:)' $(TEST_OUT); exit $$rc
	@if [ -s $(SECRETS) ] && grep -q -F -f $(SECRETS) $(TEST_OUT); then \
		echo "the test output shows a password, token or key the tests handed out, at lines: $$(grep -n -F -f $(SECRETS) $(TEST_OUT) | cut -d: -f1 | head -5 | tr '\n' ' ')" >&2; exit 1; fi
	$(GO) test -run='^$$' -fuzz=FuzzHandler -fuzztime=100000x ./internal/adminapi/
	$(GO) test -run='^$$' -fuzz=FuzzDecodeMeta -fuzztime=100000x ./membership/
	$(GO) test -run='^$$' -fuzz=FuzzDecodeClock -fuzztime=100000x ./membership/

# test-long runs the randomized convergence test (apply's
# TestRandomConvergence) for TEST_LONG_ROUNDS rounds, seeds 1 to 50 by
# default; make test runs seeds 1 to 5. A failing round prints its seed:
# BDR_RANDOM_SEED=17 make test-long runs round 17 alone.
TEST_LONG_ROUNDS ?= 50

test-long: deps
	BDR_RANDOM_ROUNDS=$(TEST_LONG_ROUNDS) $(GO) test -race -timeout 90m -count=1 -v -run '^TestRandomConvergence$$' ./apply/

unit:
	$(GO) test -short ./conflict/ ./decoder/ ./internal/pgerr/ ./internal/state/ ./internal/proc/

demo: build
	scripts/demo.sh start

demo-stop:
	scripts/demo.sh stop

bench-apply: build
	$(BIN)/bdrctl bench apply --bdrd $(BIN)/bdrd

bench-join: build
	$(BIN)/bdrctl bench join --bdrd $(BIN)/bdrd

# bench-wan takes about 6 minutes at the defaults (4 modes of 60 s);
# BENCH_WAN_FLAGS adds flags, e.g. "--out /tmp/wan --compare-seed".
bench-wan: build
	$(BIN)/bdrctl bench wan --bdrd $(BIN)/bdrd $(BENCH_WAN_FLAGS)

clean:
	rm -rf $(BIN)
