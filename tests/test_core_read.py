"""EVFILT_READ conformance: sockets (AF_UNIX, TCP, listening), pipes, FIFOs, regular
files, NOTE_LOWAT, EV_EOF, kqueue-in-kqueue.

Semantics re-created from FreeBSD tests/sys/kqueue/libkqueue/read.c, libkqueue
test/read.c and kqueue(2); see docs/semantics.md §2.3 and §2.9.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import time

import skqueue
from skqueue import (
    EV_ADD,
    EV_CLEAR,
    EV_DELETE,
    EV_DISABLE,
    EV_ENABLE,
    EV_EOF,
    EV_ERROR,
    EVFILT_READ,
    NOTE_FILE_POLL,
    NOTE_LOWAT,
)


def test_add_no_data_no_event(kq, sockpair, h):
    a, _ = sockpair
    h.change(kq, a, EVFILT_READ)
    assert h.poll(kq) == []


def test_socket_data_reports_bytes_and_udata(kq, sockpair, h):
    a, b = sockpair
    token = object()
    h.change(kq, a.fileno(), EVFILT_READ, udata=token)
    b.send(b"abc")
    ev = h.wait_one(kq, a.fileno(), EVFILT_READ)
    assert ev is not None
    assert ev.data == 3
    assert ev.udata is token
    assert not ev.flags & (EV_ERROR | EV_EOF)


def test_ident_may_be_socket_object(kq, sockpair, h):
    a, b = sockpair
    h.change(kq, a, EVFILT_READ)
    b.send(b"z")
    ev = h.wait_one(kq, a.fileno(), EVFILT_READ)
    assert ev is not None and ev.ident == a.fileno()


def test_level_triggered_until_drained(kq, sockpair, h):
    a, b = sockpair
    h.change(kq, a, EVFILT_READ)
    b.send(b"12345")
    assert h.wait_one(kq, a.fileno(), EVFILT_READ) is not None
    # Level-triggered: reported on every call while data is unread.
    for _ in range(3):
        evs = h.poll(kq)
        assert h.keys(evs) == {(a.fileno(), EVFILT_READ)}
        assert evs[0].data == 5
    a.recv(2)
    evs = h.poll(kq)
    assert len(evs) == 1 and evs[0].data == 3
    a.recv(3)
    assert h.poll(kq) == []


def test_several_writes_collapse_into_one_event(kq, sockpair, h):
    a, b = sockpair
    h.change(kq, a, EVFILT_READ)
    for _ in range(4):
        b.send(b"ab")
    time.sleep(0.02)
    evs = h.wait_events(kq)
    assert len(evs) == 1
    assert evs[0].data == 8


def test_clear_is_edge_triggered(kq, sockpair, h):
    # read.c test_kevent_socket_clear: filled twice, drained once -> no new event.
    a, b = sockpair
    h.change(kq, a, EVFILT_READ, EV_ADD | EV_CLEAR)
    b.send(b".")
    b.send(b".")
    time.sleep(0.02)
    ev = h.wait_one(kq, a.fileno(), EVFILT_READ)
    assert ev is not None and ev.data == 2
    assert ev.flags & EV_CLEAR
    a.recv(1)
    assert h.poll(kq) == []  # unread byte remains, but no new activity
    b.send(b"!")  # new activity re-arms the edge
    ev = h.wait_one(kq, a.fileno(), EVFILT_READ)
    assert ev is not None and ev.data == 2
    assert h.poll(kq) == []


def test_disabled_then_filled_then_enabled(kq, sockpair, h):
    # tests/sys/kqueue/read.c test_kevent_socket_disable_and_enable: added, disabled,
    # data arrives while disabled, EV_ENABLE reports it.  (Every change sets udata.)
    a, b = sockpair
    h.change(kq, a, EVFILT_READ, udata="r")
    h.change(kq, a, EVFILT_READ, EV_DISABLE, udata="r")
    b.send(b".")
    time.sleep(0.02)
    assert h.poll(kq) == []
    h.change(kq, a, EVFILT_READ, EV_ENABLE, udata="r")
    evs = h.poll(kq)
    assert [(e.ident, e.filter, e.flags, e.data, e.udata) for e in evs] == [
        (a.fileno(), EVFILT_READ, 0, 1, "r")]


def test_delete_stops_reports(kq, sockpair, h):
    a, b = sockpair
    h.change(kq, a, EVFILT_READ)
    h.change(kq, a, EVFILT_READ, EV_DELETE)
    b.send(b"x")
    time.sleep(0.05)
    assert h.poll(kq) == []


def test_lowat(kq, sockpair, h):
    # read.c test_kevent_socket_lowat (marked BROKEN there on old libkqueue; FreeBSD honours
    # NOTE_LOWAT for sockets: kqueue(2) "NOTE_LOWAT ... data contains the low water mark").
    a, b = sockpair
    h.change(kq, a, EVFILT_READ, EV_ADD, NOTE_LOWAT, 5)
    b.send(b"abc")
    time.sleep(0.05)
    assert h.poll(kq) == []
    b.send(b"de")
    ev = h.wait_one(kq, a.fileno(), EVFILT_READ)
    assert ev is not None and ev.data == 5


def test_eof_on_peer_close_with_no_error(kq, sockpair, h):
    # read.c test_kevent_socket_eof
    a, b = sockpair
    h.change(kq, a, EVFILT_READ)
    b.close()
    ev = h.wait_one(kq, a.fileno(), EVFILT_READ)
    assert ev is not None
    assert ev.flags & EV_EOF
    assert ev.fflags == 0  # no pending socket error
    assert ev.data == 0


def test_eof_with_data_remaining(kq, sockpair, h):
    # kqueue(2): "EOF may coexist with unread data"; data still counts readable bytes.
    a, b = sockpair
    h.change(kq, a, EVFILT_READ)
    b.send(b"tail")
    b.close()
    ev = h.wait_one(kq, a.fileno(), EVFILT_READ)
    assert ev is not None
    # Activation may race the close; wait for the EOF report.
    deadline = time.monotonic() + 1.0
    while not ev.flags & EV_EOF and time.monotonic() < deadline:
        ev = h.wait_one(kq, a.fileno(), EVFILT_READ)
        assert ev is not None
    assert ev.flags & EV_EOF
    assert ev.data == 4
    assert a.recv(10) == b"tail"


def test_tcp_eof_fflags_is_socket_error_on_reset(kq, tcp_pair, h):
    # kqueue(2): EV_EOF with fflags = socket error.  A RST (SO_LINGER 0 close) leaves
    # ECONNRESET pending on the peer.  Reporting it must not consume it: the program's
    # own SO_ERROR still reads it (Linux's SO_ERROR clears; skqueue infers fflags).
    cli, srv = tcp_pair
    h.change(kq, srv, EVFILT_READ)
    cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    cli.close()
    ev = h.wait_one(kq, srv.fileno(), EVFILT_READ)
    assert ev is not None
    assert ev.flags & EV_EOF
    assert ev.fflags == errno.ECONNRESET
    assert srv.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET
    # Consumed by the program now: later reports carry none (FreeBSD alike).
    ev = h.wait_one(kq, srv.fileno(), EVFILT_READ)
    assert ev is not None and ev.flags & EV_EOF and ev.fflags == 0


def test_tcp_data_and_orderly_eof(kq, tcp_pair, h):
    cli, srv = tcp_pair
    h.change(kq, srv, EVFILT_READ, udata="srv")
    cli.send(b"hello")
    ev = h.wait_one(kq, srv.fileno(), EVFILT_READ)
    assert ev is not None and ev.data == 5 and ev.udata == "srv"
    assert not ev.flags & EV_EOF
    cli.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + 1.0
    while not ev.flags & EV_EOF and time.monotonic() < deadline:
        ev = h.wait_one(kq, srv.fileno(), EVFILT_READ)
        assert ev is not None
    assert ev.flags & EV_EOF
    assert ev.fflags == 0
    assert ev.data == 5


def test_listening_socket_data_is_backlog(kq, h):
    # kqueue(2): "listening socket ... data contains the size of the listen backlog".
    with socket.create_server(("127.0.0.1", 0), backlog=8) as srv:
        srv.setblocking(False)
        h.change(kq, srv, EVFILT_READ)
        assert h.poll(kq) == []
        clients = [socket.create_connection(srv.getsockname(), timeout=5) for _ in range(2)]
        try:
            ev = h.wait_events(kq, lambda evs: evs[0].data == 2)
            assert len(ev) == 1 and ev[0].ident == srv.fileno()
            assert ev[0].data == 2
            conn, _ = srv.accept()
            conn.close()
            evs = h.poll(kq)
            assert len(evs) == 1 and evs[0].data == 1
            conn, _ = srv.accept()
            conn.close()
            assert h.poll(kq) == []
        finally:
            for c in clients:
                c.close()


def test_pipe_data_and_eof(kq, pipe_fds, h):
    r, w = pipe_fds
    h.change(kq, r, EVFILT_READ)
    assert h.poll(kq) == []
    os.write(w, b"12345678")
    ev = h.wait_one(kq, r, EVFILT_READ)
    assert ev is not None and ev.data == 8 and not ev.flags & EV_EOF
    os.close(w)
    deadline = time.monotonic() + 1.0
    while not ev.flags & EV_EOF and time.monotonic() < deadline:
        ev = h.wait_one(kq, r, EVFILT_READ)
        assert ev is not None
    assert ev.flags & EV_EOF
    assert ev.data == 8  # EOF with data remaining
    assert os.read(r, 100) == b"12345678"
    ev = h.wait_one(kq, r, EVFILT_READ)
    assert ev is not None and ev.flags & EV_EOF and ev.data == 0


def test_fifo_data_eof_and_eof_cleared_by_new_writer(kq, tmp_path, h):
    # kqueue(2): FIFO "EV_EOF ... cleared when a new writer connects".  Unsure of the exact
    # FreeBSD report for a reopened, empty FIFO: we expect no event (no data, writer present).
    path = str(tmp_path / "fifo")
    os.mkfifo(path)
    r = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        h.change(kq, r, EVFILT_READ)
        assert h.poll(kq) == []
        os.write(w, b"abc")
        ev = h.wait_one(kq, r, EVFILT_READ)
        assert ev is not None and ev.data == 3
        os.read(r, 3)
        os.close(w)
        w = -1
        ev = h.wait_one(kq, r, EVFILT_READ)
        assert ev is not None and ev.flags & EV_EOF
        w = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        time.sleep(0.05)
        evs = h.poll(kq)
        assert all(not e.flags & EV_EOF for e in evs), evs
        os.write(w, b"zz")
        ev = h.wait_one(kq, r, EVFILT_READ)
        assert ev is not None and ev.data == 2 and not ev.flags & EV_EOF
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_regular_file_data_is_size_minus_offset(kq, tmp_path, h):
    # kqueue(2) vnode READ: "data contains the offset from current position to end of file";
    # FreeBSD filt_vfsread reports only while that is non-zero (unless NOTE_FILE_POLL).
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        h.change(kq, fd, EVFILT_READ)
        ev = h.wait_one(kq, fd, EVFILT_READ)
        assert ev is not None and ev.data == 100
        os.read(fd, 40)
        evs = h.poll(kq)
        assert len(evs) == 1 and evs[0].data == 60
        os.lseek(fd, 0, os.SEEK_END)
        assert h.poll(kq) == []
        with open(path, "ab") as f:  # the file grows: readable again
            f.write(b"y" * 7)
        ev = h.wait_one(kq, fd, EVFILT_READ)
        assert ev is not None and ev.data == 7
    finally:
        os.close(fd)


def test_regular_file_note_file_poll_always_ready(kq, tmp_path, h):
    # kqueue(2): NOTE_FILE_POLL "returns ... like poll(2)": always ready.
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        h.change(kq, fd, EVFILT_READ, EV_ADD, NOTE_FILE_POLL)
        ev = h.wait_one(kq, fd, EVFILT_READ)
        assert ev is not None and ev.data == 0
    finally:
        os.close(fd)


def test_regular_file_at_eof_not_ready(kq, tmp_path, h):
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        h.change(kq, fd, EVFILT_READ)
        time.sleep(0.02)
        assert h.poll(kq) == []
    finally:
        os.close(fd)


def test_kqueue_in_kqueue(kq, h):
    # kqueue(2): a kqueue fd supports READ; data = number of pending events.
    inner = skqueue.kqueue()
    try:
        h.change(kq, inner.fileno(), EVFILT_READ)
        assert h.poll(kq) == []
        h.change(inner, 1, skqueue.EVFILT_USER, EV_ADD | EV_CLEAR)
        h.change(inner, 2, skqueue.EVFILT_USER, EV_ADD | EV_CLEAR)
        h.change(inner, 1, skqueue.EVFILT_USER, 0, skqueue.NOTE_TRIGGER)
        h.change(inner, 2, skqueue.EVFILT_USER, 0, skqueue.NOTE_TRIGGER)
        ev = h.wait_one(kq, inner.fileno(), EVFILT_READ)
        assert ev is not None and ev.data == 2
        assert len(h.poll(inner)) == 2
        time.sleep(0.02)
        assert h.poll(kq) == []
    finally:
        inner.close()


def test_only_read_applies_to_a_kqueue(kq, h):
    # FreeBSD's kqueue_kqfilter refuses every filter but READ, whether or not the
    # kqueue descriptor is already watched for READ.
    inner = skqueue.kqueue()
    try:
        assert h.change_err(kq, inner.fileno(), skqueue.EVFILT_WRITE) == errno.EINVAL
        h.change(kq, inner.fileno(), EVFILT_READ)
        assert h.change_err(kq, inner.fileno(), skqueue.EVFILT_WRITE) == errno.EINVAL
        assert h.change_err(kq, inner.fileno(), skqueue.EVFILT_EMPTY) == errno.EINVAL
        h.change(inner, 1, skqueue.EVFILT_USER, EV_ADD | EV_CLEAR)
        h.change(inner, 1, skqueue.EVFILT_USER, 0, skqueue.NOTE_TRIGGER)
        ev = h.wait_one(kq, inner.fileno(), EVFILT_READ)  # the READ knote still works
        assert ev is not None and ev.data == 1
    finally:
        inner.close()


def test_kqueue_registering_itself_is_einval(kq, h):
    # semantics §2.3 (kernel code): a kqueue registering itself -> EINVAL.
    assert h.change_err(kq, kq.fileno(), EVFILT_READ) == errno.EINVAL


def test_many_sockets_one_call(kq, h):
    pairs = [socket.socketpair() for _ in range(10)]
    try:
        for a, b in pairs:
            a.setblocking(False)
            h.change(kq, a, EVFILT_READ, udata=a.fileno())
            b.send(b"k")
        want = {a.fileno() for a, _ in pairs}
        got: set[int] = set()
        deadline = time.monotonic() + 1.0
        while got != want and time.monotonic() < deadline:
            for e in kq.control(None, 64, 0.1):
                assert e.udata == e.ident
                got.add(e.ident)
        assert got == want
        evs = h.poll(kq, 64)
        assert {e.ident for e in evs} == want  # level-triggered: all still pending
    finally:
        for a, b in pairs:
            with contextlib.suppress(OSError):
                a.close()
            b.close()


def test_empty_datagram_is_readable_and_does_not_block_the_queue(kq, h):
    # Linux's FIONREAD on a datagram socket is the size of the next datagram, so an empty
    # datagram reads 0.  It is still readable (recv() consumes it), and the datagram
    # behind it must not wait forever for an event that never comes.
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        b.setblocking(False)
        a.send(b"")
        a.send(b"abc")
        h.change(kq, b, EVFILT_READ)
        ev = h.wait_one(kq, b.fileno(), EVFILT_READ)
        assert ev is not None and ev.data == 0
        assert h.poll(kq)  # level-triggered: still there until recv()
        assert b.recv(16) == b""
        ev = h.wait_one(kq, b.fileno(), EVFILT_READ)
        assert ev is not None and ev.data == 3
        assert b.recv(16) == b"abc"
        assert h.poll(kq) == []
    finally:
        a.close()
        b.close()
