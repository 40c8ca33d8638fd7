# Two commands set everything up on a fresh clone: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_LIMIT ?= 10

.PHONY: demo test check bench redis-server etcd-server clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Editable install: twistd finds twisted/plugins/ through the project root.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,dev]'
	@touch $@

# The benchmarks also compare against httpx (the `bench` extra).
$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,dev,bench]'
	@touch $@

# The tests start their own redis-server on a free port; only the binary is needed.
redis-server:
	@if ! command -v redis-server >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server with apt-get"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; \
	  else \
	    echo "redis-server is missing: install it (e.g. sudo apt-get install redis-server)" >&2; \
	    exit 1; \
	  fi; \
	fi

# The etcd tests start their own etcd on free ports; only the binary is needed.
# Unlike redis-server, a missing etcd never fails make: those tests skip, saying why.
etcd-server:
	@if ! command -v etcd >/dev/null 2>&1 && [ ! -x /usr/bin/etcd ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing etcd-server with apt-get"; \
	    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server; } \
	      || echo "etcd-server could not be installed: the etcd tests will skip" >&2; \
	  else \
	    echo "etcd is missing (sudo apt-get install etcd-server): the etcd tests will skip" >&2; \
	  fi; \
	fi

test: $(VENV)/.installed redis-server etcd-server
	$(BIN)/python -m pytest

# Real peers (tests/test_peers_*.py): nginx from apt, pouchdb-server from npm in
# .peers/ (never committed; kept between runs). `make test` runs these tests
# too where the peers are installed and skips them, with the reason, where not;
# here a missing peer fails (TIDEHUNTER_REQUIRE_PEERS=1) instead of skipping.
PEERS := .peers
POUCHDB_SERVER := $(PEERS)/node_modules/.bin/pouchdb-server

.PHONY: test-peers nginx pouchdb-server prometheus

nginx:
	@if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing nginx with apt-get"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx; \
	  else \
	    echo "nginx is missing: install it (e.g. sudo apt-get install nginx)" >&2; \
	    exit 1; \
	  fi; \
	fi

$(POUCHDB_SERVER):
	@command -v npm >/dev/null 2>&1 || { echo "npm is missing: install Node.js 18+ and npm" >&2; exit 1; }
	npm install --prefix $(PEERS) --no-audit --no-fund --no-save --loglevel=error pouchdb-server@4
	@test -x $@

pouchdb-server: $(POUCHDB_SERVER)

prometheus:
	@if ! command -v prometheus >/dev/null 2>&1 && [ ! -x /usr/bin/prometheus ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing prometheus with apt-get"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus; \
	  else \
	    echo "prometheus is missing: install it (e.g. sudo apt-get install prometheus)" >&2; \
	    exit 1; \
	  fi; \
	fi

test-peers: $(VENV)/.installed nginx pouchdb-server prometheus
	TIDEHUNTER_REQUIRE_PEERS=1 $(BIN)/python -m pytest -m peers

check: $(VENV)/.installed
	$(BIN)/ruff check tidehunter_tx twisted tests benchmarks
	$(BIN)/ruff format --check tidehunter_tx twisted tests benchmarks
	$(BIN)/mypy

bench: $(VENV)/.installed-bench redis-server
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/redis_throughput.py

# Starts the emulator on a free port, runs the daemon with a limit, shows the
# records (stdout) and the counts (the daemon's log, on stderr), stops the emulator.
demo: $(VENV)/.installed
	@set -e; \
	tmp=$$(mktemp -d); \
	$(BIN)/tidehunter-firehose --port 0 > $$tmp/firehose.out 2> $$tmp/firehose.log & fh=$$!; \
	trap 'kill $$fh 2>/dev/null; rm -rf $$tmp' EXIT; \
	for i in $$(seq 100); do grep -q listening $$tmp/firehose.out && break; sleep 0.1; done; \
	url="$$(sed -n 's/^listening on //p' $$tmp/firehose.out)/firehose?rate=200&size=80"; \
	echo "== emulator: $$url"; \
	echo "== twistd -n --pidfile= tidehunter --url '$$url' --limit $(DEMO_LIMIT)"; \
	echo "== records (stdout):"; \
	rc=0; $(BIN)/twistd -n --pidfile= tidehunter --url "$$url" --limit $(DEMO_LIMIT) \
	  --control unix:$$tmp/th.sock:mode=600 2> $$tmp/daemon.log || rc=$$?; \
	echo "== counts (from the daemon's log, which went to stderr):"; \
	sed -n 's/^.*tidehunter: /   /p' $$tmp/daemon.log; \
	echo "== daemon exit code: $$rc"; \
	exit $$rc

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name dropin.cache -delete
