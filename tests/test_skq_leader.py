"""The leader/followers invariant: while any thread sleeps, one sleeping thread is in epoll.

Scenario (EV_AFFINITY pins each socket's events to one thread): the leader harvests an
event for itself and one for a follower in the same epoll_wait.  The leader leaves epoll
with work and promotes a sleeping follower; if the one it picks is the follower that
just got work of its own, that follower returns to the application without taking the
leader role.  Both then "process" for a long time.  A third thread still sleeps; when
data for it arrives, somebody must be in epoll to see it.
"""

from __future__ import annotations

import socket
import threading
import time

import skqueue
from skqueue import EV_ADD, EV_AFFINITY, EVFILT_READ, kevent

HOLD = 1.5  # how long the two busy threads stay out of control()


def _round(order: int) -> float:
    kq = skqueue.kqueue(tunables=skqueue.Tunables(seed=order))
    kq.set_multi(skqueue.parse_sched("rand"))
    pairs = [socket.socketpair() for _ in range(3)]
    registered = threading.Barrier(4)
    got: dict[int, float] = {}
    stop = threading.Event()

    def worker(i: int) -> None:
        w, r = pairs[i]
        kq.control([kevent(r, EVFILT_READ, EV_ADD | EV_AFFINITY)], 0)
        registered.wait(5)
        while not stop.is_set():
            for _ev in kq.control(None, 4, 3.0):
                r.recv(64)
                got.setdefault(i, time.monotonic())
                if i != 2:
                    stop.wait(HOLD)  # a long request
                else:
                    return

    ths = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in ths:
        t.start()
    try:
        registered.wait(5)
        time.sleep(0.2)  # all three asleep: one leader, two followers
        # Work for threads 0 and 1 in one burst (one harvest), in a varying order.
        first, second = (0, 1) if order % 2 == 0 else (1, 0)
        pairs[first][0].send(b"a")
        pairs[second][0].send(b"b")
        deadline = time.monotonic() + 2
        while (0 not in got or 1 not in got) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)
        t0 = time.monotonic()
        pairs[2][0].send(b"c")  # thread 2 sleeps; its event needs a harvester
        deadline = time.monotonic() + 3
        while 2 not in got and time.monotonic() < deadline:
            time.sleep(0.005)
        return got.get(2, float("inf")) - t0
    finally:
        stop.set()
        for t in ths:
            t.join(5)
        kq.close()
        for a, b in pairs:
            a.close()
            b.close()


def test_a_sleeping_thread_is_always_in_epoll() -> None:
    delays = [_round(k) for k in range(6)]
    assert max(delays) < HOLD / 2, delays
