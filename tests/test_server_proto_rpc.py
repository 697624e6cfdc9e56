"""RpcSession: feed-level tests of every op, pipelining, errors and thread-safety."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from skqueue.rpcwire import (
    HEADER,
    MAX_BODY,
    OP_ECHO,
    OP_GET,
    OP_PUT,
    OP_SEEK,
    OP_TOUCH,
    ST_BAD_REQUEST,
    ST_NOT_FOUND,
    ST_OK,
    ST_SERVER_ERROR,
    ST_UNSUPPORTED,
    FrameParser,
    encode,
    encode_put,
)
from skqueue.server.kv import DictKV
from skqueue.server.proto_rpc import ProtocolError, RpcSession


class FakeService:
    """Records service times instead of spending them."""

    name = "fake"

    def __init__(self, is_async: bool = False) -> None:
        self.is_async = is_async
        self.calls: list[int] = []
        self.acalls: list[int] = []
        self._lock = threading.Lock()

    def serve(self, us: int) -> None:
        with self._lock:
            self.calls.append(us)

    async def aserve(self, us: int) -> None:
        self.acalls.append(us)
        await asyncio.sleep(0)


def replies(data: bytes) -> list[tuple[int, int, bytes]]:
    parser = FrameParser()
    frames = parser.feed(data)
    assert parser.buffered == 0, "reply bytes must hold whole frames only"
    return frames


def one(session: RpcSession, request: bytes) -> tuple[int, int, bytes]:
    (frame,) = replies(session.feed(request))
    return frame


def make(**kw: object) -> tuple[RpcSession, FakeService]:
    svc = FakeService()
    return RpcSession(svc, rng=random.Random(1), **kw), svc  # type: ignore[arg-type]


def test_echo_serves_and_echoes() -> None:
    s, svc = make()
    assert one(s, encode(OP_ECHO, 10, b"hello")) == (ST_OK, 10, b"hello")
    assert one(s, encode(OP_ECHO, 0)) == (ST_OK, 0, b"")
    assert svc.calls == [10, 0]
    assert s.requests == 2
    assert not s.wants_close


def test_pipelined_requests_answer_in_order() -> None:
    s, svc = make(kv=DictKV())
    data = (
        encode(OP_ECHO, 1, b"a")
        + encode_put(b"k", b"v")
        + encode(OP_GET, 0, b"k")
        + encode(OP_ECHO, 2, b"b")
    )
    out = replies(s.feed(data))
    assert out == [(ST_OK, 1, b"a"), (ST_OK, 0, b""), (ST_OK, 1, b"v"), (ST_OK, 2, b"b")]
    assert svc.calls == [1, 2]


def test_partial_frames_byte_by_byte() -> None:
    s, svc = make()
    data = encode(OP_ECHO, 5, b"xyz") + encode(OP_ECHO, 6, b"")
    got = bytearray()
    for i in range(len(data)):
        got += s.feed(data[i : i + 1])
        if i < HEADER.size + 3 - 1:
            assert got == b"" and svc.calls == []
    assert replies(bytes(got)) == [(ST_OK, 5, b"xyz"), (ST_OK, 6, b"")]


def test_touch_increments_and_sums() -> None:
    s, _ = make()
    assert one(s, encode(OP_TOUCH, 1, b"\x01")) == (ST_OK, 1, b"")  # one entry becomes 1
    assert one(s, encode(OP_TOUCH, 64)) == (ST_OK, 1, b"")  # sum of all: only that one
    assert one(s, encode(OP_TOUCH, 64, b"\x01")) == (ST_OK, 64 + 1, b"")  # all +1: 63x1 + 1x2
    # touching 128 entries visits each twice: 1->2->3 (or 2->3->4 for the first one)
    assert one(s, encode(OP_TOUCH, 128, b"\x01")) == (ST_OK, 63 * (2 + 3) + (3 + 4), b"")
    assert one(s, encode(OP_TOUCH, 0)) == (ST_OK, 0, b"")
    assert one(s, encode(OP_TOUCH, 64, b"\x02")) == (ST_OK, 63 * 3 + 4, b"")  # not b"\x01": read


def test_touch_is_per_connection_and_uses_rng() -> None:
    a, _ = make()
    b, _ = make()
    one(a, encode(OP_TOUCH, 64, b"\x01"))
    assert one(b, encode(OP_TOUCH, 64)) == (ST_OK, 0, b"")
    # the start entry comes from the injected rng: same seed, same walk
    c = RpcSession(FakeService(), touch_entries=8, rng=random.Random(5))
    d = RpcSession(FakeService(), touch_entries=8, rng=random.Random(5))
    for s in (c, d):
        s.feed(encode(OP_TOUCH, 3, b"\x01"))
    probe = [one(c, encode(OP_TOUCH, 1)) for _ in range(20)]
    assert probe == [one(d, encode(OP_TOUCH, 1)) for _ in range(20)]
    assert {arg for _, arg, _ in probe} == {0, 1}


def test_touch_entries_validation() -> None:
    with pytest.raises(ValueError):
        RpcSession(FakeService(), touch_entries=0)


def test_kv_get_put_seek() -> None:
    kv = DictKV()
    s, _ = make(kv=kv)
    assert one(s, encode(OP_GET, 0, b"a")) == (ST_NOT_FOUND, 0, b"")
    for k in (b"a", b"c", b"e"):
        assert one(s, encode_put(k, k.upper() * 3)) == (ST_OK, 0, b"")
    assert kv.get(b"c") == b"CCC"
    assert one(s, encode(OP_GET, 0, b"c")) == (ST_OK, 3, b"CCC")
    assert one(s, encode(OP_SEEK, 5, b"b")) == (ST_OK, 2, b"CCC")  # c, e
    assert one(s, encode(OP_SEEK, 0, b"a")) == (ST_OK, 1, b"AAA")
    assert one(s, encode(OP_SEEK, 5, b"f")) == (ST_NOT_FOUND, 0, b"")
    assert one(s, encode_put(b"", b"empty-key")) == (ST_OK, 0, b"")
    assert one(s, encode(OP_GET, 0, b"")) == (ST_OK, 9, b"empty-key")


def test_kv_ops_without_store_are_unsupported() -> None:
    s, _ = make()
    for req in (encode(OP_GET, 0, b"a"), encode_put(b"a", b"b"), encode(OP_SEEK, 1, b"a")):
        assert one(s, req) == (ST_UNSUPPORTED, 0, b"")


def test_bad_put_payload_keeps_connection() -> None:
    s, _ = make(kv=DictKV())
    status, _, msg = one(s, encode(OP_PUT, 0, b"\x00"))
    assert status == ST_BAD_REQUEST and msg
    status, _, _ = one(s, encode(OP_PUT, 0, b"\x00\x09abc"))  # key length > payload
    assert status == ST_BAD_REQUEST
    assert one(s, encode(OP_ECHO, 1, b"ok")) == (ST_OK, 1, b"ok")
    assert not s.wants_close


def test_unknown_op_is_unsupported() -> None:
    s, _ = make()
    assert one(s, encode(77, 3, b"zzz")) == (ST_UNSUPPORTED, 0, b"")
    assert one(s, encode(OP_ECHO, 1)) == (ST_OK, 1, b"")


def test_store_failure_is_server_error() -> None:
    class Broken:
        def get(self, key: bytes) -> bytes | None:
            raise OSError("disk on fire")

        def put(self, key: bytes, value: bytes) -> None:
            raise OSError("disk on fire")

        def seek(self, key: bytes, n: int) -> tuple[int, bytes | None]:
            raise OSError("disk on fire")

    s = RpcSession(FakeService(), kv=Broken())
    for req in (encode(OP_GET, 0, b"a"), encode_put(b"a", b"b"), encode(OP_SEEK, 1, b"a")):
        status, _, msg = one(s, req)
        assert status == ST_SERVER_ERROR and b"disk on fire" in msg
    assert not s.wants_close


def test_oversized_frame_raises_protocol_error() -> None:
    s, _ = make()
    bad = HEADER.pack(MAX_BODY + 1, OP_ECHO, 0)
    with pytest.raises(ProtocolError):
        s.feed(encode(OP_ECHO, 1) + bad)
    assert s.wants_close
    assert s.feed(encode(OP_ECHO, 1)) == b""


def test_custom_max_body() -> None:
    s = RpcSession(FakeService(), max_body=8)
    assert one(s, encode(OP_ECHO, 1, b"12345678")) == (ST_OK, 1, b"12345678")
    with pytest.raises(ProtocolError):
        s.feed(encode(OP_ECHO, 1, b"123456789"))


def test_limits_on_service_time_and_touch() -> None:
    s, svc = make(max_service_us=1000, max_touch=100)
    status, arg, _ = one(s, encode(OP_ECHO, 1001))
    assert (status, arg) == (ST_BAD_REQUEST, 1001)
    assert svc.calls == []
    status, _, _ = one(s, encode(OP_TOUCH, 101))
    assert status == ST_BAD_REQUEST
    assert one(s, encode(OP_ECHO, 1000)) == (ST_OK, 1000, b"")
    assert not s.wants_close


def test_afeed_awaits_the_service() -> None:
    svc = FakeService(is_async=True)
    s = RpcSession(svc, kv=DictKV())
    assert s.needs_await
    data = encode(OP_ECHO, 7, b"p") + encode_put(b"k", b"v") + encode(OP_ECHO, 8)
    out = asyncio.run(s.afeed(data))
    assert replies(out) == [(ST_OK, 7, b"p"), (ST_OK, 0, b""), (ST_OK, 8, b"")]
    assert svc.acalls == [7, 8] and svc.calls == []
    assert not RpcSession(FakeService()).needs_await


def test_afeed_protocol_error() -> None:
    s = RpcSession(FakeService(is_async=True))
    with pytest.raises(ProtocolError):
        asyncio.run(s.afeed(HEADER.pack(MAX_BODY + 1, OP_ECHO, 0)))
    assert s.wants_close


def test_close_stops_processing() -> None:
    s, svc = make()
    s.close()
    assert s.wants_close
    assert s.feed(encode(OP_ECHO, 1)) == b""
    assert svc.calls == []


def test_concurrent_feeds_on_one_session() -> None:
    svc = FakeService()
    s = RpcSession(svc, rng=random.Random(2))
    n_threads, per = 4, 200
    outs: list[list[tuple[int, int, bytes]]] = [[] for _ in range(n_threads)]

    def worker(t: int) -> None:
        for i in range(per):
            outs[t] += replies(s.feed(encode(OP_ECHO, t, b"%d" % i)))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(n_threads):
        assert outs[n] == [(ST_OK, n, b"%d" % i) for i in range(per)]
    assert s.requests == n_threads * per
    assert len(svc.calls) == n_threads * per
