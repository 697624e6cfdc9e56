"""READ/WRITE on sockets around connection set-up and failure: FreeBSD's filt_soread /
filt_sowrite against what Linux lets user space see.

* WRITE fires only on a connected socket (or one that can send without a connection):
  nothing while a TCP connect is in progress (SYN_SENT) or before connect().
* At EV_ADD every filter is judged from the descriptor itself, so after a refused connect
  READ and WRITE are both active at once, READ first (FreeBSD's soisdisconnected wakes
  the readers first).
* EV_EOF carries the socket's pending error in ``fflags``, and reporting it never consumes
  it: the program's own ``getsockopt(SO_ERROR)`` still reads it.  Linux cannot read the
  error without clearing it, so ``fflags`` is inferred (README: "What is not supported,
  or differs from FreeBSD").
* A pending error without EOF (a datagram socket's ICMP error) makes the socket readable
  and writable, without EV_EOF.

Network tests use loopback only.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
from collections.abc import Iterator

import pytest

from skqueue import EV_ADD, EV_CLEAR, EV_EOF, EVFILT_READ, EVFILT_WRITE, kevent

TCP_SYN_SENT = 2


def _so_error(s: socket.socket) -> int:
    return int(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))


def _tcp_state(s: socket.socket) -> int:
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def _wait_poll(s: socket.socket, mask: int, timeout: float = 5.0) -> int:
    """Block until poll(2) reports one of ``mask`` on ``s`` (state, not time, is awaited)."""
    p = select.poll()
    p.register(s, mask)
    r = p.poll(timeout * 1000)
    return r[0][1] if r else 0


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@pytest.fixture
def refused(closed_port: int) -> Iterator[socket.socket]:
    """A non-blocking TCP socket whose connect was refused (the RST already arrived)."""
    c = socket.socket()
    c.setblocking(False)
    assert c.connect_ex(("127.0.0.1", closed_port)) in (errno.EINPROGRESS, errno.ECONNREFUSED)
    assert _wait_poll(c, select.POLLOUT) & select.POLLERR
    try:
        yield c
    finally:
        c.close()


def test_refused_connect_write_event_leaves_the_error_to_the_program(kq, closed_port, h):
    # issue 11 defect 2 (asyncio's sock_connect: WRITE, then getsockopt(SO_ERROR)).
    c = socket.socket()
    c.setblocking(False)
    try:
        c.connect_ex(("127.0.0.1", closed_port))
        evs = kq.control([kevent(c, EVFILT_WRITE, EV_ADD)], 1, h.WAIT)
        assert len(evs) == 1
        ev = evs[0]
        assert ev.flags & EV_EOF
        assert ev.fflags == errno.ECONNREFUSED
        assert _so_error(c) == errno.ECONNREFUSED  # still there for the program
        # The program consumed it: later reports carry none (FreeBSD: so_error is 0).
        ev = h.wait_one(kq, c.fileno(), EVFILT_WRITE)
        assert ev is not None and ev.flags & EV_EOF and ev.fflags == 0
    finally:
        c.close()


def test_refused_connect_read_and_write_active_at_once_read_first(kq, refused, h):
    # issue 11 defect 5: both filters judged from the socket at EV_ADD.
    kq.control([kevent(refused, EVFILT_READ, EV_ADD), kevent(refused, EVFILT_WRITE, EV_ADD)], 0)
    evs = h.poll(kq)
    assert [(e.filter, e.flags, e.fflags, e.data) for e in evs] == [
        (EVFILT_READ, EV_EOF, errno.ECONNREFUSED, 0),
        (EVFILT_WRITE, EV_EOF, errno.ECONNREFUSED, evs[1].data),
    ]
    assert _so_error(refused) == errno.ECONNREFUSED


def test_refused_connect_registered_write_first_keeps_the_order(kq, refused, h):
    # FreeBSD activates each knote at its EV_ADD, in the order of the changes.
    h.change(kq, refused, EVFILT_WRITE)
    h.change(kq, refused, EVFILT_READ)
    evs = h.poll(kq)
    assert [(e.filter, e.flags & EV_EOF, e.fflags) for e in evs] == [
        (EVFILT_WRITE, EV_EOF, errno.ECONNREFUSED),
        (EVFILT_READ, EV_EOF, errno.ECONNREFUSED),
    ]
    assert _so_error(refused) == errno.ECONNREFUSED


def test_reset_activates_read_before_write(kq, tcp_pair, h):
    # A RST shuts both directions: when it activates READ and WRITE together, READ comes
    # first whatever the registration order (FreeBSD's soisdisconnected wakes the readers,
    # then the writers).  (A level-triggered WRITE would still be queued from before.)
    cli, srv = tcp_pair
    h.change(kq, srv, EVFILT_WRITE, EV_ADD | EV_CLEAR)
    h.change(kq, srv, EVFILT_READ)
    assert [e.filter for e in h.wait_events(kq)] == [EVFILT_WRITE]
    assert h.poll(kq) == []
    cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    cli.close()
    assert _wait_poll(srv, select.POLLIN) & select.POLLERR
    evs = h.wait_events(kq)
    assert [(e.filter, e.flags, e.fflags, e.data) for e in evs] == [
        (EVFILT_READ, EV_EOF, errno.ECONNRESET, 0),
        (EVFILT_WRITE, EV_EOF | EV_CLEAR, errno.ECONNRESET, evs[1].data),
    ]
    assert _so_error(srv) == errno.ECONNRESET


@contextlib.contextmanager
def _syn_sent() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(listener, connecting socket): the listener's accept queue is full, so Linux drops
    the connecting socket's SYN and it stays in SYN_SENT until the queue has room."""
    lst = socket.socket()
    first = socket.socket()
    c = socket.socket()
    try:
        lst.bind(("127.0.0.1", 0))
        lst.listen(0)  # one queued connection fills it (the queue is full above 0)
        first.connect(lst.getsockname())
        assert _wait_poll(lst, select.POLLIN) & select.POLLIN  # queued
        info = lst.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
        qlen, qmax = struct.unpack_from("II", info, 24)  # tcpi_unacked, tcpi_sacked
        assert qlen > qmax, (qlen, qmax)
        c.setblocking(False)
        assert c.connect_ex(lst.getsockname()) == errno.EINPROGRESS
        yield lst, c
    finally:
        c.close()
        first.close()
        lst.close()


def test_write_does_not_fire_while_connecting(kq, h):
    # issue 11 defect 4 (FreeBSD filt_sowrite: not connected, connection required -> 0).
    with _syn_sent() as (lst, c):
        h.change(kq, c, EVFILT_WRITE)
        assert kq.control(None, 8, 0.2) == []
        assert _tcp_state(c) == TCP_SYN_SENT  # the premise held throughout
        # Room in the accept queue: the retransmitted SYN (about 1 s later) gets through.
        conn, _ = lst.accept()
        conn.close()
        ev = h.wait_one(kq, c.fileno(), EVFILT_WRITE, timeout=10.0)
        assert ev is not None and not ev.flags & EV_EOF and ev.data > 0


def test_tcp_socket_before_connect_reports_nothing(kq, h):
    # A TCP socket never connected: no EOF for READ (nothing was shut down), not writable
    # (FreeBSD filt_sowrite: connection required).  Linux's poll(2) says POLLHUP|POLLOUT.
    with socket.create_server(("127.0.0.1", 0)) as srv, socket.socket() as c:
        h.change(kq, c, EVFILT_READ)
        h.change(kq, c, EVFILT_WRITE)
        assert kq.control(None, 8, 0.1) == []
        c.connect(srv.getsockname())  # the connection's state change wakes the knotes
        conn, _ = srv.accept()
        with conn:
            ev = h.wait_one(kq, c.fileno(), EVFILT_WRITE)
            assert ev is not None and not ev.flags & EV_EOF and ev.data > 0
            assert h.for_ident(h.poll(kq), c.fileno(), EVFILT_READ) == []
            conn.send(b"hi")
            ev = h.wait_one(kq, c.fileno(), EVFILT_READ)
            assert ev is not None and not ev.flags & EV_EOF and ev.data == 2


def test_unix_socket_before_connect_has_no_eof(kq, tmp_path, h):
    # Linux reports no state change when an AF_UNIX stream socket connects, so WRITE
    # follows poll(2) (writable) rather than FreeBSD (not before connect); neither
    # filter reports EV_EOF for a socket that was never connected.
    path = str(tmp_path / "sock")
    with socket.socket(socket.AF_UNIX) as srv, socket.socket(socket.AF_UNIX) as c:
        srv.bind(path)
        srv.listen(1)
        h.change(kq, c, EVFILT_READ)
        h.change(kq, c, EVFILT_WRITE)
        evs = kq.control(None, 8, 0.1)
        assert [(e.filter, e.flags) for e in evs] in ([], [(EVFILT_WRITE, 0)])
        c.connect(path)
        conn, _ = srv.accept()
        with conn:
            ev = h.wait_one(kq, c.fileno(), EVFILT_WRITE)
            assert ev is not None and not ev.flags & EV_EOF and ev.data > 0
            conn.send(b"hi")
            ev = h.wait_one(kq, c.fileno(), EVFILT_READ)
            assert ev is not None and not ev.flags & EV_EOF and ev.data == 2


def test_datagram_error_is_readable_and_writable_without_eof(kq, closed_port, h):
    # FreeBSD filt_soread/filt_sowrite: so_error without a shut-down side makes the
    # socket readable and writable, no EV_EOF; the error stays for recv() to return.
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setblocking(False)
    try:
        u.connect(("127.0.0.1", closed_port))
        u.send(b"ping")  # answered by an ICMP port unreachable
        assert _wait_poll(u, select.POLLIN) & select.POLLERR
        h.change(kq, u, EVFILT_READ)
        h.change(kq, u, EVFILT_WRITE)
        evs = h.poll(kq)
        assert sorted((e.filter, e.flags & EV_EOF) for e in evs) == [
            (EVFILT_WRITE, 0), (EVFILT_READ, 0)]
        with pytest.raises(ConnectionRefusedError):
            u.recv(16)
        # Consumed by the program: no longer readable; writable as any UDP socket.
        assert [e.filter for e in h.poll(kq)] == [EVFILT_WRITE]
    finally:
        u.close()
