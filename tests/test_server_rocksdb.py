"""RocksKV's two backends (the C-API extension and rocksdict) behind one interface: errors,
close while other threads are inside calls, a long SEEK that lets other threads run, the
choice of backend and the fallback when the extension is absent."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from skqueue import rpcwire
from skqueue.server import kv as kvmod
from skqueue.server.kv import (
    KVClosedError,
    KVError,
    RocksKV,
    capi_status,
    make_store,
    mixgraph_key,
    populate,
)
from skqueue.server.proto_rpc import RpcSession
from skqueue.server.service import make_service

pytestmark = pytest.mark.timeout(120)

ROCKS = pytest.mark.parametrize("backend", ["capi", "rocksdict"])


def need_backend(backend: str) -> None:
    if backend == "capi" and capi_status()[0] is None:
        pytest.skip(capi_status()[1])
    if backend == "rocksdict":
        pytest.importorskip("rocksdict")


@pytest.fixture
def rocks(tmp_path: Path) -> Iterator[Callable[..., RocksKV]]:
    """``rocks(backend, **options)``: a RocksKV in tmp_path/db, closed at teardown."""
    opened: list[RocksKV] = []

    def open_store(backend: str, **kw: Any) -> RocksKV:
        need_backend(backend)
        db = RocksKV(str(tmp_path / "db"), backend=backend, **kw)
        opened.append(db)
        return db

    yield open_store
    for db in opened:
        db.close()


# ----------------------------------------------------------------------------- errors


@ROCKS
def test_missing_database_names_the_cause(tmp_path: Path, backend: str) -> None:
    need_backend(backend)
    with pytest.raises(KVError, match="create_if_missing"):
        RocksKV(str(tmp_path / "absent"), create_if_missing=False, backend=backend)


@ROCKS
def test_path_that_is_a_file(tmp_path: Path, backend: str) -> None:
    need_backend(backend)
    f = tmp_path / "file"
    f.write_bytes(b"not a database")
    with pytest.raises(KVError, match="open of"):
        RocksKV(str(f), backend=backend)


@ROCKS
def test_second_handle_on_one_database(rocks: Any, tmp_path: Path, backend: str) -> None:
    db = rocks(backend)
    with pytest.raises(KVError, match="has the database open"):
        RocksKV(str(tmp_path / "db"), backend=backend)
    db.put(b"k", b"v")  # the first handle is unharmed
    assert db.get(b"k") == b"v"


def test_database_of_a_newer_rocksdb(tmp_path: Path) -> None:
    need_backend("capi")
    need_backend("rocksdict")
    path = str(tmp_path / "db")
    newer = RocksKV(path, backend="rocksdict")
    populate(newer, 50, value_size=8)
    newer.close()
    try:
        old = RocksKV(path, backend="capi", create_if_missing=False)
    except KVError as exc:
        assert "format_version" in str(exc)
        assert "newer RocksDB" in str(exc)
        return
    old.close()
    pytest.skip("this rocksdict writes a format the C API's RocksDB reads")


@pytest.mark.parametrize("backend", ["capi", "rocksdict", "dict"])
def test_calls_after_close_are_refused(rocks: Any, backend: str) -> None:
    store = make_store("dict") if backend == "dict" else rocks(backend)
    store.put(b"a", b"1")
    assert not store.closed
    store.close()
    store.close()  # idempotent
    assert store.closed
    calls = [
        lambda: store.get(b"a"),
        lambda: store.put(b"a", b"2"),
        lambda: store.seek(b"a", 3),
        lambda: store.scan(b"a", 3),
        lambda: store.put_many([(b"b", b"2")]),
        store.flush,
    ]
    for call in calls:
        with pytest.raises(KVClosedError, match="closed"):
            call()


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="compression"):
        RocksKV("/nonexistent", compression="gzip9")
    with pytest.raises(ValueError, match="backend"):
        RocksKV("/nonexistent", backend="leveldb")
    with pytest.raises(ValueError, match="store"):
        make_store("sqlite")
    with pytest.raises(ValueError, match="directory"):
        make_store("rocksdb")


def test_capi_argument_errors(rocks: Any) -> None:
    db = rocks("capi")
    with pytest.raises(TypeError):
        db.get("text")
    with pytest.raises(TypeError):
        db.seek(b"k", "many")
    with pytest.raises(ValueError, match="pairs"):
        db.put_many([(b"k", b"v", b"extra")])
    with pytest.raises(TypeError):
        db.put_many([(b"k", 3)])
    assert db.get(b"k") is None  # a failed batch writes nothing
    db.put(bytearray(b"k"), memoryview(b"value"))  # any bytes-like object
    assert db.get(memoryview(b"k")) == b"value"


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_compression(rocks: Any, compression: str) -> None:
    db = rocks("capi", compression=compression)
    assert db.describe()["compression"] == compression
    populate(db, 300, value_size=64)
    assert db.seek(mixgraph_key(0), 1000) == (300, db.get(mixgraph_key(0)))


# ----------------------------------------------------------------------------- the RPC protocol


@ROCKS
def test_rpc_session_over_rocksdb(rocks: Any, backend: str) -> None:
    db = rocks(backend)
    populate(db, 20, value_size=5, seed=2)
    s = RpcSession(make_service("sleep"), db)
    key = mixgraph_key(7)
    wire = (
        rpcwire.encode(rpcwire.OP_GET, 0, key)
        + rpcwire.encode_put(key, b"hello")
        + rpcwire.encode(rpcwire.OP_GET, 0, key)
        + rpcwire.encode(rpcwire.OP_SEEK, 100, mixgraph_key(15))
        + rpcwire.encode(rpcwire.OP_GET, 0, b"nope")
    )
    frames = rpcwire.FrameParser().feed(s.feed(wire))
    assert [f[0] for f in frames] == [rpcwire.ST_OK] * 4 + [rpcwire.ST_NOT_FOUND]
    assert frames[2][2] == b"hello"
    assert frames[3][1] == 5  # keys 15..19
    db.close()
    ((status, _arg, body),) = rpcwire.FrameParser().feed(
        s.feed(rpcwire.encode(rpcwire.OP_GET, 0, key))
    )
    assert status == rpcwire.ST_SERVER_ERROR and b"closed" in body


# ----------------------------------------------------------------------------- concurrency


@ROCKS
def test_close_while_threads_are_inside_calls(rocks: Any, backend: str) -> None:
    """Workers do gets, puts and seeks (some long) until the store refuses them; another
    thread closes it meanwhile.  Every worker must end with KVClosedError -- no other error,
    no crash -- and every result before that must be right."""
    db = rocks(backend)
    populate(db, 3000, value_size=16, seed=5)
    n_workers = 4
    started = [threading.Event() for _ in range(n_workers)]
    outcome: list[str] = [""] * n_workers
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        i = 0
        try:
            while True:
                k = mixgraph_key((i * 7 + w) % 3000)
                if i % 4 == 3:
                    db.put(k, b"x" * 16)
                elif i % 2 == 0:  # a long seek: likely in progress when close comes
                    count, first = db.seek(k, 3000)
                    assert first is not None and count == 3000 - (i * 7 + w) % 3000
                else:
                    v = db.get(k)
                    assert v is not None and len(v) == 16
                i += 1
                if i == 50:
                    started[w].set()
        except KVClosedError:
            outcome[w] = "closed"
        except BaseException as exc:
            errors.append(exc)
        finally:
            started[w].set()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(n_workers)]
    for t in threads:
        t.start()
    for ev in started:
        assert ev.wait(60)
    closers = [threading.Thread(target=db.close) for _ in range(2)]  # two at once
    for c in closers:
        c.start()
    for t in threads + closers:
        t.join(60)
        assert not t.is_alive()
    assert errors == []
    assert outcome == ["closed"] * n_workers
    assert db.closed


def _slow_switching() -> float:
    old = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    return old


def test_other_threads_run_during_a_long_seek(rocks: Any) -> None:
    """With the interpreter's forced switching effectively off (switch interval 30 s), a
    thread can only run while another is inside a call that releases the GIL.  A counter
    thread must advance while the C backend's long SEEKs run (it would stay still for a
    store that holds the GIL while scanning, e.g. the rocksdict backend)."""
    db = rocks("capi")
    n_keys = 50_000
    populate(db, n_keys, value_size=100, seed=1)
    counter = [0]
    stop = threading.Event()
    advanced: list[int] = []

    def count() -> None:
        while not stop.is_set():
            counter[0] += 1
            time.sleep(0.0001)  # releases the GIL, so the scanner gets it back

    old = _slow_switching()
    t = threading.Thread(target=count)
    try:
        t.start()
        for _ in range(20):
            before = counter[0]
            n, first = db.seek(b"", n_keys)
            advanced.append(counter[0] - before)
            assert n == n_keys and first is not None
    finally:
        stop.set()
        sys.setswitchinterval(old)
        t.join(60)
    assert max(advanced) > 0, advanced


# ----------------------------------------------------------------------------- backend choice


def test_capi_is_preferred_and_says_why(rocks: Any) -> None:
    d = rocks("capi").describe()
    assert d["backend"] == "capi" and d["seek_releases_gil"] is True
    assert "C API" in d["reason"] and "without the GIL" in d["reason"]
    assert d["rocksdb_version"].count(".") == 2


def test_fallback_when_the_extension_is_absent(
    rocks: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_backend("rocksdict")
    monkeypatch.setattr(kvmod, "capi_status", lambda: (None, "the C extension is not built"))
    db = rocks("auto")
    assert db.backend == "rocksdict"
    assert "because the C extension is not built" in db.backend_reason
    assert "holds the GIL" in db.backend_reason
    assert db.describe()["seek_releases_gil"] is False
    db.put(b"k", b"v")
    assert db.seek(b"", 5) == (1, b"v")
    with pytest.raises(KVError, match="'capi' asked for.*not built"):
        RocksKV(str(tmp_path / "db2"), backend="capi")


def test_missing_extension_module_means_fallback() -> None:
    """The real import path: with the extension unimportable, capi_status says why."""
    saved = sys.modules.get("skqueue.server._rocksdb")
    sys.modules["skqueue.server._rocksdb"] = None  # type: ignore[assignment]
    try:
        mod, why = capi_status()
    finally:
        if saved is None:
            del sys.modules["skqueue.server._rocksdb"]
        else:
            sys.modules["skqueue.server._rocksdb"] = saved
    assert mod is None
    assert "not built" in why and "librocksdb-dev" in why


def test_backend_from_the_environment(rocks: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    need_backend("rocksdict")
    monkeypatch.setenv(kvmod.BACKEND_ENV, "rocksdict")
    db = rocks("auto")
    assert db.backend == "rocksdict" and "asked for" in db.backend_reason


def test_skq_serve_reports_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    need_backend("rocksdict")
    from skqueue.server.cli import add_arguments, build_factory

    monkeypatch.setattr(kvmod, "capi_status", lambda: (None, "the C extension is not built"))
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--kv", "rocksdb", "--kv-path", str(tmp_path / "db"), "--kv-keys", "10",
                         "--kv-release-gil"])
    factory, cleanup, info = build_factory(args)
    try:
        assert info["kv"]["backend"] == "rocksdict"
        assert info["kv"]["point_ops_release_gil"] is True
        assert info["kv"]["path"] == os.fspath(tmp_path / "db")
        err = capsys.readouterr().err
        assert "KV store rocksdb via rocksdict" in err and "not built" in err
        session = factory()
        ((status, _arg, _body),) = rpcwire.FrameParser().feed(
            session.feed(rpcwire.encode(rpcwire.OP_GET, 0, mixgraph_key(3)))
        )
        assert status == rpcwire.ST_OK
    finally:
        cleanup()
