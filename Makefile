# Two entry points: `make demo` and `make test`. Both build the environment first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORE   := skqueue/__init__.py skqueue/_accel.py skqueue/constants.py skqueue/_kevent.py skqueue/_knote.py \
          skqueue/_kevq.py skqueue/_kqueue.py skqueue/backend skqueue/filters skqueue/sched \
          skqueue/compat.py skqueue/selectors.py skqueue/aio_loop.py

.PHONY: demo test lint typecheck pytest deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Debian packages the benchmarks and protocol tests use (real memcached, memcslap).
deps:
	@command -v memcached >/dev/null 2>&1 && command -v memcslap >/dev/null 2>&1 || \
	  ( if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq memcached libmemcached-tools >/dev/null; \
	    else echo "deps: not root; install memcached and libmemcached-tools yourself" >&2; fi )

lint: $(STAMP)
	$(BIN)/ruff check skqueue tests

typecheck: $(STAMP)
	$(BIN)/mypy --strict $(CORE)

pytest: $(STAMP) deps
	$(BIN)/python -m pytest -q tests

test: lint typecheck pytest

demo: $(STAMP) deps
	$(BIN)/skq bench demo

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
