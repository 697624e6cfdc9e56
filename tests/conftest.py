"""Shared fixtures for the kqueue(2) conformance suite (tests/test_core_*.py).

The suite re-creates, in Python, what FreeBSD's ``tests/sys/kqueue/libkqueue`` and
libkqueue's ``test/`` check per filter and per flag, against skqueue's public API only
(``skqueue.kqueue``, ``skqueue.kevent`` and the constants).

Fixtures:

* ``kq``        -- a fresh ``skqueue.kqueue()``, closed at teardown; parametrized over
                   legacy mode and SKQ multi mode (``KQ_MODES`` below);
* ``sockpair``  -- a connected non-blocking AF_UNIX stream pair;
* ``tcp_pair``  -- a connected non-blocking TCP pair on 127.0.0.1 (client, server side);
* ``pipe_fds``  -- ``(read_fd, write_fd)`` of a non-blocking pipe;
* ``h``         -- the :class:`Helpers` namespace below (poll / wait / change helpers);
* ``legacy_only`` -- skips the test in multi mode;
* ``kq_mode``   -- the mode of ``kq`` ("legacy" or a policy label).

Helpers are exposed through a fixture rather than imported from this module so the
suite works whether or not ``tests`` becomes a package.

Timing rule for the whole suite: never assert an upper bound tighter than "within 1 s"
(or a few seconds for close/teardown), and lower bounds only as "at least".
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

import skqueue

# Generous ceiling for "the event must arrive": the suite asserts "within 1 s" only.
WAIT = 1.0


class Helpers:
    """Small helpers shared by the conformance tests (no state)."""

    WAIT = WAIT

    @staticmethod
    def change(
        kq: Any,
        ident: Any,
        filt: int,
        flags: int = skqueue.EV_ADD,
        fflags: int = 0,
        data: int = 0,
        udata: Any = None,
    ) -> None:
        """Apply one change with no event slots (errors raise OSError)."""
        kq.control([skqueue.kevent(ident, filt, flags, fflags, data, udata)], 0)

    @staticmethod
    def change_err(
        kq: Any,
        ident: Any,
        filt: int,
        flags: int = skqueue.EV_ADD,
        fflags: int = 0,
        data: int = 0,
        udata: Any = None,
    ) -> int:
        """Apply one change with one slot; return the errno of its EV_ERROR entry (0 if none).

        The caller asserts on the value; a success without EV_RECEIPT returns no entry."""
        evs = kq.control([skqueue.kevent(ident, filt, flags, fflags, data, udata)], 1, 0)
        errs = [e for e in evs if e.flags & skqueue.EV_ERROR]
        assert len(errs) <= 1, evs
        return int(errs[0].data) if errs else 0

    @staticmethod
    def poll(kq: Any, n: int = 64) -> list[Any]:
        """Collect pending events without waiting."""
        return list(kq.control(None, n, 0))

    @staticmethod
    def wait_events(
        kq: Any,
        pred: Callable[[list[Any]], bool] | None = None,
        timeout: float = WAIT,
        n: int = 64,
    ) -> list[Any]:
        """Call control() until it returns a non-empty batch (accepted by ``pred`` if given)
        or ``timeout`` elapses; return the last batch (possibly empty)."""
        deadline = time.monotonic() + timeout
        evs: list[Any] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return evs
            evs = list(kq.control(None, n, min(left, 0.25)))
            if evs and (pred is None or pred(evs)):
                return evs

    @staticmethod
    def wait_one(kq: Any, ident: int, filt: int, timeout: float = WAIT) -> Any:
        """Wait until an event for (ident, filt) arrives; return it, or None on timeout.
        Events for other knotes are discarded."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            for e in kq.control(None, 64, min(left, 0.25)):
                if e.ident == ident and e.filter == filt:
                    return e

    @staticmethod
    def keys(evs: Iterable[Any]) -> set[tuple[int, int]]:
        return {(e.ident, e.filter) for e in evs}

    @staticmethod
    def for_ident(evs: Iterable[Any], ident: int, filt: int | None = None) -> list[Any]:
        return [e for e in evs if e.ident == ident and (filt is None or e.filter == filt)]

    @staticmethod
    def drain(sock_or_fd: Any) -> bytes:
        """Read everything currently readable from a non-blocking socket or fd."""
        out = bytearray()
        while True:
            try:
                if isinstance(sock_or_fd, socket.socket):
                    chunk = sock_or_fd.recv(65536)
                else:
                    chunk = os.read(sock_or_fd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)

    @staticmethod
    def fill(sock: socket.socket) -> int:
        """Write to a non-blocking socket until it would block; return bytes written."""
        total = 0
        block = b"x" * 65536
        while True:
            try:
                total += sock.send(block)
            except (BlockingIOError, InterruptedError):
                return total

    @staticmethod
    def free_fd_number() -> int:
        """A descriptor number that is currently closed (for EBADF tests)."""
        fd = os.open(os.devnull, os.O_RDONLY)
        os.close(fd)
        return fd

    @staticmethod
    def errno_of(exc: BaseException) -> int | None:
        return getattr(exc, "errno", None)


@pytest.fixture
def h() -> type[Helpers]:
    return Helpers


# Modes the ``kq`` fixture runs every test in: "legacy" and SKQ multi mode with the given
# policy labels (docs/semantics.md part 2 applies to every kqueue, in either mode).
# Override with e.g. SKQ_CORE_MODES=legacy or SKQ_CORE_MODES=legacy,best2_ws,cpu2.
KQ_MODES = tuple(m for m in os.environ.get("SKQ_CORE_MODES", "legacy,rand").split(",") if m)


@pytest.fixture(params=KQ_MODES)
def kq_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def kq(kq_mode: str) -> Iterator[Any]:
    """A fresh kqueue in ``kq_mode`` (legacy, or multi mode with that policy label)."""
    q = skqueue.kqueue()
    try:
        if kq_mode != "legacy":
            q.set_multi(skqueue.parse_sched(kq_mode))
        yield q
    finally:
        q.close()


@pytest.fixture
def legacy_only(kq_mode: str) -> None:
    """Skip a test whose expectation is stock-FreeBSD (legacy mode) only, in multi mode
    (SKQ changes requeueing and fileno() there: semantics §3.10, D8)."""
    if kq_mode != "legacy":
        pytest.skip("legacy-mode semantics")


@pytest.fixture
def sockpair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, server-side) of a TCP connection on loopback."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        cli = socket.create_connection(srv.getsockname(), timeout=5)
        conn, _ = srv.accept()
    cli.setblocking(False)
    conn.setblocking(False)
    cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        yield cli, conn
    finally:
        cli.close()
        conn.close()


@pytest.fixture
def pipe_fds() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    try:
        yield r, w
    finally:
        for fd in (r, w):
            with contextlib.suppress(OSError):
                os.close(fd)


# Errnos some tests accept as "unsupported" (Linux: ENOTSUP == EOPNOTSUPP).
UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


@pytest.fixture
def unsupported_errnos() -> set[int]:
    return UNSUPPORTED


@pytest.fixture
def pair_factory() -> Iterator[Callable[[int], list[tuple[socket.socket, socket.socket]]]]:
    """``pair_factory(n)``: n non-blocking AF_UNIX stream socketpairs, closed at teardown."""
    made: list[tuple[socket.socket, socket.socket]] = []

    def make(n: int) -> list[tuple[socket.socket, socket.socket]]:
        out = []
        for _ in range(n):
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            a.setblocking(False)
            b.setblocking(False)
            out.append((a, b))
        made.extend(out)
        return out

    try:
        yield make
    finally:
        for a, b in made:
            a.close()
            b.close()


# -- free-threaded builds -------------------------------------------------------------------
# On a free-threaded CPython (make test-ft) the whole run must keep the GIL off: any
# extension module imported on the way that does not declare Py_mod_gil switches it back
# on (with only a RuntimeWarning), and the rest of the suite would then run serialised.
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    if FREE_THREADED and is_enabled is not None and is_enabled():
        if os.environ.get("PYTHON_GIL") == "1":
            return  # asked for
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print("\nfree-threaded build: the GIL was enabled during the run (-X gil=1, or an "
              "extension module without Py_mod_gil was imported: see its RuntimeWarning)",
              file=sys.stderr)
