"""``data`` of READ events on pipes and sockets: read when the program first asks.

With the C helper built, the scan re-checks level-triggered READ knotes with one poll(2)
per run and leaves FIONREAD to the first read of ``ev.data`` (skqueue/_scan.py,
"Lazy data").  The contract, which the pure-Python path (eager) meets as well:

* ``data`` is the number of bytes readable, measured no earlier than the scan and no
  later than the first time the program reads it; after that it never changes;
* it is never the byte count of another file: a descriptor closed or reused before the
  first read gives 0;
* the event is a ``kevent`` in every other way (fields, comparisons, repr, copy, pickle).
"""

from __future__ import annotations

import copy
import os
import pickle
import threading

import pytest

import skqueue
from skqueue import EV_ADD, EVFILT_READ, compat


def _lazy(ev: skqueue.kevent) -> bool:
    return type(ev) is not skqueue.kevent and type(ev) is not compat.kevent


def _one_event(kq, fd: int) -> skqueue.kevent:
    evs = kq.control(None, 4, 1)
    assert len(evs) == 1 and evs[0].ident == fd, evs
    return evs[0]


def test_data_is_the_bytes_readable(kq, pipe_fds, h):
    r, w = pipe_fds
    os.write(w, b"abc")
    h.change(kq, r, EVFILT_READ)
    assert _one_event(kq, r).data == 3
    os.write(w, b"de")
    assert _one_event(kq, r).data == 5  # level-triggered re-check


def test_data_is_measured_at_first_read_then_fixed(kq, pipe_fds, h):
    r, w = pipe_fds
    os.write(w, b"abc")
    h.change(kq, r, EVFILT_READ)
    ev = _one_event(kq, r)
    os.write(w, b"de")  # arrives after the scan, before the program looks
    first = ev.data
    assert first in (3, 5)
    if _lazy(ev):
        assert first == 5
    assert os.read(r, 100) == b"abcde"
    assert ev.data == first  # read once, then a plain value
    assert ev == skqueue.kevent(r, EVFILT_READ, 0, 0, first, None)


def test_descriptor_reused_before_first_read_never_reports_the_new_file(kq, h):
    r, w = os.pipe()
    r2, w2 = os.pipe()
    try:
        os.write(w, b"abc")
        h.change(kq, r, EVFILT_READ)
        ev = _one_event(kq, r)
        os.write(w2, b"1234567")
        os.dup2(r2, r)  # r now names the other pipe, 7 bytes readable
        assert ev.data in (3, 0)
        assert ev.data != 7
    finally:
        for fd in (r, w, r2, w2):
            os.close(fd)


def test_descriptor_closed_before_first_read(kq, pipe_fds, h):
    r, w = pipe_fds
    dup = os.dup(r)
    try:
        os.write(w, b"abc")
        h.change(kq, dup, EVFILT_READ)
        ev = _one_event(kq, dup)
    finally:
        os.close(dup)
    assert ev.data in (3, 0)


def test_lazy_event_is_a_kevent(kq, pipe_fds, h):
    r, w = pipe_fds
    token = object()
    os.write(w, b"xy")
    h.change(kq, r, EVFILT_READ, udata=token)
    ev = _one_event(kq, r)
    assert isinstance(ev, skqueue.kevent)
    assert type(ev).__name__ == "kevent"
    assert ev == skqueue.kevent(r, EVFILT_READ, 0, 0, 2, token)
    assert not ev < skqueue.kevent(r, EVFILT_READ, 0, 0, 2, token)
    assert "data=0x2" in repr(ev)
    c = copy.copy(ev)
    assert type(c) is skqueue.kevent and c == ev
    ev.data = 9
    assert ev.data == 9
    with pytest.raises(TypeError):
        hash(ev)  # mutable, like select.kevent


def test_lazy_event_pickles_as_a_plain_kevent(kq, pipe_fds, h):
    r, w = pipe_fds
    os.write(w, b"xyz")
    h.change(kq, r, EVFILT_READ, udata=7)
    ev = _one_event(kq, r)
    back = pickle.loads(pickle.dumps(ev))
    assert type(back) is skqueue.kevent
    assert back == ev and back.data == 3


def test_compat_events_keep_their_class(pipe_fds):
    r, w = pipe_fds
    kq = compat.kqueue()
    try:
        os.write(w, b"abcd")
        kq.control([compat.kevent(r, compat.KQ_FILTER_READ, compat.KQ_EV_ADD, udata=5)], 0)
        (ev,) = kq.control(None, 4, 1)
        assert isinstance(ev, compat.kevent)
        assert type(ev).__name__ == "kevent"
        assert ev.udata == 5 and ev.data == 4
        assert type(copy.copy(ev)) is compat.kevent
    finally:
        kq.close()


def test_concurrent_first_reads_see_one_value(kq, pipe_fds, h):
    r, w = pipe_fds
    os.write(w, b"a")
    h.change(kq, r, EVFILT_READ)
    ev = _one_event(kq, r)
    seen: list[int] = []
    start = threading.Barrier(9)

    def reader() -> None:
        start.wait()
        seen.append(ev.data)

    def writer() -> None:
        start.wait()
        for _ in range(50):
            os.write(w, b"b")

    threads = [threading.Thread(target=reader) for _ in range(8)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8 and len(set(seen)) == 1, seen
    assert seen[0] == ev.data


def test_every_event_of_a_batch_has_its_own_data(kq, h):
    pipes = [os.pipe() for _ in range(20)]
    try:
        for i, (_r, w) in enumerate(pipes):
            os.write(w, b"x" * (i + 1))
        kq.control([skqueue.kevent(r, EVFILT_READ, EV_ADD) for r, _ in pipes], 0)
        for _ in range(2):  # the activation scan, then the level-triggered re-check
            evs = kq.control(None, 64, 1)
            assert sorted((e.ident, e.data) for e in evs) == sorted(
                (r, i + 1) for i, (r, _) in enumerate(pipes)
            )
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)


def test_a_program_that_reads_data_gets_it_from_the_scan(kq, pipe_fds, h):
    r, w = pipe_fds
    os.write(w, b"abc")
    h.change(kq, r, EVFILT_READ)
    assert _one_event(kq, r).data == 3  # read: this kqueue now reads data for r
    os.write(w, b"de")
    ev = _one_event(kq, r)
    os.write(w, b"fghi")  # after the scan
    assert ev.data == 5
