"""asyncio / uvloop baseline servers driven by real clients: pymemcache, memcslap, raw RPC."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skqueue.rpcwire import (
    HEADER,
    MAX_BODY,
    OP_ECHO,
    OP_GET,
    OP_SEEK,
    OP_TOUCH,
    ST_NOT_FOUND,
    ST_OK,
    FrameParser,
    encode,
    encode_put,
)
from skqueue.server.aio import AioServer, serve_asyncio
from skqueue.server.kv import DictKV
from skqueue.server.proto_memcached import MemcachedSession, MemcachedStore
from skqueue.server.proto_rpc import RpcSession, Session
from skqueue.server.service import HashService, Service, SleepService, SpinService

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_name(request: pytest.FixtureRequest) -> str:
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    return str(request.param)


@pytest.fixture
def mc_server(loop_name: str) -> Iterator[tuple[AioServer, MemcachedStore]]:
    store = MemcachedStore()
    with AioServer(lambda: MemcachedSession(store), loop=loop_name) as srv:
        yield srv, store


def _wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


# -- memcached through pymemcache --------------------------------------------------------------


def test_pymemcache_commands(mc_server: tuple[AioServer, MemcachedStore]) -> None:
    pytest.importorskip("pymemcache")
    from pymemcache.client.base import Client  # type: ignore[import-untyped]
    from pymemcache.exceptions import MemcacheClientError  # type: ignore[import-untyped]

    srv, store = mc_server
    c = Client(srv.address, connect_timeout=5, timeout=5)
    try:
        assert c.set("a", b"1", noreply=False) is True
        assert c.set("b", b"x" * 100_000) is True  # default noreply, large value
        assert c.get("a") == b"1"
        assert c.get("b") == b"x" * 100_000
        assert c.get("missing") is None
        value, cas = c.gets("a")
        assert value == b"1" and cas is not None
        assert c.cas("a", b"2", cas, noreply=False) is True
        assert c.cas("a", b"3", cas, noreply=False) is False  # stale cas unique
        assert c.cas("nokey", b"3", b"1", noreply=False) is None
        assert c.get("a") == b"2"
        assert c.incr("a", 40) == 42
        assert c.decr("a", 50) == 0
        assert c.incr("missing", 1) is None
        c.set("text", b"abc", noreply=False)
        with pytest.raises(MemcacheClientError):
            c.incr("text", 1)
        assert c.add("a", b"new", noreply=False) is False
        assert c.add("fresh", b"new", noreply=False) is True
        assert c.replace("fresh", b"newer", noreply=False) is True
        assert c.replace("nokey", b"v", noreply=False) is False
        assert c.append("fresh", b"-tail", noreply=False) is True
        assert c.prepend("fresh", b"head-", noreply=False) is True
        assert c.get("fresh") == b"head-newer-tail"
        assert c.touch("fresh", 100, noreply=False) is True
        assert c.touch("nokey", 100, noreply=False) is False
        assert c.delete("fresh", noreply=False) is True
        assert c.delete("fresh", noreply=False) is False
        assert c.set_many({"m1": b"1", "m2": b"2", "m3": b"3"}, noreply=False) == []
        assert c.get_many(["m1", "m2", "nokey", "m3"]) == {"m1": b"1", "m2": b"2", "m3": b"3"}
        stats = c.stats()
        assert stats[b"curr_items"] >= 5
        assert stats[b"pid"] == os.getpid()
        assert stats[b"curr_connections"] >= 1
        assert c.version() == store.version.encode()
        assert c.flush_all(noreply=False) is True
        assert c.get_many(["m1", "m2"]) == {}
        assert c.get("a") is None
    finally:
        c.close()


def test_connections_are_accounted_and_quit_closes(
    mc_server: tuple[AioServer, MemcachedStore],
) -> None:
    srv, store = mc_server
    socks = [socket.create_connection(srv.address, timeout=5) for _ in range(3)]
    assert _wait_for(lambda: store.curr_connections == 3)
    socks[0].sendall(b"quit\r\n")
    assert socks[0].recv(10) == b""  # the server closed the connection
    socks[1].sendall(b"\x80\x0a\x00\x00")  # binary protocol: refused
    assert socks[1].recv(10) == b""
    for s in socks:
        s.close()
    assert _wait_for(lambda: store.curr_connections == 0)
    assert store.total_connections == 3


def test_line_too_long_over_the_wire(mc_server: tuple[AioServer, MemcachedStore]) -> None:
    srv, _ = mc_server
    with socket.create_connection(srv.address, timeout=5) as s:
        s.sendall(b"set " + b"k" * 5000)
        data = b""
        while True:
            chunk = s.recv(100)
            if not chunk:
                break
            data += chunk
        assert data == b""  # closed without a reply, as memcached does


def test_memcslap(mc_server: tuple[AioServer, MemcachedStore]) -> None:
    exe = shutil.which("memcslap")
    if exe is None:
        pytest.skip("memcslap not installed (Debian libmemcached-tools; `make deps` installs it)")
    srv, store = mc_server
    host, port = srv.address
    for test in ("set", "get", "mget"):
        proc = subprocess.run(
            [
                exe,
                f"--servers={host}:{port}",
                "--concurrency=2",
                "--execute-number=300",
                f"--test={test}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    stats = dict(store.stats())
    assert int(stats["get_hits"]) > 0 and stats["get_misses"] == "0"


# -- RPC over raw sockets ----------------------------------------------------------------------


class RpcClient:
    """A blocking, sans-magic RPC client: encode, send, parse with FrameParser."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        self.parser = FrameParser()

    def call_many(self, requests: list[bytes]) -> list[tuple[int, int, bytes]]:
        self.sock.sendall(b"".join(requests))
        out: list[tuple[int, int, bytes]] = []
        while len(out) < len(requests):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed")
            out += self.parser.feed(chunk)
        return out

    def call(self, request: bytes) -> tuple[int, int, bytes]:
        (reply,) = self.call_many([request])
        return reply

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("service_name", ["spin", "hash", "sleep"])
def test_rpc_echo_touch_kv(loop_name: str, service_name: str) -> None:
    services: dict[str, Service] = {
        "spin": SpinService(),
        "hash": HashService(per_us=1.0),
        "sleep": SleepService(),
    }
    service = services[service_name]
    kv = DictKV()
    with AioServer(lambda: RpcSession(service, kv), loop=loop_name) as srv:
        c = RpcClient(srv.address)
        try:
            assert c.call(encode(OP_ECHO, 100, b"ping")) == (ST_OK, 100, b"ping")
            pipelined = [encode(OP_ECHO, i, b"%d" % i) for i in range(20)]
            assert c.call_many(pipelined) == [(ST_OK, i, b"%d" % i) for i in range(20)]
            assert c.call(encode(OP_TOUCH, 64, b"\x01")) == (ST_OK, 64, b"")
            assert c.call(encode_put(b"k1", b"v1")) == (ST_OK, 0, b"")
            assert c.call(encode_put(b"k2", b"v2")) == (ST_OK, 0, b"")
            assert c.call(encode(OP_GET, 0, b"k1")) == (ST_OK, 2, b"v1")
            assert c.call(encode(OP_GET, 0, b"nope")) == (ST_NOT_FOUND, 0, b"")
            assert c.call(encode(OP_SEEK, 10, b"k")) == (ST_OK, 2, b"v1")
            big = os.urandom(300_000)
            assert c.call(encode(OP_ECHO, 0, big)) == (ST_OK, 0, big)
        finally:
            c.close()


@pytest.mark.parametrize("service_name", ["spin", "sleep"])
def test_rpc_malformed_frame_closes(loop_name: str, service_name: str) -> None:
    service = SpinService() if service_name == "spin" else SleepService()
    with AioServer(lambda: RpcSession(service), loop=loop_name) as srv:
        with socket.create_connection(srv.address, timeout=5) as s:
            s.sendall(encode(OP_ECHO, 1, b"ok") + HEADER.pack(MAX_BODY + 1, OP_ECHO, 0))
            data = b""
            while True:
                try:
                    chunk = s.recv(1000)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
            # the server may or may not flush the first reply before aborting
            assert data in (b"", encode(0, 1, b"ok"))
        # the server survives and serves new connections
        c = RpcClient(srv.address)
        assert c.call(encode(OP_ECHO, 1, b"again")) == (ST_OK, 1, b"again")
        c.close()


class _OverlapProbe(SleepService):
    """SleepService whose requests keep sleeping (``asyncio.sleep``, in 20 ms steps)
    until ``n`` of them were in service at the same moment: every request completes only
    if the loop serves the other connections while one sleeps; served one at a time, the
    first would sleep until the clients time out."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.inflight = 0
        self.peak = 0
        self.sleeps = 0

    async def aserve(self, us: int) -> None:
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            while True:
                await super().aserve(us)
                self.sleeps += 1
                if self.peak >= self.n:
                    return
        finally:
            self.inflight -= 1


def test_asyncio_sleep_service_overlaps_connections(loop_name: str) -> None:
    """With the sleep model the single loop serves other connections while one 'sleeps'."""
    service = _OverlapProbe(6)
    with AioServer(lambda: RpcSession(service), loop=loop_name) as srv:
        clients = [RpcClient(srv.address) for _ in range(6)]
        try:
            for c in clients:
                c.sock.sendall(encode(OP_ECHO, 20_000, b"z"))
            for c in clients:
                reply: list[tuple[int, int, bytes]] = []
                while not reply:
                    chunk = c.sock.recv(100)
                    assert chunk, "server closed"
                    reply += c.parser.feed(chunk)
                assert reply == [(ST_OK, 20_000, b"z")]
        finally:
            for c in clients:
                c.close()
    assert service.peak == 6  # all six in service at once
    assert service.sleeps >= 6 and service.inflight == 0


def test_serve_asyncio_in_thread_with_events_and_port_zero() -> None:
    ready, stop = threading.Event(), threading.Event()
    bound: list[tuple[str, int]] = []
    store = MemcachedStore()

    def factory() -> Session:
        return MemcachedSession(store)

    t = threading.Thread(
        target=serve_asyncio,
        args=("127.0.0.1", 0, factory, "asyncio", ready, stop),
        kwargs={"on_ready": lambda name: bound.append((name[0], name[1]))},
    )
    t.start()
    try:
        assert ready.wait(5)
        assert bound and bound[0][1] != 0
        with socket.create_connection(bound[0], timeout=5) as s:
            s.sendall(b"set k 0 0 1\r\nv\r\nget k\r\n")
            want = b"STORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n"
            got = b""
            while len(got) < len(want):
                got += s.recv(100)
            assert got == want
    finally:
        stop.set()
        t.join(5)
    assert not t.is_alive()
    assert store.curr_connections == 0


def test_serve_asyncio_rejects_unknown_loop() -> None:
    with pytest.raises(ValueError):
        serve_asyncio("127.0.0.1", 0, lambda: RpcSession(SpinService()), loop="trio")


def test_module_main_in_subprocess() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "skqueue.server.aio",
            "--proto",
            "rpc",
            "--service",
            "spin",
            "--kv",
            "dict",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        tag, host, port = line.split()
        assert tag == "LISTENING"
        c = RpcClient((host, int(port)))
        assert c.call(encode_put(b"a", b"b")) == (ST_OK, 0, b"")
        assert c.call(encode(OP_GET, 0, b"a")) == (ST_OK, 1, b"b")
        c.close()
    finally:
        proc.terminate()
        proc.wait(10)


def _ignore_sigint() -> None:  # what a shell does to the commands of a background job
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_module_main_stops_on_signal_even_started_with_sigint_ignored(sig: int) -> None:
    # A process started from a background job inherits SIGINT ignored; the server must still
    # stop on SIGTERM (what the bench harness sends) and on SIGINT, and exit 0.
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "skqueue.server.aio", "--proto", "rpc", "--service", "sleep"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=_ignore_sigint,
    )
    try:
        assert proc.stdout is not None
        tag, host, port = proc.stdout.readline().split()
        assert tag == "LISTENING"
        c = RpcClient((host, int(port)))
        assert c.call(encode(OP_ECHO, 0, b"x"))[2] == b"x"
        proc.send_signal(sig)
        assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
        c.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
