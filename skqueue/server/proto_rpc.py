"""Sans-I/O session of the ping-pong RPC protocol (``skqueue.rpcwire``; docs/semantics.md §6.2).

A session is the per-connection protocol state.  The runtime (or the asyncio baseline) reads
bytes from the socket, calls ``feed(data)`` and writes back whatever bytes it returns; the
session never touches a socket, a clock or a thread.

Requests and replies
    ECHO  (arg = µs)    the service model serves ``arg`` µs, then OK with ``arg`` and the
                        payload echoed back.
    TOUCH (arg = n)     the connection's ``touch_entries`` integers ("cache lines", 64 by
                        default) are visited ``n`` times consecutively from a random start,
                        modulo the table; payload ``b"\\x01"`` increments each visited entry,
                        anything else only reads it.  Reply OK, arg = sum of the visited values
                        (after incrementing) & 0xffffffff.
    GET / PUT / SEEK    through the KV store (``skqueue.server.kv``); UNSUPPORTED without one.
                        GET misses reply NOT_FOUND; SEEK replies arg = values read and payload =
                        the first value (NOT_FOUND when no key is at or after the one asked).
                        A PUT whose payload is inconsistent replies BAD_REQUEST (the framing is
                        intact, so the connection stays usable).  A store exception replies
                        SERVER_ERROR with the message as payload.
    anything else       UNSUPPORTED.

Bounds: an ECHO longer than ``max_service_us`` (10 s) or a TOUCH of more than ``max_touch``
(2**20) entries replies BAD_REQUEST instead of tying a worker up for hours (``arg`` is 32-bit).

Errors that break the framing itself (a length over ``max_body``) raise ``ProtocolError``; the
session then ``wants_close`` and the driver must close the connection.

Pipelining: one ``feed`` may contain several requests (and partial ones); replies come back
concatenated in request order.

Threads: the runtime may hand one connection to different worker threads over time, so ``feed``
takes a per-session lock (explicit, not the GIL) that also orders the memory effects between
those threads.  Shared objects (the KV store, the service model) are thread-safe themselves.

Async drivers: ``afeed`` is the same as ``feed`` except that ECHO's service time is awaited
through ``service.aserve``; ``needs_await`` says whether that can actually yield to the loop
(true for the sleep model only), so an event-loop driver can keep a synchronous fast path.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Protocol

from skqueue.rpcwire import (
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
    FrameError,
    FrameParser,
    encode,
    split_put,
)
from skqueue.server.kv import KVStore
from skqueue.server.service import Service

__all__ = ["ProtocolError", "RpcSession", "Session"]

_MASK64 = (1 << 64) - 1


class ProtocolError(Exception):
    """The peer broke the protocol beyond repair; close the connection."""


class Session(Protocol):
    """What a connection driver (the kqueue runtime, the asyncio baseline) needs of a session.

    ``feed`` may raise ``ProtocolError`` (close the connection, nothing to send); otherwise the
    driver writes the returned bytes and closes the connection once ``wants_close`` is true.
    ``close`` is called exactly when the connection goes away, whatever the reason.
    """

    @property
    def wants_close(self) -> bool: ...

    @property
    def needs_await(self) -> bool: ...

    def feed(self, data: bytes) -> bytes: ...

    async def afeed(self, data: bytes) -> bytes: ...

    def close(self) -> None: ...


class RpcSession:
    """Per-connection state of the RPC protocol; ``feed`` bytes in, get reply bytes out."""

    __slots__ = (
        "_closed",
        "_entries",
        "_lock",
        "_max_touch",
        "_parser",
        "_rng",
        "kv",
        "max_service_us",
        "requests",
        "service",
    )

    def __init__(
        self,
        service: Service,
        kv: KVStore | None = None,
        touch_entries: int = 64,
        rng: random.Random | None = None,
        max_body: int = MAX_BODY,
        max_service_us: int = 10_000_000,
        max_touch: int = 1 << 20,
    ) -> None:
        if touch_entries <= 0:
            raise ValueError("touch_entries must be positive")
        self.service = service
        self.kv = kv
        self._entries = [0] * touch_entries
        self._rng = rng if rng is not None else random.Random()
        self._parser = FrameParser(max_body)
        self._lock = threading.Lock()
        self._closed = False
        self.max_service_us = max_service_us
        self._max_touch = max_touch
        #: number of requests answered so far
        self.requests = 0

    @property
    def wants_close(self) -> bool:
        """True once the connection must be closed (after a ProtocolError)."""
        return self._closed

    @property
    def needs_await(self) -> bool:
        """True if ``afeed`` may yield to an event loop (the service model is async-capable)."""
        return bool(getattr(self.service, "is_async", False))

    def close(self) -> None:
        """The driver closed the connection; further input is ignored."""
        self._closed = True

    def _frames(self, data: bytes) -> list[tuple[int, int, bytes]]:
        if self._closed:
            return []
        try:
            return self._parser.feed(data)
        except FrameError as exc:
            self._closed = True
            raise ProtocolError(str(exc)) from exc

    def feed(self, data: bytes) -> bytes:
        """Consume ``data``; return the replies to every request it completes."""
        with self._lock:
            frames = self._frames(data)
            if not frames:
                return b""
            out = bytearray()
            serve = self.service.serve
            for us in self._replies(frames, out):
                serve(us)
            return bytes(out)

    async def afeed(self, data: bytes) -> bytes:
        """``feed`` for event loops: ECHO service time is ``await service.aserve(arg)``."""
        # No lock here: a coroutine must not hold a threading lock across an await, and an
        # event-loop driver serves one connection from one task only.
        frames = self._frames(data)
        if not frames:
            return b""
        out = bytearray()
        aserve = self.service.aserve
        for us in self._replies(frames, out):
            await aserve(us)
        return bytes(out)

    def _replies(self, frames: list[tuple[int, int, bytes]], out: bytearray) -> Iterator[int]:
        """Append the reply to each frame to ``out``, in order.  Each ECHO first yields its
        service time: the caller serves it (``feed``: blocking, ``afeed``: awaited)."""
        for op, arg, payload in frames:
            if op == OP_ECHO:
                if arg > self.max_service_us:
                    out += encode(ST_BAD_REQUEST, arg, b"service time too long")
                    continue
                yield arg
                out += encode(ST_OK, arg, payload)
            else:
                out += self._handle(op, arg, payload)
        self.requests += len(frames)

    def _handle(self, op: int, arg: int, payload: bytes) -> bytes:
        if op == OP_TOUCH:
            if arg > self._max_touch:
                return encode(ST_BAD_REQUEST, arg, b"touch count too large")
            return encode(ST_OK, self._touch(arg, payload == b"\x01"))
        if op in (OP_GET, OP_PUT, OP_SEEK):
            kv = self.kv
            if kv is None:
                return encode(ST_UNSUPPORTED)
            try:
                if op == OP_GET:
                    value = kv.get(payload)
                    if value is None:
                        return encode(ST_NOT_FOUND)
                    return encode(ST_OK, len(value), value)
                if op == OP_PUT:
                    try:
                        key, value = split_put(payload)
                    except FrameError as exc:
                        return encode(ST_BAD_REQUEST, 0, str(exc).encode())
                    kv.put(key, value)
                    return encode(ST_OK)
                count, first = kv.seek(payload, arg)
                if first is None:
                    return encode(ST_NOT_FOUND, count)
                return encode(ST_OK, count, first)
            except Exception as exc:  # a store failure must not kill the worker thread
                return encode(ST_SERVER_ERROR, 0, repr(exc).encode()[:1024])
        return encode(ST_UNSUPPORTED)

    def _touch(self, count: int, inc: bool) -> int:
        entries = self._entries
        size = len(entries)
        i = self._rng.randrange(size)
        total = 0
        for _ in range(count):
            v = entries[i]
            if inc:
                v = (v + 1) & _MASK64
                entries[i] = v
            total += v
            i += 1
            if i == size:
                i = 0
        return total & 0xFFFFFFFF
