"""EVFILT_SIGNAL conformance.

From FreeBSD tests/sys/kqueue/libkqueue/signal.c (add, get, disable, enable, del, oneshot)
and kqueue(2): data = number of deliveries since the last retrieval, EV_CLEAR automatic,
coexists with (and has lower precedence than) the process's own handler.  Only SIGUSR1 and
SIGUSR2 are used; every test restores the previous handlers.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Iterator

import pytest

from skqueue import (
    EV_ADD,
    EV_CLEAR,
    EV_DELETE,
    EV_DISABLE,
    EV_ENABLE,
    EV_ONESHOT,
    EVFILT_SIGNAL,
)


@pytest.fixture
def counting_handlers() -> Iterator[dict[int, int]]:
    """Install counting Python handlers for SIGUSR1/SIGUSR2; restore afterwards."""
    counts = {signal.SIGUSR1: 0, signal.SIGUSR2: 0}

    def handler(signum, frame):
        counts[signum] += 1

    old = {s: signal.signal(s, handler) for s in counts}
    try:
        yield counts
    finally:
        for s, prev in old.items():
            signal.signal(s, prev)


def send(sig: int, times: int = 1) -> None:
    for _ in range(times):
        os.kill(os.getpid(), sig)
        time.sleep(0.005)  # let the handler run; distinct (non-merged) deliveries


def test_signal_counts_and_handler_still_runs(kq, h, counting_handlers):
    h.change(kq, signal.SIGUSR1, EVFILT_SIGNAL, udata="sig")
    assert h.poll(kq) == []
    send(signal.SIGUSR1, 3)
    ev = h.wait_one(kq, signal.SIGUSR1, EVFILT_SIGNAL)
    assert ev is not None
    assert ev.data == 3
    assert ev.udata == "sig"
    assert ev.flags & EV_CLEAR  # automatic for signals (kqueue(2))
    assert counting_handlers[signal.SIGUSR1] == 3  # the Python handler still ran
    assert h.poll(kq) == []  # counter reset by the retrieval


def test_only_registered_signal_reported(kq, h, counting_handlers):
    h.change(kq, signal.SIGUSR1, EVFILT_SIGNAL)
    send(signal.SIGUSR2)
    time.sleep(0.02)
    assert h.poll(kq) == []
    assert counting_handlers[signal.SIGUSR2] == 1


def test_disable_enable_delete(kq, h, counting_handlers):
    sig = signal.SIGUSR2
    h.change(kq, sig, EVFILT_SIGNAL)
    h.change(kq, sig, EVFILT_SIGNAL, EV_DISABLE)
    send(sig)
    time.sleep(0.02)
    assert h.poll(kq) == []
    h.change(kq, sig, EVFILT_SIGNAL, EV_ENABLE)
    send(sig)
    ev = h.wait_one(kq, sig, EVFILT_SIGNAL)
    assert ev is not None and ev.data >= 1
    h.change(kq, sig, EVFILT_SIGNAL, EV_DELETE)
    send(sig)
    time.sleep(0.02)
    assert h.poll(kq) == []
    assert counting_handlers[sig] == 3


def test_oneshot(kq, h, counting_handlers):
    sig = signal.SIGUSR1
    h.change(kq, sig, EVFILT_SIGNAL, EV_ADD | EV_ONESHOT)
    send(sig)
    ev = h.wait_one(kq, sig, EVFILT_SIGNAL)
    assert ev is not None and ev.data == 1 and ev.flags & EV_ONESHOT
    send(sig)
    time.sleep(0.02)
    assert h.poll(kq) == []
    assert h.change_err(kq, sig, EVFILT_SIGNAL, EV_DELETE) == errno.ENOENT


def test_ignored_signal_still_counted(kq, h):
    # kqueue(2): signals are recorded "even if the signal is marked as SIG_IGN" (except an
    # ignored SIGCHLD).  The disposition must stay effectively "ignore" (process survives).
    sig = signal.SIGUSR2
    old = signal.signal(sig, signal.SIG_IGN)
    try:
        h.change(kq, sig, EVFILT_SIGNAL)
        send(sig, 2)
        ev = h.wait_one(kq, sig, EVFILT_SIGNAL)
        assert ev is not None and ev.data == 2
    finally:
        h.change(kq, sig, EVFILT_SIGNAL, EV_DELETE)
        signal.signal(sig, old)


def test_two_kqueues_both_see_signal(h, counting_handlers):
    import skqueue

    kq1, kq2 = skqueue.kqueue(), skqueue.kqueue()
    try:
        h.change(kq1, signal.SIGUSR1, EVFILT_SIGNAL)
        h.change(kq2, signal.SIGUSR1, EVFILT_SIGNAL)
        send(signal.SIGUSR1)
        assert h.wait_one(kq1, signal.SIGUSR1, EVFILT_SIGNAL) is not None
        assert h.wait_one(kq2, signal.SIGUSR1, EVFILT_SIGNAL) is not None
        assert counting_handlers[signal.SIGUSR1] == 1
    finally:
        kq1.close()
        kq2.close()


def test_handler_restored_after_delete_and_close(h, counting_handlers):
    # After the kqueue stops watching, the process's own handler is the one that runs.
    import skqueue

    q = skqueue.kqueue()
    h.change(q, signal.SIGUSR1, EVFILT_SIGNAL)
    h.change(q, signal.SIGUSR1, EVFILT_SIGNAL, EV_DELETE)
    q.close()
    send(signal.SIGUSR1)
    assert counting_handlers[signal.SIGUSR1] == 1


def test_invalid_signal_number(kq, h):
    # FreeBSD filt_sigattach: sig > _SIG_MAXSIG -> EINVAL.
    assert h.change_err(kq, 100000, EVFILT_SIGNAL) == errno.EINVAL
