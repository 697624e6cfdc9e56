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
# The C estimator's fields are 64-bit: values and results stay below that here (the
# runtime's are nanoseconds and event counts), where the two must agree exactly.
VAL = st.one_of(st.integers(-(2**60), 2**60), st.integers(-(2**52), 2**52),
                st.integers(0, 10**6), st.just(0))
NOW = st.integers(0, 2**60)
FIELDS = ("avg_lat", "last_kev", "last_nkev", "in_kernel", "total_time", "avg_events",
          "avg_rtlimit")  # fmt: skip
CEstimator = speedups.estimator_type()


def _state(e: Any) -> dict[str, Any]:
    return {k: getattr(e, k) for k in FIELDS}


@settings(max_examples=500, deadline=None)
@given(
    fields=st.fixed_dictionaries({
        "avg_lat": VAL, "last_kev": VAL, "last_nkev": st.integers(-3, 10**6),
        "in_kernel": st.booleans(), "total_time": VAL, "avg_events": VAL, "avg_rtlimit": VAL,
    }),
    steps=st.lists(st.tuples(st.sampled_from(["enter", "leave", "rt", "exp", "start"]), NOW,
                             st.integers(0, 10**6)), max_size=12),
)  # fmt: skip
def test_estimator_twin(fields: dict[str, Any], steps: list[tuple[str, int, int]]) -> None:
    py, c = Estimator(), CEstimator()
    assert _state(c) == _state(py) and c.as_dict() == py.as_dict() and repr(c) == repr(py)
    for k, v in fields.items():
        setattr(py, k, v)
        setattr(c, k, v)
    for op, now, n in steps:
        if op == "enter":
            py.enter(now)
            c.enter(now)
        elif op == "leave":
            py.leave(now, n)
            c.leave(now, n)
        elif op == "rt":
            py.note_rtlimit(n)
            c.note_rtlimit(n)
        elif op == "exp":
            assert c.exp_lat(now, n) == py.exp_lat(now, n)
        else:
            assert c.start(now) == py.start(now)
        assert _state(c) == _state(py)
    assert c.as_dict() == py.as_dict()
    assert repr(c) == repr(py)


def test_runtime_kevqs_use_the_twin() -> None:
    kq = skqueue.kqueue()
    core = kq._core
    assert core is not None and type(core.single.est) is CEstimator
    kq.close()


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
    r, w = os.pipe()
    try:
        os.write(w, b"x")  # an event is pending: the errors must win all the same
        kq.control([kevent(r, EVFILT_READ, EV_ADD)], 0)
        assert len(kq.control(None, 1, 0)) == 1  # (the first scan makes the lazy class)
        for bad in (-1, -1.0, -(2**80), float("nan")):
            with pytest.raises(ValueError):
                kq.control(None, 1, bad)
        with pytest.raises(ValueError):
            kq.control(None, -1, 0)
        with pytest.raises(TypeError):
            kq.control(None, 1, "soon")
        assert kq.control(None, 0, 0) == []
        assert len(kq.control(None, 1, 2**80)) == 1  # (a timeout beyond INT_MAX: forever)
        assert len(kq.control(None, 1, timeout=0)) == 1  # keywords: the Python method
        kq.close()
        with pytest.raises(ValueError):
            kq.control(None, 1, 0)
    finally:
        os.close(r)
        os.close(w)


# -- the harvest folded into the re-check poll (fast_control's peek) ----------------------


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def test_harvest_and_markers_in_one_call() -> None:
    """With a level-triggered knote queued (its readiness re-checked by the poll that
    also asks epoll), a descriptor that became ready since is harvested before the scan
    takes its markers: both come back from the same call, every time."""
    kq = skqueue.kqueue()
    lt_w, lt_r = _pair()
    new_w, new_r = _pair()
    try:
        lt_w.send(b"x")
        kq.control([kevent(lt_r, EVFILT_READ, EV_ADD),
                    kevent(new_r, EVFILT_READ, EV_ADD | EV_CLEAR)], 0)  # fmt: skip
        for _ in range(200):
            assert [e.ident for e in kq.control(None, 8, 0)] == [lt_r.fileno()]
            new_w.send(b"y")  # a new edge while the level-triggered knote is queued
            got = [e.ident for e in kq.control(None, 8, 0)]
            assert got == [lt_r.fileno(), new_r.fileno()], got
            new_r.recv(16)
    finally:
        kq.close()
        for s in (lt_w, lt_r, new_w, new_r):
            s.close()


def test_late_activation_between_the_poll_and_the_pop_is_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The peek polls the first queued knotes before the scan pops them.  A knote that
    poll found unreadable, made readable and activated before the pop (the activation
    finds it queued, so it only marks it active), must not be dropped as stale on that
    earlier answer: its edge is consumed, nothing would ever report it again."""
    from skqueue.backend.epoll import Backend

    kq = skqueue.kqueue()
    a_w, a_r = _pair()  # A: queued level-triggered knote, drained before the call
    b_w, b_r = _pair()  # B: its new edge makes the harvest run inside the call
    hooked: list[bool] = []
    real_dispatch = Backend.dispatch
    try:
        kq.control([kevent(a_r, EVFILT_READ, EV_ADD, udata="A"),
                    kevent(b_r, EVFILT_READ, EV_ADD | EV_CLEAR, udata="B")], 0)  # fmt: skip
        a_w.send(b"1")
        assert [e.udata for e in kq.control(None, 8, 0)] == ["A"]  # harvested (busy)
        assert [e.udata for e in kq.control(None, 8, 0)] == ["A"]  # nothing new: quiet
        a_r.recv(16)  # A stays queued, not readable now
        b_w.send(b"2")

        def dispatch(self: Backend, events: list[tuple[int, int]]) -> int:
            if not hooked:
                hooked.append(True)
                # After the peek's poll: A becomes readable and its edge is harvested
                # (and A activated) before the scan pops it.
                a_w.send(b"3")
                self.harvest(0)
            return real_dispatch(self, events)

        monkeypatch.setattr(Backend, "dispatch", dispatch)
        got = [e.udata for e in kq.control(None, 8, 0)]
        assert hooked, "the harvest did not run inside the call"
        assert sorted(got) == ["A", "B"], got
        monkeypatch.setattr(Backend, "dispatch", real_dispatch)
        assert [e.udata for e in kq.control(None, 8, 0)] == ["A"]  # still level-triggered
    finally:
        kq.close()
        for s in (a_w, a_r, b_w, b_r):
            s.close()


# -- the per-thread kevq cache of multi mode -----------------------------------------------


def test_thread_kevq_cache_follows_detach_and_keeps_nothing_alive() -> None:
    """fast_control remembers each thread's kevq in the thread state: a detached thread
    gets a new kevq (and its events) at once, and a dropped kqueue is not kept alive by
    a thread that used it."""
    import gc
    import threading
    import weakref

    r, w = os.pipe()
    result: list[Any] = []

    def thread() -> None:
        kq = skqueue.kqueue()
        kq.set_multi(skqueue.parse_sched("rand"))
        assert kq.control(None, 1, 0) == []  # this thread's kevq, active
        kq.control([kevent(r, EVFILT_READ, EV_ADD, udata="p")], 0)
        core = kq._core
        assert core is not None
        first = [e.udata for e in kq.control(None, 4, 0)]
        q1 = core.my_kevq()
        kq.detach()  # q1 closes; its events move on (here: to the orphans)
        again = [e.udata for e in kq.control(None, 4, 0)]  # a new kevq, fresh
        q2 = core.my_kevq()
        later = [e.udata for e in kq.control(None, 4, 0)]
        result.append((first, again, later, q1 is not q2, q1.closing, q2.closing))
        kq.close()
        ref = weakref.ref(core)
        del kq, core, q1, q2
        gc.collect()
        result.append(ref() is None)  # the thread is still alive here

    os.write(w, b"x")
    t = threading.Thread(target=thread)
    t.start()
    t.join(30)
    os.close(r)
    os.close(w)
    (first, again, later, new, q1_closing, q2_closing), dead = result
    assert first == ["p"] and new and q1_closing and not q2_closing
    assert "p" in again + later  # the event followed the thread to its new kevq
    assert dead, "a thread that used a kqueue keeps it alive"


def test_thread_kevq_cache_holds_one_entry_per_thread() -> None:
    """A thread that uses many multi-mode kqueues in turn keeps at most the last one's
    cache key alive (its entry): the cache is bounded per thread, not per kqueue."""
    import gc
    import threading
    import weakref

    keys: list[Any] = []
    alive: list[int] = []

    def thread() -> None:
        for _ in range(50):
            kq = skqueue.kqueue()
            kq.set_multi(skqueue.parse_sched("rand"))
            assert kq.control(None, 1, 0) == []
            assert kq.control(None, 1, 0) == []  # the second call finds the cache entry
            core = kq._core
            assert core is not None
            keys.append(weakref.ref(core._tkey))
            kq.close()
            del kq, core
        gc.collect()
        alive.append(sum(r() is not None for r in keys))

    t = threading.Thread(target=thread)
    t.start()
    t.join(60)
    assert alive == [1], alive  # the last kqueue's entry, and only it
