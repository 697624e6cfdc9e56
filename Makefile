# Entry points: `make demo`, `make test`, and `make test-ft` (the suite on a free-threaded
# CPython 3.13 that tools/ft-python.sh builds once into a cache outside the repository).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BUILT  := $(VENV)/.built
# The C sources whose edit must rebuild the extensions in place before a test run.
CSRC   := $(wildcard skqueue/*.c skqueue/server/*.c skqueue/server/*.h) setup.py
CORE   := skqueue/__init__.py skqueue/_accel.py skqueue/constants.py skqueue/_kevent.py skqueue/_knote.py \
          skqueue/_kevq.py skqueue/_kqueue.py skqueue/_scan.py skqueue/_status.py skqueue/backend skqueue/filters skqueue/sched \
          skqueue/compat.py skqueue/selectors.py skqueue/aio_loop.py

# The free-threaded build: its own venv, with the test dependencies that install there
# (wheels preferred; the extra test-ft in pyproject.toml says which and why).
FT_VENV  ?= .venv-ft
FT_BIN   := $(FT_VENV)/bin
FT_STAMP := $(FT_VENV)/.installed
FT_BUILT := $(FT_VENV)/.built

.PHONY: demo test test-ft ft-python lint typecheck pytest deps clean

# deps first: setup.py builds the RocksDB extension only when its header is there
$(STAMP): pyproject.toml setup.py $(wildcard /usr/include/rocksdb/c.h) | deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP) $(BUILT)

# The C extensions again after an edit of their sources.
$(BUILT): $(STAMP) $(CSRC)
	$(BIN)/pip install -q --no-deps -e .
	touch $(BUILT)

# Debian packages the benchmarks and tests use: real memcached and memcslap, and RocksDB's
# C API headers for the optional skqueue._rocksdb extension (rebuilt by pip when found).
deps:
	@command -v memcached >/dev/null 2>&1 && command -v memcslap >/dev/null 2>&1 && \
	  [ -f /usr/include/rocksdb/c.h ] || \
	  ( if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq memcached libmemcached-tools \
	        librocksdb-dev >/dev/null; \
	    else echo "deps: not root; install memcached, libmemcached-tools, librocksdb-dev" >&2; fi )

# Always run (quick when cached): rebuilds the interpreter if its cache was removed, so
# the venv's python (a link to it) works again.
ft-python:
	@tools/ft-python.sh >/dev/null

$(FT_STAMP): pyproject.toml | ft-python
	rm -rf $(FT_VENV)
	py=$$(tools/ft-python.sh) && "$$py" -m venv $(FT_VENV)
	$(FT_BIN)/python -m pip install -q --upgrade pip
	$(FT_BIN)/python -m pip install -q --prefer-binary -e '.[test-ft]'
	touch $(FT_STAMP) $(FT_BUILT)

# The C extensions again after an edit (the .so for 3.13t sits next to the 3.11 one).
$(FT_BUILT): $(FT_STAMP) $(CSRC)
	$(FT_BIN)/python -m pip install -q --no-deps -e .
	touch $(FT_BUILT)

lint: $(STAMP)
	$(BIN)/ruff check skqueue tests tools

typecheck: $(STAMP)
	$(BIN)/mypy --strict $(CORE)

# The whole suite with the C helper, then the core and SKQ conformance files on the
# pure-Python path (the reference implementation). CI sets SKQUEUE_REQUIRE_C=1 so a C
# helper that failed to build fails the run instead of falling back silently.
pytest: $(BUILT) deps
	$(BIN)/python -m pytest -q tests
	SKQUEUE_PURE=1 $(BIN)/python -m pytest -q tests/test_core_*.py tests/test_skq_*.py

test: lint typecheck pytest

# Lint and types do not depend on the interpreter: `make test` covers them.
test-ft: $(FT_BUILT) deps
	$(FT_BIN)/python tools/ft-check.py
	$(FT_BIN)/python -m pytest -q tests

demo: $(BUILT) deps
	$(BIN)/skq bench demo

clean:
	rm -rf $(VENV) $(FT_VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
