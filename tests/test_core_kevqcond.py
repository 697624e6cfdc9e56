"""KevqCond: the condition variable a kevq's threads sleep on (skqueue/_kevq.py).

It replaces ``threading.Condition`` so that a sleeper blocks on the C helper's lock
(a semaphore) rather than on a free-threaded build's spinning PyMutex.  These tests
hold it to ``threading.Condition``'s contract, on whichever gate ``new_lock`` gives
(``SKQUEUE_PURE=1`` runs them with ``threading.Lock`` gates): a notify wakes one
sleeper in FIFO order, notify_all every one, a timeout returns False with the lock held
again and leaves nothing behind, a notify that lands after a timeout leaves no open
gate that would cut a later sleep short, and a signal handler's exception ends a sleep
with the kevq lock held.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

from skqueue._kevq import KevqCond
from skqueue._scan import new_lock

pytestmark = pytest.mark.timeout(60)


def _sleepers(cond: KevqCond) -> int:
    return len(cond._sleepers)  # noqa: SLF001 - the invariant under test


def _wait_until(pred: Any, limit: float = 20.0) -> None:
    end = time.monotonic() + limit
    while not pred():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.001)


def test_timeout_returns_false_with_the_lock_held() -> None:
    lock = new_lock()
    cond = KevqCond(lock)
    with lock:
        t0 = time.monotonic()
        assert cond.wait(0.02) is False
        assert time.monotonic() - t0 >= 0.015
        assert lock.locked()
        assert _sleepers(cond) == 0
    assert not lock.locked()


def test_notify_wakes_the_sleepers_one_at_a_time_in_order() -> None:
    lock = new_lock()
    cond = KevqCond(lock)
    woken: list[int] = []
    results: list[bool] = []

    def sleeper(i: int) -> None:
        with lock:
            results.append(cond.wait(30.0))
            woken.append(i)

    threads = []
    for i in range(3):
        t = threading.Thread(target=sleeper, args=(i,))
        t.start()
        threads.append(t)
        _wait_until(lambda n=i + 1: _locked_count(lock, cond) == n)
    for n in range(1, 4):
        with lock:
            cond.notify()
        _wait_until(lambda n=n: len(woken) == n)
        time.sleep(0.02)  # a notify that woke more than one would show here
        assert len(woken) == n
    for t in threads:
        t.join()
    assert woken == [0, 1, 2]
    assert results == [True, True, True]


def _locked_count(lock: Any, cond: KevqCond) -> int:
    with lock:
        return _sleepers(cond)


def test_notify_all_wakes_every_sleeper() -> None:
    lock = new_lock()
    cond = KevqCond(lock)
    done = threading.Barrier(5)
    results: list[bool] = []

    def sleeper() -> None:
        with lock:
            results.append(cond.wait(30.0))
        done.wait()

    threads = [threading.Thread(target=sleeper) for _ in range(4)]
    for t in threads:
        t.start()
    _wait_until(lambda: _locked_count(lock, cond) == 4)
    with lock:
        cond.notify_all()
        assert _sleepers(cond) == 0
    done.wait(timeout=20)
    for t in threads:
        t.join()
    assert results == [True] * 4


class _LateNotifyGate:
    """A gate whose timed wait 'times out' just after a notify opened it: the race of a
    sleeper whose timeout expires while a notifier takes it off the list."""

    def __init__(self, cond: KevqCond, lock: Any) -> None:
        self.inner = new_lock()
        self.cond = cond
        self.lock = lock
        self.raced = False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if blocking and timeout >= 0 and not self.raced:
            self.raced = True
            with self.lock:  # the sleeper released it; the notifier takes it
                self.cond.notify()
            return False  # and yet the sleeper reports a timeout
        return bool(self.inner.acquire(blocking, timeout))

    def release(self) -> None:
        self.inner.release()


def test_a_notify_after_the_timeout_leaves_no_open_gate() -> None:
    lock = new_lock()
    cond = KevqCond(lock)
    gate = _LateNotifyGate(cond, lock)
    gate.inner.acquire()  # closed, as a spare gate is
    cond._spare.append(gate)  # noqa: SLF001 - inject the racing gate
    with lock:
        assert cond.wait(5.0) is False
        assert _sleepers(cond) == 0
        assert gate.inner.locked()  # closed again for its next sleeper
        # ...so the next sleep (same gate) lasts its timeout instead of returning at once
        t0 = time.monotonic()
        assert cond.wait(0.05) is False
        assert time.monotonic() - t0 >= 0.04
        assert cond._spare == [gate]  # noqa: SLF001


class _Boom(Exception):
    pass


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers run in the main thread")
def test_a_signal_handler_raising_ends_the_sleep_with_the_lock_held() -> None:
    lock = new_lock()
    cond = KevqCond(lock)
    calls: list[int] = []

    def handler(signum: int, frame: object) -> None:
        calls.append(signum)
        if len(calls) == 2:
            raise _Boom

    main = threading.main_thread().ident
    assert main is not None

    errors: list[BaseException] = []

    def kick() -> None:
        try:
            send_two()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    def send_two() -> None:
        # The first signal's handler returns (the sleep goes on); the second raises.
        for _ in range(2):
            _wait_until(lambda: _locked_count(lock, cond) == 1)
            time.sleep(0.05)
            before = len(calls)
            signal.pthread_kill(main, signal.SIGUSR1)
            _wait_until(lambda n=before + 1: len(calls) >= n)

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        t = threading.Thread(target=kick)
        t.start()
        with lock, pytest.raises(_Boom):
            cond.wait(10.0)  # bounded: a lock deaf to signals fails here, not hangs
        assert not lock.locked()  # the with block released what the wait re-took
        t.join()
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert not errors
    assert calls == [signal.SIGUSR1, signal.SIGUSR1]
    assert _sleepers(cond) == 0
    with lock:  # the gate went back closed: a later sleep waits its time
        t0 = time.monotonic()
        assert cond.wait(0.03) is False
        assert time.monotonic() - t0 >= 0.025


def test_no_lost_wakeup_under_a_ping_pong() -> None:
    # Two threads hand a token back and forth 2,000 times with no timeout: a lost
    # wake-up is a hang (the module timeout), a spurious one a protocol error.
    lock = new_lock()
    cond_a, cond_b = KevqCond(lock), KevqCond(lock)
    state = {"turn": "a", "n": 0}
    rounds = 2_000

    def player(me: str, other: str, mine: KevqCond, theirs: KevqCond) -> None:
        with lock:
            for _ in range(rounds):
                while state["turn"] != me:
                    mine.wait(None)
                state["n"] += 1
                state["turn"] = other
                theirs.notify()

    a = threading.Thread(target=player, args=("a", "b", cond_a, cond_b))
    b = threading.Thread(target=player, args=("b", "a", cond_b, cond_a))
    a.start()
    b.start()
    a.join(50)
    b.join(50)
    assert not a.is_alive() and not b.is_alive()
    assert state["n"] == 2 * rounds
