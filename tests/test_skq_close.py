"""Descriptor lifecycle under SKQ (docs/semantics.md §5.1 "close", §2.12).

* close race: 8 workers on a CPU,2 (and a random) multi-mode kqueue; a closer thread
  keeps closing a random socketpair, re-creating it and re-registering it, while a
  sender writes to random pairs.  Every registration carries a unique generation number
  in ``udata``; a worker that receives an event checks (under the table lock) that its
  generation is still open, or was closed only after that worker's ``control()`` call
  began -- otherwise the kqueue delivered an event for a descriptor closed before the
  wait.  No crash, no hang, no error; afterwards every surviving pair still delivers.
* kqueue close with blocked waiters: each gets ``OSError(EBADF)`` promptly.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

import skqueue
from skqueue import EV_ADD, EV_DELETE, EVFILT_READ, kevent

pytestmark = pytest.mark.timeout(120)

NPAIRS = 8
NWORKERS = 8


@dataclass
class Slot:
    gen: int
    a: socket.socket
    b: socket.socket


@dataclass
class Table:
    lock: threading.Lock = field(default_factory=threading.Lock)
    slots: list[Slot] = field(default_factory=list)
    by_gen: dict[int, Slot] = field(default_factory=dict)
    closed_at: dict[int, int] = field(default_factory=dict)  # gen -> close sequence no.
    seq: int = 0  # bumped on every close
    next_gen: int = 0
    bad: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    received: int = 0
    closes: int = 0


def _new_slot(tb: Table, kq: skqueue.kqueue) -> Slot:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setblocking(False)
    b.setblocking(False)
    tb.next_gen += 1
    sl = Slot(tb.next_gen, a, b)
    tb.by_gen[sl.gen] = sl
    kq.control([kevent(a, EVFILT_READ, EV_ADD, udata=sl.gen)], 0)
    return sl


@pytest.mark.parametrize("label", ["cpu2", "rand", "best2_ws"])
def test_close_race(label: str) -> None:
    kq = skqueue.kqueue(tunables=skqueue.Tunables(seed=4),
                        topology=skqueue.Topology.synthetic(2, 4, 1))
    kq.set_multi(skqueue.parse_sched(label))
    tb = Table()
    rng = random.Random(42)
    with tb.lock:
        tb.slots = [_new_slot(tb, kq) for _ in range(NPAIRS)]
    stop = threading.Event()

    def worker(wid: int) -> None:
        while not stop.is_set():
            with tb.lock:
                seq0 = tb.seq
            try:
                evs = kq.control(None, 2, 0.02)
            except Exception as e:  # noqa: BLE001 - reported
                with tb.lock:
                    tb.errors.append(f"w{wid}: {e!r}")
                return
            for e in evs:
                with tb.lock:
                    gen = e.udata
                    sl = tb.by_gen.get(gen)
                    if sl is None:
                        tb.bad.append(f"unknown udata {e}")
                        continue
                    closed = tb.closed_at.get(gen)
                    if closed is not None:
                        if closed <= seq0:
                            tb.bad.append(f"event for generation {gen} closed before the "
                                          f"wait began: {e}")
                        continue  # closed meanwhile: allowed, nothing to read
                    if e.ident != sl.a.fileno():
                        tb.bad.append(f"ident {e.ident} != fd {sl.a.fileno()} of gen {gen}")
                        continue
                    try:
                        tb.received += len(sl.a.recv(1))
                    except BlockingIOError:
                        pass  # closed+reopened races can leave a stale-but-harmless wakeup

    def closer() -> None:
        crng = random.Random(7)
        while not stop.is_set():
            with tb.lock:
                i = crng.randrange(NPAIRS)
                old = tb.slots[i]
                how = crng.randrange(3)
                try:
                    if how == 0:
                        kq.control([kevent(old.a, EVFILT_READ, EV_DELETE)], 0)
                    elif how == 1:
                        kq.forget(old.a.fileno())
                    # how == 2: close behind the kqueue's back (detected by identity)
                    old.a.close()
                    old.b.close()
                    tb.seq += 1
                    tb.closed_at[old.gen] = tb.seq
                    tb.closes += 1
                    tb.slots[i] = _new_slot(tb, kq)
                except Exception as e:  # noqa: BLE001 - reported
                    tb.errors.append(f"closer: {e!r}")
                    return
            time.sleep(crng.randint(0, 16) * 1e-6)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(NWORKERS)]
    threads.append(threading.Thread(target=closer, daemon=True))
    for t in threads:
        t.start()
    try:
        t_min = time.monotonic() + 1.0
        t_max = time.monotonic() + 3.0
        sent = 0
        # at least the original's 8 x 1024 packets and at least 1 s of churn
        while time.monotonic() < t_max and (sent < NWORKERS * 1024 or time.monotonic() < t_min):
            with tb.lock:
                sl = tb.slots[rng.randrange(NPAIRS)]
                try:
                    sl.b.send(b"m")
                    sent += 1
                except OSError:
                    pass
            if sent % 16 == 0:
                time.sleep(0)
        stop_closer = threads[-1]
        stop.set()
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads), "hang"
        assert not tb.errors, tb.errors[:5]
        assert not tb.bad, tb.bad[:5]
        assert tb.closes > 20, tb.closes
        assert tb.received > 0
        assert not stop_closer.is_alive()
        # liveness after the churn: every current pair still delivers, to a new thread
        stop.clear()
        with tb.lock:
            current = {sl.gen: sl for sl in tb.slots}
        for sl in current.values():
            while True:
                try:
                    sl.a.recv(4096)
                except BlockingIOError:
                    break
            sl.b.send(b"!")
        seen: set[int] = set()

        def late() -> None:
            deadline = time.monotonic() + 3
            while seen != set(current) and time.monotonic() < deadline:
                for e in kq.control(None, NPAIRS, 0.1):
                    if e.udata in current:
                        seen.add(e.udata)
                        try:
                            current[e.udata].a.recv(1)
                        except BlockingIOError:
                            pass

        t = threading.Thread(target=late)
        t.start()
        t.join(10)
        assert seen == set(current)
        # the kqueue holds exactly the current registrations
        assert kq.dump()["knotes"] == NPAIRS
    finally:
        stop.set()
        kq.close()
        with tb.lock:
            for sl in tb.slots:
                sl.a.close()
                sl.b.close()


@pytest.mark.parametrize("label", ["rand", "ws", "best2", "cpu0"])
def test_close_with_blocked_waiters_gives_ebadf(label: str) -> None:
    a, b = socket.socketpair()
    kq = skqueue.kqueue(topology=skqueue.Topology.synthetic(2, 4, 1))
    kq.set_multi(skqueue.parse_sched(label))
    kq.control([kevent(a, EVFILT_READ, EV_ADD)], 0)
    results: list[tuple[str, float]] = []
    lock = threading.Lock()
    started = threading.Barrier(5)
    closed_at = [0.0]

    def waiter(timeout: float | None) -> None:
        started.wait(5)
        try:
            kq.control(None, 1, timeout)
            r = "returned"
        except OSError as e:
            r = f"errno {e.errno}"
        except ValueError as e:  # a closed kqueue before the call started
            r = f"ValueError {e}"
        with lock:
            results.append((r, time.monotonic()))

    ts = [threading.Thread(target=waiter, args=(t,), daemon=True)
          for t in (None, None, 30.0, 30.0)]
    try:
        for t in ts:
            t.start()
        started.wait(5)
        time.sleep(0.3)  # all four blocked (one in epoll, the others on their kevqs)
        closed_at[0] = time.monotonic()
        kq.close()
        for t in ts:
            t.join(5)
        assert not any(t.is_alive() for t in ts), "a waiter hung after close()"
        assert sorted(r for r, _ in results) == [f"errno {errno.EBADF}"] * 4, results
        assert all(t - closed_at[0] < 2.0 for _, t in results)
        with pytest.raises(ValueError):
            kq.control(None, 1, 0)
    finally:
        kq.close()
        a.close()
        b.close()


def test_a_change_racing_close_adds_nothing() -> None:
    """close() sweeps the registrations under the registration lock; a change applied
    after that sweep (a thread inside control() when another closes) must not add a
    knote the sweep will never see."""
    kq = skqueue.kqueue()
    core = kq._core
    assert core is not None
    a, b = socket.socketpair()
    try:
        kq.close()
        assert core.register(kevent(a, EVFILT_READ, EV_ADD)) == errno.EBADF
        assert core.register(kevent(1, skqueue.EVFILT_USER, EV_ADD)) == errno.EBADF
        assert core.knotes == {}
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("label", ["legacy", "rand"])
def test_a_signal_racing_close_never_writes_to_a_reused_descriptor(
    label: str, tmp_path: Any
) -> None:
    """A thread still inside control() may signal the pending descriptor (or its own
    thread descriptor) after another thread closed the kqueue.  close() closes them, and
    the program may get their numbers back at once: the late signal must not write into
    the program's new files."""
    kq = skqueue.kqueue()
    if label != "legacy":
        kq.set_multi(skqueue.parse_sched(label))
    core = kq._core
    assert core is not None
    kq.fileno()  # the pending descriptor is in use
    if label != "legacy":
        kq.thread_fileno()  # and this thread's
    q = core.my_kevq()
    pending, wake = core.pending_fd, q.wake_fd
    kq.close()
    fds = [os.open(tmp_path / f"f{i}", os.O_RDWR | os.O_CREAT) for i in range(16)]
    try:
        assert pending in fds  # the numbers were reused
        assert wake in fds or label == "legacy"  # (legacy has no thread descriptor)
        core._signal_pending()  # what a late enqueue in another thread does
        core._signal_ready(q)
        for fd in fds:
            assert os.fstat(fd).st_size == 0  # nothing written into the program's files
    finally:
        for fd in fds:
            os.close(fd)
