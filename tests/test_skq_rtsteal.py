"""Realtime events do not wait for one busy thread (Tunables.rt_steal, a skqueue extension)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

import skqueue
from skqueue import EV_ADD, EV_REALTIME, EVFILT_READ, kevent


@pytest.mark.parametrize("rt_steal", [True, False])
def test_realtime_event_not_stuck_behind_a_busy_thread(rt_steal: bool) -> None:
    tun = skqueue.Tunables(seed=7, rt_idle_first=False, rt_steal=rt_steal)
    kq = skqueue.kqueue(tunables=tun)
    kq.set_multi(skqueue.parse_sched("rand"))
    busy_a, busy_b = socket.socketpair()
    rts = [socket.socketpair() for _ in range(12)]
    got_by_b: dict[int, float] = {}
    a_has_event = threading.Event()
    a_release = threading.Event()
    stop = threading.Event()

    def thread_a() -> None:
        while not stop.is_set():
            evs = kq.control(None, 1, 0.05)
            if any(e.ident == busy_b.fileno() for e in evs):
                a_has_event.set()
                a_release.wait(5)  # "a long request": A stays out of control()

    by_fd = {y.fileno(): y for _x, y in rts}

    def thread_b() -> None:
        while not stop.is_set():
            for e in kq.control(None, 4, 0.02):
                got_by_b.setdefault(e.ident, time.monotonic())
                if e.ident in by_fd:
                    by_fd[e.ident].recv(16)  # consume it, as a server would

    ta = threading.Thread(target=thread_a)
    ta.start()
    time.sleep(0.1)
    kq.control([kevent(busy_b, EVFILT_READ, EV_ADD)], 0)
    busy_a.send(b"x")
    assert a_has_event.wait(2)
    tb = threading.Thread(target=thread_b)
    tb.start()
    time.sleep(0.1)
    try:
        # Both kevqs are active; the random policy parks about half of these on A's kevq.
        kq.control([kevent(y, EVFILT_READ, EV_ADD | EV_REALTIME) for _x, y in rts], 0)
        t0 = time.monotonic()
        for x, _y in rts:
            x.send(b"r")
        deadline = t0 + 1.0
        want = {y.fileno() for _x, y in rts}
        while time.monotonic() < deadline and not want <= set(got_by_b):
            time.sleep(0.01)
        late = want - set(got_by_b)
        if rt_steal:
            assert not late, f"{len(late)} realtime events waited for the busy thread"
        else:
            assert late, "without rt_steal some events should wait for the busy thread"
    finally:
        a_release.set()
        stop.set()
        ta.join(5)
        tb.join(5)
        kq.close()
        for x, y in rts + [(busy_a, busy_b)]:
            x.close()
            y.close()
