"""Single-threaded baseline servers on asyncio and uvloop, driving the same sans-I/O sessions.

This is the server a careful asyncio programmer writes: one event loop in one thread, an
``asyncio.Protocol`` per connection (no streams layer), replies written straight from
``data_received``.  It is the baseline the multi-threaded kqueue runtime has to beat, so it must
be neither crippled nor flattered:

* Sessions whose service never yields (memcached; RPC with the ``hash`` or ``spin`` model) are
  fed synchronously inside ``data_received``.  A hash or spin service time therefore blocks the
  whole loop, which is exactly what CPU work does to an event loop.
* Sessions with an awaitable service (RPC with the ``sleep`` model, ``session.needs_await``) are
  driven by one task per connection calling ``await session.afeed(data)``; the service time is
  ``await asyncio.sleep``, so the loop serves other connections meanwhile, as an asyncio user
  would write it.  Bytes that arrive while the task is busy are queued and fed in one batch
  (requests stay in order; pipelined replies come back in order).
* Flow control: when the transport's write buffer is above its high-water mark, or more than
  ``MAX_BACKLOG`` bytes wait for a busy task, reading from that connection pauses.
* ``ProtocolError`` aborts the connection; ``session.wants_close`` closes it after the pending
  reply is flushed; ``session.close()`` is always called when the connection goes away.

KV stores: ``--kv-executor`` wraps every RPC session in :class:`ExecutorSession`, which runs
each ``feed`` -- and so each store call -- in the loop's default executor (``await
loop.run_in_executor(None, ...)``), the way an asyncio user calls a blocking database; without
it the store is called on the loop thread.

``serve_asyncio`` runs in the calling thread until ``stop`` is set (polled every 50 ms), so it
can run in a thread (tests: see ``AioServer``) or in a subprocess (``python -m
skqueue.server.aio``, which prints ``LISTENING <host> <port>`` once ready and stops on SIGTERM
or SIGINT; it installs both handlers itself, because a process started from a background job
inherits SIGINT ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

from skqueue.server.proto_rpc import ProtocolError, Session

__all__ = ["AioServer", "ExecutorSession", "MAX_BACKLOG", "main", "make_listener", "serve_asyncio"]

MAX_BACKLOG = 1 << 20
_STOP_POLL_S = 0.05


def make_listener(host: str = "127.0.0.1", port: int = 0, backlog: int = 1024) -> socket.socket:
    """A listening, non-blocking TCP socket with SO_REUSEADDR (port 0 picks a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ExecutorSession:
    """Runs another session's ``feed`` in the event loop's default executor (see above)."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Session) -> None:
        self._inner = inner

    @property
    def wants_close(self) -> bool:
        return self._inner.wants_close

    @property
    def needs_await(self) -> bool:
        return True

    def feed(self, data: bytes) -> bytes:
        return self._inner.feed(data)

    async def afeed(self, data: bytes) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(None, self._inner.feed, data)

    def close(self) -> None:
        self._inner.close()


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_backlog",
        "_backlog_bytes",
        "_busy",
        "_conns",
        "_factory",
        "_paused_backlog",
        "_paused_write",
        "_task",
        "session",
        "transport",
    )

    def __init__(self, factory: Callable[[], Session], conns: set[_Connection]) -> None:
        self._factory = factory
        self._conns = conns
        self.session: Session | None = None
        self.transport: asyncio.Transport | None = None
        self._backlog: list[bytes] = []
        self._backlog_bytes = 0
        self._busy = False
        self._paused_write = False
        self._paused_backlog = False
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.session = self._factory()
        self._conns.add(self)

    def data_received(self, data: bytes) -> None:
        session = self.session
        transport = self.transport
        if session is None or transport is None:
            return
        if session.needs_await:
            self._backlog.append(data)
            self._backlog_bytes += len(data)
            if self._backlog_bytes > MAX_BACKLOG and not self._paused_backlog:
                self._paused_backlog = True
                self._update_reading()
            if not self._busy:
                self._busy = True
                self._task = asyncio.get_running_loop().create_task(self._drain())
            return
        try:
            out = session.feed(data)
        except ProtocolError:
            transport.abort()
            return
        if out:
            transport.write(out)
        if session.wants_close:
            transport.close()

    async def _drain(self) -> None:
        session = self.session
        transport = self.transport
        assert session is not None and transport is not None
        try:
            while self._backlog and not transport.is_closing():
                data = b"".join(self._backlog)
                self._backlog.clear()
                self._backlog_bytes = 0
                if self._paused_backlog:
                    self._paused_backlog = False
                    self._update_reading()
                try:
                    out = await session.afeed(data)
                except ProtocolError:
                    transport.abort()
                    return
                if transport.is_closing():
                    return
                if out:
                    transport.write(out)
                if session.wants_close:
                    transport.close()
                    return
        finally:
            self._busy = False
            self._task = None

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._paused_write or self._paused_backlog:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def pause_writing(self) -> None:
        self._paused_write = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._paused_write = False
        self._update_reading()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._conns.discard(self)
        task = self._task
        if task is not None:
            task.cancel()
        session = self.session
        if session is not None:
            session.close()
        self._backlog.clear()


async def _serve(
    sock: socket.socket,
    session_factory: Callable[[], Session],
    ready: threading.Event | None,
    stop: threading.Event | None,
    on_ready: Callable[[tuple[Any, ...]], None] | None,
) -> None:
    loop = asyncio.get_running_loop()
    conns: set[_Connection] = set()
    server = await loop.create_server(lambda: _Connection(session_factory, conns), sock=sock)
    try:
        if on_ready is not None:
            on_ready(sock.getsockname())
        if ready is not None:
            ready.set()
        while stop is None or not stop.is_set():
            await asyncio.sleep(_STOP_POLL_S)
    finally:
        server.close()
        for conn in list(conns):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)  # let connection_lost callbacks run
        await server.wait_closed()


def serve_asyncio(
    host: str,
    port: int,
    session_factory: Callable[[], Session],
    loop: str = "asyncio",
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
    *,
    sock: socket.socket | None = None,
    on_ready: Callable[[tuple[Any, ...]], None] | None = None,
    backlog: int = 1024,
) -> None:
    """Serve ``session_factory()`` sessions on one event loop until ``stop`` is set.

    ``loop`` is ``"asyncio"`` (the default selector loop) or ``"uvloop"``.  ``ready`` is set once
    the server accepts connections; ``on_ready(sockname)`` is called just before, which is how a
    caller that asked for port 0 learns the port (or pass an already listening ``sock``, e.g.
    from ``make_listener``; then ``host``/``port`` are ignored).  Blocks the calling thread.
    """
    if loop == "asyncio":
        factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    elif loop == "uvloop":
        import uvloop  # optional dependency: pip install skqueue[bench]

        factory = uvloop.new_event_loop
    else:
        raise ValueError(f"unknown loop {loop!r} (expected asyncio or uvloop)")
    if sock is None:
        sock = make_listener(host, port, backlog)
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve(sock, session_factory, ready, stop, on_ready))


class AioServer:
    """``serve_asyncio`` in a background thread: ``with AioServer(factory) as srv: srv.address``."""

    def __init__(
        self,
        session_factory: Callable[[], Session],
        host: str = "127.0.0.1",
        port: int = 0,
        loop: str = "asyncio",
    ) -> None:
        self._factory = session_factory
        self._loop = loop
        self._sock = make_listener(host, port)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"aio-{loop}", daemon=True)

    def _run(self) -> None:
        try:
            serve_asyncio(
                "", 0, self._factory, self._loop, self._ready, self._stop, sock=self._sock
            )
        except BaseException as exc:  # reported by start()/stop()
            self._error = exc
            self._ready.set()

    def start(self, timeout: float = 10.0) -> tuple[str, int]:
        """Start the thread and wait until the server accepts connections."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("aio server did not start")
        if self._error is not None:
            raise RuntimeError("aio server failed") from self._error
        return self.address

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop, close all connections and join the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()
        if self._error is not None:
            raise RuntimeError("aio server failed") from self._error

    def __enter__(self) -> AioServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _factory_from_args(args: argparse.Namespace) -> Callable[[], Session]:
    if args.proto == "memcached":
        from skqueue.server.proto_memcached import MemcachedSession, MemcachedStore

        store = MemcachedStore(memory_limit_mb=args.memory_mb)
        return lambda: MemcachedSession(store)
    from skqueue.server.kv import KVError, make_store
    from skqueue.server.proto_rpc import RpcSession
    from skqueue.server.service import make_service

    service = make_service(args.service)
    kind, _, path = args.kv.partition(":")
    try:
        kv = make_store("rocksdb" if kind == "rocks" else kind, path or None,
                        backend=args.kv_backend, keys=args.kv_keys,
                        release_gil=args.kv_release_gil)
    except (KVError, ValueError) as exc:
        raise SystemExit(f"skqueue.server.aio: {exc}") from None
    if kv is not None:
        how = "in the default executor" if args.kv_executor else "on the loop thread"
        print(f"KV store {kind} via {kv.backend}, called {how}: {kv.backend_reason}",
              file=sys.stderr, flush=True)
    if args.kv_executor:
        return lambda: ExecutorSession(RpcSession(service, kv))
    return lambda: RpcSession(service, kv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m skqueue.server.aio --proto rpc|memcached [--loop uvloop] [--port N]``."""
    p = argparse.ArgumentParser(prog="python -m skqueue.server.aio", description=__doc__)
    p.add_argument("--proto", choices=("rpc", "memcached"), default="rpc")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--service", choices=("sleep", "hash", "spin"), default="spin")
    p.add_argument("--kv", default="none", help="none | dict | rocks:<path> (rpc only)")
    p.add_argument("--kv-keys", type=int, default=0, help="preload N mixgraph keys")
    p.add_argument("--kv-backend", choices=("auto", "capi", "rocksdict"), default="auto")
    p.add_argument("--kv-release-gil", action="store_true", help="also in point get/put")
    p.add_argument("--kv-executor", action="store_true",
                   help="call the store in the loop's default executor (ExecutorSession)")
    p.add_argument("--memory-mb", type=int, default=None, help="memcached -m (MiB)")
    args = p.parse_args(argv)
    factory = _factory_from_args(args)

    def announce(name: tuple[Any, ...]) -> None:
        print(f"LISTENING {name[0]} {name[1]}", flush=True)

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve_asyncio(args.host, args.port, factory, args.loop, stop=stop, on_ready=announce)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0


if __name__ == "__main__":
    sys.exit(main())
