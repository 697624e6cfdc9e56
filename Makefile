# Two entry points: `make demo` and `make test`. Both build the environment first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORE   := skqueue/__init__.py skqueue/_accel.py skqueue/constants.py skqueue/_kevent.py skqueue/_knote.py \
          skqueue/_kevq.py skqueue/_kqueue.py skqueue/_scan.py skqueue/_status.py skqueue/backend skqueue/filters skqueue/sched \
          skqueue/compat.py skqueue/selectors.py skqueue/aio_loop.py

.PHONY: demo test lint typecheck pytest deps clean

# deps first: setup.py builds the RocksDB extension only when its header is there
$(STAMP): pyproject.toml setup.py $(wildcard /usr/include/rocksdb/c.h) | deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Debian packages the benchmarks and tests use: real memcached and memcslap, and RocksDB's
# C API headers for the optional skqueue._rocksdb extension (rebuilt by pip when found).
deps:
	@command -v memcached >/dev/null 2>&1 && command -v memcslap >/dev/null 2>&1 && \
	  [ -f /usr/include/rocksdb/c.h ] || \
	  ( if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq memcached libmemcached-tools \
	        librocksdb-dev >/dev/null; \
	    else echo "deps: not root; install memcached, libmemcached-tools, librocksdb-dev" >&2; fi )

lint: $(STAMP)
	$(BIN)/ruff check skqueue tests

typecheck: $(STAMP)
	$(BIN)/mypy --strict $(CORE)

# The whole suite with the C helper, then the core and SKQ conformance files on the
# pure-Python path (the reference implementation). CI sets SKQUEUE_REQUIRE_C=1 so a C
# helper that failed to build fails the run instead of falling back silently.
pytest: $(STAMP) deps
	$(BIN)/python -m pytest -q tests
	SKQUEUE_PURE=1 $(BIN)/python -m pytest -q tests/test_core_*.py tests/test_skq_*.py

test: lint typecheck pytest

demo: $(STAMP) deps
	$(BIN)/skq bench demo

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
