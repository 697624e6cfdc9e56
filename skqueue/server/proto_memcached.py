"""memcached TEXT protocol, sans-I/O: ``MemcachedSession`` (per connection) over ``MemcachedStore``.

Written from memcached's ``doc/protocol.txt`` (semantics) and from probing memcached 1.6.18 on the
wire (exact reply strings); no code is shared with memcached.  The runtime reads bytes, calls
``session.feed(data)``, writes back the bytes it returns and closes the connection once
``session.wants_close`` is true; it calls ``session.close()`` when the connection goes away.

Commands
    storage   ``set|add|replace|append|prepend <key> <flags> <exptime> <bytes> [noreply]`` and
              ``cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]``, each followed by a
              data block of exactly ``<bytes>`` bytes and ``\\r\\n``.  Replies STORED,
              NOT_STORED (add on a live key; replace/append/prepend on a missing one), EXISTS
              (cas unique mismatch), NOT_FOUND (cas on a missing key).  append/prepend keep the
              item's flags and exptime.
    retrieval ``get|gets <key>+`` and ``gat|gats <exptime> <key>+`` (get-and-touch):
              ``VALUE <key> <flags> <bytes> [<cas>]`` + data per hit, then ``END``.
    others    ``delete <key> [0] [noreply]`` (DELETED / NOT_FOUND), ``incr|decr <key> <delta>
              [noreply]``, ``touch <key> <exptime> [noreply]`` (TOUCHED / NOT_FOUND),
              ``flush_all [delay] [noreply]``, ``version``, ``verbosity <n> [noreply]``,
              ``stats`` / ``stats settings|items|slabs|sizes|conns|reset``,
              ``cache_memlimit <MiB> [noreply]``, ``mn`` (meta no-op), ``shutdown`` (refused, as
              memcached does by default), ``quit``.

Semantics worth knowing
    * exptime: 0 never expires; negative means already expired (the item is stored but never
      returned); 1 .. 30 days (2,592,000 s) is relative; larger values are absolute unix times.
      An item is dead once ``now >= exptime``.  The clock is injectable (``clock`` returns unix
      seconds as a float).
    * flags are 32-bit unsigned (memcached 1.6 silently accepts wider values; we reject them as
      a bad command line), ``<bytes>`` must be 0 .. 2**31-3, cas uniques are 64-bit; every
      modification (store, append, incr...) gets a fresh cas unique from one global counter.
    * incr/decr need the stored value to be a decimal number < 2**64 (surrounding whitespace is
      tolerated);
      incr wraps modulo 2**64, decr stops at 0.  The new value is stored as its exact digits
      (memcached may leave trailing spaces after a decr that shortens the number; clients must
      accept both).
    * flush_all invalidates every item stored so far, now or, with a delay (same conversion as
      exptime), when the delay expires; items stored after that moment survive.  A later
      ``flush_all`` replaces a pending delayed one.
    * noreply suppresses the reply of that command, errors included.

Limits and malformed input (never an exception out of ``feed``)
    * A command line longer than ``max_line`` (2048 bytes) -> ``CLIENT_ERROR line too long`` and
      close; retrieval lines (``get``/``gets``/``gat``/``gats``) may be up to ``max_get_line``
      (1 MiB) so large multi-gets work, as in memcached.
    * Keys longer than 250 bytes, malformed numbers -> ``CLIENT_ERROR bad command line
      format`` (for storage commands the data block is then *not* swallowed, exactly like
      memcached: it is parsed as a command and usually yields ``ERROR``).
    * A value longer than ``item_size_max`` (1 MiB) -> ``SERVER_ERROR object too large for
      cache``; the data block is swallowed (streamed, never buffered) and a ``set`` also removes
      the old item so stale data does not persist.
    * A data block not terminated by ``\\r\\n`` -> ``CLIENT_ERROR bad data chunk``; exactly
      ``<bytes>+2`` bytes are consumed, as memcached does.
    * Unknown command or wrong argument count -> ``ERROR``.
    * A first byte 0x80 at a command boundary is the binary protocol's magic: unsupported, the
      session closes without a reply.

Threads
    ``MemcachedStore`` is shared by all sessions and protected by ONE ``threading.Lock``.  Lock
    striping was rejected: the LRU list and the memory accounting are global anyway (memcached
    itself needs an LRU lock besides its item-lock stripes), every critical section is a few
    dict operations (~1 µs), and reply formatting and parsing happen outside the lock.  Each
    session also takes its own lock in ``feed`` so a connection handed between worker threads
    is processed in order with proper memory ordering; no correctness relies on the GIL.

LRU eviction
    With ``memory_limit`` (bytes; ``memory_limit_mb`` for memcached's ``-m``) the store accounts
    ``len(key) + len(value) + ITEM_OVERHEAD`` per item and evicts least recently used items
    (reads and writes both refresh an item) until a new item fits.  Without a limit nothing is
    evicted.  Expired items are reclaimed lazily when touched or evicted.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = [
    "ITEM_OVERHEAD",
    "MAX_KEY_LENGTH",
    "REL_EXPTIME_MAX",
    "MemcachedSession",
    "MemcachedStore",
]

MAX_KEY_LENGTH = 250
REL_EXPTIME_MAX = 60 * 60 * 24 * 30  # 30 days: larger exptimes are absolute unix times
ITEM_OVERHEAD = 56  # accounted bytes per item besides key and value (memcached's header size)
MAX_BYTES_FIELD = (1 << 31) - 3
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
_MAX_DIGITS = 20

# Reply words (bytes constants; a session appends them to its output buffer).
_STORED = b"STORED\r\n"
_NOT_STORED = b"NOT_STORED\r\n"
_EXISTS = b"EXISTS\r\n"
_NOT_FOUND = b"NOT_FOUND\r\n"
_DELETED = b"DELETED\r\n"
_TOUCHED = b"TOUCHED\r\n"
_END = b"END\r\n"
_OK = b"OK\r\n"
_ERROR = b"ERROR\r\n"
_BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
_BAD_CHUNK = b"CLIENT_ERROR bad data chunk\r\n"
_LINE_TOO_LONG = b"CLIENT_ERROR line too long\r\n"
_BAD_DELTA = b"CLIENT_ERROR invalid numeric delta argument\r\n"
_NON_NUMERIC = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
_BAD_EXPTIME = b"CLIENT_ERROR invalid exptime argument\r\n"
_DELETE_USAGE = b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
_TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"
_OUT_OF_MEMORY = b"SERVER_ERROR out of memory storing object\r\n"

# Store results.
STORED, NOT_STORED, EXISTS, NOT_FOUND, TOO_LARGE, OUT_OF_MEMORY = range(6)
_RESULT_REPLY = (_STORED, _NOT_STORED, _EXISTS, _NOT_FOUND, _TOO_LARGE, _OUT_OF_MEMORY)

# Storage modes.
MODE_SET, MODE_ADD, MODE_REPLACE, MODE_APPEND, MODE_PREPEND, MODE_CAS = range(6)
_STORAGE_MODES = {
    b"set": MODE_SET,
    b"add": MODE_ADD,
    b"replace": MODE_REPLACE,
    b"append": MODE_APPEND,
    b"prepend": MODE_PREPEND,
    b"cas": MODE_CAS,
}
_GET_PREFIXES = (b"get ", b"gets ", b"gat ", b"gats ")

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


class NonNumericValue(ValueError):
    """incr/decr on an item whose value is not a 64-bit decimal number."""


def _uint(tok: bytes, limit: int) -> int | None:
    """Parse an unsigned decimal token <= limit, or None."""
    if not tok.isdigit() or len(tok) > _MAX_DIGITS:
        return None
    v = int(tok)
    return v if v <= limit else None


def _int(tok: bytes) -> int | None:
    """Parse a signed 64-bit decimal token, or None."""
    digits = tok[1:] if tok[:1] == b"-" else tok
    if not digits.isdigit() or len(digits) > 19:
        return None
    v = int(tok)
    return v if -(1 << 63) <= v < (1 << 63) else None


def _numeric_value(value: bytes) -> int:
    digits = value.strip()  # like strtoull: surrounding whitespace is tolerated
    if not digits.isdigit() or len(digits) > _MAX_DIGITS:
        raise NonNumericValue(value[:32])
    v = int(digits)
    if v > _U64:
        raise NonNumericValue(value[:32])
    return v


class _Item:
    __slots__ = ("cas", "exp", "flags", "size", "stored_at", "value")

    def __init__(
        self, value: bytes, flags: int, exp: float, cas: int, stored_at: float, size: int
    ) -> None:
        self.value = value
        self.flags = flags
        self.exp = exp  # absolute unix time; 0.0 = never; -1.0 = already expired
        self.cas = cas
        self.stored_at = stored_at
        self.size = size


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
        memory_limit: int | None = None,
        *,
        memory_limit_mb: int | None = None,
        item_size_max: int = 1 << 20,
        clock: Callable[[], float] = time.time,
        version: str = "1.6.18-skqueue",
        threads: int = 1,
        max_connections: int = 65536,
    ) -> None:
        if memory_limit_mb is not None:
            memory_limit = memory_limit_mb << 20
        self.memory_limit = memory_limit
        self.item_size_max = item_size_max
        self.version = version
        self.threads = threads
        self.max_connections = max_connections
        self._clock = clock
        self._lock = threading.Lock()
        self._items: OrderedDict[bytes, _Item] = OrderedDict()
        self._bytes = 0
        self._cas = 0
        self._flush_at: float | None = None
        self._started = clock()
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self.curr_connections = 0
        self.total_connections = 0

    # -- helpers (call with the lock held) --------------------------------------------------

    def _abs_exp(self, exptime: int, now: float) -> float:
        if exptime == 0:
            return 0.0
        if exptime < 0:
            return -1.0
        if exptime <= REL_EXPTIME_MAX:
            return now + exptime
        return float(exptime)

    def _unlink(self, key: bytes) -> None:
        item = self._items.pop(key)
        self._bytes -= item.size

    def _maybe_flush(self, now: float) -> None:
        flush_at = self._flush_at
        if flush_at is not None and now >= flush_at:
            self._flush_at = None
            dead = [k for k, it in self._items.items() if it.stored_at <= flush_at]
            for k in dead:
                self._unlink(k)

    def _live(self, key: bytes, now: float) -> _Item | None:
        item = self._items.get(key)
        if item is None:
            return None
        exp = item.exp
        if exp != 0.0 and exp <= now:
            self._unlink(key)
            return None
        return item

    def _link(self, key: bytes, item: _Item) -> int:
        """Insert or replace ``key`` (most recently used), evicting to fit; returns a result."""
        items = self._items
        limit = self.memory_limit
        old = items.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        if limit is not None:
            if item.size > limit:
                return OUT_OF_MEMORY
            counters = self._counters
            while self._bytes + item.size > limit and items:
                _, victim = items.popitem(last=False)
                self._bytes -= victim.size
                counters["evictions"] += 1
        items[key] = item
        self._bytes += item.size
        self._counters["total_items"] += 1
        return STORED

    def _next_cas(self) -> int:
        self._cas += 1
        return self._cas

    # -- operations -------------------------------------------------------------------------

    def get(
        self, keys: list[bytes], touch_exptime: int | None = None
    ) -> list[tuple[bytes, int, bytes, int]]:
        """Hits among ``keys`` as (key, flags, value, cas); get-and-touch with ``touch_exptime``."""
        out: list[tuple[bytes, int, bytes, int]] = []
        with self._lock:
            now = self._clock()
            self._maybe_flush(now)
            items = self._items
            expired = 0
            for key in keys:
                item = items.get(key)
                if item is None:
                    continue
                exp = item.exp
                if exp != 0.0 and exp <= now:
                    self._unlink(key)
                    expired += 1
                    continue
                if touch_exptime is not None:
                    item.exp = self._abs_exp(touch_exptime, now)
                items.move_to_end(key)
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
        self, mode: int, key: bytes, flags: int, exptime: int, value: bytes, cas_unique: int = 0
    ) -> int:
        """set/add/replace/append/prepend/cas; returns STORED, NOT_STORED, EXISTS, NOT_FOUND..."""
        with self._lock:
            now = self._clock()
            self._maybe_flush(now)
            c = self._counters
            c["cmd_set"] += 1
            cur = self._live(key, now)
            if mode == MODE_SET:
                pass
            elif mode == MODE_ADD:
                if cur is not None:
                    self._items.move_to_end(key)
                    return NOT_STORED
            elif mode == MODE_REPLACE:
                if cur is None:
                    return NOT_STORED
            elif mode == MODE_APPEND or mode == MODE_PREPEND:
                if cur is None:
                    return NOT_STORED
                value = cur.value + value if mode == MODE_APPEND else value + cur.value
                if len(value) > self.item_size_max:
                    return TOO_LARGE
                flags = cur.flags
                item = _Item(value, flags, cur.exp, self._next_cas(), now, 0)
                item.size = len(key) + len(value) + ITEM_OVERHEAD
                return self._link(key, item)
            elif mode == MODE_CAS:
                if cur is None:
                    c["cas_misses"] += 1
                    return NOT_FOUND
                if cur.cas != cas_unique:
                    c["cas_badval"] += 1
                    return EXISTS
                c["cas_hits"] += 1
            else:
                raise ValueError(f"unknown storage mode {mode}")
            if len(value) > self.item_size_max:
                return TOO_LARGE
            item = _Item(
                value,
                flags,
                self._abs_exp(exptime, now),
                self._next_cas(),
                now,
                len(key) + len(value) + ITEM_OVERHEAD,
            )
            return self._link(key, item)

    def reject_too_large(self, mode: int, key: bytes) -> None:
        """A too-large ``set`` removes the old value, so stale data does not persist."""
        with self._lock:
            self._counters["cmd_set"] += 1
            if mode == MODE_SET and key in self._items:
                self._unlink(key)

    def delete(self, key: bytes) -> bool:
        """Delete ``key``; True if a live item was removed."""
        with self._lock:
            now = self._clock()
            self._maybe_flush(now)
            hit = self._live(key, now) is not None
            if hit:
                self._unlink(key)
            self._counters["delete_hits" if hit else "delete_misses"] += 1
            return hit

    def delta(self, key: bytes, delta: int, incr: bool) -> int | None:
        """incr/decr: the new value, or None if absent; NonNumericValue if not a number."""
        name = "incr" if incr else "decr"
        with self._lock:
            now = self._clock()
            self._maybe_flush(now)
            item = self._live(key, now)
            if item is None:
                self._counters[name + "_misses"] += 1
                return None
            value = _numeric_value(item.value)
            value = (value + delta) & _U64 if incr else max(value - delta, 0)
            digits = str(value).encode()
            new = _Item(
                digits,
                item.flags,
                item.exp,
                self._next_cas(),
                now,
                len(key) + len(digits) + ITEM_OVERHEAD,
            )
            self._link(key, new)
            self._counters["total_items"] -= 1  # an update, not a new item
            self._counters[name + "_hits"] += 1
            return value

    def touch(self, key: bytes, exptime: int) -> bool:
        """Set a new exptime on ``key``; True if it exists."""
        with self._lock:
            now = self._clock()
            self._maybe_flush(now)
            item = self._live(key, now)
            c = self._counters
            c["cmd_touch"] += 1
            if item is None:
                c["touch_misses"] += 1
                return False
            item.exp = self._abs_exp(exptime, now)
            self._items.move_to_end(key)
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
                self._bytes = 0
            else:
                self._flush_at = self._abs_exp(delay, now)
                self._maybe_flush(now)

    def set_memory_limit(self, limit: int | None) -> None:
        """Change the memory limit (``cache_memlimit``); evicts on the next store."""
        with self._lock:
            self.memory_limit = limit

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


class _PendingStore:
    __slots__ = ("cas", "exptime", "flags", "key", "mode", "nbytes", "noreply")

    def __init__(
        self,
        mode: int,
        key: bytes,
        flags: int,
        exptime: int,
        nbytes: int,
        cas: int,
        noreply: bool,
    ) -> None:
        self.mode = mode
        self.key = key
        self.flags = flags
        self.exptime = exptime
        self.nbytes = nbytes
        self.cas = cas
        self.noreply = noreply


class MemcachedSession:
    """Per-connection memcached text-protocol state: ``feed`` bytes, get reply bytes."""

    __slots__ = (
        "_buf",
        "_closed",
        "_lock",
        "_pending",
        "_registered",
        "_swallow",
        "max_get_line",
        "max_line",
        "requests",
        "store",
    )

    def __init__(
        self, store: MemcachedStore, max_line: int = 2048, max_get_line: int = 1 << 20
    ) -> None:
        self.store = store
        self.max_line = max_line
        self.max_get_line = max_get_line
        self._buf = bytearray()
        self._pending: _PendingStore | None = None
        self._swallow = 0
        self._closed = False
        self._lock = threading.Lock()
        #: command lines processed so far (the runtime's per-worker request counter reads it)
        self.requests = 0
        store.connection_opened()
        self._registered = True

    @property
    def wants_close(self) -> bool:
        """True once the connection must be closed (quit, line too long, binary protocol)."""
        return self._closed

    @property
    def needs_await(self) -> bool:
        """Never: memcached commands have no service time to await."""
        return False

    def close(self) -> None:
        """The connection is gone: stop accepting input, update ``curr_connections`` once."""
        with self._lock:
            self._closed = True
            if self._registered:
                self._registered = False
                self.store.connection_closed()

    async def afeed(self, data: bytes) -> bytes:
        """Same as ``feed`` (for drivers that always await)."""
        return self.feed(data)

    def feed(self, data: bytes) -> bytes:
        """Consume ``data``; return the replies to every command it completes."""
        with self._lock:
            if self._closed:
                return b""
            buf = self._buf
            buf += data
            out = bytearray()
            pos = 0
            n = len(buf)
            while pos < n and not self._closed:
                if self._swallow:
                    take = min(self._swallow, n - pos)
                    pos += take
                    self._swallow -= take
                    continue
                pend = self._pending
                if pend is not None:
                    end = pos + pend.nbytes + 2
                    if end > n:
                        break
                    self._pending = None
                    if buf[end - 2 : end] != b"\r\n":
                        if not pend.noreply:
                            out += _BAD_CHUNK
                    else:
                        self._complete(pend, bytes(buf[pos : end - 2]), out)
                    pos = end
                    continue
                if buf[pos] == 0x80:  # binary protocol magic: unsupported
                    self._closed = True
                    break
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    if n - pos > self.max_line and n - pos > self._limit(buf, pos):
                        out += _LINE_TOO_LONG
                        self._closed = True
                    break
                line_end = nl - 1 if nl > pos and buf[nl - 1] == 0x0D else nl
                if line_end - pos > self.max_line and line_end - pos > self._limit(buf, pos):
                    out += _LINE_TOO_LONG
                    self._closed = True
                    break
                line = bytes(buf[pos:line_end])
                pos = nl + 1
                self.requests += 1
                self._command(line, out)
            if pos:
                del buf[:pos]
            return bytes(out)

    def _limit(self, buf: bytearray, pos: int) -> int:
        head = bytes(buf[pos : pos + 5])
        if head.startswith(_GET_PREFIXES):
            return self.max_get_line
        return self.max_line

    # -- commands ---------------------------------------------------------------------------

    def _command(self, line: bytes, out: bytearray) -> None:
        tokens = line.split()
        if not tokens:
            out += _ERROR
            return
        cmd = tokens[0]
        ntok = len(tokens)
        if cmd == b"get" or cmd == b"gets":
            if ntok < 2:
                out += _ERROR
                return
            self._retrieve(tokens[1:], cmd == b"gets", None, out)
            return
        mode = _STORAGE_MODES.get(cmd)
        if mode is not None:
            self._storage(mode, tokens, out)
            return
        handler = _HANDLERS.get(cmd)
        if handler is None:
            out += _ERROR
            return
        handler(self, tokens, out)

    def _retrieve(
        self, keys: list[bytes], with_cas: bool, touch: int | None, out: bytearray
    ) -> None:
        for key in keys:
            if len(key) > MAX_KEY_LENGTH:
                out += _BAD_FORMAT
                return
        hits = self.store.get(keys, touch)
        for key, flags, value, cas in hits:
            if with_cas:
                out += b"VALUE %b %d %d %d\r\n" % (key, flags, len(value), cas)
            else:
                out += b"VALUE %b %d %d\r\n" % (key, flags, len(value))
            out += value
            out += b"\r\n"
        out += _END

    def _storage(self, mode: int, tokens: list[bytes], out: bytearray) -> None:
        ntok = len(tokens)
        base = 6 if mode == MODE_CAS else 5
        if ntok != base and ntok != base + 1:
            out += _ERROR
            return
        noreply = ntok == base + 1 and tokens[-1] == b"noreply"
        key = tokens[1]
        flags = _uint(tokens[2], _U32)
        exptime = _int(tokens[3])
        nbytes = _int(tokens[4])
        cas = 0
        if mode == MODE_CAS:
            parsed = _uint(tokens[5], _U64)
            if parsed is None:
                nbytes = None
            else:
                cas = parsed
        if (
            len(key) > MAX_KEY_LENGTH
            or flags is None
            or exptime is None
            or nbytes is None
            or not 0 <= nbytes <= MAX_BYTES_FIELD
        ):
            if not noreply:
                out += _BAD_FORMAT
            return
        if nbytes > self.store.item_size_max:
            self.store.reject_too_large(mode, key)
            if not noreply:
                out += _TOO_LARGE
            self._swallow = nbytes + 2
            return
        self._pending = _PendingStore(mode, key, flags, exptime, nbytes, cas, noreply)

    def _complete(self, pend: _PendingStore, value: bytes, out: bytearray) -> None:
        result = self.store.store(pend.mode, pend.key, pend.flags, pend.exptime, value, pend.cas)
        if not pend.noreply:
            out += _RESULT_REPLY[result]

    def _cmd_delete(self, tokens: list[bytes], out: bytearray) -> None:
        ntok = len(tokens)
        if ntok < 2 or ntok > 4:
            out += _ERROR
            return
        noreply = tokens[-1] == b"noreply" and ntok > 2
        extra = tokens[2 : ntok - 1 if noreply else ntok]
        if extra and extra != [b"0"]:
            if not noreply:
                out += _DELETE_USAGE
            return
        key = tokens[1]
        if len(key) > MAX_KEY_LENGTH:
            if not noreply:
                out += _BAD_FORMAT
            return
        hit = self.store.delete(key)
        if not noreply:
            out += _DELETED if hit else _NOT_FOUND

    @staticmethod
    def _key_value_args(tokens: list[bytes], out: bytearray) -> tuple[bytes, bool] | None:
        """``<cmd> <key> <value> [noreply]`` (incr, decr, touch): ``(key, noreply)``, or
        None once the error reply (if any) is in ``out``."""
        ntok = len(tokens)
        if ntok != 3 and ntok != 4:
            out += _ERROR
            return None
        noreply = ntok == 4 and tokens[3] == b"noreply"
        key = tokens[1]
        if len(key) > MAX_KEY_LENGTH:
            if not noreply:
                out += _BAD_FORMAT
            return None
        return key, noreply

    def _cmd_delta(self, tokens: list[bytes], out: bytearray) -> None:
        args = self._key_value_args(tokens, out)
        if args is None:
            return
        key, noreply = args
        delta = _uint(tokens[2], _U64)
        if delta is None:
            if not noreply:
                out += _BAD_DELTA
            return
        try:
            value = self.store.delta(key, delta, tokens[0] == b"incr")
        except NonNumericValue:
            if not noreply:
                out += _NON_NUMERIC
            return
        if not noreply:
            out += _NOT_FOUND if value is None else b"%d\r\n" % value

    def _cmd_touch(self, tokens: list[bytes], out: bytearray) -> None:
        args = self._key_value_args(tokens, out)
        if args is None:
            return
        key, noreply = args
        exptime = _int(tokens[2])
        if exptime is None:
            if not noreply:
                out += _BAD_EXPTIME
            return
        hit = self.store.touch(key, exptime)
        if not noreply:
            out += _TOUCHED if hit else _NOT_FOUND

    def _cmd_gat(self, tokens: list[bytes], out: bytearray) -> None:
        if len(tokens) < 3:
            out += _ERROR
            return
        exptime = _int(tokens[1])
        if exptime is None:
            out += _BAD_EXPTIME
            return
        self._retrieve(tokens[2:], tokens[0] == b"gats", exptime, out)

    def _cmd_flush_all(self, tokens: list[bytes], out: bytearray) -> None:
        ntok = len(tokens)
        if ntok > 3:
            out += _ERROR
            return
        noreply = ntok > 1 and tokens[-1] == b"noreply"
        delay = 0
        if ntok > 1 and tokens[1] != b"noreply":  # like memcached, ignore a third token
            parsed = _int(tokens[1])
            if parsed is None:
                if not noreply:
                    out += _BAD_EXPTIME
                return
            delay = parsed
        self.store.flush_all(delay)
        if not noreply:
            out += _OK

    def _cmd_version(self, tokens: list[bytes], out: bytearray) -> None:
        out += b"VERSION %b\r\n" % self.store.version.encode()

    def _cmd_verbosity(self, tokens: list[bytes], out: bytearray) -> None:
        ntok = len(tokens)
        if ntok != 2 and ntok != 3:
            out += _ERROR
            return
        noreply = tokens[-1] == b"noreply"
        if _uint(tokens[1], _U32) is None:
            if not noreply:
                out += _BAD_FORMAT
            return
        if not noreply:
            out += _OK

    def _cmd_cache_memlimit(self, tokens: list[bytes], out: bytearray) -> None:
        ntok = len(tokens)
        if ntok != 2 and ntok != 3:
            out += _ERROR
            return
        noreply = ntok == 3 and tokens[2] == b"noreply"
        mb = _uint(tokens[1], 1 << 40)
        if mb is None or mb == 0:
            if not noreply:
                out += _BAD_FORMAT
            return
        self.store.set_memory_limit(mb << 20)
        if not noreply:
            out += _OK

    def _cmd_stats(self, tokens: list[bytes], out: bytearray) -> None:
        store = self.store
        if len(tokens) == 1:
            rows = store.stats()
        else:
            sub = tokens[1]
            if sub == b"reset" and len(tokens) == 2:
                store.reset_stats()
                out += b"RESET\r\n"
                return
            if sub == b"settings":
                rows = store.settings()
            elif sub in (b"items", b"slabs", b"sizes", b"conns"):
                rows = []
            else:
                out += _ERROR
                return
        for name, value in rows:
            out += b"STAT %b %b\r\n" % (name.encode(), value.encode())
        out += _END

    def _cmd_quit(self, tokens: list[bytes], out: bytearray) -> None:
        self._closed = True

    def _cmd_mn(self, tokens: list[bytes], out: bytearray) -> None:
        out += b"MN\r\n"

    def _cmd_shutdown(self, tokens: list[bytes], out: bytearray) -> None:
        out += b"ERROR: shutdown not enabled\r\n"


_Handler = Callable[[MemcachedSession, list[bytes], bytearray], None]
_HANDLERS: dict[bytes, _Handler] = {
    b"delete": MemcachedSession._cmd_delete,
    b"incr": MemcachedSession._cmd_delta,
    b"decr": MemcachedSession._cmd_delta,
    b"touch": MemcachedSession._cmd_touch,
    b"gat": MemcachedSession._cmd_gat,
    b"gats": MemcachedSession._cmd_gat,
    b"flush_all": MemcachedSession._cmd_flush_all,
    b"version": MemcachedSession._cmd_version,
    b"verbosity": MemcachedSession._cmd_verbosity,
    b"cache_memlimit": MemcachedSession._cmd_cache_memlimit,
    b"stats": MemcachedSession._cmd_stats,
    b"quit": MemcachedSession._cmd_quit,
    b"mn": MemcachedSession._cmd_mn,
    b"shutdown": MemcachedSession._cmd_shutdown,
}
