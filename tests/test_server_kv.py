"""KV stores: DictKV and RocksKV (C-API extension and rocksdict backends, in tmp_path) behind
one interface.  Closing, concurrency and backend choice: tests/test_server_rocksdb.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from skqueue.server.kv import DictKV, RocksKV, capi_status, mixgraph_key, populate


def need_backend(backend: str) -> None:
    """Skip unless the RocksDB backend can run here."""
    if backend == "capi" and capi_status()[0] is None:
        pytest.skip(capi_status()[1])
    if backend == "rocksdict":
        pytest.importorskip("rocksdict")


ROCKS = pytest.mark.parametrize("backend", ["capi", "rocksdict"])


@pytest.fixture(params=["dict", "capi", "rocksdict"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DictKV | RocksKV]:
    if request.param == "dict":
        yield DictKV()
        return
    need_backend(request.param)
    db = RocksKV(str(tmp_path / "db"), backend=request.param)
    assert db.backend == request.param
    try:
        yield db
    finally:
        db.close()


def _k(i: int) -> bytes:
    return b"key%04d" % i


def test_get_put_overwrite(store: DictKV | RocksKV) -> None:
    assert store.get(b"a") is None
    store.put(b"a", b"1")
    store.put(b"b", b"")
    assert store.get(b"a") == b"1"
    assert store.get(b"b") == b""
    store.put(b"a", b"22")
    assert store.get(b"a") == b"22"
    assert store.get(b"c") is None


def test_seek_semantics(store: DictKV | RocksKV) -> None:
    for i in range(0, 20, 2):  # keys 0, 2, ..., 18
        store.put(_k(i), b"v%d" % i)
    assert store.seek(_k(4), 3) == (4, b"v4")  # first value + 3 more
    assert store.seek(_k(5), 0) == (1, b"v6")  # between keys: next one
    assert store.seek(_k(14), 100) == (3, b"v14")  # 14, 16, 18: stops at the end
    assert store.seek(b"", 1) == (2, b"v0")
    assert store.seek(_k(19), 5) == (0, None)  # past the last key
    assert store.seek(_k(0), -3) == (1, b"v0")  # a negative count reads only the first


def test_scan_put_many_flush(store: DictKV | RocksKV) -> None:
    store.put_many([(_k(i), b"v%d" % i) for i in range(5, 0, -1)])
    store.put_many(iter([(_k(2), b"two")]))
    store.flush()
    assert store.scan(_k(2), 3) == [(_k(2), b"two"), (_k(3), b"v3"), (_k(4), b"v4")]
    assert store.scan(b"", 100) == [(_k(i), b"two" if i == 2 else b"v%d" % i) for i in range(1, 6)]
    assert store.scan(_k(9), 5) == []
    assert store.scan(b"", 0) == []
    assert store.seek(_k(1), 10) == (5, b"v1")


def test_binary_keys_and_values(store: DictKV | RocksKV) -> None:
    key = bytes(range(256))[:48]
    value = bytes(range(255, -1, -1))
    store.put(key, value)
    assert store.get(key) == value
    assert store.seek(key[:10], 0) == (1, value)


def test_populate_is_seeded(tmp_path: Path) -> None:
    a, b, c = DictKV(), DictKV(), DictKV()
    populate(a, 50, value_size=16, seed=7)
    populate(b, 50, value_size=16, seed=7)
    populate(c, 50, value_size=16, seed=8)
    assert len(a) == 50
    for i in range(50):
        va = a.get(mixgraph_key(i))
        assert va is not None and len(va) == 16
        assert va == b.get(mixgraph_key(i))
    assert any(a.get(mixgraph_key(i)) != c.get(mixgraph_key(i)) for i in range(50))
    # seek walks keys in id order
    assert a.seek(mixgraph_key(10), 4) == (5, a.get(mixgraph_key(10)))
    assert a.seek(mixgraph_key(48), 4) == (2, a.get(mixgraph_key(48)))


def test_mixgraph_key_format() -> None:
    k = mixgraph_key(258)
    assert len(k) == 48
    assert k[:8] == b"\x00\x00\x00\x00\x00\x00\x01\x02"
    assert k[8:] == b"0" * 40
    assert mixgraph_key(1) < mixgraph_key(256) < mixgraph_key(2**40)


def test_dictkv_concurrent_puts_keep_order() -> None:
    kv = DictKV()
    n_threads, per = 4, 300

    def worker(t: int) -> None:
        for i in range(per):
            kv.put(_k(i * n_threads + t), b"%d" % t)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = n_threads * per
    assert len(kv) == total
    # one seek over everything reads every key exactly once, in sorted order
    assert kv.seek(b"", total + 10) == (total, b"0")
    for i in range(0, total, 97):
        assert kv.get(_k(i)) == b"%d" % (i % n_threads)


def test_dictkv_put_many_then_put() -> None:
    kv = DictKV()
    kv.put_many([(_k(3), b"3"), (_k(1), b"1")])
    kv.put(_k(2), b"2")
    kv.put_many([(_k(1), b"one")])
    assert kv.seek(b"", 10) == (3, b"one")
    assert kv.seek(_k(2), 0) == (1, b"2")


@ROCKS
@pytest.mark.parametrize("release_gil", [False, True])
def test_rocks_reopen(tmp_path: Path, backend: str, release_gil: bool) -> None:
    need_backend(backend)
    path = str(tmp_path / "db")
    db = RocksKV(path, backend=backend)
    populate(db, 100, value_size=8, seed=1)
    expected = db.get(mixgraph_key(42))
    assert expected is not None and len(expected) == 8
    db.close()
    db.close()  # idempotent
    again = RocksKV(path, create_if_missing=False, release_gil=release_gil, backend=backend)
    try:
        assert again.describe()["point_ops_release_gil"] is release_gil
        assert again.get(mixgraph_key(42)) == expected
        assert again.get(b"missing") is None
        assert again.seek(mixgraph_key(95), 10) == (5, again.get(mixgraph_key(95)))
        assert again.get_property("rocksdb.estimate-num-keys") is not None
        assert again.get_property("rocksdb.no-such-property") is None
    finally:
        again.close()


@ROCKS
def test_rocks_concurrent_readers_and_writer(tmp_path: Path, backend: str) -> None:
    need_backend(backend)
    db = RocksKV(str(tmp_path / "db"), backend=backend)
    try:
        populate(db, 200, value_size=4, seed=3)
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                for i in range(400):
                    v = db.get(mixgraph_key(i % 200))
                    assert v is not None and len(v) == 4
                    count, first = db.seek(mixgraph_key(i % 200), 3)
                    assert first is not None and 1 <= count <= 4
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def writer() -> None:
            for i in range(200, 400):
                db.put(mixgraph_key(i), b"wxyz")

        threads = [threading.Thread(target=reader) for _ in range(3)]
        threads.append(threading.Thread(target=writer))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert db.seek(mixgraph_key(0), 1000) == (400, db.get(mixgraph_key(0)))
    finally:
        db.close()
