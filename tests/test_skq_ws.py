"""SKQ work stealing (docs/semantics.md §3.13, §5.1 "ws" and "ws_timeout").

* ws: thread 0 takes one event and then never calls control() again, yet stays alive,
  so its kevq stays active and the random policy keeps pushing half of all activations
  to it.  Thread 1 must still consume all 127 x 50 packets sent round-robin to 127
  other level-triggered socketpairs: only stealing can get them off thread 0's queue.
* ws_timeout: a stealing kqueue with one idle socket returns from every timeout, from
  1 s down to 1 us, and never early.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

import skqueue
from skqueue import EV_ADD, EVFILT_READ, kevent

pytestmark = pytest.mark.timeout(120)

NSOCK = 128
PER_SOCK = 50


def _pairs(n: int) -> list[tuple[socket.socket, socket.socket]]:
    out = []
    for _ in range(n):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        a.setblocking(False)
        b.setblocking(False)
        out.append((a, b))
    return out


@pytest.fixture
def pairs128() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    ps = _pairs(NSOCK)
    try:
        yield ps
    finally:
        for a, b in ps:
            a.close()
            b.close()


@pytest.mark.parametrize("label", ["ws", "best2_ws", "queue2_ws"])
def test_ws_idle_thread_events_are_stolen(
    label: str, pairs128: list[tuple[socket.socket, socket.socket]]
) -> None:
    # One leaf holding both CPUs: with a leaf per CPU, queue2 puts every activation on
    # the activating CPU's leaf, and when the threads run on different CPUs (as they do
    # on a free-threaded build) nothing ever lands on thread 0's queue to be stolen.
    kq = skqueue.kqueue(
        tunables=skqueue.Tunables(seed=7), topology=skqueue.Topology.synthetic(1, 1, 2)
    )
    kq.set_multi(skqueue.parse_sched(label))
    by_fd = {a.fileno(): a for a, _ in pairs128}
    kq.control([kevent(a, EVFILT_READ, EV_ADD) for a, _ in pairs128], 0)
    stop = threading.Event()
    t0_has_event = threading.Event()
    done = threading.Event()  # thread 1 consumed everything (it stays alive for the dump)
    t0_got: list[int] = []
    got_lock = threading.Lock()
    consumed = [0]
    errors: list[BaseException] = []
    total = (NSOCK - 1) * PER_SOCK

    def thread0() -> None:
        try:
            evs = kq.control(None, 1, 5.0)
            t0_got.extend(e.ident for e in evs)
            for e in evs:
                by_fd[e.ident].recv(1)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)
        t0_has_event.set()
        stop.wait(60)  # alive, but never calls control() again

    def thread1() -> None:
        try:
            while not stop.is_set():
                for e in kq.control(None, 1, 0.1):
                    try:
                        n = len(by_fd[e.ident].recv(1))
                    except BlockingIOError:
                        n = 0
                        errors.append(AssertionError(f"spurious event {e}"))
                    with got_lock:
                        consumed[0] += n
                        if consumed[0] >= total:
                            done.set()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        done.set()

    th0 = threading.Thread(target=thread0, daemon=True)
    th0.start()
    time.sleep(0.05)  # thread 0 is waiting first
    pairs128[NSOCK - 1][1].send(b"x")
    assert t0_has_event.wait(5)
    assert t0_got == [pairs128[NSOCK - 1][0].fileno()]
    th1 = threading.Thread(target=thread1, daemon=True)
    th1.start()
    try:
        for _ in range(PER_SOCK):
            for i in range(NSOCK - 1):
                pairs128[i][1].send(b"p")
        assert done.wait(60), f"thread 1 consumed only {consumed[0]} of {total}"
        time.sleep(0.05)  # anything extra (a duplicate) would show up now
        d = kq.dump()
        assert not errors, errors
        assert consumed[0] == total
        stolen = sum(q["total_worksteal"] for q in d["kevqs"])
        assert stolen > 0, d
        # every socket drained: nothing left behind on the idle thread's queue
        for a, _ in pairs128:
            with pytest.raises(BlockingIOError):
                a.recv(1)
    finally:
        stop.set()
        th0.join(5)
        th1.join(5)
        kq.close()


TIMEOUTS = [1.0, 0.1, 0.01, 0.001, 100e-6, 10e-6, 1e-6]


@pytest.mark.parametrize("label", ["ws", "rand", "best2_ws"])
def test_ws_timeout_returns(label: str) -> None:
    a, b = socket.socketpair()
    try:
        with skqueue.kqueue(tunables=skqueue.Tunables(seed=3)) as kq:
            kq.set_multi(skqueue.parse_sched(label))
            kq.control([kevent(a, EVFILT_READ, EV_ADD)], 0)
            for t in TIMEOUTS:
                t0 = time.monotonic()
                evs = kq.control(None, 1, t)
                dt = time.monotonic() - t0
                assert evs == []
                # never early (1 us slack for clock rounding), and returns "within 1 s"
                assert dt >= t - 1e-6, (t, dt)
                assert dt < t + 1.0, (t, dt)
            # and zero returns at once
            t0 = time.monotonic()
            assert kq.control(None, 1, 0) == []
            assert time.monotonic() - t0 < 1.0
    finally:
        a.close()
        b.close()


def test_ws_timeout_in_second_thread_while_other_idles() -> None:
    """Two stealing threads on an idle kqueue: both time out, neither spins forever."""
    a, b = socket.socketpair()
    results: dict[int, float] = {}
    try:
        with skqueue.kqueue() as kq:
            kq.set_multi(skqueue.parse_sched("ws"))
            kq.control([kevent(a, EVFILT_READ, EV_ADD)], 0)

            def waiter(i: int) -> None:
                t0 = time.monotonic()
                kq.control(None, 1, 0.2)
                results[i] = time.monotonic() - t0

            ts = [threading.Thread(target=waiter, args=(i,)) for i in range(2)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(5)
            assert sorted(results) == [0, 1]
            assert all(0.2 - 1e-6 <= v < 1.2 for v in results.values()), results
    finally:
        a.close()
        b.close()
