"""Differential test: the same byte sequences to a real memcached and to MemcachedSession.

Each script is a list of steps sent in order on one connection.  A step is bytes, or a
function of memcached's reply to the previous step (to use a CAS value it returned).  After a
step that ends at a command boundary the test appends ``mn\\r\\n`` and reads until ``MN\\r\\n``,
so each step's reply is compared whole, whatever the timing; a ``Part`` step (half a command)
is sent without it.  A closed connection reads as ``<closed>`` and the script continues on a
new connection (a new session over the same store).

memcached runs without its LRU maintainer and crawler threads (see the fixture).  Both sides
see the same history from one fresh start (memcached started for this module, one
store here), so CAS uniques line up and are compared too.  Fields that depend on memcached's
one-second clock (remaining TTLs, last access) are masked on both sides.

Skipped when memcached is not installed (``make deps`` installs it).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from skqueue.bench.servers import ServerError, ServerProcess, ServerSpec, ServerUnavailable
from skqueue.server.proto_memcached import MemcachedSession, MemcachedStore

pytestmark = pytest.mark.timeout(120)

CLOSED = b"<closed>"
VERBOSE = False  # print every exchange (pytest -s) when changing the scripts


@dataclass(frozen=True)
class Part:
    """Bytes that leave a command unfinished: no barrier after them."""

    data: bytes


@dataclass(frozen=True)
class Closes:
    """Bytes after which the server closes the connection: read until it does."""

    data: bytes


Step = bytes | Part | Closes | Callable[[bytes], bytes]

_MASKS = [
    (re.compile(rb" t[1-9]\d*"), b" t?"),
    (re.compile(rb" l\d+"), b" l?"),
    (re.compile(rb"la=\d+"), b"la=?"),
    (re.compile(rb"exp=-?\d+"), b"exp=?"),
]


_MN_COMMAND = re.compile(rb"(?m)^mn[ \r]")


def mask(reply: bytes) -> bytes:
    for pattern, repl in _MASKS:
        reply = pattern.sub(repl, reply)
    return reply


def cas_of(reply: bytes) -> int:
    """The CAS unique in a ``gets`` or ``mg ... c`` reply."""
    m = re.search(rb"^VALUE \S+ \d+ \d+ (\d+)\r\n", reply) or re.search(rb" c(\d+)", reply)
    assert m, reply
    return int(m.group(1))


@pytest.fixture(scope="module")
def memcached() -> Iterator[tuple[str, int]]:
    # No LRU maintainer or crawler: their threads briefly hold references to items, and an
    # incr that meets one makes a new item instead of writing in place (a timing race).
    spec = ServerSpec("memcached", proto="memcached", threads=1,
                      extra_args=("-o", "no_lru_maintainer,no_lru_crawler"))
    proc = ServerProcess(spec)
    try:
        address = proc.start()
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    except ServerError as exc:
        pytest.skip(f"memcached did not start: {exc}")
    try:
        yield address
    finally:
        proc.stop()


class RealSide:
    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=10)
        return self.sock

    def send(self, data: bytes, barrier: bool | None) -> bytes:
        """Send; with ``barrier`` read the reply up to the barrier's ``MN``; with None read
        until the server closes the connection."""
        sock = self._connect()
        sock.sendall(data + (b"mn\r\n" if barrier else b""))
        if barrier is False:
            return b""
        # The step may hold ``mn`` commands of its own: wait for all their MNs and the
        # barrier's, however memcached splits its writes.
        wanted = 1 + len(_MN_COMMAND.findall(data))
        out = b""
        while barrier is None or not (out.endswith(b"MN\r\n") and out.count(b"MN\r\n") >= wanted):
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                sock.close()
                self.sock = None
                return out + CLOSED
            out += chunk
        return out[:-4]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


class OurSide:
    def __init__(self, store: MemcachedStore) -> None:
        self.store = store
        self.session = MemcachedSession(store)
        self.carry = b""  # replies to a Part step, read with the next step's

    def send(self, data: bytes, barrier: bool | None) -> bytes:
        s = self.session
        out, self.carry = self.carry + s.feed(data), b""
        if s.wants_close:
            s.close()
            self.session = MemcachedSession(self.store)
            return out + CLOSED
        if barrier is None:
            return out + b"<still open>"
        if not barrier:
            self.carry = out
            return b""
        out += s.feed(b"mn\r\n")
        assert out.endswith(b"MN\r\n"), out
        return out[:-4]


def run_script(address: tuple[str, int], store: MemcachedStore, steps: list[Step]) -> None:
    real, ours = RealSide(address), OurSide(store)
    try:
        previous = b""
        for i, step in enumerate([b"flush_all\r\n", *steps]):
            barrier: bool | None
            if isinstance(step, Part):
                data, barrier = step.data, False
            elif isinstance(step, Closes):
                data, barrier = step.data, None
            elif isinstance(step, bytes):
                data, barrier = step, True
            else:
                data, barrier = step(previous), True
            want = real.send(data, barrier)
            got = ours.send(data, barrier)
            if VERBOSE:
                print(f"{data[:60]!r}\n  -> {want[:200]!r}")
            assert mask(got) == mask(want), f"step {i}: {data[:80]!r}"
            previous = want
    finally:
        real.close()


@pytest.fixture(scope="module")
def store(memcached: tuple[str, int]) -> MemcachedStore:
    with socket.create_connection(memcached, timeout=10) as sock:
        sock.sendall(b"version\r\n")
        reply = sock.recv(100)
    assert reply.startswith(b"VERSION ") and reply.endswith(b"\r\n"), reply
    return MemcachedStore(version=reply[8:-2].decode())


def _set(key: bytes, value: bytes, flags: int = 0) -> bytes:
    return b"set %b %d 0 %d\r\n%b\r\n" % (key, flags, len(value), value)


def _big(key: bytes, n: int, flags: int = 0, cmd: bytes = b"set") -> bytes:
    return b"%b %b %d 0 %d\r\n" % (cmd, key, flags, n) + b"v" * n + b"\r\n"


# -- scripts ---------------------------------------------------------------------------------

NUMBERS: list[Step] = [
    b"set n +5 +0 +1\r\nx\r\n", b"get n\r\n",
    b"set n 000000000000000000005 000000000000000000000 000000000000000000001\r\n7\r\n",
    b"gets n\r\n",
    b"set n 0000000000000000000005 0 1\r\n7\r\n", b"get n\r\n",
    b"set k 4294967296 0 1\r\nx\r\n", b"get k\r\n", b"set k 4294967297 0 1\r\nx\r\n",
    b"get k\r\n", b"set k 18446744073709551615 0 1\r\nx\r\n", b"get k\r\n",
    b"set k 18446744073709551616 0 1\r\nx\r\n", b"set k -1 0 1\r\nx\r\n",
    b"set k -0 0 1\r\nx\r\n", b"set k -4294967295 0 1\r\nx\r\n", b"get k\r\n",
    b"set e 0 2147483648 1\r\nx\r\n", b"get e\r\n", b"set e 0 -2147483649 1\r\nx\r\n",
    b"get e\r\n", b"set e 0 9223372036854775808 1\r\nx\r\n",
    b"set k 0 0 4294967297\r\nx\r\n", b"get k\r\n", b"set k 0 0 2147483646\r\nx\r\n",
    b"set k 0 0 +0\r\n\r\n", b"set k 0 0 -0\r\n\r\n", b"get k\r\n",
    b"set k 0 0 1x\r\nx\r\n", b"set k 0x1 0 1\r\nx\r\n", b"set k 0\t 0 1\r\nx\r\n",
    b"set k 0 0 1\t\r\nx\r\n", b"set k 0 0 1\x0b\r\nx\r\n", b"get\tk\r\n", b"get k\r\n",
    b"set c 0 0 2\r\n10\r\n", b"incr c +3\r\n", b"incr c 000000000000000000003\r\n",
    b"incr c 0000000000000000000003\r\n", b"incr c -3\r\n", b"incr c -0\r\n",
    b"incr c 18446744073709551616\r\n", b"incr c 1.5\r\n", b"decr c +1\r\n",
    b"touch c +10\r\n", b"touch c -0\r\n", b"touch c 1x\r\n", b"get c\r\n",
    b"gets c\r\n",
]

INCR_VALUES: list[Step] = [
    step
    for value in (b" 12", b"12 ", b"+12", b"-12", b"-0", b"1 2", b"", b"12a", b"12\r\n",
                  b"000000000000000000012", b"0000000000000000000000000012", b"\t5",
                  b"18446744073709551615", b"18446744073709551616", b"99999999999999999999")
    for step in (_set(b"v", value), b"incr v 1\r\n", b"get v\r\n", b"decr v 1\r\n", b"gets v\r\n")
] + [
    _set(b"d", b"100"), b"decr d 1\r\n", b"get d\r\n", b"gets d\r\n", b"incr d 1\r\n",
    b"get d\r\n", b"incr d 1000\r\n", b"get d\r\n", b"decr d 1099\r\n", b"get d\r\n",
    _set(b"w", b"18446744073709551615"), b"incr w 1\r\n", b"get w\r\n", b"incr w 5\r\n",
    b"gets w\r\n", _set(b"z", b"5", flags=7), b"incr z 100\r\n", b"get z\r\n",
]

SIZES: list[Step] = [
    _big(b"k", 1048516), b"mg k s\r\n", _big(b"k", 1048517), b"mg k s\r\n",
    _big(b"k", 1048512, flags=5), _big(b"k", 1048511, flags=5), b"mg k s f\r\n",
    _big(b"K" * 250, 1048267), _big(b"K" * 250, 1048268), b"mg " + b"K" * 250 + b" s\r\n",
    _big(b"ap", 1048514), b"append ap 0 0 1\r\ny\r\n", b"append ap 0 0 1\r\ny\r\n",
    b"prepend ap 0 0 1\r\ny\r\n", b"mg ap s\r\n",
    _big(b"ap", 1048000), _big(b"ap", 1000, cmd=b"append"), _big(b"ap", 1000, cmd=b"prepend"),
    _big(b"ap", 10, cmd=b"append"), b"mg ap s\r\n",
    _big(b"ap", 2000000, cmd=b"append"), b"mg ap s\r\n",
    b"set big 0 0 2000000 noreply\r\n" + b"y" * 2000002, b"get big\r\n",
    Part(b"set big 0 0 2000000\r\n" + b"y" * 1000), b"y" * 1999000 + b"\r\n",
    _set(b"old", b"x"), _big(b"old", 2000000), b"get old\r\n",
    _set(b"old", b"x"), _big(b"old", 2000000, cmd=b"add"), b"get old\r\n",
    b"ms old 2000000\r\n" + b"y" * 2000002, b"mg old v\r\n",
    _set(b"old", b"x"), b"ms old 2000000 ME q\r\n" + b"y" * 2000002, b"mg old v\r\n",
]

LINES: list[Step] = [
    b"gat 10\r\n", b"gats 10\r\n", b"gat\r\n", b"get \r\n", b"bget a\r\n", b"gets\r\n",
    _set(b"a", b"1"), b"bget a\r\n", b"get " + b"k" * 250 + b"\r\n",
    b"get a " + b"k" * 251 + b"\r\n", b"gat 0 a " + b"k" * 251 + b"\r\n",
    b"delete a 0 noreply\r\n", b"delete a 5 noreply\r\n", b"delete a 5\r\n",
    b"delete a noreply\r\n", b"delete a 0 0\r\n", b"delete a b c d\r\n",
    b"delete " + b"k" * 251 + b"\r\n", b"delete " + b"k" * 2100 + b"\r\n",
    b"flush_all 0 x\r\n", b"flush_all x\r\n", b"flush_all x noreply\r\n", b"flush_all -1\r\n",
    b"flush_all 1 2 3\r\n", b"flush_all noreply\r\n",
    b"verbosity\r\n", b"verbosity x\r\n", b"verbosity x noreply\r\n", b"verbosity 1 2\r\n",
    b"verbosity 1 noreply\r\n",
    b"cache_memlimit 0\r\n", b"cache_memlimit x\r\n", b"cache_memlimit 7 noreply\r\n",
    b"cache_memlimit 2000000000\r\n", b"cache_memlimit 64\r\n", b"cache_memlimit\r\n",
    b"stats reset x\r\n", b"stats detail\r\n", b"stats detail on\r\n", b"stats detail x\r\n",
    b"stats detail dump\r\n", b"stats detail off\r\n", b"stats bogus\r\n",
    b"stats cachedump\r\n", b"stats cachedump 1\r\n", b"stats cachedump x y\r\n",
    b"stats cachedump 99 1\r\n", b"stats cachedump 64 1\r\n", b"stats cachedump 0 1\r\n",
    b"stats cachedump 0 0 0\r\n", b"stats cachedump -1 1\r\n",
    b"shutdown\r\n", b"shutdown x\r\n", b"bogus\r\n", b"x\r\n", b"\r\n", b"GET a\r\n",
    b"set k 0 0 1 a b\r\nx\r\n", b"set k 0 0\r\n", b"incr\r\n", b"touch a\r\n",
    b"set k 0 0 noreply\r\nx\r\n", b"cas k 0 0 1 noreply\r\nx\r\n",
    b"set k 0 0 1\r\nxyz\r\n", b"set k 0 0 1 noreply\r\nxyz\r\n", b"ms k 1 q\r\nxyz\r\n",
    b"   get " + b"k " * 3000 + b"\r\n", b"get " + b"a " * 40 + b"\r\n",
    b"set a\x00junk 0 0 1\r\nx\r\n", b"get a\r\n",
    b"GET / HTTP/1.1\r\n", b"version\r\n",
    Closes(b"set " + b"k" * 5000), b"version\r\n",
    Part(b"get " + b"k " * 3000), b"\r\n",
    Part(b"get " + b"k" * 300), Part(b"k" * 3000), b"\r\n",
    b"\x80\x01\x00\x00 x\r\n",  # the binary magic in mid-stream is text
    b"quit\r\n", b"version\r\n",
]

META: list[Step] = [
    b"mg foo\r\n", b"mg foo v\r\n", b"mg foo q\r\n", b"mg foo q v k\r\n", b"mg foo k Oab\r\n",
    b"ms foo 3\r\nbar\r\n", b"mg foo\r\n", b"mg foo v\r\n", b"mg foo v k f s t c\r\n",
    b"mg foo k v Oabc q\r\n", b"mg foo h l t\r\n", b"mg foo u h\r\n", b"mg foo Pp Lx v\r\n",
    b"ms foo 3 F5 T0 c k Oxx\r\nbaz\r\n", b"mg foo v f t c s k\r\n", b"ms foo 3 q\r\nbaz\r\n",
    b"ms foo 3 MX\r\nbaz\r\n", b"ms foo 3 ME\r\nbaz\r\n", b"ms foo 3 ME q\r\nbaz\r\n",
    b"ms new 3 MR\r\nbaz\r\n", b"ms foo 1 MA\r\n1\r\n", b"ms foo 1 MP\r\n0\r\n",
    b"mg foo v\r\n", b"ms foo 1 Ma\r\n1\r\n", b"ms foo 1 MAA\r\n1\r\n", b"ms foo 1 MS\r\n1\r\n",
    b"ms foo 1 C1\r\nx\r\n", b"ms foo 1 C1 q\r\nx\r\n", b"ms nope 1 C1\r\nx\r\n",
    b"ms nope 1 C1 ME\r\nx\r\n", b"ms nope 1 MA C1\r\nx\r\n",
    b"ms foo\r\n", b"ms foo x\r\nx\r\n", b"ms foo -1\r\n", b"ms\r\n", b"mg\r\n", b"md\r\n",
    b"ma\r\n", b"me\r\n", b"mx foo\r\n", b"mgg foo\r\n",
    b"mg foo zz\r\n", b"mg foo v v\r\n", b"mg foo !\r\n", b"mg foo \xff\r\n",
    b"mg foo O" + b"o" * 31 + b"\r\n", b"mg foo O" + b"o" * 32 + b"\r\n",
    b"mg nope O" + b"o" * 32 + b"\r\n", b"mg nope q O" + b"o" * 32 + b"\r\n",
    b"ms foo 1 O" + b"o" * 32 + b"\r\nx\r\n", b"ms foo 1 O" + b"o" * 32 + b" MX\r\nx\r\n",
    b"ms foo 1 Fx\r\nx\r\n", b"ms foo 1 Tx\r\nx\r\n", b"ms foo 1 Cx\r\nx\r\n",
    b"ms foo 1 F4294967296 c\r\nx\r\n", b"mg foo f v\r\n", b"ms foo 1 F-1\r\nx\r\n",
    b"mg foo Nx\r\n", b"mg foo Rx\r\n", b"mg foo T\r\n",
    b"mg " + b"k" * 251 + b" v\r\n", b"ms " + b"k" * 251 + b" 1\r\nx\r\n",
    b"mg foo " + b" ".join(b"%c" % c for c in b"vkfstchlu") + b" O1 P2 L3 q\r\n",
    b"mg foo " + b" ".join(b"P%d" % i for i in range(19)) + b"\r\n",
    b"ms foo 1 " + b" ".join(b"P%d" % i for i in range(18)) + b"\r\nx\r\n",
    b"md foo " + b" ".join(b"P%d" % i for i in range(18)) + b"\r\n",
    # vivify and recache
    b"mg viv N30 v c\r\n", b"mg viv N30 v\r\n", b"mg viv v s\r\n", b"ms viv 2 T0\r\nok\r\n",
    b"mg viv v N30\r\n", b"mg viv R30 v\r\n", b"ms viv 2 T100\r\nok\r\n",
    b"mg viv R30 v\r\n", b"mg viv R300 v\r\n", b"mg viv R300 v\r\n", b"mg viv2 N30 q k\r\n",
    b"mg viv2 q k\r\n", b"mg viv3 N-1 v\r\n", b"mg viv3 v\r\n",
    # base64 keys
    b"ms Zm9v 2 b\r\nhi\r\n", b"mg foo v\r\n", b"mg Zm9v b v k\r\n", b"mg Zm9v v k b\r\n",
    b"ms AAEC 1 b k c\r\n\x00\r\n", b"mg AAEC b k v\r\n", b"md AAEC b k q\r\n",
    b"mg AAEC b k\r\n", b"mg @@@@ b\r\n", b"mg Zm9 b\r\n", b"ma Zm9v b\r\n", b"me Zm9v b\r\n",
    b"me Zm9v\r\n", b"me AAEC b\r\n", b"me Zm9v x\r\n", b"me Zm9v b b\r\n",
    b"stats cachedump 0 0\r\n", b"flush_all\r\n", _set(b"c1", b"1"), _set(b"c2", b"22"),
    b"ms c3 3 T0\r\n333\r\n", _set(b"c4", b"4" * 500), b"stats cachedump 1 0\r\n",
    b"stats cachedump 1 2\r\n", b"stats cachedump 2 0\r\n", b"stats cachedump 9 0\r\n",
    b"ms Zm9v 2 b\r\nhi\r\n", b"stats cachedump 1 0\r\n",
]

META_WRITE: list[Step] = [
    b"md foo\r\n", b"md foo q\r\n", b"md foo k Oa\r\n", b"ms foo 2\r\nhi\r\n",
    b"md foo k Oa\r\n", b"ms foo 2\r\nhi\r\n", b"md foo q\r\n", b"mg foo\r\n",
    b"ms foo 2\r\nhi\r\n", b"mg foo c\r\n", b"md foo C1\r\n", b"md foo C1 q\r\n",
    lambda prev: b"md foo C%d\r\n" % (cas_of(prev) + 1) if b" c" in prev else b"mn\r\n",
    b"mg foo c\r\n", lambda prev: b"md foo C%d k\r\n" % cas_of(prev),
    b"ms foo 2\r\nhi\r\n", b"md foo I T30\r\n", b"mg foo v c t\r\n", b"mg foo v c t\r\n",
    b"mg foo c\r\n", lambda prev: b"ms foo 2 C%d I c\r\nyo\r\n" % (cas_of(prev) - 1),
    b"mg foo v c\r\n", b"ms foo 2 C999999 I\r\nyo\r\n", b"mg foo v c\r\n",
    b"md foo I q\r\n", b"mg foo v\r\n", b"mg foo v\r\n", b"ms foo 2\r\nok\r\n", b"mg foo v\r\n",
    b"md foo x\r\n", b"md foo I I\r\n", b"md foo Cx\r\n", b"md foo O" + b"o" * 32 + b"\r\n",
    b"md nope O" + b"o" * 32 + b"\r\n", b"md nope T5\r\n", b"md " + b"k" * 251 + b"\r\n",
    b"ma cnt\r\n", b"ma cnt q\r\n", b"ma cnt q Oa k\r\n", b"ma cnt N0\r\n", b"ma cnt v\r\n",
    b"ma cnt v D10\r\n", b"ma cnt v MD D3\r\n", b"ma cnt v M- D100\r\n",
    b"ma cnt v M+ t c k\r\n", b"ma cnt MI v\r\n", b"ma cnt2 N0 J42 v\r\n",
    b"ma cnt2 N100 J42 v t\r\n", b"ma cnt3 N0 J42 q\r\n", b"ma cnt3 q\r\n", b"mg cnt3 v\r\n",
    b"ma cnt3 C1 v\r\n", b"mg cnt3 c\r\n", lambda prev: b"ma cnt3 C%d v c\r\n" % cas_of(prev),
    b"ma cnt3 Mx\r\n", b"ma cnt3 MDD\r\n", b"ma cnt3 Dabc\r\n", b"ma cnt3 D-1\r\n",
    b"ma cnt3 D+5 v\r\n", b"ma cnt3 J5\r\n", b"ma cnt3 Jx\r\n", b"ma cnt3 O" + b"o" * 32 + b"\r\n",
    b"ma nope O" + b"o" * 32 + b"\r\n", b"ma " + b"k" * 251 + b"\r\n",
    b"ms s 1\r\na\r\n", b"ma s\r\n", b"ma s q\r\n", b"ms s 0\r\n\r\n", b"ma s\r\n",
    b"ms w 20\r\n18446744073709551615\r\n", b"ma w v\r\n", b"mg w v\r\n", b"ma w v MD\r\n",
    b"ms p 3\r\n100\r\n", b"ma p MD v\r\n", b"mg p v s\r\n", b"ma p D1000 v\r\n",
    b"mg p v s\r\n",
    b"me cnt3\r\n", b"me nope\r\n", b"me p\r\n", b"mg p v\r\n", b"me p\r\n",
    b"me " + b"k" * 251 + b"\r\n",
    b"mn\r\n", b"mn x y\r\n",
]


@pytest.mark.parametrize(
    "name", ["NUMBERS", "INCR_VALUES", "SIZES", "LINES", "META", "META_WRITE"]
)
def test_same_replies_as_memcached(
    memcached: tuple[str, int], store: MemcachedStore, name: str
) -> None:
    run_script(memcached, store, globals()[name])
