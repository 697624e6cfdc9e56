"""memcached TEXT protocol, sans-I/O: ``MemcachedSession``, one per connection.

Written from memcached's ``doc/protocol.txt`` (semantics), from reading how memcached 1.6.18
parses its input, and from probing it on the wire (exact reply bytes); no code is shared with
memcached.  ``tests/test_server_memcached_diff.py`` replays byte sequences against a real
memcached and this session and compares the replies.  The items live in a
``skqueue.server.memcached_store.MemcachedStore`` shared by all sessions.

The runtime reads bytes, calls ``session.feed(data)``, writes back the bytes it returns and
closes the connection once ``session.wants_close`` is true; it calls ``session.close()`` when
the connection goes away.

Commands
    storage   ``set|add|replace|append|prepend <key> <flags> <exptime> <bytes> [noreply]`` and
              ``cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]``, each followed by
              a data block of exactly ``<bytes>`` bytes and ``\\r\\n``.
    retrieval ``get|gets|bget <key>+`` and ``gat|gats <exptime> <key>+``.
    others    ``delete``, ``incr``, ``decr``, ``touch``, ``flush_all``, ``version``,
              ``verbosity``, ``cache_memlimit``, ``stats`` (general, ``settings``, ``reset``,
              ``detail``, ``cachedump <class> <limit>``, ``items|slabs|sizes|conns`` as
              empty lists), ``shutdown`` (refused, as memcached does by default), ``quit``.
    meta      ``mg <key> <flags>*``, ``ms <key> <datalen> <flags>*``, ``md <key> <flags>*``,
              ``ma <key> <flags>*``, ``me <key> [b]``, ``mn``.  Flags: mg ``b c f h k l O q
              s t u v N R T`` (answers ``W X Z``); ms ``b c C F I k O q T M(E|A|P|R|S)``; md
              ``b C I k O q T``; ma ``b C N J D T M(I|+|D|-) q O t c v k``; ``P`` and ``L``
              are ignored everywhere.  Replies ``VA``/``HD``/``EN``/``NS``/``EX``/``NF``.

Parsing, as memcached does it
    * A command line is split on spaces only (a tab is part of a token); a NUL ends it.
    * Numbers are read like C's ``strtoul``/``strtol``: a leading ``+`` or ``-`` and any
      number of leading zeros are accepted; trailing white space inside the token is
      allowed.  Client flags are taken modulo 2**32, exptime and ``<bytes>`` modulo 2**32
      as signed 32-bit numbers; a ``-`` on a number that ends up >= 2**63 is refused.
    * ``noreply`` is the last token; it silences that command's replies, errors included.
    * incr/decr read the value like ``strtoull`` (leading white space, ``+``); a result no
      longer than the old value is written in place, padded with spaces to the old length.
    * The item size limit counts memcached's header and the key (``memcached_store``): an
      ``append``/``prepend`` whose result would be too large answers ``NOT_STORED``.

Limits and malformed input (never an exception out of ``feed``)
    * A command line still without its ``\\n`` after 2048 bytes closes the connection
      without a reply, unless it is a ``get``/``gets`` line (multi-gets may be long): those
      may grow to ``max_get_line`` (1 MiB) before the connection is closed.  A complete line
      of up to 16 KiB is processed whatever its length (memcached's read buffer).
    * A value too large for ``item_size_max`` answers ``SERVER_ERROR object too large for
      cache``; its data block is swallowed (streamed, never buffered) and a ``set`` also
      removes the old item so stale data does not persist.
    * A data block not terminated by ``\\r\\n`` -> ``CLIENT_ERROR bad data chunk``; exactly
      ``<bytes>+2`` bytes are consumed, as memcached does.
    * A connection whose first byte is 0x80 (the binary protocol's magic) is closed without
      a reply: the binary protocol is not supported.  So is one whose command line ends in
      ``HTTP/...``.

Memory held per connection (the bound)
    A session buffers at most one unfinished command: a line (at most 2048 bytes, a get line
    at most ``max_get_line``) or one value.  A value that has not fully arrived with its
    command line is *reserved* in the store before its bytes are buffered
    (``MemcachedStore.reserve``, which evicts LRU items to make room, like memcached
    allocating the item when the command line arrives); when the reservation cannot be had
    the command answers ``SERVER_ERROR out of memory storing object`` and its data is
    swallowed.  The reservation is given back when the value is stored or refused, or when
    the connection closes.  So all half-sent values together stay within the store's memory
    limit, and the buffer is released once the command completes.

Threads
    Each session takes its own lock in ``feed`` so a connection handed between worker threads
    is processed in order with proper memory ordering; no correctness relies on the GIL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from skqueue.server.memcached_meta import (
    META_MAX_TOKENS,
    META_RESULT,
    MS_MODES,
    OPAQUE_MAX,
    MetaFlags,
    meta_arithmetic,
    meta_debug,
    meta_delete,
    meta_get,
    meta_key,
    meta_noop,
)
from skqueue.server.memcached_store import (
    EXISTS,
    ITEM_SIZE_MAX,
    MAX_KEY_LENGTH,
    MODE_ADD,
    MODE_APPEND,
    MODE_CAS,
    MODE_PREPEND,
    MODE_REPLACE,
    MODE_SET,
    NOT_FOUND,
    NOT_STORED,
    OUT_OF_MEMORY,
    PY_ITEM_OVERHEAD,
    REL_EXPTIME_MAX,
    STORED,
    TOO_LARGE,
    MemcachedStore,
    NonNumericValue,
    item_total,
    strtol32,
    strtoul,
)

__all__ = [
    "ITEM_SIZE_MAX",
    "MAX_KEY_LENGTH",
    "REL_EXPTIME_MAX",
    "MemcachedSession",
    "MemcachedStore",
    "NonNumericValue",
    "item_total",
]

_INT_MAX = (1 << 31) - 1
#: Bytes of a line memcached holds before it must have seen the newline.
_LINE_WAIT = 2048
#: memcached's read buffer: a complete line up to this long is processed.
_READ_BUFFER = 16384
#: memcached's MAX_TOKENS (the terminal token included).
_MAX_TOKENS = 24
#: Partial lines beyond ``max_line`` are reserved in the store in steps of this many bytes.
_LINE_STEP = 64 * 1024

# Reply words.
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
_BAD_DELTA = b"CLIENT_ERROR invalid numeric delta argument\r\n"
_NON_NUMERIC = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
_BAD_EXPTIME = b"CLIENT_ERROR invalid exptime argument\r\n"
_DELETE_USAGE = b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
_TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"
_OUT_OF_MEMORY = b"SERVER_ERROR out of memory storing object\r\n"

_RESULT_REPLY = {
    STORED: _STORED,
    NOT_STORED: _NOT_STORED,
    EXISTS: _EXISTS,
    NOT_FOUND: _NOT_FOUND,
    TOO_LARGE: _TOO_LARGE,
    OUT_OF_MEMORY: _OUT_OF_MEMORY,
}

_STORAGE_MODES = {
    b"set": MODE_SET,
    b"add": MODE_ADD,
    b"replace": MODE_REPLACE,
    b"append": MODE_APPEND,
    b"prepend": MODE_PREPEND,
    b"cas": MODE_CAS,
}


@dataclass(slots=True)
class _PendingStore:
    """A storage command waiting for its data block."""

    mode: int
    key: bytes
    flags: int
    exptime: int
    nbytes: int
    cas: int
    noreply: bool
    reserved: int = 0
    set_stale: bool = False
    #: for ms: (tokens of the return flags, binary key)
    meta: tuple[list[bytes], bool] | None = None


class MemcachedSession:
    """Per-connection memcached text-protocol state: ``feed`` bytes, get reply bytes."""

    __slots__ = (
        "_buf",
        "_closed",
        "_line_reserved",
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
        self, store: MemcachedStore, max_line: int = _LINE_WAIT, max_get_line: int = 1 << 20
    ) -> None:
        self.store = store
        self.max_line = max_line
        self.max_get_line = max_get_line
        self._buf = bytearray()
        self._pending: _PendingStore | None = None
        self._swallow = 0
        self._line_reserved = 0
        self._closed = False
        self._lock = threading.Lock()
        #: command lines processed so far (the runtime's per-worker request counter reads it)
        self.requests = 0
        store.connection_opened()
        self._registered = True

    @property
    def wants_close(self) -> bool:
        """True once the connection must be closed (quit, runaway line, binary protocol)."""
        return self._closed

    @property
    def needs_await(self) -> bool:
        """Never: memcached commands have no service time to await."""
        return False

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished command held by this session."""
        return len(self._buf)

    def close(self) -> None:
        """The connection is gone: stop accepting input, give back reservations, update
        ``curr_connections`` once."""
        with self._lock:
            self._closed = True
            self._drop_pending()
            self._buf = bytearray()
            if self._registered:
                self._registered = False
                self.store.connection_closed()

    def _drop_pending(self) -> None:
        pend = self._pending
        if pend is not None:
            self._pending = None
            if pend.reserved:
                self.store.release(pend.reserved)
        if self._line_reserved:
            self.store.release(self._line_reserved)
            self._line_reserved = 0

    def _reserve_line(self) -> None:
        """A partial (get) line longer than ``max_line`` is reserved in the store like a
        value, in steps of ``_LINE_STEP``; the connection closes when it cannot be."""
        held = len(self._buf) if self._pending is None else 0
        want = 0 if held <= self.max_line else -(-held // _LINE_STEP) * _LINE_STEP
        have = self._line_reserved
        if want > have:
            if not self.store.reserve(want - have):
                self._closed = True
                self._drop_pending()
                self._buf = bytearray()
                return
        elif want < have:
            self.store.release(have - want)
        self._line_reserved = want

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
                    self._complete(pend, buf, pos, end, out)
                    pos = end
                    continue
                if buf[pos] == 0x80 and not self.requests:
                    # the binary protocol's magic as a connection's first byte: unsupported
                    self._closed = True
                    break
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    if n - pos > self.max_line and self._runaway(buf, pos, n - pos):
                        self._closed = True
                    break
                if nl - pos > _READ_BUFFER and self._runaway(buf, pos, nl - pos):
                    self._closed = True
                    break
                line_end = nl - 1 if nl > pos and buf[nl - 1] == 0x0D else nl
                line = bytes(buf[pos:line_end])
                pos = nl + 1
                self.requests += 1
                self._command(line, buf, pos, out)
            if self._closed:
                self._drop_pending()
                self._buf = bytearray()
            else:
                if pos >= n:
                    self._buf = bytearray()  # let a large buffer go at once
                elif pos:
                    del buf[:pos]
                if self._line_reserved or len(self._buf) > self.max_line:
                    self._reserve_line()
            return bytes(out)

    def _runaway(self, buf: bytearray, pos: int, length: int) -> bool:
        """A line without its newline: too long unless it is a get line (up to
        ``max_get_line``), as memcached decides (leading spaces skipped, at most 100)."""
        head = bytes(buf[pos : pos + 106]).lstrip(b" ")
        lead = min(len(buf) - pos, 106) - len(head)
        if lead > 100 or not (head.startswith(b"get ") or head.startswith(b"gets ")):
            return True
        return length > self.max_get_line

    # -- dispatch ---------------------------------------------------------------------------

    def _command(self, line: bytes, buf: bytearray, pos: int, out: bytearray) -> None:
        if b"\0" in line:
            line = line[: line.index(b"\0")]
        tokens = line.split(b" ")
        if b"" in tokens:
            tokens = [t for t in tokens if t]
        n = len(tokens)
        cmd = tokens[0] if n else b""
        if cmd == b"get":  # the common case first
            if n < 2:
                out += _ERROR
            else:
                self._retrieve(tokens[1:], False, None, out)
            return
        if len(cmd) < 2:
            out += _ERROR
            return
        ntok = n + 1 if n < _MAX_TOKENS else _MAX_TOKENS  # memcached's count (with terminal)
        if len(cmd) == 2 and cmd[0] == 0x6D:  # m?
            meta = _META.get(cmd)
            if meta is None:
                out += _ERROR
            else:
                meta(self, tokens, ntok, buf, pos, out)
            return
        if cmd == b"gets" or cmd == b"bget":
            if ntok < 3:
                out += _ERROR
                return
            self._retrieve(tokens[1:], cmd == b"gets", None, out)
            return
        mode = _STORAGE_MODES.get(cmd)
        if mode is not None:
            want = 7 if mode == MODE_CAS else 6
            if ntok != want and ntok != want + 1:
                out += _ERROR
                return
            self._storage(mode, tokens, buf, pos, out)
            return
        entry = _HANDLERS.get(cmd)
        if entry is None:
            if tokens[ntok - 2].startswith(b"HTTP/"):
                self._closed = True
            else:
                out += _ERROR
            return
        handler, lo, hi = entry
        if ntok < lo or ntok > hi:
            out += _ERROR
            return
        handler(self, tokens, out)

    # -- classic commands -------------------------------------------------------------------

    def _retrieve(
        self, keys: list[bytes], with_cas: bool, touch: int | None, out: bytearray
    ) -> None:
        for key in keys:
            if len(key) > MAX_KEY_LENGTH:
                out += _BAD_FORMAT
                return
        for key, flags, value, cas in self.store.get(keys, touch):
            if with_cas:
                out += b"VALUE %b %d %d %d\r\n" % (key, flags, len(value), cas)
            else:
                out += b"VALUE %b %d %d\r\n" % (key, flags, len(value))
            out += value
            out += b"\r\n"
        out += _END

    def _storage(
        self, mode: int, tokens: list[bytes], buf: bytearray, pos: int, out: bytearray
    ) -> None:
        noreply = tokens[-1] == b"noreply"
        key = tokens[1]
        if len(key) > MAX_KEY_LENGTH:
            if not noreply:
                out += _BAD_FORMAT
            return
        flags = strtoul(tokens[2], 32)
        exptime = strtol32(tokens[3])
        nbytes = strtol32(tokens[4])
        cas = 0
        if mode == MODE_CAS and flags is not None and exptime is not None:
            parsed = strtoul(tokens[5], 64)
            if parsed is None:
                flags = None
            else:
                cas = parsed
        if flags is None or exptime is None or nbytes is None:
            if not noreply:
                out += _BAD_FORMAT
            return
        if nbytes < 0 or nbytes > _INT_MAX - 2:
            if not noreply:
                out += _BAD_FORMAT
            return
        pend = _PendingStore(mode, key, flags, exptime, nbytes, cas, noreply)
        error = self._admit_value(pend, len(buf) - pos)
        if error is not None:
            if not noreply:
                out += error
            return
        self._pending = pend

    def _admit_value(self, pend: _PendingStore, have: int) -> bytes | None:
        """Check a value's size and reserve memory for it unless it has fully arrived; on
        failure set up the swallow and return the error line."""
        store = self.store
        if not store.size_ok(len(pend.key), pend.nbytes, pend.flags):
            error = _TOO_LARGE
        elif have >= pend.nbytes + 2:
            return None
        else:
            need = item_total(len(pend.key), pend.nbytes, pend.flags) + PY_ITEM_OVERHEAD
            if store.reserve(need):
                pend.reserved = need
                return None
            error = _OUT_OF_MEMORY
        store.reject_too_large(pend.mode if pend.meta is None else MODE_SET, pend.key)
        self._swallow = pend.nbytes + 2
        return error

    def _complete(
        self, pend: _PendingStore, buf: bytearray, start: int, end: int, out: bytearray
    ) -> None:
        if buf[end - 2 : end] != b"\r\n":
            if pend.reserved:
                self.store.release(pend.reserved)
            if not pend.noreply or pend.meta is not None:
                out += _BAD_CHUNK
            return
        result, cas = self.store.store(
            pend.mode,
            pend.key,
            pend.flags,
            pend.exptime,
            bytes(buf[start : end - 2]),
            pend.cas,
            set_stale=pend.set_stale,
            binkey=pend.meta is not None and pend.meta[1],
            reserved=pend.reserved,
        )
        if pend.meta is None:
            if not pend.noreply:
                out += _RESULT_REPLY[result]
            return
        ret_tokens, binary = pend.meta
        code = META_RESULT.get(result)
        if code is None:
            out += _RESULT_REPLY[result]
            return
        if result == STORED and pend.noreply:
            return
        line = bytearray(code)
        for tok in ret_tokens:
            o = tok[0]
            if o == 0x4F:
                line += b" " + tok
            elif o == 0x6B:
                line += meta_key(pend.key, binary)
            elif o == 0x63:
                line += b" c%d" % cas
        out += line + b"\r\n"

    def _cmd_delete(self, tokens: list[bytes], out: bytearray) -> None:
        ntok = len(tokens) + 1
        noreply = False
        if ntok > 3:
            hold_zero = tokens[2] == b"0"
            noreply = tokens[-1] == b"noreply"
            valid = hold_zero or noreply if ntok == 4 else hold_zero and noreply
            if not valid:
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
    def _key_arg(tokens: list[bytes], out: bytearray) -> tuple[bytes, bool] | None:
        """``<cmd> <key> <value> [noreply]`` (incr, decr, touch): ``(key, noreply)``, or
        None once the error reply (if any) is in ``out``."""
        noreply = tokens[-1] == b"noreply"
        key = tokens[1]
        if len(key) > MAX_KEY_LENGTH:
            if not noreply:
                out += _BAD_FORMAT
            return None
        return key, noreply

    def _cmd_delta(self, tokens: list[bytes], out: bytearray) -> None:
        args = self._key_arg(tokens, out)
        if args is None:
            return
        key, noreply = args
        delta = strtoul(tokens[2], 64)
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
        args = self._key_arg(tokens, out)
        if args is None:
            return
        key, noreply = args
        exptime = strtol32(tokens[2])
        if exptime is None:
            if not noreply:
                out += _BAD_EXPTIME
            return
        hit = self.store.touch(key, exptime)
        if not noreply:
            out += _TOUCHED if hit else _NOT_FOUND

    def _cmd_gat(self, tokens: list[bytes], out: bytearray) -> None:
        exptime = strtol32(tokens[1])
        if exptime is None:
            out += _BAD_EXPTIME
            return
        self._retrieve(tokens[2:], tokens[0] == b"gats", exptime, out)

    def _cmd_flush_all(self, tokens: list[bytes], out: bytearray) -> None:
        noreply = tokens[-1] == b"noreply"
        delay = 0
        if len(tokens) + 1 != (3 if noreply else 2):
            parsed = strtol32(tokens[1])
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
        noreply = tokens[-1] == b"noreply"
        reply = _BAD_FORMAT if strtoul(tokens[1], 32) is None else _OK
        if not noreply:
            out += reply

    def _cmd_cache_memlimit(self, tokens: list[bytes], out: bytearray) -> None:
        noreply = tokens[-1] == b"noreply"
        mb = strtoul(tokens[1], 32)
        if mb is None:
            reply = _ERROR
        elif mb < 8:
            reply = b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n"
        elif mb > 1_000_000_000:
            reply = b"MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes\r\n"
        else:
            self.store.set_memory_limit(mb << 20)
            reply = _OK
        if not noreply:
            out += reply

    def _cmd_stats(self, tokens: list[bytes], out: bytearray) -> None:
        store = self.store
        if len(tokens) == 1:
            rows = store.stats()
        else:
            sub = tokens[1]
            if sub == b"reset":
                store.reset_stats()
                out += b"RESET\r\n"
                return
            if sub == b"detail":
                arg = tokens[2] if len(tokens) > 2 else b""
                if arg in (b"on", b"off"):
                    out += _OK
                elif arg == b"dump":
                    out += _END
                else:
                    out += b"CLIENT_ERROR usage: stats detail on|off|dump\r\n"
                return
            if sub == b"cachedump":
                self._cachedump(tokens, out)
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

    def _cachedump(self, tokens: list[bytes], out: bytearray) -> None:
        if len(tokens) < 4:
            out += b"CLIENT_ERROR bad command line\r\n"
            return
        clsid = strtoul(tokens[2], 32)
        limit = strtoul(tokens[3], 32)
        if clsid is None or limit is None:
            out += _BAD_FORMAT
            return
        if clsid >= 64:
            out += b"CLIENT_ERROR Illegal slab id\r\n"
            return
        for key, nbytes, exp in self.store.cachedump(clsid, limit):
            out += b"ITEM %b [%d b; %d s]\r\n" % (key, nbytes, exp)
        out += _END

    def _cmd_quit(self, tokens: list[bytes], out: bytearray) -> None:
        self._closed = True

    def _cmd_shutdown(self, tokens: list[bytes], out: bytearray) -> None:
        out += b"ERROR: shutdown not enabled\r\n"

    # -- meta set (the other meta commands: memcached_meta) ---------------------------

    def _meta_set(
        self, tokens: list[bytes], ntok: int, buf: bytearray, pos: int, out: bytearray
    ) -> None:
        if ntok < 3:
            out += _ERROR
            return
        if len(tokens[1]) > MAX_KEY_LENGTH or ntok == 3:
            out += _BAD_FORMAT
            return
        if ntok > META_MAX_TOKENS:
            out += b"CLIENT_ERROR options flags too long\r\n"
            return
        nbytes = strtol32(tokens[2])
        if nbytes is None or nbytes < 0 or nbytes > _INT_MAX - 2:
            out += _BAD_FORMAT
            return
        of = MetaFlags(tokens[1], tokens, 3)
        error = of.error
        ret_tokens = [t for t in tokens[3:] if t[0] in b"Okc"]
        mode = MS_MODES.get(of.mode)
        if error is None and mode is None:
            error = b"CLIENT_ERROR invalid mode for ms M token"
        if error is None and any(t[0] == 0x4F and len(t) > OPAQUE_MAX for t in ret_tokens):
            error = b"CLIENT_ERROR opaque token too long"
        if error is not None or mode is None:
            out += (error or b"") + b"\r\n"
            self._swallow = nbytes + 2
            return
        if of.has_cas and mode in (MODE_SET, MODE_REPLACE):
            mode = MODE_CAS
        pend = _PendingStore(mode, of.key, of.client_flags, of.exptime, nbytes, of.cas,
                             of.no_reply)
        pend.set_stale = of.set_stale and mode == MODE_CAS
        pend.meta = (ret_tokens, of.key_binary)
        admit_error = self._admit_value(pend, len(buf) - pos)
        if admit_error is not None:
            out += admit_error
            return
        self._pending = pend


_Handler = Callable[[MemcachedSession, list[bytes], bytearray], None]
_MetaHandler = Callable[[MemcachedSession, list[bytes], int, bytearray, int, bytearray], None]


def _stateless(fn: Callable[[MemcachedStore, list[bytes], int, bytearray], None]) -> _MetaHandler:
    """A meta command that needs only the store, as a session handler."""

    def handler(
        self: MemcachedSession, tokens: list[bytes], ntok: int, buf: bytearray, pos: int,
        out: bytearray,
    ) -> None:
        fn(self.store, tokens, ntok, out)

    return handler

_NO_LIMIT = 1 << 30
#: command -> (handler, fewest tokens, most tokens), counted as memcached does (the command
#: itself and a terminal token included)
_HANDLERS: dict[bytes, tuple[_Handler, int, int]] = {
    b"delete": (MemcachedSession._cmd_delete, 3, 5),
    b"incr": (MemcachedSession._cmd_delta, 4, 5),
    b"decr": (MemcachedSession._cmd_delta, 4, 5),
    b"touch": (MemcachedSession._cmd_touch, 4, 5),
    b"gat": (MemcachedSession._cmd_gat, 3, _NO_LIMIT),
    b"gats": (MemcachedSession._cmd_gat, 3, _NO_LIMIT),
    b"flush_all": (MemcachedSession._cmd_flush_all, 2, 4),
    b"version": (MemcachedSession._cmd_version, 2, _NO_LIMIT),
    b"verbosity": (MemcachedSession._cmd_verbosity, 3, 4),
    b"cache_memlimit": (MemcachedSession._cmd_cache_memlimit, 3, 4),
    b"stats": (MemcachedSession._cmd_stats, 2, _NO_LIMIT),
    b"quit": (MemcachedSession._cmd_quit, 2, _NO_LIMIT),
    b"shutdown": (MemcachedSession._cmd_shutdown, 2, _NO_LIMIT),
}
_META: dict[bytes, _MetaHandler] = {
    b"mg": _stateless(meta_get),
    b"ms": MemcachedSession._meta_set,
    b"md": _stateless(meta_delete),
    b"ma": _stateless(meta_arithmetic),
    b"me": _stateless(meta_debug),
    b"mn": _stateless(meta_noop),
}
