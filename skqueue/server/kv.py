"""Key-value stores behind the RPC protocol's GET / PUT / SEEK (SKQ-SPEC §6.4).

One small interface, two implementations:

``get(key) -> bytes | None``, ``put(key, value) -> None`` and
``seek(key, n) -> (count, first_value | None)``: position on the first key >= ``key``, return its
value, then advance and read up to ``n`` more values (like ``ppd``'s RocksDB SEEK, which copies
``optarg`` values after the first one).  ``count`` is the number of values read, the first one
included, so ``0 <= count <= n + 1``; it is 0 exactly when ``first_value`` is None (no key at or
after ``key``).

``DictKV``
    In memory: a dict for point lookups plus a sorted list of keys for seeks (``bisect``).  One
    ``threading.Lock`` protects both; a seek copies its ``n`` values under the lock (that is the
    cost a scan should have).  Inserting a *new* key is O(n) (list insert); updates of existing
    keys, the common case in the mixgraph workload, are O(1).

``RocksKV``
    RocksDB through ``rocksdict`` (raw bytes mode).  RocksDB is internally thread-safe; every seek
    opens its own iterator.  Options approximate SKQ-SPEC §6.4 scaled down to a test machine:
    LRU block cache (default 64 MiB instead of 256 MiB), block-based table with a binary-search
    index, ``increase_parallelism(2)`` instead of 12 (two cores), level-style compaction
    optimisation with a 64 MiB memtable budget and a 64 MiB write buffer (instead of 1 GiB),
    **no compression**, reads without checksum verification that fill the cache (as ppd's
    SEEK).  Differences on purpose: ``create_if_missing`` defaults to True (tests and the
    benchmark harness create and ``populate`` the database), and direct I/O is off by default
    (``direct_io=True`` turns it on) because tmpfs, where tests live, refuses O_DIRECT.  The
    original's call of *both* level- and universal-style optimisation is not repeated (the second
    silently overrides the first).

GIL behaviour of rocksdict 0.3.x (read in its Rust source, ``src/rdict.rs``/``src/iter.rs``, and
measured): a single-key ``get``, ``put`` and every iterator step (``seek``, ``next``, ``value``)
run **holding the GIL**; only batched multi-get (``db.get([k1, k2, ...])``), ``flush``,
``flush_wal``, ``compact_range``, ``close``, ``destroy`` and ``repair`` release it (PyO3
``allow_threads``).  Measured on the 2-core build machine with a small cached database: single
get ~1.3 µs, two threads take 2.2x the time of one (no parallelism); the list form costs ~2.5 µs
but two threads take only 1.7x.  ``RocksKV(release_gil=True)`` uses the list form for ``get``, so
the lookup itself runs outside the GIL; PUT and SEEK always hold it.  For the benchmarks this
means RocksDB work is mostly *serialised* by the GIL: multi-threaded gains come from overlapping
Python overhead with the few GIL-free parts, not from parallel RocksDB reads.
"""

from __future__ import annotations

import bisect
import random
import threading
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["KVStore", "DictKV", "RocksKV", "populate", "mixgraph_key"]


class KVStore(Protocol):
    """The interface the RPC session uses."""

    def get(self, key: bytes) -> bytes | None:
        """Value of ``key``, or None."""

    def put(self, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key``."""

    def seek(self, key: bytes, n: int) -> tuple[int, bytes | None]:
        """Seek to the first key >= ``key``; read its value and up to ``n`` more."""


def mixgraph_key(i: int) -> bytes:
    """The 48-byte key of SKQ-SPEC §6.4: 8-byte big-endian id then 40 ASCII zeros."""
    return i.to_bytes(8, "big") + b"0" * 40


class DictKV:
    """Sorted in-memory store (dict + sorted key list), thread-safe with one lock."""

    __slots__ = ("_data", "_keys", "_lock")

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []
        self._lock = threading.Lock()

    def get(self, key: bytes) -> bytes | None:
        """Value of ``key``, or None."""
        with self._lock:
            return self._data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        """Insert or overwrite ``key``."""
        key = bytes(key)
        value = bytes(value)
        with self._lock:
            if key not in self._data:
                bisect.insort(self._keys, key)
            self._data[key] = value

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        """Bulk insert (one sort instead of one insort per key)."""
        with self._lock:
            data = self._data
            new = False
            for k, v in items:
                if k not in data:
                    new = True
                data[bytes(k)] = bytes(v)
            if new:
                self._keys = sorted(data)

    def seek(self, key: bytes, n: int) -> tuple[int, bytes | None]:
        """First value at or after ``key`` and the count of values read (<= n + 1)."""
        with self._lock:
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

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def close(self) -> None:
        """Nothing to release (interface symmetry with RocksKV)."""


class RocksKV:
    """RocksDB store over ``rocksdict`` (raw bytes keys and values); see the module docstring."""

    __slots__ = ("_db", "_get", "_read_opt", "path", "release_gil")

    def __init__(
        self,
        path: str,
        *,
        create_if_missing: bool = True,
        block_cache_bytes: int = 64 << 20,
        write_buffer_bytes: int = 64 << 20,
        parallelism: int = 2,
        direct_io: bool = False,
        release_gil: bool = False,
    ) -> None:
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
        opts.set_compression_type(DBCompressionType.none())
        if direct_io:
            opts.set_use_direct_reads(True)
            opts.set_use_direct_io_for_flush_and_compaction(True)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(block_cache_bytes))
        table.set_index_type(BlockBasedIndexType.binary_search())
        opts.set_block_based_table_factory(table)
        self.path = path
        self.release_gil = release_gil
        self._db: Any = Rdict(path, opts)
        ro: Any = ReadOptions()  # its key encoding follows the database's raw mode
        ro.set_verify_checksums(False)
        ro.fill_cache(True)  # the .pyi stub omits the bool argument the binding requires
        self._read_opt = ro
        self._get: Callable[..., Any] = self._db.get

    def get(self, key: bytes) -> bytes | None:
        """Value of ``key``, or None (list form, outside the GIL, if ``release_gil``)."""
        if self.release_gil:
            value = self._get([key])[0]
        else:
            value = self._get(key)
        return None if value is None else bytes(value)

    def put(self, key: bytes, value: bytes) -> None:
        """Insert or overwrite ``key`` (holds the GIL)."""
        self._db.put(key, value)

    def seek(self, key: bytes, n: int) -> tuple[int, bytes | None]:
        """Iterator seek to ``key``, first value, then up to ``n`` more (holds the GIL)."""
        it = self._db.iter(self._read_opt)
        it.seek(key)
        if not it.valid():
            return 0, None
        first = bytes(it.value())
        count = 1
        step = it.next
        valid = it.valid
        value = it.value
        for _ in range(max(n, 0)):
            step()
            if not valid():
                break
            value()
            count += 1
        return count, first

    def flush(self) -> None:
        """Flush memtables to SST files (releases the GIL)."""
        self._db.flush()

    def close(self) -> None:
        """Close the database (idempotent)."""
        db = self._db
        if db is not None:
            db.close()
            self._db = None


def populate(
    store: DictKV | RocksKV | KVStore,
    n_keys: int,
    key_fn: Callable[[int], bytes] = mixgraph_key,
    value_size: int = 100,
    seed: int = 0,
) -> None:
    """Preload keys ``key_fn(0..n_keys-1)`` with seeded random values of ``value_size`` bytes."""
    rng = random.Random(seed)
    if isinstance(store, DictKV):
        store.put_many([(key_fn(i), rng.randbytes(value_size)) for i in range(n_keys)])
        return
    for i in range(n_keys):
        store.put(key_fn(i), rng.randbytes(value_size))
    if isinstance(store, RocksKV):
        store.flush()
