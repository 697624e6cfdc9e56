"""Real clients against the memcached server: pymemcache's own integration tests, memcslap.

pymemcache's source distribution (the version installed here) is fetched with ``pip
download --no-binary :all: --no-deps`` into ``.venv/sdist`` (kept between runs; ``make
clean`` removes it) and its ``test_integration.py`` runs, unmodified, in a pytest
subprocess against ``skq``'s memcached server on a free loopback port.  Skipped when the
sdist cannot be fetched (no network) and nothing is cached; memcslap is skipped when
libmemcached-tools is not installed.
"""

from __future__ import annotations

import importlib.metadata
import math
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skqueue.server import MemcachedSession, MemcachedStore, Server, ServerConfig

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pymemcache_sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        version = importlib.metadata.version("pymemcache")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("pymemcache is not installed")
    cache = REPO / ".venv" / "sdist" if (REPO / ".venv").is_dir() else (
        tmp_path_factory.mktemp("sdist")
    )
    tree = cache / f"pymemcache-{version}"
    if not (tree / "pymemcache" / "test" / "test_integration.py").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:",
             "--no-deps", "-d", str(cache), f"pymemcache=={version}"],
            capture_output=True, text=True, timeout=240,
        )
        archive = cache / f"pymemcache-{version}.tar.gz"
        if proc.returncode != 0 or not archive.is_file():
            pytest.skip(f"cannot fetch pymemcache's sdist: {proc.stderr.strip()[-300:]}")
        with tarfile.open(archive) as tar:
            tar.extractall(cache, filter="data")
    return tree


def within_one_second() -> Callable[[], float]:
    """Unix time from the start of the current second, slowed 1,000-fold: a run of a few
    minutes never reaches the next whole second.

    Expiry works in whole seconds, as memcached's does, so an item stored with exptime 1
    can die at once if a second ends right after the store. pymemcache's ``test_touch``
    does just that (set with exptime 1, then touch and expect a hit): against any
    memcached it fails when a second boundary falls between the two requests, and with
    one core busy it once did."""
    t0 = time.time()
    base = float(math.floor(t0))
    return lambda: base + (time.time() - t0) / 1000


@pytest.fixture(scope="module", params=["best2_ws", "vanilla"])
def mc_server(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[tuple[str, int], MemcachedStore]]:
    store = MemcachedStore(threads=3, clock=within_one_second())
    config = ServerConfig(threads=3, policy=request.param)
    with Server(config, lambda: MemcachedSession(store)) as srv:
        yield srv.address, store


def test_pymemcache_integration_suite(
    pymemcache_sdist: Path, mc_server: tuple[tuple[str, int], MemcachedStore]
) -> None:
    (host, port), _ = mc_server
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         "-m", "integration", "--server", host, "--port", str(port),
         "pymemcache/test/test_integration.py"],
        cwd=pymemcache_sdist, capture_output=True, text=True, timeout=240,
    )
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail and "error" not in tail.lower(), tail


def test_memcslap_runs_clean(mc_server: tuple[tuple[str, int], MemcachedStore]) -> None:
    exe = shutil.which("memcslap")
    if exe is None:
        pytest.skip("memcslap not installed (Debian libmemcached-tools; `make deps`)")
    (host, port), store = mc_server
    for test in ("set", "get", "mget"):
        proc = subprocess.run(
            [exe, f"--servers={host}:{port}", "--concurrency=4", "--execute-number=500",
             f"--test={test}"],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "fail" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
    stats = dict(store.stats())
    assert int(stats["get_hits"]) > 0
