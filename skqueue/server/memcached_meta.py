"""memcached's meta commands (mg, md, ma, me, mn; ms is in the session): sans-I/O functions.

Each function takes the store, the command's tokens (split as memcached splits them), the
token count as memcached counts it (terminal token included) and the output buffer, and
appends the reply.  ``MetaFlags`` checks the flags the way memcached 1.6.18's pre-parse does
(first error wins for a duplicate or unknown flag, the last one otherwise).  The semantics
and every reply were checked against memcached (tests/test_server_memcached_diff.py).
"""

from __future__ import annotations

import binascii
from collections.abc import Callable

from skqueue.server.memcached_store import (
    EXISTS,
    MAX_KEY_LENGTH,
    MODE_ADD,
    MODE_APPEND,
    MODE_PREPEND,
    MODE_REPLACE,
    MODE_SET,
    NON_NUMERIC,
    NOT_FOUND,
    NOT_STORED,
    OUT_OF_MEMORY,
    STORED,
    Item,
    MemcachedStore,
    item_total,
    slab_class,
    strtol32,
    strtoul,
)

__all__ = [
    "META_MAX_TOKENS",
    "META_RESULT",
    "MS_MODES",
    "OPAQUE_MAX",
    "MetaFlags",
    "echo_flags",
    "meta_arithmetic",
    "meta_debug",
    "meta_delete",
    "meta_get",
    "meta_key",
    "meta_noop",
]

_U32 = (1 << 32) - 1
#: More tokens than this (terminal included) and a meta command is refused.
META_MAX_TOKENS = 20
#: Longest opaque token (``O`` included).
OPAQUE_MAX = 32
_ERROR = b"ERROR\r\n"
_BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
_NON_NUMERIC = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
#: store() result -> ms reply code
META_RESULT = {STORED: b"HD", NOT_STORED: b"NS", EXISTS: b"EX", NOT_FOUND: b"NF"}
#: ms M token -> storage mode
MS_MODES = {
    0: MODE_SET,
    ord("S"): MODE_SET,
    ord("E"): MODE_ADD,
    ord("A"): MODE_APPEND,
    ord("P"): MODE_PREPEND,
    ord("R"): MODE_REPLACE,
}

_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def _b64decode(key: bytes) -> bytes | None:
    """Decode a base64 key, skipping characters outside the alphabet; None on failure."""
    clean = bytes(b for b in key if b in _B64_ALPHABET)
    if not clean or len(clean) % 4:
        return None
    body = clean.rstrip(b"=")
    if len(clean) - len(body) > 2 or b"=" in body:
        return None
    try:
        out = binascii.a2b_base64(clean)
    except binascii.Error:
        return None
    return out or None


def _b64encode(key: bytes) -> bytes:
    return binascii.b2a_base64(key, newline=False)


def meta_key(key: bytes, binary: bool) -> bytes:
    """The `` k<key>`` return flag (base64 plus `` b`` for a binary key)."""
    return b" k" + _b64encode(key) + b" b" if binary else b" k" + key


def _strtoul32(tok: bytes) -> int | None:
    return strtoul(tok, 32)


def _strtoull(tok: bytes) -> int | None:
    return strtoul(tok, 64)


_BAD_TOKEN = b"CLIENT_ERROR bad token in command line format"
#: meta flags with a number: flag -> (attribute, parser, error line (None: keep the one
#: already chosen), switch set when present)
_NUMERIC_FLAGS: dict[int, tuple[str, Callable[[bytes], int | None], bytes | None, str]] = {
    ord("N"): ("autoviv", strtol32, _BAD_TOKEN, "vivify"),
    ord("T"): ("exptime", strtol32, _BAD_TOKEN, "new_ttl"),
    ord("R"): ("recache", strtol32, _BAD_TOKEN, ""),
    ord("F"): ("client_flags", _strtoul32, None, ""),
    ord("C"): ("cas", _strtoull, _BAD_TOKEN, "has_cas"),
    ord("J"): ("initial", _strtoull, b"CLIENT_ERROR invalid numeric initial value", ""),
    ord("D"): ("delta", _strtoull, b"CLIENT_ERROR invalid numeric delta value", ""),
}
#: meta flags that only switch something on
_SWITCH_FLAGS = {
    ord("v"): "value",
    ord("u"): "no_update",
    ord("q"): "no_reply",
    ord("I"): "set_stale",
}


class MetaFlags:
    """The flags of one meta command, checked the way memcached's pre-parse checks them."""

    __slots__ = (
        "autoviv",
        "cas",
        "client_flags",
        "delta",
        "error",
        "exptime",
        "has_cas",
        "initial",
        "key",
        "key_binary",
        "mode",
        "new_ttl",
        "no_reply",
        "no_update",
        "recache",
        "set_stale",
        "value",
        "vivify",
    )

    def __init__(self, key: bytes, tokens: list[bytes], start: int) -> None:
        self.key = key
        self.key_binary = False
        self.vivify = self.value = self.no_update = self.no_reply = False
        self.set_stale = self.new_ttl = self.has_cas = False
        self.autoviv = self.exptime = self.recache = 0
        self.client_flags = 0
        self.cas = 0
        self.delta = 1
        self.initial = 0
        self.mode = 0
        #: None, or the error line (ends the parse for a duplicate or unknown flag)
        self.error: bytes | None = None
        has_error = False
        errstr = b"CLIENT_ERROR bad command line format"
        seen: set[int] = set()
        for tok in tokens[start:]:
            o = tok[0]
            if o >= 127 or o in seen:
                self.error = b"CLIENT_ERROR duplicate flag"
                return
            seen.add(o)
            numeric = _NUMERIC_FLAGS.get(o)
            if numeric is not None:
                attr, parse, error, switch = numeric
                v = parse(tok[1:])
                if v is None:
                    errstr = error or errstr
                    has_error = True
                    continue
                setattr(self, attr, v)
                if switch:
                    setattr(self, switch, True)
            elif o in _SWITCH_FLAGS:
                setattr(self, _SWITCH_FLAGS[o], True)
            elif o == 0x62:  # b
                decoded = _b64decode(self.key)
                if decoded is None:
                    errstr = b"CLIENT_ERROR error decoding key"
                    has_error = True
                else:
                    self.key = decoded
                self.key_binary = True
            elif o == 0x4D:  # M
                if len(tok) != 2:
                    errstr = b"CLIENT_ERROR incorrect length for M token"
                    has_error = True
                else:
                    self.mode = tok[1]
            elif o not in b"OPLkstcflh":
                self.error = b"CLIENT_ERROR invalid flag"
                return
        if has_error:
            self.error = errstr


def _echo(tok: bytes, key: bytes, binary: bool, line: bytearray) -> bool:
    """Append ``tok``'s return flag if it is ``O<opaque>`` or ``k`` (nothing otherwise);
    False if the opaque is too long."""
    o = tok[0]
    if o == 0x4F:  # O
        if len(tok) > OPAQUE_MAX:
            return False
        line += b" " + tok
    elif o == 0x6B:  # k
        line += meta_key(key, binary)
    return True


def echo_flags(tokens: list[bytes], key: bytes, binary: bool) -> bytes | None:
    """The `` O<opaque>`` and `` k<key>`` return flags, in order; None if an opaque is too
    long."""
    out = bytearray()
    for tok in tokens:
        if not _echo(tok, key, binary, out):
            return None
    return bytes(out)


def _ttl(item: Item, now: int) -> bytes:
    return b"-1" if item.exp == 0 else b"%d" % ((item.exp - now) & _U32)


_OPAQUE_TOO_LONG = b"CLIENT_ERROR opaque token too long\r\n"



def _head(tokens: list[bytes], ntok: int, too_long: bytes, out: bytearray) -> bool:
    """Checks common to mg/md/ma: False once the error reply is in ``out``."""
    if ntok < 3:
        out += _ERROR
        return False
    if len(tokens[1]) > MAX_KEY_LENGTH:
        out += _BAD_FORMAT
        return False
    if ntok > META_MAX_TOKENS:
        out += too_long
        return False
    return True


def _md_ma_flags(tokens: list[bytes], ntok: int, out: bytearray) -> MetaFlags | None:
    """md and ma: the common checks, then the flags; None once the error is in ``out``."""
    if not _head(tokens, ntok, b"CLIENT_ERROR options flags too long\r\n", out):
        return None
    of = MetaFlags(tokens[1], tokens, 2)
    if of.error is not None:
        out += b"CLIENT_ERROR invalid or duplicate flag\r\n"
        return None
    return of


def meta_get(
    store: MemcachedStore, tokens: list[bytes], ntok: int, out: bytearray
) -> None:
    if not _head(tokens, ntok, b"CLIENT_ERROR options flags are too long\r\n",
                           out):
        return
    of = MetaFlags(tokens[1], tokens, 2)
    if of.error is not None:
        out += of.error + b"\r\n"
        return
    key = of.key
    flag_tokens = tokens[2:]
    with store.transaction() as tx:
        item = tx.live(key)
        created = False
        if item is None and of.vivify:
            item = Item(b"", 0, 0, item_total(len(key), 0, 0))
            item.binkey = of.key_binary
            created = tx.link(key, item)
            if not created:
                item = None
        ttl_set = of.new_ttl
        if item is None:
            tx.count("cmd_touch" if ttl_set else "cmd_get")
            tx.count("touch_misses" if ttl_set else "get_misses")
            echo = echo_flags(flag_tokens, key, of.key_binary)
            if echo is None:
                out += _OPAQUE_TOO_LONG
            elif not of.no_reply:
                out += b"EN" + echo + b"\r\n"
            return
        line = bytearray(b"VA %d" % len(item.value) if of.value else b"HD")
        won = False
        now = tx.now
        for tok in flag_tokens:
            o = tok[0]
            if o == 0x54:  # T
                item.exp = tx.abs_exp(of.exptime)
            elif o == 0x4E:  # N
                if created:
                    item.exp = tx.abs_exp(of.autoviv)
                    won = True
            elif o == 0x52:  # R
                if (not item.won and not created and item.exp
                        and item.exp < tx.abs_exp(of.recache)):
                    won = True
            elif o == 0x73:  # s
                line += b" s%d" % len(item.value)
            elif o == 0x74:  # t
                line += b" t" + _ttl(item, now)
            elif o == 0x63:  # c
                line += b" c%d" % item.cas
            elif o == 0x66:  # f
                line += b" f%d" % item.flags
            elif o == 0x6C:  # l
                line += b" l%d" % ((now - item.atime) & _U32)
            elif o == 0x68:  # h
                line += b" h1" if item.fetched else b" h0"
            elif not _echo(tok, key, item.binkey, line):
                out += _OPAQUE_TOO_LONG
                return
        if item.won:
            line += b" Z"
        if item.stale:
            line += b" X"
            if not item.won:
                won = True
        if won:
            line += b" W"
            item.won = True
        out += line + b"\r\n"
        if of.value:
            out += item.value + b"\r\n"
        if not of.no_update:
            tx.bump(key, item)
        tx.count("cmd_touch" if ttl_set else "cmd_get")
        tx.count("touch_hits" if ttl_set else "get_hits")


def meta_delete(
    store: MemcachedStore, tokens: list[bytes], ntok: int, out: bytearray
) -> None:
    of = _md_ma_flags(tokens, ntok, out)
    if of is None:
        return
    echo = echo_flags(tokens[2:], of.key, of.key_binary)
    if echo is None:
        out += _OPAQUE_TOO_LONG
        return
    with store.transaction() as tx:
        item = tx.live(of.key)
        if item is None:
            tx.count("delete_misses")
            code = b"NF"
        elif of.has_cas and item.cas != of.cas:
            tx.count("delete_misses")
            code = b"EX"
        else:
            if of.set_stale:
                if of.new_ttl:
                    item.exp = tx.abs_exp(of.exptime)
                item.stale = True
                item.won = False
                item.cas = tx.next_cas()
            else:
                tx.count("delete_hits")
                tx.unlink(of.key)
            if of.no_reply:
                return
            code = b"HD"
    out += code + echo + b"\r\n"


def meta_arithmetic(
    store: MemcachedStore, tokens: list[bytes], ntok: int, out: bytearray
) -> None:
    of = _md_ma_flags(tokens, ntok, out)
    if of is None:
        return
    if of.mode in (0, 0x49, 0x2B):  # I +
        incr = True
    elif of.mode in (0x44, 0x2D):  # D -
        incr = False
    else:
        out += b"CLIENT_ERROR invalid mode for ma M token\r\n"
        return
    key = of.key
    store = store
    with store.transaction() as tx:
        result, value, item = store.delta_locked(tx, key, of.delta, incr, of.cas)
        created = False
        if result == NON_NUMERIC:
            out += _NON_NUMERIC
            return
        if result == OUT_OF_MEMORY:
            out += b"SERVER_ERROR out of memory\r\n"
            return
        silent = result == STORED and of.no_reply
        if result == NOT_FOUND and of.vivify:
            digits = b"%d" % of.initial
            item = Item(digits, 0, 0, item_total(len(key), len(digits), 0))
            item.binkey = of.key_binary
            if not tx.link(key, item):
                out += b"SERVER_ERROR Out of memory allocating new item\r\n"
                return
            value, created = of.initial, True
        if item is None:
            echo = echo_flags(tokens[2:], key, of.key_binary)
            if echo is None:
                out += _OPAQUE_TOO_LONG
            else:
                out += (b"EX" if result == EXISTS else b"NF") + echo + b"\r\n"
            return
        digits = b"%d" % value
        line = bytearray(b"VA %d" % len(digits) if of.value else b"HD")
        for tok in tokens[2:]:
            o = tok[0]
            if o == 0x63:  # c
                line += b" c%d" % item.cas
            elif o == 0x74:  # t
                line += b" t" + _ttl(item, tx.now)
            elif o == 0x54:  # T
                item.exp = tx.abs_exp(of.exptime)
            elif o == 0x4E:  # N
                if created:
                    item.exp = tx.abs_exp(of.autoviv)
            elif not _echo(tok, key, of.key_binary, line):
                out += _OPAQUE_TOO_LONG
                return
    if silent:
        return
    out += line + b"\r\n"
    if of.value:
        out += digits + b"\r\n"


def meta_debug(
    store: MemcachedStore, tokens: list[bytes], ntok: int, out: bytearray
) -> None:
    if ntok < 3 or len(tokens[1]) > MAX_KEY_LENGTH:
        out += _BAD_FORMAT
        return
    key = tokens[1]
    if ntok >= 4 and tokens[2] == b"b":
        decoded = _b64decode(key)
        if decoded is None:
            out += _BAD_FORMAT
            return
        key = decoded
    with store.transaction() as tx:
        item = tx.live(key)
        if item is None:
            out += b"EN\r\n"
            return
        shown = _b64encode(key) if item.binkey else key
        exp = -1 if item.exp == 0 else tx.now - item.exp
        out += b"ME %b exp=%d la=%d cas=%d fetch=%b cls=%d size=%d\r\n" % (
            shown,
            exp,
            tx.now - item.atime,
            item.cas,
            b"yes" if item.fetched else b"no",
            slab_class(item.total),
            item.total,
        )


def meta_noop(
    store: MemcachedStore, tokens: list[bytes], ntok: int, out: bytearray
) -> None:
    out += b"MN\r\n"
