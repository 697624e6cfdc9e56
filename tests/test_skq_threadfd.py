"""D8: kqueue.thread_fileno() is readable iff the calling thread's kevq has events."""

from __future__ import annotations

import os
import select
import socket
import threading

import skqueue
from skqueue import EV_ADD, EV_AFFINITY, EVFILT_READ, kevent


def _readable(fd: int, timeout: float = 0.0) -> bool:
    r, _w, _x = select.select([fd], [], [], timeout)
    return bool(r)


def test_thread_fileno_follows_the_calling_threads_kevq() -> None:
    kq = skqueue.kqueue()
    kq.set_multi(skqueue.parse_sched("rand"))
    a, b = socket.socketpair()
    other_fd: list[int] = []
    ready = threading.Event()
    done = threading.Event()

    def other() -> None:  # a second active thread that must not see our event
        other_fd.append(kq.thread_fileno())
        kq.control(None, 1, 0)
        ready.set()
        done.wait(5)

    t = threading.Thread(target=other)
    t.start()
    try:
        fd = kq.thread_fileno()
        kq.control(None, 1, 0)  # activate our kevq
        assert ready.wait(5)
        assert not _readable(fd)
        # EV_AFFINITY binds the event to this thread's kevq.
        kq.control([kevent(b, EVFILT_READ, EV_ADD | EV_AFFINITY)], 0)
        a.send(b"x")
        assert _readable(fd, 1.0)
        evs = kq.control(None, 4, 0)  # harvests; the event is bound to this thread
        assert [e.ident for e in evs] == [b.fileno()]
        assert not _readable(other_fd[0])  # nothing for the other thread
        b.recv(1)
        kq.control(None, 4, 0)  # release; nothing left
        assert not _readable(fd)
    finally:
        done.set()
        t.join(5)
        kq.close()
        a.close()
        b.close()


def test_thread_fileno_is_fileno_in_legacy_mode() -> None:
    kq = skqueue.kqueue()
    try:
        assert kq.thread_fileno() == kq.fileno()
    finally:
        kq.close()


def test_release_of_an_owned_knote_signals_the_queue_it_waits_on() -> None:
    """A knote re-activated while owned sits on another kevq, unavailable; when its owner
    releases it, that kevq's thread_fileno() must become readable (white-box setup)."""
    kq = skqueue.kqueue()
    kq.set_multi(skqueue.parse_sched("rand"))
    core = kq._core
    assert core is not None
    a, b = socket.socketpair()
    other: dict[str, object] = {}
    ready = threading.Event()
    done = threading.Event()

    def helper() -> None:
        other["fd"] = kq.thread_fileno()
        kq.control(None, 1, 0)
        other["q"] = core.my_kevq()
        ready.set()
        done.wait(5)

    t = threading.Thread(target=helper)
    t.start()
    try:
        kq.thread_fileno()
        kq.control(None, 1, 0)
        assert ready.wait(5)
        # EV_AFFINITY only makes the first delivery come to this thread, deterministically.
        kq.control([kevent(b, EVFILT_READ, EV_ADD | EV_AFFINITY)], 0)
        a.send(b"x")
        assert [e.ident for e in kq.control(None, 1, 1.0)] == [b.fileno()]  # we own it
        kn = core.knotes[(b.fileno(), EVFILT_READ)]
        q2 = other["q"]
        with kn.lock:  # re-activated while owned, placed on the helper's kevq
            core._enqueue(q2, kn, False)  # type: ignore[arg-type]
        assert q2.available() == 0  # type: ignore[attr-defined]
        os.eventfd_read(q2.wake_fd)  # type: ignore[attr-defined]  # its scan cleared it
        assert not _readable(other["fd"])  # type: ignore[arg-type]
        kq.control(None, 1, 0)  # our next call releases the knote
        assert q2.available() == 1  # type: ignore[attr-defined]
        assert _readable(other["fd"], 1.0)  # type: ignore[arg-type]
    finally:
        done.set()
        t.join(5)
        kq.close()
        a.close()
        b.close()
