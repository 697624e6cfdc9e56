"""EVFILT_WRITE and EVFILT_EMPTY conformance.

Semantics from kqueue(2), libkqueue test/write.c and docs/semantics.md §2.3/§2.9: WRITE is ready
while there is room in the send buffer (data = space left), EV_EOF when the reader is
gone, always on regular files (data 0, FreeBSD filt_vfswrite); EMPTY fires when the send
buffer is empty (data 0).
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time

from skqueue import (
    EV_ADD,
    EV_CLEAR,
    EV_DELETE,
    EV_EOF,
    EV_ERROR,
    EVFILT_EMPTY,
    EVFILT_READ,
    EVFILT_WRITE,
    NOTE_LOWAT,
)


def test_socket_writable_reports_space(kq, sockpair, h):
    a, _ = sockpair
    h.change(kq, a, EVFILT_WRITE, udata="w")
    ev = h.wait_one(kq, a.fileno(), EVFILT_WRITE)
    assert ev is not None
    assert ev.data > 0
    assert ev.udata == "w"
    assert not ev.flags & (EV_EOF | EV_ERROR)


def test_socket_full_then_writable_again(kq, sockpair, h):
    a, b = sockpair
    h.fill(a)
    h.change(kq, a, EVFILT_WRITE)
    time.sleep(0.02)
    # Unsure only in degree: AF_UNIX may report a few bytes of room after EAGAIN; FreeBSD
    # uses the send-buffer low-water mark, Linux poll() requires a quarter of sndbuf free.
    assert h.for_ident(h.poll(kq), a.fileno()) == []
    h.drain(b)
    ev = h.wait_one(kq, a.fileno(), EVFILT_WRITE)
    assert ev is not None and ev.data > 0


def test_pipe_write_space_and_eof_when_reader_closes(kq, pipe_fds, h):
    r, w = pipe_fds
    h.change(kq, w, EVFILT_WRITE)
    ev = h.wait_one(kq, w, EVFILT_WRITE)
    assert ev is not None and ev.data > 0 and not ev.flags & EV_EOF
    os.close(r)
    deadline = time.monotonic() + 1.0
    while not ev.flags & EV_EOF and time.monotonic() < deadline:
        ev = h.wait_one(kq, w, EVFILT_WRITE)
        assert ev is not None
    assert ev.flags & EV_EOF


def test_socket_write_eof_when_peer_closes(kq, sockpair, h):
    a, b = sockpair
    h.change(kq, a, EVFILT_WRITE)
    b.close()
    ev = h.wait_one(kq, a.fileno(), EVFILT_WRITE)
    deadline = time.monotonic() + 1.0
    while ev is not None and not ev.flags & EV_EOF and time.monotonic() < deadline:
        ev = h.wait_one(kq, a.fileno(), EVFILT_WRITE)
    assert ev is not None and ev.flags & EV_EOF


def test_write_on_regular_file_is_always_writable(kq, tmp_path, h):
    # issue 11 defect 3.  FreeBSD filt_vfswrite: a regular file is always writable,
    # data 0 (macOS: 1); level-triggered, so reported on every call.
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_WRONLY)
    try:
        assert h.change_err(kq, fd, EVFILT_WRITE) == 0
        for _ in range(3):
            evs = h.poll(kq)
            assert [(e.ident, e.filter, e.flags, e.data) for e in evs] == [
                (fd, EVFILT_WRITE, 0, 0)]
    finally:
        os.close(fd)


def test_write_on_regular_file_clear_fires_again_on_change(kq, tmp_path, h):
    # FreeBSD: each change to the vnode calls the filter again (VN_KNOTE), which is
    # always true: an EV_CLEAR knote reports once, then again after a write.
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_WRONLY)
    try:
        h.change(kq, fd, EVFILT_WRITE, EV_ADD | EV_CLEAR)
        assert [(e.ident, e.data) for e in h.poll(kq)] == [(fd, 0)]
        assert h.poll(kq) == []
        os.write(fd, b"more")
        ev = h.wait_one(kq, fd, EVFILT_WRITE)
        assert ev is not None and ev.data == 0
    finally:
        os.close(fd)


def test_write_on_redirected_stdout(tmp_path):
    # A program watching its stdout, redirected to a file, gets to write.
    code = (
        "import skqueue\n"
        "kq = skqueue.kqueue()\n"
        "evs = kq.control([skqueue.kevent(1, skqueue.EVFILT_WRITE)], 1, 5.0)\n"
        "print('writable', [(e.ident, e.data) for e in evs])\n"
    )
    out = tmp_path / "out"
    with open(out, "wb") as f:
        subprocess.run([sys.executable, "-c", code], stdout=f, check=True, timeout=60)
    assert out.read_text() == "writable [(1, 0)]\n"


def test_write_clear_edge(kq, sockpair, h):
    a, b = sockpair
    h.change(kq, a, EVFILT_WRITE, EV_ADD | EV_CLEAR)
    assert h.wait_one(kq, a.fileno(), EVFILT_WRITE) is not None
    # No new activity: edge-triggered knote not reported again.
    assert h.poll(kq) == []


def test_write_level_repeats(kq, sockpair, h):
    a, _ = sockpair
    h.change(kq, a, EVFILT_WRITE)
    assert h.wait_one(kq, a.fileno(), EVFILT_WRITE) is not None
    for _ in range(3):
        assert h.keys(h.poll(kq)) == {(a.fileno(), EVFILT_WRITE)}


def test_write_lowat(kq, tcp_pair, h):
    # kqueue(2) WRITE: NOTE_LOWAT with data = mark.  A mark larger than any send buffer
    # is never reached; a mark of 1 byte is reached at once.
    cli, _ = tcp_pair
    h.change(kq, cli, EVFILT_WRITE, EV_ADD, NOTE_LOWAT, 1 << 30)
    time.sleep(0.05)
    assert h.poll(kq) == []
    h.change(kq, cli, EVFILT_WRITE, EV_ADD, NOTE_LOWAT, 1)
    ev = h.wait_one(kq, cli.fileno(), EVFILT_WRITE)
    assert ev is not None and ev.data >= 1


def test_read_and_write_on_same_fd_are_independent(kq, sockpair, h):
    a, b = sockpair
    h.change(kq, a, EVFILT_WRITE, udata="w")
    h.change(kq, a.fileno(), EVFILT_READ, udata="r")
    b.send(b"q")
    evs = h.wait_events(kq, lambda e: len(e) == 2)
    assert {(e.filter, e.udata) for e in evs} == {(EVFILT_WRITE, "w"), (EVFILT_READ, "r")}
    h.change(kq, a, EVFILT_WRITE, EV_DELETE)
    evs = h.poll(kq)
    assert {(e.filter, e.udata) for e in evs} == {(EVFILT_READ, "r")}


def test_empty_idle_tcp_socket_fires_with_zero(kq, tcp_pair, h):
    # kqueue(2) EVFILT_EMPTY: "when there is no remaining data in the write buffer";
    # data = bytes still buffered, so 0 when it fires.
    cli, _ = tcp_pair
    h.change(kq, cli, EVFILT_EMPTY, udata="e")
    ev = h.wait_one(kq, cli.fileno(), EVFILT_EMPTY)
    assert ev is not None
    assert ev.data == 0
    assert ev.udata == "e"


def test_empty_fires_after_data_acknowledged(kq, tcp_pair, h):
    cli, srv = tcp_pair
    h.change(kq, cli, EVFILT_EMPTY, EV_ADD | EV_CLEAR)
    h.wait_one(kq, cli.fileno(), EVFILT_EMPTY, timeout=0.2)  # initial state, if reported
    cli.send(b"x" * 100_000)
    ev = h.wait_one(kq, cli.fileno(), EVFILT_EMPTY)
    # The receiver must read for the sender's buffer to drain fully.
    deadline = time.monotonic() + 2.0
    while ev is None and time.monotonic() < deadline:
        h.drain(srv)
        ev = h.wait_one(kq, cli.fileno(), EVFILT_EMPTY, timeout=0.1)
    assert ev is not None
    assert ev.data == 0


def test_empty_on_pipe_is_einval(kq, pipe_fds, h):
    # Unsure: FreeBSD EMPTY attaches to sockets only (soo_kqfilter); a pipe's pipe_kqfilter
    # rejects unknown filters with EINVAL.
    _, w = pipe_fds
    assert h.change_err(kq, w, EVFILT_EMPTY) == errno.EINVAL


def test_connecting_socket_becomes_writable(kq, h):
    with socket.create_server(("127.0.0.1", 0)) as srv:
        c = socket.socket()
        c.setblocking(False)
        try:
            try:
                c.connect(srv.getsockname())
            except BlockingIOError:
                pass
            h.change(kq, c, EVFILT_WRITE)
            ev = h.wait_one(kq, c.fileno(), EVFILT_WRITE)
            assert ev is not None and not ev.flags & EV_EOF
        finally:
            c.close()


def test_write_on_pipe_with_reader_gone_is_epipe(kq, h):
    # FreeBSD sys_pipe.c pipe_kqfilter: EVFILT_WRITE when the other end is already closed
    # -> EPIPE.
    r, w = os.pipe()
    os.close(r)
    try:
        assert h.change_err(kq, w, EVFILT_WRITE) == errno.EPIPE
    finally:
        os.close(w)


def test_filter_for_wrong_direction_of_pipe_waits_for_the_other_end(kq, h):
    # READ on a pipe's write end and WRITE on its read end: nothing to report while the
    # other end is open (Linux pipes are one-way; tests/test_core_pipe.py has the rest).
    r, w = os.pipe()
    try:
        assert h.change_err(kq, w, EVFILT_READ) == 0
        assert h.change_err(kq, r, EVFILT_WRITE) == 0
        os.write(w, b"data")
        time.sleep(0.05)
        assert h.poll(kq) == []
    finally:
        os.close(r)
        os.close(w)
