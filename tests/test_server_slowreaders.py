"""Slow readers: clients that stop reading large replies, under every queue architecture.

Replies the peer does not take wait in a per-connection buffer (skqueue.server.runtime), so
a client that stops reading must not hold a worker: other clients keep being served, and
the slow client gets every byte once it reads again.  The limits: a connection over
``max_conn_output`` is closed (with a log line), all connections together over
``max_total_output`` stop being read (their requests wait, nothing is dropped), and a
connection whose replies are not read for ``write_idle_timeout`` seconds is closed, while
one that keeps reading, however slowly, is not.

The test protocol is line based: ``big N`` answers N pattern bytes, ``ping`` answers
``pong``.  Slow clients shrink their receive buffer so the server really has to buffer.
Every wait is "until it happens, within a generous bound".
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from skqueue.server.runtime import Server, ServerConfig

pytestmark = pytest.mark.timeout(120)

POLICIES = ["vanilla", "legacy", "rand", "best2", "best2_ws", "cpu2_ws"]
MiB = 1 << 20
_PATTERN = bytes(range(256)) * 4096  # 1 MiB


def pattern(n: int) -> bytes:
    return (_PATTERN * (n // len(_PATTERN) + 1))[:n]


class Blob:
    """``big N\\n`` -> N pattern bytes; ``ping\\n`` -> ``pong\\n``."""

    wants_close = False

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            if line == b"ping":
                out.append(b"pong\n")
            elif line.startswith(b"big "):
                out.append(pattern(int(line[4:])))
        return b"".join(out)


def slow_client(address: tuple[str, int]) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # keep the kernel's share small
    s.settimeout(30)
    s.connect(address)
    return s


def read_exactly(s: socket.socket, n: int, pause: float = 0.0) -> bytes:
    chunks = []
    got = 0
    while got < n:
        chunk = s.recv(min(1 << 16, n - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
        if pause:
            time.sleep(pause)
    return b"".join(chunks)


def at_eof(s: socket.socket) -> bool:
    try:
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                return True
    except ConnectionResetError:
        return True


def wait_for(pred: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def pings(address: tuple[str, int], clients: int, rounds: int) -> list[str]:
    """``clients`` threads doing ``rounds`` ping/pong round trips each; the failures."""
    failures: list[str] = []

    def one(k: int) -> None:
        try:
            with socket.create_connection(address, timeout=30) as c:
                for i in range(rounds):
                    c.sendall(b"ping\n")
                    if read_exactly(c, 5) != b"pong\n":
                        failures.append(f"client {k} round {i}: bad reply")
                        return
        except OSError as exc:
            failures.append(f"client {k}: {exc!r}")

    threads = [threading.Thread(target=one, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return failures


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(policy: str, **settings: Any) -> Server:
        s = Server(ServerConfig(policy=policy, threads=2, **settings), Blob)
        servers.append(s)
        s.start()
        return s

    yield make
    for s in servers:
        s.stop()


@pytest.mark.parametrize("policy", POLICIES)
def test_stalled_readers_do_not_stall_others_and_get_everything(
    serve: Callable[..., Server], policy: str
) -> None:
    srv = serve(policy)
    size = 8 * MiB
    slow = [slow_client(srv.address) for _ in range(3)]  # more than the 2 workers
    try:
        for s in slow:
            s.sendall(b"big %d\nping\n" % size)
        # the replies do not fit in the sockets: the server holds the rest for each of them
        assert wait_for(lambda: srv.dump()["output"]["writing"] == 3)
        # while none of them reads, every other client is served
        assert pings(srv.address, clients=4, rounds=50) == []
        assert srv.dump()["output"]["writing"] == 3  # still connected, still waiting
        # then they read, and get every byte, in order, and the reply queued behind
        for s in slow:
            assert read_exactly(s, size + 5) == pattern(size) + b"pong\n"
        assert wait_for(lambda: srv.dump()["output"]["pending_bytes"] == 0)
        for s in slow:  # and they are served normally afterwards
            s.sendall(b"ping\n")
            assert read_exactly(s, 5) == b"pong\n"
        d = srv.dump()
        assert d["output"]["writing"] == 0 and d["totals"]["blocked"] >= 3
        assert d["totals"]["errors"] == 0 and d["output"]["closed_idle"] == 0
    finally:
        for s in slow:
            s.close()


@pytest.mark.parametrize("policy", ["vanilla", "legacy", "best2_ws"])
def test_pipelined_requests_behind_a_stalled_reply_are_kept(
    serve: Callable[..., Server], policy: str
) -> None:
    # Input that arrives while a reply waits is neither lost nor reordered.
    srv = serve(policy)
    s = slow_client(srv.address)
    try:
        script = b"".join(b"big %d\nping\n" % (MiB + i) for i in range(12))
        s.sendall(script)
        expected = b"".join(pattern(MiB + i) + b"pong\n" for i in range(12))
        assert read_exactly(s, len(expected)) == expected
    finally:
        s.close()


@pytest.mark.parametrize("policy", POLICIES)
def test_connection_over_its_output_limit_is_closed_with_a_log(
    serve: Callable[..., Server], policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    srv = serve(policy, max_conn_output=MiB)
    greedy = slow_client(srv.address)
    try:
        with caplog.at_level(logging.WARNING, logger="skqueue.server"):
            greedy.sendall(b"big %d\n" % (24 * MiB))
            assert wait_for(lambda: srv.dump()["output"]["closed_over_limit"] == 1)
        assert any("max_conn_output" in r.getMessage() for r in caplog.records)
        assert at_eof(greedy)
        assert pings(srv.address, clients=2, rounds=20) == []
        assert srv.dump()["output"]["pending_bytes"] == 0
    finally:
        greedy.close()


@pytest.mark.parametrize("policy", POLICIES)
def test_total_output_limit_stops_reading_without_dropping(
    serve: Callable[..., Server], policy: str
) -> None:
    srv = serve(policy, max_total_output=4 * MiB)
    hog = slow_client(srv.address)
    other = socket.create_connection(srv.address, timeout=30)
    try:
        size = 24 * MiB
        hog.sendall(b"big %d\n" % size)
        assert wait_for(lambda: srv.dump()["output"]["pending_bytes"] > 4 * MiB)
        # over the total: a new request is not read (it waits in the kernel) ...
        other.sendall(b"ping\n")
        assert wait_for(lambda: srv.dump()["output"]["parked"] == 1)
        # ... and is answered once the hog has read enough, with nothing lost anywhere
        assert read_exactly(hog, size) == pattern(size)
        assert read_exactly(other, 5) == b"pong\n"
        d = srv.dump()["output"]
        assert d["parked"] == 0 and d["parks"] >= 1 and d["pending_bytes"] == 0
    finally:
        hog.close()
        other.close()


@pytest.mark.parametrize("policy", ["legacy", "best2_ws"])
def test_idle_limit_closes_stalled_but_not_slow_readers(
    serve: Callable[..., Server], policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    srv = serve(policy, write_idle_timeout=1.5)
    stalled = slow_client(srv.address)
    steady = slow_client(srv.address)
    size = 3 * MiB
    try:
        with caplog.at_level(logging.WARNING, logger="skqueue.server"):
            stalled.sendall(b"big %d\n" % size)
            steady.sendall(b"big %d\n" % size)
            # steady reads all along, slowly (longer than the idle limit): never cut off
            assert read_exactly(steady, size, pause=0.006) == pattern(size)
            assert wait_for(lambda: srv.dump()["output"]["closed_idle"] == 1)
        assert any("write_idle_timeout" in r.getMessage() for r in caplog.records)
        assert at_eof(stalled)
        steady.sendall(b"ping\n")
        assert read_exactly(steady, 5) == b"pong\n"
        assert srv.dump()["output"]["closed_idle"] == 1
    finally:
        stalled.close()
        steady.close()
