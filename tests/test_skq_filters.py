"""Filters and flags in multi mode (docs/semantics.md §2.4, §2.10, §2.11).

* EVFILT_TIMER: a periodic timer consumed by several threads; summed over every
  returned event, ``data`` accounts for every expiration (D11: none lost, also across
  thread exits that re-home the knote).
* EVFILT_USER: ``NOTE_TRIGGER`` from another thread wakes a thread blocked with no
  timeout well within 1 s; repeated add/trigger/delete from 4 threads.
* EV_DISPATCH: delivered once until re-enabled, then again (to whichever thread);
  EV_ONESHOT: delivered exactly once, then gone.
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
    EV_ERROR,
    EV_ONESHOT,
    EVFILT_READ,
    EVFILT_TIMER,
    EVFILT_USER,
    NOTE_TRIGGER,
    kevent,
)

pytestmark = pytest.mark.timeout(60)


def _multi(label: str = "rand") -> skqueue.kqueue:
    kq = skqueue.kqueue(tunables=skqueue.Tunables(seed=8),
                        topology=skqueue.Topology.synthetic(2, 4, 1))
    kq.set_multi(skqueue.parse_sched(label))
    return kq


@pytest.mark.parametrize("label", ["rand", "ws", "cpu2", "best2"])
def test_periodic_timer_expirations_all_accounted(label: str) -> None:
    period_ms = 5
    with _multi(label) as kq:
        lock = threading.Lock()
        total = [0]
        stop = threading.Event()

        def worker() -> None:
            while not stop.is_set():
                for e in kq.control(None, 1, 0.02):
                    assert e.ident == 1 and e.filter == EVFILT_TIMER
                    assert e.data >= 1
                    with lock:
                        total[0] += e.data
                time.sleep(0.003)  # hold the event a little: expirations land while owned

        ts = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
        for t in ts:
            t.start()
        t0_before = time.monotonic()
        kq.control([kevent(1, EVFILT_TIMER, EV_ADD, 0, period_ms)], 0)
        t0_after = time.monotonic()
        time.sleep(0.6)
        stop.set()
        for t in ts:
            t.join(5)
        # every worker is gone: what is left is re-homed and reaches a new thread
        final: list[int] = []

        def late() -> None:
            time.sleep(0.05)
            t_before = time.monotonic()
            evs = kq.control(None, 4, 1.0)
            t_after = time.monotonic()
            final.extend([sum(e.data for e in evs), t_before, t_after])  # type: ignore[list-item]

        t = threading.Thread(target=late)
        t.start()
        t.join(5)
        got, tf_before, tf_after = final
        total[0] += got
        lo = int((tf_before - t0_after) * 1000 // period_ms)
        hi = int((tf_after - t0_before) * 1000 // period_ms)
        assert lo - 1 <= total[0] <= hi + 1, (total[0], lo, hi)
        kq.control([kevent(1, EVFILT_TIMER, EV_DELETE)], 0)


@pytest.mark.parametrize("label", ["rand", "ws", "best2"])
def test_user_trigger_wakes_blocked_thread(label: str) -> None:
    with _multi(label) as kq:
        kq.control([kevent(7, EVFILT_USER, EV_ADD | EV_CLEAR)], 0)
        for _ in range(5):
            result: list[object] = []
            started = threading.Event()

            def waiter(result: list[object] = result, started: threading.Event = started
                       ) -> None:
                started.set()
                t0 = time.monotonic()
                evs = kq.control(None, 1, None)
                result.extend([evs, time.monotonic() - t0])

            t = threading.Thread(target=waiter, daemon=True)
            t.start()
            started.wait(5)
            time.sleep(0.05)
            t_trig = time.monotonic()
            kq.control([kevent(7, EVFILT_USER, 0, NOTE_TRIGGER)], 0)
            t.join(2)
            assert not t.is_alive(), "NOTE_TRIGGER did not wake the blocked thread"
            evs = result[0]
            assert isinstance(evs, list)
            assert [(e.ident, e.filter) for e in evs] == [(7, EVFILT_USER)]
            assert time.monotonic() - t_trig < 1.0


def test_user_add_trigger_delete_from_four_waiters() -> None:
    """libkqueue's threading template: 4 waiters, 200 add/trigger/delete rounds."""
    with _multi("rand") as kq:
        lock = threading.Lock()
        seen: list[int] = []
        stop = threading.Event()
        errors: list[BaseException] = []

        def waiter() -> None:
            try:
                while not stop.is_set():
                    for e in kq.control(None, 4, 0.02):
                        with lock:
                            seen.append(e.ident)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=waiter, daemon=True) for _ in range(4)]
        for t in ts:
            t.start()
        time.sleep(0.05)
        for i in range(200):
            ident = 1000 + i
            kq.control([kevent(ident, EVFILT_USER, EV_ADD | EV_ONESHOT)], 0)
            kq.control([kevent(ident, EVFILT_USER, 0, NOTE_TRIGGER)], 0)
            deadline = time.monotonic() + 2
            while True:
                with lock:
                    if ident in seen:
                        break
                assert time.monotonic() < deadline, f"round {i} not delivered"
                time.sleep(0.0005)
            # oneshot: gone after delivery
            evs = kq.control([kevent(ident, EVFILT_USER, EV_DELETE)], 1, 0)
            assert [(e.flags & EV_ERROR, e.data) for e in evs] == [(EV_ERROR, errno.ENOENT)]
        time.sleep(0.05)
        stop.set()
        for t in ts:
            t.join(5)
        assert not errors
        assert sorted(seen) == [1000 + i for i in range(200)]  # each exactly once


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


class Waiters:
    def __init__(self, kq: skqueue.kqueue, n: int) -> None:
        self.kq = kq
        self.lock = threading.Lock()
        self.got: list[tuple[int, int]] = []
        self.stop = threading.Event()
        self.ts = [threading.Thread(target=self.run, daemon=True) for _ in range(n)]
        for t in self.ts:
            t.start()
        time.sleep(0.05)

    def run(self) -> None:
        while not self.stop.is_set():
            for e in self.kq.control(None, 2, 0.02):
                with self.lock:
                    self.got.append((e.ident, e.flags))

    def count(self, ident: int) -> int:
        with self.lock:
            return sum(1 for i, _ in self.got if i == ident)

    def halt(self) -> None:
        self.stop.set()
        for t in self.ts:
            t.join(5)


@pytest.mark.parametrize("label", ["rand", "ws", "best2"])
def test_dispatch_in_multi_mode(label: str) -> None:
    a, b = _pair()
    try:
        with _multi(label) as kq:
            w = Waiters(kq, 3)
            try:
                kq.control([kevent(a, EVFILT_READ, EV_ADD | EV_DISPATCH)], 0)
                b.send(b"xyz")  # stays unread: level-triggered, but dispatched
                deadline = time.monotonic() + 1
                while w.count(a.fileno()) < 1 and time.monotonic() < deadline:
                    time.sleep(0.002)
                time.sleep(0.2)
                assert w.count(a.fileno()) == 1
                for k in range(2, 6):
                    kq.control([kevent(a, EVFILT_READ, EV_ENABLE)], 0)
                    deadline = time.monotonic() + 1
                    while w.count(a.fileno()) < k and time.monotonic() < deadline:
                        time.sleep(0.002)
                    time.sleep(0.1)
                    assert w.count(a.fileno()) == k
                with w.lock:
                    assert all(f & EV_DISPATCH for _, f in w.got)
            finally:
                w.halt()
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("label", ["rand", "ws", "best2"])
def test_oneshot_in_multi_mode(label: str) -> None:
    pairs = [_pair() for _ in range(8)]
    try:
        with _multi(label) as kq:
            w = Waiters(kq, 3)
            try:
                kq.control([kevent(a, EVFILT_READ, EV_ADD | EV_ONESHOT) for a, _ in pairs], 0)
                for _, b in pairs:
                    b.send(b"x")
                # Every event delivered (a deadline, not a fixed pause: on a loaded
                # machine the workers' deletions can take a while), then a second byte
                # on each, which no knote watches any more: nothing else may arrive.
                deadline = time.monotonic() + 10
                while (any(w.count(a.fileno()) < 1 for a, _ in pairs)
                       and time.monotonic() < deadline):  # fmt: skip
                    time.sleep(0.005)
                for _, b in pairs:
                    b.send(b"y")  # no knote any more
                time.sleep(0.2)
                for a, _ in pairs:
                    assert w.count(a.fileno()) == 1
                    evs = kq.control([kevent(a, EVFILT_READ, EV_DELETE)], 1, 0)
                    assert [(e.flags & EV_ERROR, e.data) for e in evs] == [
                        (EV_ERROR, errno.ENOENT)]
                assert kq.dump()["knotes"] == 0
            finally:
                w.halt()
    finally:
        for a, b in pairs:
            a.close()
            b.close()
