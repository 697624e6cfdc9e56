"""Key-value stores behind the RPC protocol's GET / PUT / SEEK (docs/semantics.md §6.4).

One interface, three implementations.  The RPC session needs only ``get``, ``put`` and
``seek`` (:class:`KVStore`); every store also has ``scan``, ``put_many``, ``flush``, ``close``
and ``describe()`` and raises :class:`~skqueue.server.kverrors.KVError` /
:class:`~skqueue.server.kverrors.KVClosedError` (re-exported here):

``get(key) -> bytes | None``, ``put(key, value) -> None`` and
``seek(key, n) -> (count, first_value | None)``: position on the first key >= ``key``, return its
value, then advance and read up to ``n`` more values (like ``ppd``'s RocksDB SEEK, which copies
``optarg`` values after the first one).  ``count`` is the number of values read, the first one
included, so ``0 <= count <= n + 1``; it is 0 exactly when ``first_value`` is None (no key at or
after ``key``).  ``scan(key, limit)`` returns up to ``limit`` ``(key, value)`` pairs from there
on; ``put_many(pairs)`` writes many pairs at once (a RocksDB write batch).

``DictKV``
    In memory: a dict for point lookups plus a sorted list of keys for seeks (``bisect``).  One
    ``threading.Lock`` protects both; a seek copies its ``n`` values under the lock (that is the
    cost a scan should have).  Inserting a *new* key is O(n) (list insert); updates of existing
    keys, the common case in the mixgraph workload, are O(1).

``RocksKV``
    RocksDB, through one of two backends, chosen when the store is opened
    (``backend="auto"`` prefers the first; ``describe()``/``backend_reason`` say which serves
    and why, and ``skq serve`` prints it):

    ``capi``  the C extension ``skqueue.server._rocksdb`` over RocksDB's C API (built by the
              normal install when Debian's ``librocksdb-dev`` is present).  A whole SEEK -- the
              seek, the N-step scan and the copying of the values -- runs as ONE call with the
              GIL released, so other workers keep running while a long scan reads; get/put keep
              the GIL (a few µs; releasing it and taking it back costs more, see
              ``docs/benchmarks.md``), ``release_gil=True`` releases it there too.  Close is
              safe while other threads are inside calls (they finish, later calls raise
              ``KVClosedError``); the handle's state is guarded by its own mutex, not the GIL.
    ``rocksdict``  the fallback, ``rocksdict`` (raw bytes mode).  Its single ``get``/``put``
              and every iterator step run **holding the GIL** (read in its Rust source and
              measured): a long SEEK stalls every worker, whichever thread runs it.  Only the
              list form of ``get`` releases it (``release_gil=True`` uses that form).  The same
              use count as the C extension's (a ``threading.Condition``) makes close safe.

    Options approximate semantics §6.4 scaled down to a test machine: LRU block cache (default
    64 MiB instead of 256 MiB), block-based table with a binary-search index,
    ``increase_parallelism(2)`` instead of 12 (two cores), level-style compaction optimisation
    with a 64 MiB memtable budget and a 64 MiB write buffer (instead of 1 GiB), **no
    compression** by default (``compression="lz4"`` etc. when the library has it: opening
    fails with a clear error otherwise), reads without checksum verification that fill the
    cache (as ppd's SEEK).  Differences on purpose: ``create_if_missing`` defaults to True
    (tests and the benchmark harness create and ``populate`` the database), and direct I/O is
    off by default (``direct_io=True`` turns it on) because tmpfs, where tests live, refuses
    O_DIRECT.  The original's call of *both* level- and universal-style optimisation is not
    repeated (the second silently overrides the first).

    Compatibility: Debian bookworm's RocksDB 7.8 cannot open a database written by rocksdict's
    newer RocksDB ("unsupported format_version"); the error says so.  The reverse works.
"""

from __future__ import annotations

import bisect
import importlib
import os
import random
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from skqueue.server.kverrors import KVClosedError, KVError

__all__ = [
    "BACKENDS",
    "DictKV",
    "KVClosedError",
    "KVError",
    "KVStore",
    "RocksKV",
    "capi_status",
    "make_store",
    "mixgraph_key",
    "populate",
]

#: ``RocksKV`` backends, in order of preference.
BACKENDS = ("capi", "rocksdict")

#: ``SKQUEUE_KV_BACKEND`` in the environment overrides ``backend="auto"`` (tests, benchmarks).
BACKEND_ENV = "SKQUEUE_KV_BACKEND"

_COMPRESSIONS = ("none", "snappy", "zlib", "bz2", "lz4", "lz4hc", "zstd")


class KVStore(Protocol):
    """The interface the RPC session uses."""

    def get(self, key: bytes) -> bytes | None:
        """Value of ``key``, or None."""

    def put(self, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key``."""

    def seek(self, key: bytes, n: int) -> tuple[int, bytes | None]:
        """Seek to the first key >= ``key``; read its value and up to ``n`` more."""


def mixgraph_key(i: int) -> bytes:
    """The 48-byte key of semantics §6.4: 8-byte big-endian id then 40 ASCII zeros."""
    return i.to_bytes(8, "big") + b"0" * 40


class DictKV:
    """Sorted in-memory store (dict + sorted key list), thread-safe with one lock."""

    __slots__ = ("_closed", "_data", "_keys", "_lock")

    backend = "dict"
    backend_reason = "in-memory dict + sorted key list (no RocksDB)"

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []
        self._lock = threading.Lock()
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise KVClosedError("the in-memory store is closed")

    def get(self, key: bytes) -> bytes | None:
        """Value of ``key``, or None."""
        with self._lock:
            self._check()
            return self._data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        """Insert or overwrite ``key``."""
        key = bytes(key)
        value = bytes(value)
        with self._lock:
            self._check()
            if key not in self._data:
                bisect.insort(self._keys, key)
            self._data[key] = value

    def put_many(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Bulk insert (one sort instead of one insort per key)."""
        pairs = [(bytes(k), bytes(v)) for k, v in items]
        with self._lock:
            self._check()
            data = self._data
            new = False
            for k, v in pairs:
                if k not in data:
                    new = True
                data[k] = v
            if new:
                self._keys = sorted(data)

    def seek(self, key: bytes, n: int) -> tuple[int, bytes | None]:
        """First value at or after ``key`` and the count of values read (<= n + 1)."""
        with self._lock:
            self._check()
            keys = self._keys
            i = bisect.bisect_left(keys, key)
            if i >= len(keys):
                return 0, None
            data = self._data
            first = data[keys[i]]
            end = min(len(keys), i + 1 + max(n, 0))
            # Read (copy) the scanned values, as a real scan would.
            scanned = [data[k] for k in keys[i + 1 : end]]
            return 1 + len(scanned), first

    def scan(self, key: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` ``(key, value)`` pairs from the first key >= ``key`` on."""
        with self._lock:
            self._check()
            i = bisect.bisect_left(self._keys, key)
            return [(k, self._data[k]) for k in self._keys[i : i + max(limit, 0)]]

    def flush(self) -> None:
        """Nothing to flush (interface symmetry with RocksKV)."""
        with self._lock:
            self._check()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._closed

    def close(self) -> None:
        """Refuse further calls (idempotent); the data is dropped with the object."""
        with self._lock:
            self._closed = True

    def describe(self) -> dict[str, Any]:
        """What serves (for logs and dumps)."""
        return {"store": "dict", "backend": self.backend, "reason": self.backend_reason}


# ----------------------------------------------------------------------------- RocksDB


def _hint(status: str) -> str:
    """What a RocksDB open failure usually means (the C extension gives the same hints)."""
    if "format_version" in status or "Unknown Footer" in status or "nsupported" in status:
        return (
            " (the database was probably written by a newer RocksDB than this one; open it "
            "with the library that wrote it, or recreate it)"
        )
    if "LOCK" in status or "lock file" in status:
        return " (another process, or another handle in this one, has the database open)"
    if "create_if_missing is false" in status:
        return " (no database there: create it, or pass create_if_missing=True)"
    return ""


def capi_status() -> tuple[Any, str]:
    """``(module, why)``: the C extension ``skqueue.server._rocksdb``, or None and the reason
    it cannot be used."""
    try:
        mod = importlib.import_module("skqueue.server._rocksdb")
    except ImportError as exc:
        return None, (
            f"the C extension skqueue.server._rocksdb is not built ({exc}); it needs RocksDB's "
            "C headers at install time (Debian: librocksdb-dev, `make deps`), then "
            "`pip install -e .`"
        )
    return mod, f"C extension over RocksDB {mod.ROCKSDB_VERSION}'s C API"


class _RdictDB:
    """rocksdict behind the C extension's interface, with the same close-safe use count."""

    __slots__ = ("_closing", "_cond", "_db", "_get", "_read_opt", "_users", "path",
                 "point_nogil", "compression")

    def __init__(self, path: str, *, create_if_missing: bool, block_cache_bytes: int,
                 write_buffer_bytes: int, parallelism: int, direct_io: bool, compression: str,
                 point_nogil: bool) -> None:
        from rocksdict import (  # optional dependency: pip install skqueue[kv]
            BlockBasedIndexType,
            BlockBasedOptions,
            Cache,
            DBCompressionType,
            Options,
            Rdict,
            ReadOptions,
        )

        opts = Options(raw_mode=True)
        opts.create_if_missing(create_if_missing)
        opts.increase_parallelism(parallelism)
        opts.optimize_level_style_compaction(write_buffer_bytes)
        opts.set_write_buffer_size(write_buffer_bytes)
        opts.set_compression_type(getattr(DBCompressionType, compression)())
        if direct_io:
            opts.set_use_direct_reads(True)
            opts.set_use_direct_io_for_flush_and_compaction(True)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(block_cache_bytes))
        table.set_index_type(BlockBasedIndexType.binary_search())
        opts.set_block_based_table_factory(table)
        try:
            self._db: Any = Rdict(path, opts)
        except Exception as exc:  # rocksdict raises a plain Exception with RocksDB's status
            raise KVError(f"RocksDB open of {path!r} failed: {exc}{_hint(str(exc))}") from exc
        ro: Any = ReadOptions()  # its key encoding follows the database's raw mode
        ro.set_verify_checksums(False)
        ro.fill_cache(True)  # the .pyi stub omits the bool argument the binding requires
        self._read_opt = ro
        self._get: Callable[..., Any] = self._db.get
        self._cond = threading.Condition(threading.Lock())
        self._users = 0
        self._closing = False
        self.path = path
        self.point_nogil = point_nogil
        self.compression = compression

    def _enter(self) -> Any:
        with self._cond:
            if self._db is None or self._closing:
                state = "being closed by another thread" if self._closing else "closed"
                raise KVClosedError(f"RocksDB database {self.path!r} is {state}")
            self._users += 1
            return self._db

    def _leave(self) -> None:
        with self._cond:
            self._users -= 1
            if self._users == 0:
                self._cond.notify_all()

    def get(self, key: bytes) -> bytes | None:
        self._enter()
        try:
            value = self._get([key])[0] if self.point_nogil else self._get(key)
        finally:
            self._leave()
        return None if value is None else bytes(value)

    def put(self, key: bytes, value: bytes) -> None:
        db = self._enter()
        try:
            db.put(key, value)
        finally:
            self._leave()

    def _iterate(self, key: bytes, n: int, collect: bool) -> tuple[int, Any]:
        db = self._enter()
        try:
            it = db.iter(self._read_opt)
            it.seek(key)
            if not it.valid():
                return 0, [] if collect else None
            out: Any = [(bytes(it.key()), bytes(it.value()))] if collect else bytes(it.value())
            count = 1
            step, valid, value = it.next, it.valid, it.value
            for _ in range(max(n, 0)):
                step()
                if not valid():
                    break
                if collect:
                    out.append((bytes(it.key()), bytes(value())))
                else:
                    value()
                count += 1
            return count, out
        finally:
            self._leave()

    def seek(self, key: bytes, n: int) -> tuple[int, bytes | None]:
        count, first = self._iterate(key, n, False)
        return count, first

    def scan(self, key: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        if limit <= 0:
            return []
        pairs: list[tuple[bytes, bytes]] = self._iterate(key, limit - 1, True)[1]
        return pairs

    def put_many(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        for k, v in items:
            wb.put(k, v)
        db = self._enter()
        try:
            db.write(wb)
        finally:
            self._leave()

    def flush(self) -> None:
        db = self._enter()
        try:
            db.flush()
        finally:
            self._leave()

    def get_property(self, name: str) -> str | None:
        db = self._enter()
        try:
            value = db.property_value(name)
        finally:
            self._leave()
        return None if value is None else str(value)

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._db is None or self._closing

    def close(self) -> None:
        with self._cond:
            while self._closing:  # another thread is closing: wait until it is done
                self._cond.wait()
            if self._db is None:
                return
            self._closing = True
            while self._users:
                self._cond.wait()
            db = self._db
        try:
            db.close()
        finally:
            with self._cond:
                self._db = None
                self._closing = False
                self._cond.notify_all()


class RocksKV:
    """RocksDB store; the C-API backend when built, else rocksdict (module docstring)."""

    __slots__ = ("_db", "backend", "backend_reason", "path", "release_gil")

    def __init__(
        self,
        path: str,
        *,
        create_if_missing: bool = True,
        block_cache_bytes: int = 64 << 20,
        write_buffer_bytes: int = 64 << 20,
        parallelism: int = 2,
        direct_io: bool = False,
        compression: str = "none",
        release_gil: bool = False,
        backend: str = "auto",
    ) -> None:
        if compression not in _COMPRESSIONS:
            raise ValueError(f"unknown compression {compression!r} ({', '.join(_COMPRESSIONS)})")
        if backend == "auto":
            backend = os.environ.get(BACKEND_ENV, "") or "auto"
        if backend not in ("auto", *BACKENDS):
            raise ValueError(f"unknown RocksDB backend {backend!r} (auto, capi, rocksdict)")
        opts: dict[str, Any] = {
            "create_if_missing": create_if_missing,
            "block_cache_bytes": block_cache_bytes,
            "write_buffer_bytes": write_buffer_bytes,
            "parallelism": parallelism,
            "direct_io": direct_io,
            "compression": compression,
            "point_nogil": release_gil,
        }
        self.path = path
        self.release_gil = release_gil
        mod, why = (None, "") if backend == "rocksdict" else capi_status()
        if mod is not None:
            self.backend = "capi"
            self.backend_reason = why + ": a whole SEEK runs as one call without the GIL"
            self._db: Any = mod.DB(path, **opts)
            return
        if backend == "capi":
            raise KVError(f"RocksDB backend 'capi' asked for, but {why}")
        self.backend = "rocksdict"
        self.backend_reason = (
            "rocksdict (asked for)" if backend == "rocksdict" else f"rocksdict, because {why}"
        ) + ": it holds the GIL in get/put and every iterator step, so a long SEEK stalls " \
            "every worker"
        self._db = _RdictDB(path, **opts)

    def get(self, key: bytes) -> bytes | None:
        """Value of ``key``, or None."""
        value: bytes | None = self._db.get(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        """Insert or overwrite ``key``."""
        self._db.put(key, value)

    def seek(self, key: bytes, n: int) -> tuple[int, bytes | None]:
        """Seek to ``key``, first value, then up to ``n`` more (capi: one call, no GIL)."""
        res: tuple[int, bytes | None] = self._db.seek(key, n)
        return res

    def scan(self, key: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` ``(key, value)`` pairs from the first key >= ``key`` on."""
        pairs: list[tuple[bytes, bytes]] = self._db.scan(key, limit)
        return pairs

    def put_many(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Write all pairs as one write batch."""
        self._db.put_many(items)

    def flush(self) -> None:
        """Flush memtables to SST files and wait (releases the GIL)."""
        self._db.flush()

    def get_property(self, name: str) -> str | None:
        """A RocksDB property (``rocksdb.estimate-num-keys``, ``rocksdb.stats`` ...)."""
        value: str | None = self._db.get_property(name)
        return value

    @property
    def closed(self) -> bool:
        """True once ``close`` has begun."""
        return bool(self._db.closed)

    def close(self) -> None:
        """Close the database (idempotent; waits for calls in progress in other threads)."""
        self._db.close()

    def describe(self) -> dict[str, Any]:
        """What serves and why (for logs, ``skq serve`` output and dumps)."""
        d: dict[str, Any] = {
            "store": "rocksdb",
            "backend": self.backend,
            "reason": self.backend_reason,
            "path": self.path,
            "compression": self._db.compression,
            "point_ops_release_gil": self.release_gil,
            "seek_releases_gil": self.backend == "capi",
        }
        if self.backend == "capi":
            d["rocksdb_version"] = capi_status()[0].ROCKSDB_VERSION
        return d


def make_store(
    kind: str,
    path: str | None = None,
    *,
    backend: str = "auto",
    keys: int = 0,
    release_gil: bool = False,
) -> DictKV | RocksKV | None:
    """The store ``skq serve --kv KIND`` serves: ``none``, ``dict`` or ``rocksdb`` (needs
    ``path``; ``release_gil``: point get/put too), preloaded with ``keys`` mixgraph keys
    (:func:`populate`)."""
    store: DictKV | RocksKV | None
    if kind == "none":
        return None
    if kind == "dict":
        store = DictKV()
    elif kind == "rocksdb":
        if not path:
            raise ValueError("a RocksDB store needs a directory (--kv-path DIR)")
        store = RocksKV(path, backend=backend, release_gil=release_gil)
    else:
        raise ValueError(f"unknown store {kind!r} (none, dict, rocksdb)")
    if keys > 0:
        populate(store, keys)
    return store


def populate(
    store: DictKV | RocksKV | KVStore,
    n_keys: int,
    key_fn: Callable[[int], bytes] = mixgraph_key,
    value_size: int = 100,
    seed: int = 0,
    batch: int = 10_000,
) -> None:
    """Preload keys ``key_fn(0..n_keys-1)`` with seeded random values of ``value_size`` bytes
    (write batches of ``batch`` keys where the store has ``put_many``; then a flush)."""
    rng = random.Random(seed)
    put_many = getattr(store, "put_many", None)
    if put_many is None:
        for i in range(n_keys):
            store.put(key_fn(i), rng.randbytes(value_size))
        return
    for lo in range(0, n_keys, batch):
        hi = min(n_keys, lo + batch)
        put_many([(key_fn(i), rng.randbytes(value_size)) for i in range(lo, hi)])
    flush = getattr(store, "flush", None)
    if flush is not None:
        flush()
