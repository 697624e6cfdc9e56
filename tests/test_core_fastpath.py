"""The C helper's fast_control (the common control() call in C) against the Python path.

Its arithmetic is sched's, twice: the estimator, the batch limits and the scan order
have C twins that must agree with the Python reference for every input (property tests
here).  The call as a whole must return what the Python path returns: the same scenario
is run with fast_control and with it switched off, and the event sequences compared.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import skqueue
import skqueue._kqueue as kqmod
from skqueue import (
    EV_ADD,
    EV_CLEAR,
    EV_DISPATCH,
    EV_ENABLE,
    EV_ONESHOT,
    EVFILT_READ,
    EVFILT_USER,
    EVFILT_WRITE,
    NOTE_TRIGGER,
    kevent,
)
from skqueue.sched import Estimator, ScanOrder, batch_limits

speedups = pytest.importorskip("skqueue._speedups", reason="C helper not built")
if kqmod.fast_control is None:
    pytest.skip("the C helper is not in use (SKQUEUE_PURE)", allow_module_level=True)

BIG = 2**70
I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
ANY = st.one_of(st.integers(min_value=-BIG, max_value=BIG), st.integers(0, 10**6), I64)
FIELDS = ("avg_lat", "last_kev", "last_nkev", "in_kernel", "total_time", "avg_events",
          "avg_rtlimit")  # fmt: skip


def _est(values: dict[str, Any]) -> Estimator:
    e = Estimator()
    for k, v in values.items():
        setattr(e, k, v)
    return e


def _state(e: Estimator) -> dict[str, Any]:
    return {k: getattr(e, k) for k in FIELDS}


@settings(max_examples=400, deadline=None)
@given(
    avg_lat=ANY, last_kev=ANY, last_nkev=ANY, in_kernel=st.booleans(), total_time=ANY,
    avg_events=ANY, avg_rtlimit=ANY, now=I64, later=I64,
    nevents=st.integers(-5, 2**40), rtlimit=st.integers(0, 2**40),
)  # fmt: skip
def test_estimator_twins(**kw: Any) -> None:
    now, later, nevents, rtlimit = kw.pop("now"), kw.pop("later"), kw.pop("nevents"), kw.pop(
        "rtlimit"
    )
    py, c = _est(kw), _est(kw)
    py.enter(now)
    speedups.est_enter(c, now)
    assert _state(c) == _state(py)
    py.leave(later, nevents)
    speedups.est_leave(c, later, nevents)
    assert _state(c) == _state(py)
    py.note_rtlimit(rtlimit)
    speedups.est_note_rtlimit(c, rtlimit)
    assert _state(c) == _state(py)
    # and a second round from there (a sample taken from the first leave)
    py.enter(later // 2 + 12345)
    speedups.est_enter(c, later // 2 + 12345)
    assert _state(c) == _state(py)


@settings(max_examples=400, deadline=None)
@given(
    maxev=st.integers(0, 2**31), multi=st.booleans(), tfreq=st.integers(0, 0xFFFF),
    rtshare=st.integers(0, 100), avg_lat=st.one_of(st.integers(-BIG, BIG), st.integers(0, 10**7)),
)  # fmt: skip
def test_batch_limits_twin(maxev: int, multi: bool, tfreq: int, rtshare: int,
                           avg_lat: int) -> None:
    assert speedups.batch_limits(maxev, multi, tfreq, rtshare, avg_lat) == batch_limits(
        maxev, multi, tfreq, rtshare, avg_lat
    )


def _py_runs(n_rt: int, n_normal: int, maxev: int, rtlimit: int,
             outcomes: list[tuple[int, int]]) -> tuple[list[tuple[bool, int]], int, int]:
    o = ScanOrder(n_rt, n_normal, maxev, rtlimit)
    runs = []
    for popped, delivered in outcomes:
        from_rt, want = o.next_run()
        if not want:
            break
        popped = max(0, min(popped, want))
        delivered = max(0, min(delivered, popped))
        runs.append((from_rt, want))
        o.took(from_rt, want, popped, delivered)
    return runs, o.taken, o.taken_rt


@settings(max_examples=500, deadline=None)
@given(
    n_rt=st.integers(0, 300), n_normal=st.integers(0, 300), maxev=st.integers(0, 400),
    rtlimit=st.integers(0, 400),
    outcomes=st.lists(st.tuples(st.integers(-1, 400), st.integers(-1, 400)), max_size=30),
)  # fmt: skip
def test_scan_order_twin(n_rt: int, n_normal: int, maxev: int, rtlimit: int,
                         outcomes: list[tuple[int, int]]) -> None:
    runs, taken, taken_rt = speedups.scan_order_runs(n_rt, n_normal, maxev, rtlimit,
                                                     list(outcomes))
    assert (runs, taken, taken_rt) == _py_runs(n_rt, n_normal, maxev, rtlimit, outcomes)


# -- the whole call: the same scenario with and without fast_control --------------------


def _scenario(multi: bool) -> list[list[tuple[int, int, int, int, Any]]]:
    """Level- and edge-triggered READ knotes on pipes and a socket, WRITE, USER (ONESHOT,
    CLEAR, DISPATCH), a descriptor closed behind the kqueue's back, batches of several
    sizes; returns every call's events."""
    kq = skqueue.kqueue(tunables=skqueue.Tunables(seed=7))
    if multi:
        kq.set_multi(skqueue.parse_sched("best2"))
    pipes = [os.pipe() for _ in range(6)]
    a, b = socket.socketpair()
    got: list[list[tuple[int, int, int, int, Any]]] = []

    def call(changes: list[kevent] | None, n: int) -> None:
        evs = kq.control(changes, n, 0)
        got.append([(e.ident, e.filter, e.flags, e.data, e.udata) for e in evs])

    try:
        call(None, 1)  # (multi: this thread's kevq becomes active)
        for i, (r, w) in enumerate(pipes):
            flags = EV_ADD | (EV_CLEAR if i == 1 else 0) | (EV_DISPATCH if i == 2 else 0)
            kq.control([kevent(r, EVFILT_READ, flags, udata=f"p{i}")], 0)
            os.write(w, b"x" * (i + 1))
        kq.control([kevent(b, EVFILT_READ, EV_ADD, udata="sock"),
                    kevent(a, EVFILT_WRITE, EV_ADD | EV_ONESHOT, udata="w"),
                    kevent(5000, EVFILT_USER, EV_ADD | EV_CLEAR, udata="u")], 0)  # fmt: skip
        a.send(b"hello")
        for n in (1, 2, 3, 8, 1, 64):
            call(None, n)
        kq.control([kevent(5000, EVFILT_USER, 0, NOTE_TRIGGER)], 0)
        call(None, 4)
        os.read(pipes[0][0], 1)  # pipe 0 drained: its knote goes stale
        kq.control([kevent(pipes[2][0], EVFILT_READ, EV_ENABLE)], 0)
        call([], 64)
        os.close(pipes[3][0])  # closed behind the kqueue's back
        call(None, 64)
        call(None, 2)
        call(None, 64)
    finally:
        kq.close()
        for r, w in pipes:
            for fd in (r, w):
                try:
                    os.close(fd)
                except OSError:
                    pass
        a.close()
        b.close()
    return got


@pytest.mark.parametrize("multi", [False, True], ids=["legacy", "multi"])
def test_fast_control_returns_what_the_python_path_returns(
    monkeypatch: pytest.MonkeyPatch, multi: bool
) -> None:
    fast = _scenario(multi)
    monkeypatch.setattr(kqmod, "fast_control", None)
    slow = _scenario(multi)
    # data: the C scan reads it lazily, at the tuple above, so it is compared too
    assert fast == slow


def test_fast_control_leaves_errors_to_the_python_path() -> None:
    kq = skqueue.kqueue()
    with pytest.raises(ValueError):
        kq.control(None, -1, 0)
    with pytest.raises(ValueError):
        kq.control(None, 1, -1)
    with pytest.raises(TypeError):
        kq.control(None, 1, "soon")
    assert kq.control(None, 0, 0) == []
    kq.close()
    with pytest.raises(ValueError):
        kq.control(None, 1, 0)
