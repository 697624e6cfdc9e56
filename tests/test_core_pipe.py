"""EVFILT_READ / EVFILT_WRITE on pipes: the cases of FreeBSD's
tests/sys/kern/pipe/pipe_kqueue_test.c, re-created for Linux.

FreeBSD's anonymous pipes are bidirectional: both ends are open for reading and writing,
so READ on the write end and WRITE on the read end are ordinary filters whose peer can
close.  Linux pipes are one-way; skqueue keeps FreeBSD's end-of-pipe reports and drops
what Linux cannot have (see README, "What is not supported, or differs from FreeBSD"):

* READ on the write end never fires while the reader is open (nothing can be written
  towards it) and reports EV_EOF, data 0, once the reader is gone.
* WRITE on the read end is never writable; it reports EV_EOF|EV_ONESHOT, data 0 (FreeBSD:
  the room in the other direction) once the writer is gone, and is EPIPE to register
  after that.
* WRITE on the write end: data is the room left, ``F_GETPIPE_SZ - FIONREAD`` (FreeBSD
  16384 for an empty pipe), writable when a write would not block (Linux frees room a
  page at a time, PIPE_BUF = 4096 bytes; FreeBSD's threshold is its PIPE_BUF, 512); the
  reader's close gives EV_EOF|EV_ONESHOT, data unchanged.
* An EV_CLEAR WRITE knote gets a new event when the kernel frees room (a page), not
  for every byte read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
from collections.abc import Iterator

import pytest

from skqueue import (
    EV_ADD,
    EV_CLEAR,
    EV_DELETE,
    EV_EOF,
    EV_ERROR,
    EV_ONESHOT,
    EV_RECEIPT,
    EVFILT_READ,
    EVFILT_WRITE,
    kevent,
)

F_GETPIPE_SZ = 1032
PIPE_BUF = select.PIPE_BUF  # Linux: 4096 (FreeBSD: 512)


@pytest.fixture
def pipe2() -> Iterator[list[int]]:
    """``[read_fd, write_fd]`` of a non-blocking pipe; an end set to -1 is not closed."""
    p = list(os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK))
    try:
        yield p
    finally:
        for fd in p:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _close(p: list[int], i: int) -> None:
    os.close(p[i])
    p[i] = -1


def _fill(fd: int) -> int:
    """Write until the pipe is full; return the bytes written."""
    total = 0
    while True:
        try:
            total += os.write(fd, b"\0" * 65536)
        except BlockingIOError:
            return total


def _register_read_and_write(kq, fd: int) -> list[tuple[int, int]]:
    """READ and WRITE with EV_ADD|EV_CLEAR|EV_RECEIPT in one call: [(filter, errno)]."""
    flags = EV_ADD | EV_CLEAR | EV_RECEIPT
    evs = kq.control([kevent(fd, EVFILT_READ, flags), kevent(fd, EVFILT_WRITE, flags)], 2)
    assert all(e.flags & EV_ERROR for e in evs), evs
    return [(e.filter, e.data) for e in evs]


def _fields(ev) -> tuple[int, int, int, int, int]:
    return ev.ident, ev.filter, ev.flags, ev.fflags, ev.data


def test_write_end(kq, pipe2, h):
    # pipe_kqueue__write_end
    r, w = pipe2
    capacity = fcntl.fcntl(w, F_GETPIPE_SZ)
    h.change(kq, w, EVFILT_WRITE, EV_ADD | EV_CLEAR)
    evs = h.poll(kq)
    assert [_fields(e) for e in evs] == [(w, EVFILT_WRITE, EV_CLEAR, 0, capacity)]
    assert evs[0].udata is None

    # A full pipe makes the event disappear.
    assert _fill(w) == capacity
    assert h.poll(kq) == []

    # Reading PIPE_BUF - 1 bytes frees no room a write could use yet ...
    os.read(r, PIPE_BUF - 1)
    assert h.poll(kq) == []
    # ... one more byte does: the event is back, data = the room left.
    os.read(r, 1)
    ev = h.wait_one(kq, w, EVFILT_WRITE)
    assert ev is not None and _fields(ev) == (w, EVFILT_WRITE, EV_CLEAR, 0, PIPE_BUF)
    os.read(r, 1)  # FreeBSD: one more event (data PIPE_BUF + 1); Linux: none (see top)
    h.poll(kq)

    # Closing the read end: EV_EOF (and EV_ONESHOT), data as the room last seen.
    _close(pipe2, 0)
    ev = h.wait_one(kq, w, EVFILT_WRITE)
    assert ev is not None
    assert _fields(ev) == (w, EVFILT_WRITE, EV_CLEAR | EV_EOF | EV_ONESHOT, 0, PIPE_BUF + 1)
    # One-shot: the knote is gone.
    assert h.poll(kq) == []
    assert h.change_err(kq, w, EVFILT_WRITE, EV_DELETE) == errno.ENOENT


def test_closed_read_end(kq, pipe2, h):
    # pipe_kqueue__closed_read_end: WRITE is EPIPE, READ reports EV_EOF at once.
    _close(pipe2, 0)
    w = pipe2[1]
    assert _register_read_and_write(kq, w) == [(EVFILT_READ, 0), (EVFILT_WRITE, errno.EPIPE)]
    evs = h.poll(kq)
    assert [_fields(e) for e in evs] == [
        (w, EVFILT_READ, EV_EOF | EV_CLEAR | EV_RECEIPT, 0, 0)
    ]


def test_closed_read_end_register_before_close(kq, pipe2, h):
    # pipe_kqueue__closed_read_end_register_before_close: the WRITE knote, queued since
    # its registration, comes first; both report EV_EOF.
    r, w = pipe2
    capacity = fcntl.fcntl(w, F_GETPIPE_SZ)
    assert _register_read_and_write(kq, w) == [(EVFILT_READ, 0), (EVFILT_WRITE, 0)]
    _close(pipe2, 0)
    evs = h.wait_events(kq, lambda e: len(e) == 2)
    assert [_fields(e) for e in evs] == [
        (w, EVFILT_WRITE, EV_EOF | EV_CLEAR | EV_ONESHOT | EV_RECEIPT, 0, capacity),
        (w, EVFILT_READ, EV_EOF | EV_CLEAR | EV_RECEIPT, 0, 0),
    ]
    del r


def test_closed_write_end(kq, pipe2, h):
    # pipe_kqueue__closed_write_end: WRITE on the read end is EPIPE; READ reports EV_EOF
    # with every byte still unread.
    r, w = pipe2
    nbytes = _fill(w)
    _close(pipe2, 1)
    assert _register_read_and_write(kq, r) == [(EVFILT_READ, 0), (EVFILT_WRITE, errno.EPIPE)]
    evs = h.poll(kq)
    assert [_fields(e) for e in evs] == [
        (r, EVFILT_READ, EV_EOF | EV_CLEAR | EV_RECEIPT, 0, nbytes)
    ]


def test_closed_write_end_register_before_close(kq, pipe2, h):
    # pipe_kqueue__closed_write_end_register_before_close.  FreeBSD returns WRITE first
    # (its knote was writable, so queued, since registration); on Linux the read end is
    # never writable, so its WRITE knote is queued only when the writer closes, behind
    # READ (queued when the data came).
    r, w = pipe2
    assert _register_read_and_write(kq, r) == [(EVFILT_READ, 0), (EVFILT_WRITE, 0)]
    nbytes = _fill(w)
    _close(pipe2, 1)
    evs = h.wait_events(kq, lambda e: len(e) == 2)
    assert sorted(_fields(e) for e in evs) == sorted([
        (r, EVFILT_WRITE, EV_EOF | EV_CLEAR | EV_ONESHOT | EV_RECEIPT, 0, 0),
        (r, EVFILT_READ, EV_EOF | EV_CLEAR | EV_RECEIPT, 0, nbytes),
    ])


# -- the same ends, level-triggered (how asyncio uses them) ----------------------------


def test_read_on_write_end_reports_reader_close(kq, pipe2, h):
    # issue 11 defect 1: asyncio watches a child's stdin (the write end) with READ to
    # learn that the child closed it.
    r, w = pipe2
    h.change(kq, w, EVFILT_READ, udata="stdin")
    os.write(w, b"to the child")
    assert h.poll(kq) == []
    _close(pipe2, 0)
    ev = h.wait_one(kq, w, EVFILT_READ)
    assert ev is not None
    assert (ev.flags, ev.fflags, ev.data, ev.udata) == (EV_EOF, 0, 0, "stdin")
    # Level-triggered: still there until deleted.
    assert [_fields(e) for e in h.poll(kq)] == [(w, EVFILT_READ, EV_EOF, 0, 0)]
    del r


def test_write_on_read_end_reports_writer_close_once(kq, pipe2, h):
    r, w = pipe2
    h.change(kq, r, EVFILT_WRITE)
    os.write(w, b"x")
    h.change(kq, r, EVFILT_READ)
    evs = h.wait_events(kq)
    assert [(e.filter, e.data) for e in evs] == [(EVFILT_READ, 1)]  # never writable
    os.read(r, 1)
    _close(pipe2, 1)
    evs = h.wait_events(kq, lambda e: len(e) == 2)
    # Both activated by the one close: READ first, as FreeBSD's pipeclose wakes them.
    assert [_fields(e) for e in evs] == [
        (r, EVFILT_READ, EV_EOF, 0, 0),
        (r, EVFILT_WRITE, EV_EOF | EV_ONESHOT, 0, 0),
    ]
    assert [_fields(e) for e in h.poll(kq)] == [(r, EVFILT_READ, EV_EOF, 0, 0)]


def test_level_write_on_write_end_reports_reader_close_once(kq, pipe2, h):
    r, w = pipe2
    capacity = fcntl.fcntl(w, F_GETPIPE_SZ)
    os.write(w, b"abc")
    h.change(kq, w, EVFILT_WRITE)
    assert [_fields(e) for e in h.poll(kq)] == [(w, EVFILT_WRITE, 0, 0, capacity - 3)]
    _close(pipe2, 0)
    ev = h.wait_one(kq, w, EVFILT_WRITE)
    assert ev is not None and _fields(ev) == (w, EVFILT_WRITE, EV_EOF | EV_ONESHOT, 0,
                                              capacity - 3)
    assert h.poll(kq) == []
    del r


@pytest.fixture
def fifo(tmp_path) -> Iterator[list[int]]:
    """``[read_fd, write_fd]`` of a FIFO, each end opened in its one direction."""
    path = str(tmp_path / "fifo")
    os.mkfifo(path)
    p = [os.open(path, os.O_RDONLY | os.O_NONBLOCK)]
    p.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    try:
        yield p
    finally:
        for fd in p:
            if fd >= 0:
                os.close(fd)


def test_fifo_opened_one_way_keeps_the_never_firing_filter(kq, fifo, h):
    # FreeBSD pipe_kqfilter: a filter the descriptor was not opened for (no FREAD, no
    # FWRITE) is accepted and never fires (pipe_nfiltops): a FIFO's ends.
    r, w = fifo
    assert h.change_err(kq, w, EVFILT_READ) == 0
    assert h.change_err(kq, r, EVFILT_WRITE) == 0
    h.change(kq, r, EVFILT_READ)
    os.write(w, b"data")
    _close(fifo, 1)
    # The reader sees data and EOF; the never-firing filters stay silent.
    evs = h.wait_events(kq)
    assert [(e.ident, e.filter, e.flags, e.data) for e in evs] == [
        (r, EVFILT_READ, EV_EOF, 4)]
