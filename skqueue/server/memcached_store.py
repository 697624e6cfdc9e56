"""The memcached item store shared by every session: items, LRU, memory limit, counters.

``MemcachedStore`` holds the items of one memcached server.  Sessions
(``skqueue.server.proto_memcached``) parse the protocol and call the operations here; the
classic commands use the high-level methods (``get``, ``store``, ``delete``, ``delta``,
``touch``), the meta commands open a transaction (``with store.transaction() as tx``) and
combine the same primitives under the lock.

Sizes are memcached's (1.6.18): an item's size is ``item_total(nkey, nbytes, flags)`` = a
48-byte header, the key and a NUL, the value and its ``\\r\\n``, 4 bytes of client flags
when they are not 0, and 8 bytes of CAS.  An item larger than ``item_size_max`` (1 MiB) is
refused, so the largest value is ``1 MiB - 59 - len(key)`` (4 less with flags), exactly
where memcached stops.  The ``bytes`` stat is the sum of those sizes.

Memory bound
    ``memory_limit`` (default 64 MiB, as memcached's ``-m 64``; ``None`` for no limit) bounds
    the *footprint*: each item's size plus ``PY_ITEM_OVERHEAD`` (what the Python objects of
    an item cost beyond memcached's header), plus the bytes sessions have *reserved* for
    values still arriving.  A store evicts least recently used items until the new item
    fits (the ``evictions`` stat).  A session reserves a value's size when its command line
    arrives, before the data (memcached allocates the item at that point too), and gives
    the reservation back when the value is stored, refused or the connection closes; so
    any number of half-sent values cannot hold more than the limit between them.

Time
    The clock is injectable (``clock`` returns unix seconds); expiry works in whole seconds
    like memcached's: an item with absolute expiry ``exp`` is dead once ``int(now) >= exp``.
    exptime 0 never expires; negative means already expired; up to 30 days is relative;
    larger is an absolute unix time.

Threads
    One ``threading.Lock`` guards everything.  Lock striping was rejected: the LRU list and
    the memory accounting are global anyway (memcached itself needs an LRU lock besides its
    item-lock stripes), every critical section is a few dict operations, and parsing and
    reply formatting happen outside the lock.  No correctness relies on the GIL.
"""

from __future__ import annotations

import bisect
import os
import resource
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = [
    "CAS_MISMATCH",
    "DEFAULT_MEMORY_LIMIT",
    "EXISTS",
    "ITEM_SIZE_MAX",
    "MAX_KEY_LENGTH",
    "MODE_ADD",
    "MODE_APPEND",
    "MODE_CAS",
    "MODE_PREPEND",
    "MODE_REPLACE",
    "MODE_SET",
    "NON_NUMERIC",
    "NOT_FOUND",
    "NOT_STORED",
    "OUT_OF_MEMORY",
    "PY_ITEM_OVERHEAD",
    "REL_EXPTIME_MAX",
    "STORED",
    "TOO_LARGE",
    "Item",
    "MemcachedStore",
    "NonNumericValue",
    "StoreTx",
    "item_total",
    "parse_c_number",
    "slab_class",
    "strtol32",
    "strtoul",
]

MAX_KEY_LENGTH = 250
REL_EXPTIME_MAX = 60 * 60 * 24 * 30  # 30 days: larger exptimes are absolute unix times
DEFAULT_MEMORY_LIMIT = 64 << 20
ITEM_SIZE_MAX = 1 << 20
#: Bytes the Python objects of one item cost beyond memcached's item size (the item object,
#: the key and value objects' headers, the table entry).  Measured on CPython 3.11 x86-64
#: with tracemalloc (tests/test_server_proto_memcached.py checks the order of magnitude).
PY_ITEM_OVERHEAD = 256
_ITEM_HEADER = 48  # memcached's struct _stritem
_CAS_SIZE = 8
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1

# Results of store(), delete() and delta().
STORED, NOT_STORED, EXISTS, NOT_FOUND, TOO_LARGE, OUT_OF_MEMORY = range(6)
NON_NUMERIC = 6
CAS_MISMATCH = EXISTS

# Storage modes.
MODE_SET, MODE_ADD, MODE_REPLACE, MODE_APPEND, MODE_PREPEND, MODE_CAS = range(6)

_COUNTERS = (
    "cmd_get",
    "cmd_set",
    "cmd_flush",
    "cmd_touch",
    "get_hits",
    "get_misses",
    "get_expired",
    "delete_misses",
    "delete_hits",
    "incr_misses",
    "incr_hits",
    "decr_misses",
    "decr_hits",
    "cas_misses",
    "cas_hits",
    "cas_badval",
    "touch_hits",
    "touch_misses",
    "total_items",
    "evictions",
)


_FIXED = _ITEM_HEADER + 1 + 2 + _CAS_SIZE  # header, the key's NUL, the value's CRLF, CAS


def item_total(nkey: int, nbytes: int, flags: int) -> int:
    """memcached's size of an item with a ``nkey``-byte key and an ``nbytes``-byte value."""
    return _FIXED + nkey + nbytes + (4 if flags else 0)


def _slab_sizes(item_size_max: int = ITEM_SIZE_MAX, factor: float = 1.25) -> tuple[int, ...]:
    """Chunk sizes of memcached's default slab classes (class 1 first)."""
    chunk_max = item_size_max // 2
    sizes: list[int] = []
    size = _ITEM_HEADER + 48
    while len(sizes) < 62 and size <= chunk_max / factor:
        size = (size + 7) & ~7
        sizes.append(size)
        size = int(size * factor)
    sizes.append(chunk_max)
    return tuple(sizes)


_SLAB_SIZES = _slab_sizes()


def slab_class(total: int) -> int:
    """The slab class (1-based) memcached stores an item of ``total`` bytes in."""
    return min(bisect.bisect_left(_SLAB_SIZES, total), len(_SLAB_SIZES) - 1) + 1


_C_SPACE = frozenset(b" \t\n\v\f\r")


def parse_c_number(tok: bytes, nul_ends: bool = False) -> tuple[int, bool] | None:
    """C's ``strtol`` scan as memcached's ``safe_strto*`` use it: leading white space, an
    optional sign, digits, then only white space (or, with ``nul_ends``, a NUL).

    Returns ``(magnitude, negative)``, or None when the token is not such a number.  The
    callers apply the range rules.
    """
    n = len(tok)
    i = 0
    while i < n and tok[i] in _C_SPACE:
        i += 1
    neg = False
    if i < n and tok[i] in (0x2B, 0x2D):  # '+', '-'
        neg = tok[i] == 0x2D
        i += 1
    j = i
    while j < n and 0x30 <= tok[j] <= 0x39:
        j += 1
    if j == i:
        return None
    if j < n and tok[j] not in _C_SPACE and not (nul_ends and tok[j] == 0):
        return None
    return int(tok[i:j]), neg


def strtoul(tok: bytes, bits: int) -> int | None:
    """memcached's ``safe_strtoul`` (bits=32) / ``safe_strtoull`` (bits=64)."""
    if tok.isdigit() and len(tok) <= 9:
        return int(tok)
    scan = parse_c_number(tok)
    if scan is None or scan[0] > _U64:  # not a number, or ERANGE
        return None
    mag, neg = scan
    v = (-mag) & _U64 if neg else mag
    if v >= 1 << 63 and b"-" in tok:
        return None
    return v & ((1 << bits) - 1)


def strtol32(tok: bytes) -> int | None:
    """memcached's ``safe_strtol``: a C long, then truncated to a signed 32-bit int."""
    if tok.isdigit() and len(tok) <= 9:
        return int(tok)
    scan = parse_c_number(tok)
    if scan is None:
        return None
    v = -scan[0] if scan[1] else scan[0]
    if not -(1 << 63) <= v < (1 << 63):
        return None  # ERANGE
    return ((v + (1 << 31)) & _U32) - (1 << 31)


class NonNumericValue(ValueError):
    """incr/decr on an item whose value is not a 64-bit decimal number."""


def _numeric_value(value: bytes) -> int:
    """The number incr/decr sees in a value: memcached's ``safe_strtoull`` on the data."""
    if not value:
        raise NonNumericValue(value)
    if value.isdigit() and len(value) <= 19:
        return int(value)
    scan = parse_c_number(value + b"\r\n", nul_ends=True)
    if scan is None or scan[0] > _U64:
        raise NonNumericValue(value[:32])
    mag, neg = scan
    v = (-mag) & _U64 if neg else mag
    if v >= 1 << 63 and b"-" in value:
        raise NonNumericValue(value[:32])
    return v


class Item:
    """One stored item (read under the store's lock only)."""

    __slots__ = ("atime", "binkey", "cas", "exp", "fetched", "flags", "stale", "total",
                 "value", "won")

    def __init__(self, value: bytes, flags: int, exp: int, total: int) -> None:
        self.value = value
        self.flags = flags
        self.exp = exp  # absolute unix seconds; 0 = never
        self.total = total  # memcached's item size
        self.cas = 0
        self.atime = 0  # last access, unix seconds
        self.fetched = False  # read since it was stored (mg h, me fetch=)
        self.stale = False  # marked stale by md I / ms I (mg answers X)
        self.won = False  # a client got the recache token (mg answers Z)
        self.binkey = False  # the key arrived base64-encoded (meta b flag)


def _abs_exp(exptime: int, now: int) -> int:
    if exptime == 0:
        return 0
    if exptime < 0:
        return 1
    if exptime <= REL_EXPTIME_MAX:
        return now + exptime
    return exptime


class StoreTx:
    """The store's primitives, usable while its lock is held (``store.transaction()``)."""

    __slots__ = ("now", "store")

    def __init__(self, store: MemcachedStore, now: int) -> None:
        self.store = store
        #: the clock, in whole unix seconds, when the transaction started
        self.now = now

    def abs_exp(self, exptime: int) -> int:
        """Absolute expiry of a protocol exptime (0 never; negative: already expired)."""
        return _abs_exp(exptime, self.now)

    def live(self, key: bytes) -> Item | None:
        """The item under ``key`` if it exists and is not expired (an expired one goes)."""
        return self.store._live(key, self.now)

    def bump(self, key: bytes, item: Item) -> None:
        """A read that counts as an access: most recently used, fetched, access time."""
        self.store._items.move_to_end(key)
        item.fetched = True
        item.atime = self.now

    def link(self, key: bytes, item: Item) -> bool:
        """Insert or replace ``key`` with a new CAS, evicting to fit; False if it cannot fit."""
        return self.store._link(key, item, self.now)

    def unlink(self, key: bytes) -> None:
        """Remove ``key``."""
        self.store._unlink(key)

    def next_cas(self) -> int:
        """A fresh CAS unique (one global counter, as memcached)."""
        s = self.store
        s._cas += 1
        return s._cas

    def count(self, name: str, n: int = 1) -> None:
        """Add to a ``stats`` counter."""
        self.store._counters[name] += n


class MemcachedStore:
    """The item table shared by all sessions: thread-safe (one lock), LRU, injectable clock."""

    __slots__ = (
        "_bytes",
        "_cas",
        "_clock",
        "_counters",
        "_flush_at",
        "_items",
        "_lock",
        "_mem",
        "_reserved",
        "_started",
        "curr_connections",
        "item_size_max",
        "max_connections",
        "memory_limit",
        "threads",
        "total_connections",
        "version",
    )

    def __init__(
        self,
        memory_limit: int | None = DEFAULT_MEMORY_LIMIT,
        *,
        memory_limit_mb: int | None = None,
        item_size_max: int = ITEM_SIZE_MAX,
        clock: Callable[[], float] = time.time,
        version: str = "1.6.18-skqueue",
        threads: int = 1,
        max_connections: int = 65536,
    ) -> None:
        if memory_limit_mb is not None:
            memory_limit = memory_limit_mb << 20
        if memory_limit is not None and memory_limit <= 0:
            raise ValueError(f"memory_limit must be positive or None, got {memory_limit}")
        self.memory_limit = memory_limit
        self.item_size_max = item_size_max
        self.version = version
        self.threads = threads
        self.max_connections = max_connections
        self._clock = clock
        self._lock = threading.Lock()
        self._items: OrderedDict[bytes, Item] = OrderedDict()
        self._bytes = 0  # sum of memcached item sizes (the `bytes` stat)
        self._mem = 0  # footprint of the items (sizes + Python overhead)
        self._reserved = 0  # bytes reserved for values still arriving
        self._cas = 0
        self._flush_at: float | None = None
        self._started = clock()
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self.curr_connections = 0
        self.total_connections = 0

    # -- helpers (call with the lock held) --------------------------------------------------

    def _unlink(self, key: bytes) -> None:
        item = self._items.pop(key)
        self._bytes -= item.total
        self._mem -= item.total + PY_ITEM_OVERHEAD

    def _live(self, key: bytes, now: int) -> Item | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item.exp and item.exp <= now:
            self._unlink(key)
            return None
        return item

    def _link(self, key: bytes, item: Item, now: int) -> bool:
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old.total
            self._mem -= old.total + PY_ITEM_OVERHEAD
        need = item.total + PY_ITEM_OVERHEAD
        if self.memory_limit is not None and not self._make_room(need):
            return False
        self._cas += 1
        item.cas = self._cas
        item.atime = now
        self._items[key] = item
        self._bytes += item.total
        self._mem += need
        self._counters["total_items"] += 1
        return True

    def _make_room(self, need: int) -> bool:
        """Evict LRU items until ``need`` more bytes fit under the limit."""
        limit = self.memory_limit
        if limit is None:
            return True
        items = self._items
        counters = self._counters
        while self._mem + self._reserved + need > limit and items:
            _, victim = items.popitem(last=False)
            self._bytes -= victim.total
            self._mem -= victim.total + PY_ITEM_OVERHEAD
            counters["evictions"] += 1
        return self._mem + self._reserved + need <= limit

    def _maybe_flush(self, now: float) -> None:
        flush_at = self._flush_at
        if flush_at is not None and now >= flush_at:
            self._flush_at = None
            for k in [k for k, it in self._items.items() if it.atime <= flush_at]:
                self._unlink(k)

    def _begin(self) -> StoreTx:
        """Start a transaction (the caller holds the lock): apply a due flush, read the clock."""
        now = self._clock()
        if self._flush_at is not None:
            self._maybe_flush(now)
        return StoreTx(self, int(now))

    @contextmanager
    def transaction(self) -> Iterator[StoreTx]:
        """Hold the lock; yields the primitives (``StoreTx``) for the meta commands."""
        with self._lock:
            yield self._begin()

    # -- size and memory --------------------------------------------------------------------

    def size_ok(self, nkey: int, nbytes: int, flags: int) -> bool:
        """Would an item of these sizes fit under ``item_size_max``?"""
        return _FIXED + nkey + nbytes + (4 if flags else 0) <= self.item_size_max

    def reserve(self, nbytes: int) -> bool:
        """Reserve footprint for a value still arriving (evicting LRU items); False if it
        cannot fit even in an empty cache."""
        with self._lock:
            if not self._make_room(nbytes):
                return False
            self._reserved += nbytes
            return True

    def release(self, nbytes: int) -> None:
        """Give back a reservation."""
        with self._lock:
            self._reserved -= nbytes

    # -- operations -------------------------------------------------------------------------

    def get(
        self, keys: list[bytes], touch_exptime: int | None = None
    ) -> list[tuple[bytes, int, bytes, int]]:
        """Hits among ``keys`` as (key, flags, value, cas); get-and-touch with ``touch_exptime``."""
        out: list[tuple[bytes, int, bytes, int]] = []
        with self._lock:
            now_f = self._clock()
            if self._flush_at is not None:
                self._maybe_flush(now_f)
            now = int(now_f)
            items = self._items
            expired = 0
            new_exp = None if touch_exptime is None else _abs_exp(touch_exptime, now)
            for key in keys:
                item = items.get(key)
                if item is None:
                    continue
                exp = item.exp
                if exp and exp <= now:
                    self._unlink(key)
                    expired += 1
                    continue
                if new_exp is not None:
                    item.exp = new_exp
                items.move_to_end(key)  # an access: most recently used, fetched
                item.fetched = True
                item.atime = now
                out.append((key, item.flags, item.value, item.cas))
            c = self._counters
            hits = len(out)
            c["cmd_get"] += len(keys)
            c["get_hits"] += hits
            c["get_misses"] += len(keys) - hits
            c["get_expired"] += expired
            if touch_exptime is not None:
                c["cmd_touch"] += len(keys)
                c["touch_hits"] += hits
                c["touch_misses"] += len(keys) - hits
        return out

    def store(
        self,
        mode: int,
        key: bytes,
        flags: int,
        exptime: int,
        value: bytes,
        cas_unique: int = 0,
        *,
        set_stale: bool = False,
        binkey: bool = False,
        reserved: int = 0,
    ) -> tuple[int, int]:
        """set/add/replace/append/prepend/cas: ``(result, cas)``; cas is 0 unless STORED.

        ``cas_unique`` 0 means "no CAS check"; with ``set_stale`` (meta ``I``) a CAS older
        than the item's stores the value marked stale.  ``reserved`` bytes of footprint
        reserved for this value (``reserve``) are given back first.
        """
        nkey = len(key)
        with self._lock:
            now_f = self._clock()
            if self._flush_at is not None:
                self._maybe_flush(now_f)
            now = int(now_f)
            self._reserved -= reserved
            c = self._counters
            c["cmd_set"] += 1
            if _FIXED + nkey + len(value) + (4 if flags else 0) > self.item_size_max:
                return TOO_LARGE, 0
            cur = self._live(key, now)
            stale = won = False
            new_exp = _abs_exp(exptime, now)
            if cur is not None and (mode != MODE_SET or cas_unique):
                if cas_unique == 0:
                    cas_res = "none"
                elif cas_unique == cur.cas:
                    cas_res = "match"
                elif set_stale and cas_unique < cur.cas:
                    cas_res = "stale"
                else:
                    cas_res = "bad"
                if mode == MODE_ADD:
                    self._items.move_to_end(key)
                    return NOT_STORED, 0
                if mode == MODE_CAS:
                    if cas_res == "match":
                        c["cas_hits"] += 1
                    elif cas_res == "stale":
                        c["cas_hits"] += 1
                        new_exp, stale, won = cur.exp, True, cur.won
                    else:
                        c["cas_badval"] += 1
                        return EXISTS, 0
                elif mode == MODE_APPEND or mode == MODE_PREPEND:
                    if cas_res != "none" and cas_res != "match":
                        return EXISTS, 0
                    value = cur.value + value if mode == MODE_APPEND else value + cur.value
                    flags, new_exp = cur.flags, cur.exp
                    if not self.size_ok(nkey, len(value), flags):
                        return NOT_STORED, 0
            elif cur is not None:
                pass  # a plain set over a live item
            elif mode == MODE_CAS:
                c["cas_misses"] += 1
                return NOT_FOUND, 0
            elif mode != MODE_SET and mode != MODE_ADD:
                return NOT_STORED, 0
            item = Item(value, flags, new_exp, _FIXED + nkey + len(value) + (4 if flags else 0))
            if stale or won or binkey:
                item.stale, item.won, item.binkey = stale, won, binkey
            if not self._link(key, item, now):
                return OUT_OF_MEMORY, 0
            return STORED, item.cas

    def reject_too_large(self, mode: int, key: bytes) -> None:
        """A too-large ``set`` removes the old value, so stale data does not persist."""
        with self._lock:
            self._counters["cmd_set"] += 1
            if mode == MODE_SET and key in self._items:
                self._unlink(key)

    def delete(self, key: bytes) -> bool:
        """Delete ``key``; True if a live item was removed."""
        with self.transaction() as tx:
            hit = tx.live(key) is not None
            if hit:
                self._unlink(key)
            self._counters["delete_hits" if hit else "delete_misses"] += 1
            return hit

    def delta(self, key: bytes, delta: int, incr: bool) -> int | None:
        """incr/decr: the new value, or None if absent; NonNumericValue if not a number."""
        with self.transaction() as tx:
            res = self.delta_locked(tx, key, delta, incr, 0)
        if res[0] == NON_NUMERIC:
            raise NonNumericValue(key)
        return None if res[0] == NOT_FOUND else res[1]

    def delta_locked(
        self, tx: StoreTx, key: bytes, delta: int, incr: bool, cas: int
    ) -> tuple[int, int, Item | None]:
        """incr/decr inside a transaction: ``(STORED|NOT_FOUND|NON_NUMERIC|EXISTS, value,
        item)``.  A result no longer than the old value is written in place, padded with
        spaces to the old length, as memcached does; a longer one makes a new item."""
        name = "incr" if incr else "decr"
        item = tx.live(key)
        if item is None:
            self._counters[name + "_misses"] += 1
            return NOT_FOUND, 0, None
        if not item.value:
            return NON_NUMERIC, 0, None
        if cas and item.cas != cas:
            return EXISTS, 0, None
        try:
            value = _numeric_value(item.value)
        except NonNumericValue:
            return NON_NUMERIC, 0, None
        value = (value + delta) & _U64 if incr else max(value - delta, 0)
        digits = b"%d" % value
        old = len(item.value)
        self._counters[name + "_hits"] += 1
        if len(digits) <= old:
            item.value = digits + b" " * (old - len(digits))
            item.cas = tx.next_cas()
            self._items.move_to_end(key)
            return STORED, value, item
        new = Item(digits, item.flags, item.exp, item_total(len(key), len(digits), item.flags))
        new.binkey = item.binkey
        if not tx.link(key, new):
            return OUT_OF_MEMORY, 0, None
        self._counters["total_items"] -= 1  # an update, not a new item
        return STORED, value, new

    def touch(self, key: bytes, exptime: int) -> bool:
        """Set a new exptime on ``key``; True if it exists."""
        with self.transaction() as tx:
            item = tx.live(key)
            c = self._counters
            c["cmd_touch"] += 1
            if item is None:
                c["touch_misses"] += 1
                return False
            item.exp = tx.abs_exp(exptime)
            tx.bump(key, item)
            c["touch_hits"] += 1
            return True

    def flush_all(self, delay: int = 0) -> None:
        """Invalidate all items now (delay <= 0) or when ``delay`` (exptime rules) expires."""
        with self._lock:
            now = self._clock()
            self._counters["cmd_flush"] += 1
            if delay <= 0:
                self._flush_at = None
                self._items.clear()
                self._bytes = self._mem = 0
                self._cas += 1  # memcached marks the flush point with a CAS unique
            else:
                self._flush_at = float(StoreTx(self, int(now)).abs_exp(delay))
                self._maybe_flush(now)

    def cachedump(self, clsid: int, limit: int) -> list[tuple[bytes, int, int]]:
        """``stats cachedump``: (key, value length, absolute expiry) of the items of slab
        class ``clsid``, most recently used first, at most ``limit`` (0: all).  Items with
        base64 (binary) keys are left out, as memcached does."""
        out: list[tuple[bytes, int, int]] = []
        with self.transaction() as tx:
            for key in reversed(list(self._items)):
                item = self._items[key]
                if item.exp and item.exp <= tx.now or item.binkey:
                    continue
                if slab_class(item.total) == clsid:
                    out.append((key, len(item.value), item.exp))
                    if limit and len(out) >= limit:
                        break
        return out

    def set_memory_limit(self, limit: int | None) -> None:
        """Change the memory limit (``cache_memlimit``), evicting at once to fit."""
        with self._lock:
            self.memory_limit = limit
            self._make_room(0)

    def connection_opened(self) -> None:
        """Account a new connection (called by ``MemcachedSession``)."""
        with self._lock:
            self.curr_connections += 1
            self.total_connections += 1

    def connection_closed(self) -> None:
        """Account a closed connection."""
        with self._lock:
            self.curr_connections -= 1

    def reset_stats(self) -> None:
        """``stats reset``: zero the counters."""
        with self._lock:
            for k in self._counters:
                self._counters[k] = 0
            self.total_connections = self.curr_connections

    def stats(self) -> list[tuple[str, str]]:
        """The general ``stats`` as (name, value) strings, memcached's names."""
        ru = resource.getrusage(resource.RUSAGE_SELF)
        with self._lock:
            now = self._clock()
            self._maybe_flush(now)
            c = self._counters
            out = [
                ("pid", str(os.getpid())),
                ("uptime", str(max(0, int(now - self._started)))),
                ("time", str(int(now))),
                ("version", self.version),
                ("pointer_size", "64"),
                ("rusage_user", f"{ru.ru_utime:.6f}"),
                ("rusage_system", f"{ru.ru_stime:.6f}"),
                ("max_connections", str(self.max_connections)),
                ("curr_connections", str(self.curr_connections)),
                ("total_connections", str(self.total_connections)),
            ]
            out += [(k, str(c[k])) for k in _COUNTERS if k not in ("total_items", "evictions")]
            out += [
                ("threads", str(self.threads)),
                ("limit_maxbytes", str(self.memory_limit or 0)),
                ("bytes", str(self._bytes)),
                ("curr_items", str(len(self._items))),
                ("total_items", str(c["total_items"])),
                ("evictions", str(c["evictions"])),
                ("reserved_bytes", str(self._reserved)),
            ]
        return out

    def settings(self) -> list[tuple[str, str]]:
        """``stats settings`` (a subset)."""
        return [
            ("maxbytes", str(self.memory_limit or 0)),
            ("maxconns", str(self.max_connections)),
            ("num_threads", str(self.threads)),
            ("cas_enabled", "yes"),
            ("item_size_max", str(self.item_size_max)),
            ("evictions", "on" if self.memory_limit is not None else "off"),
        ]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
