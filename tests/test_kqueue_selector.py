"""skqueue.selectors.KqueueSelector and skqueue.aio_loop: what CPython's own tests
(test_cpython_kqueue.py) do not pin down.

* a failed register/modify leaves no knote behind (CPython's kqueue selector may);
* select() reports READ and WRITE of one file object in one pair;
* BSD behaviour epoll does not have: a regular file can be registered;
* the loop factory, Runner, policy and run() all give a loop over KqueueSelector.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import socket
import sys
from collections.abc import Iterator

import pytest

from skqueue import aio_loop
from skqueue.selectors import KqueueSelector

R, W = selectors.EVENT_READ, selectors.EVENT_WRITE


@pytest.fixture
def sel() -> Iterator[KqueueSelector]:
    s = KqueueSelector()
    yield s
    s.close()


@pytest.fixture
def widowed_pipe() -> Iterator[int]:
    """The write end of a pipe whose reader is closed: READ on it is accepted, WRITE is
    refused with EPIPE (FreeBSD's pipe_kqfilter)."""
    r, w = os.pipe()
    os.close(r)
    yield w
    os.close(w)


def _knotes(sel: KqueueSelector) -> int:
    """How many knotes the selector's kqueue holds (for a key or not)."""
    n: int = sel._kq.dump()["knotes"]
    return n


def test_failed_register_leaves_no_knote(sel: KqueueSelector, widowed_pipe: int) -> None:
    with pytest.raises(BrokenPipeError):
        sel.register(widowed_pipe, R | W)
    with pytest.raises(KeyError):
        sel.get_key(widowed_pipe)
    assert _knotes(sel) == 0  # the READ half was added, then taken back
    sel.register(widowed_pipe, R)
    assert _knotes(sel) == 1


def test_failed_modify_unregisters(sel: KqueueSelector, widowed_pipe: int) -> None:
    sel.register(widowed_pipe, R, "data")
    with pytest.raises(BrokenPipeError):
        sel.modify(widowed_pipe, R | W)
    # as every stdlib selector: the file object is no longer registered, and no knote stays
    with pytest.raises(KeyError):
        sel.get_key(widowed_pipe)
    assert _knotes(sel) == 0
    assert sel.select(0) == []


def test_modify_keeps_the_unchanged_filter(sel: KqueueSelector) -> None:
    a, b = socket.socketpair()
    with a, b:
        b.send(b"x")
        key = sel.register(a, R)
        assert sel.select(5) == [(key, R)]
        key = sel.modify(a, R | W, "both")
        assert sel.select(5) == [(key, R | W)]
        key = sel.modify(a, W)
        assert sel.select(5) == [(key, W)]
        assert key.data is None


def test_read_and_write_come_in_one_pair(sel: KqueueSelector) -> None:
    a, b = socket.socketpair()
    with a, b:
        b.send(b"x")
        key = sel.register(a, R | W)
        ready = sel.select(5)
        assert ready == [(key, R | W)]


def test_regular_file_can_be_registered(sel: KqueueSelector, tmp_path: os.PathLike[str]) -> None:
    """kqueue's READ and WRITE filters apply to regular files (epoll refuses them)."""
    path = os.path.join(tmp_path, "f")
    with open(path, "wb") as f:
        f.write(b"abc")
    with open(path, "r+b") as f:
        key = sel.register(f, R | W)
        assert sel.select(5) == [(key, R | W)]
        f.read()
        assert sel.select(0) == [(key, W)]  # at end of file: not readable, still writable


def test_peer_close_is_readable(sel: KqueueSelector) -> None:
    a, b = socket.socketpair()
    with a:
        key = sel.register(a, R)
        assert sel.select(0) == []
        b.close()
        assert sel.select(5) == [(key, R)]
        assert a.recv(1) == b""


def test_unregister_after_close_and_select_after_unregister(sel: KqueueSelector) -> None:
    a, b = socket.socketpair()
    with b:
        sel.register(a, R | W)
        a.close()
        key = sel.unregister(a)  # found by identity: a.fileno() is -1 now
        assert key.events == R | W
        assert len(sel.get_map()) == 0
        assert sel.select(0) == []


def test_closed_selector(sel: KqueueSelector) -> None:
    a, b = socket.socketpair()
    with a, b:
        sel.register(a, R)
        view = sel.get_map()
        sel.close()
        with pytest.raises(RuntimeError):
            sel.get_key(a)
        with pytest.raises(KeyError):
            view[a]


async def _echo_once() -> tuple[bytes, type]:
    loop = asyncio.get_running_loop()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(await r.read(5))
        await w.drain()
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"hello")
    got = await r.readexactly(5)
    w.close()
    await w.wait_closed()
    server.close()
    await server.wait_closed()
    return got, type(loop._selector)  # type: ignore[attr-defined]


def test_runner_with_loop_factory() -> None:
    with asyncio.Runner(loop_factory=aio_loop.new_event_loop) as runner:
        assert runner.run(_echo_once()) == (b"hello", KqueueSelector)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.run(loop_factory=) is 3.12+")
def test_asyncio_run_with_loop_factory() -> None:
    run = asyncio.run
    assert run(_echo_once(), loop_factory=aio_loop.new_event_loop) == (  # type: ignore[call-arg]
        b"hello",
        KqueueSelector,
    )


def test_run_helper() -> None:
    assert aio_loop.run(_echo_once()) == (b"hello", KqueueSelector)


def test_policy() -> None:
    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(aio_loop.KqueueEventLoopPolicy())
    try:
        assert asyncio.run(_echo_once()) == (b"hello", KqueueSelector)
    finally:
        asyncio.set_event_loop_policy(old)


def test_subprocess_on_the_loop() -> None:
    async def main() -> tuple[bytes, int]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; sys.stdout.write(sys.stdin.read().upper())",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate(b"abc")
        return out, await proc.wait()

    assert aio_loop.run(main()) == (b"ABC", 0)
