"""Multi-threaded use of one kqueue, in the spirit of libkqueue test/threading.c:

* a NOTE_TRIGGER from another thread wakes a thread blocked in control(timeout=None);
* closing the kqueue while a thread waits ends that wait with an error (never a hang);
* 4 waiter threads x 200 add/trigger/delete rounds without errors, and the EV_ONESHOT
  variant in which every event is delivered exactly once;
* changes from one thread while another waits (READ, TIMER).
"""

from __future__ import annotations

import errno
import socket
import threading
import time

import pytest

import skqueue
from skqueue import (
    EV_ADD,
    EV_CLEAR,
    EV_DELETE,
    EV_DISPATCH,
    EV_ENABLE,
    EV_ONESHOT,
    EVFILT_READ,
    EVFILT_TIMER,
    EVFILT_USER,
    NOTE_TRIGGER,
    kevent,
)

pytestmark = pytest.mark.timeout(60)


class Waiter(threading.Thread):
    """Calls control() in a loop until stopped; records events and errors."""

    def __init__(self, kq, timeout: float, ready: threading.Barrier | None = None):
        super().__init__(daemon=True)
        self.kq = kq
        self.timeout = timeout
        self.ready = ready
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.events: list[tuple[int, int]] = []
        self.errors: list[BaseException] = []

    def run(self) -> None:
        if self.ready is not None:
            self.ready.wait(5)
        while not self.stop.is_set():
            try:
                evs = self.kq.control(None, 8, self.timeout)
            except BaseException as e:  # recorded and asserted by the test
                with self.lock:
                    self.errors.append(e)
                return
            with self.lock:
                self.events.extend((e.ident, e.filter) for e in evs)


def test_cross_thread_trigger_wakes_blocked_waiter(kq):
    kq.control([kevent(0, EVFILT_USER, EV_ADD | EV_DISPATCH)], 0)
    result: dict[str, object] = {}
    started = threading.Event()

    def wait():
        started.set()
        t0 = time.monotonic()
        try:
            result["events"] = kq.control(None, 1, None)
        except BaseException as e:
            result["error"] = e
        result["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    started.wait(5)
    time.sleep(0.05)  # let the waiter block
    t_trig = time.monotonic()
    kq.control([kevent(0, EVFILT_USER, EV_ENABLE, NOTE_TRIGGER)], 0)
    t.join(5)
    assert not t.is_alive(), "waiter still blocked 5 s after NOTE_TRIGGER"
    assert "error" not in result, result
    assert [e.ident for e in result["events"]] == [0]
    assert time.monotonic() - t_trig < 1.0


def test_close_while_waiting_ends_the_wait():
    # libkqueue threading.c test_kevent_threading_close; docs/semantics.md §2.12: waiters get EBADF.
    q = skqueue.kqueue()
    q.control([kevent(1, EVFILT_USER, EV_ADD | EV_CLEAR)], 0)
    result: dict[str, object] = {}
    started = threading.Event()

    def wait():
        started.set()
        try:
            result["events"] = q.control(None, 1, None)
        except BaseException as e:
            result["error"] = e

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    started.wait(5)
    time.sleep(0.1)
    q.close()
    t.join(5)
    assert not t.is_alive(), "control() still blocked 5 s after close()"
    err = result.get("error")
    assert err is not None, f"wait ended without an error: {result}"
    assert isinstance(err, ValueError) or (isinstance(err, OSError) and err.errno == errno.EBADF), (
        repr(err)
    )
    # Subsequent calls fail too.
    with pytest.raises((ValueError, OSError)):
        q.control(None, 1, 0)


def test_close_with_several_waiters():
    q = skqueue.kqueue()
    waiters = [Waiter(q, timeout=None) for _ in range(3)]  # type: ignore[arg-type]
    for w in waiters:
        w.start()
    time.sleep(0.1)
    q.close()
    for w in waiters:
        w.join(5)
        assert not w.is_alive()
        assert len(w.errors) == 1


def test_multi_waiter_add_trigger_delete_race(kq):
    ready = threading.Barrier(5)
    waiters = [Waiter(kq, timeout=0.05, ready=ready) for _ in range(4)]
    for w in waiters:
        w.start()
    ready.wait(5)
    for i in range(200):
        ident = i + 1
        kq.control(
            [
                kevent(ident, EVFILT_USER, EV_ADD | EV_CLEAR),
                kevent(ident, EVFILT_USER, EV_ENABLE, NOTE_TRIGGER),
            ],
            0,
        )
        kq.control([kevent(ident, EVFILT_USER, EV_DELETE)], 0)
    time.sleep(0.1)
    for w in waiters:
        w.stop.set()
    for w in waiters:
        w.join(5)
        assert not w.is_alive()
        assert w.errors == []
    seen = [ev for w in waiters for ev in w.events]
    # A knote deleted before anyone collected it must not be reported; none twice.
    assert len(seen) == len(set(seen))
    assert all(f == EVFILT_USER and 1 <= i <= 200 for i, f in seen)


def test_multi_waiter_oneshot_each_delivered_exactly_once(kq):
    ready = threading.Barrier(5)
    waiters = [Waiter(kq, timeout=0.05, ready=ready) for _ in range(4)]
    for w in waiters:
        w.start()
    ready.wait(5)
    for i in range(200):
        ident = i + 1
        kq.control(
            [
                kevent(ident, EVFILT_USER, EV_ADD | EV_ONESHOT | EV_CLEAR),
                kevent(ident, EVFILT_USER, EV_ENABLE, NOTE_TRIGGER),
            ],
            0,
        )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with_all = sum(len(w.events) for w in waiters)
        if with_all >= 200:
            break
        time.sleep(0.02)
    time.sleep(0.1)
    for w in waiters:
        w.stop.set()
    for w in waiters:
        w.join(5)
        assert not w.is_alive()
        assert w.errors == []
    seen = sorted(i for w in waiters for i, _ in w.events)
    assert seen == list(range(1, 201))


def test_changes_from_one_thread_while_another_waits(kq, sockpair):
    a, b = sockpair
    b.send(b"ready")
    result: dict[str, object] = {}

    def wait():
        try:
            result["events"] = kq.control(None, 4, 5.0)
        except BaseException as e:
            result["error"] = e

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    kq.control([kevent(a, EVFILT_READ, EV_ADD)], 0)  # added while the other thread waits
    t.join(5)
    assert not t.is_alive()
    assert "error" not in result
    assert [(e.ident, e.data) for e in result["events"]] == [(a.fileno(), 5)]
    assert time.monotonic() - t0 < 1.0


def test_timer_added_from_other_thread_wakes_waiter(kq):
    result: dict[str, object] = {}

    def wait():
        result["events"] = kq.control(None, 4, 5.0)

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    kq.control([kevent(9, EVFILT_TIMER, EV_ADD | EV_ONESHOT, 0, 20)], 0)
    t.join(5)
    assert not t.is_alive()
    assert [e.ident for e in result["events"]] == [9]
    assert time.monotonic() - t0 < 1.0


def test_concurrent_producers_many_sockets(kq):
    # Several threads write to their own sockets while one thread collects; every byte's
    # socket is reported (EV_CLEAR, read everything on each event).
    pairs = [socket.socketpair() for _ in range(8)]
    for a, _ in pairs:
        a.setblocking(False)
        kq.control([kevent(a, EVFILT_READ, EV_ADD | EV_CLEAR)], 0)
    by_fd = {a.fileno(): a for a, _ in pairs}
    per_pair = 50

    def produce(sock):
        for _ in range(per_pair):
            sock.send(b"p")
            time.sleep(0.0005)

    producers = [threading.Thread(target=produce, args=(b,)) for _, b in pairs]
    for p in producers:
        p.start()
    received = 0
    deadline = time.monotonic() + 10
    while received < per_pair * len(pairs) and time.monotonic() < deadline:
        for e in kq.control(None, 16, 0.2):
            try:
                received += len(by_fd[e.ident].recv(65536))
            except BlockingIOError:
                pass
    for p in producers:
        p.join(5)
    for a, b in pairs:
        a.close()
        b.close()
    assert received == per_pair * len(pairs)


def test_legacy_wakeup_reaches_every_waiter():
    """Stock kqueue wakes every sleeping waiter; each rescans, so a level-triggered
    event is returned to all of them (found by the server runtime's stop path)."""
    import skqueue

    kq = skqueue.kqueue()
    try:
        kq.control([skqueue.kevent(1, skqueue.EVFILT_USER, skqueue.EV_ADD)], 0)
        got: list[float] = []
        lock = threading.Lock()

        def waiter() -> None:
            evs = kq.control(None, 1, 5.0)
            with lock:
                got.append(time.monotonic() if evs else float("inf"))

        ths = [threading.Thread(target=waiter) for _ in range(3)]
        for t in ths:
            t.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        kq.control([skqueue.kevent(1, skqueue.EVFILT_USER, 0, skqueue.NOTE_TRIGGER)], 0)
        for t in ths:
            t.join(10)
        assert len(got) == 3
        assert all(t - t0 < 1.0 for t in got), [t - t0 for t in got]
    finally:
        kq.close()
