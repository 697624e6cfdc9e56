"""EVFILT_TIMER: one-shot and periodic timers on the kqueue's timer heap.

``data`` is the period in the unit given by ``fflags`` (milliseconds by default); with
``NOTE_ABSTIME`` it is an absolute wall-clock time since the epoch.  Periodic timers are
drift-free (next = previous + period) and a late expiry counts every period it missed;
the returned ``data`` is the number of expirations since the last retrieval.
"""

from __future__ import annotations

import errno
import time
from typing import TYPE_CHECKING, Any

from .._status import KN_DETACHED
from ..constants import (
    EV_ADD,
    EV_ONESHOT,
    NOTE_ABSTIME,
    NOTE_MSECONDS,
    NOTE_NSECONDS,
    NOTE_SECONDS,
    NOTE_USECONDS,
)
from . import Filter, KqueueOps

if TYPE_CHECKING:
    from .._kevent import kevent
    from .._knote import Knote

_UNITS = {
    0: 1_000_000,
    NOTE_SECONDS: 1_000_000_000,
    NOTE_MSECONDS: 1_000_000,
    NOTE_USECONDS: 1_000,
    NOTE_NSECONDS: 1,
}
_ALLOWED = NOTE_SECONDS | NOTE_MSECONDS | NOTE_USECONDS | NOTE_NSECONDS | NOTE_ABSTIME


class TimerState:
    __slots__ = ("period", "next", "count", "entry", "periodic")

    def __init__(self) -> None:
        self.period = 0
        self.next = 0
        self.count = 0
        self.entry: Any = None
        self.periodic = False


def _plan(kn: Knote, now: int) -> tuple[int, int, bool]:
    """Validate the knote's fflags/data; return (first deadline, period ns, periodic)."""
    fflags, data = kn.sfflags, kn.sdata
    if fflags & ~_ALLOWED:
        raise OSError(errno.EINVAL, "unsupported EVFILT_TIMER fflags")
    unit = _UNITS.get(fflags & ~NOTE_ABSTIME)
    if unit is None:
        raise OSError(errno.EINVAL, "more than one EVFILT_TIMER unit")
    if data < 0:
        raise OSError(errno.EINVAL, "negative EVFILT_TIMER data")
    if fflags & NOTE_ABSTIME:
        target_ns = data * unit
        wall = time.time_ns()
        boot = wall - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        if target_ns < boot:
            raise OSError(errno.EINVAL, "absolute EVFILT_TIMER time before boot")
        return now + max(0, target_ns - wall), 0, False
    if data == 0 and not kn.flags & EV_ONESHOT:
        data = 1
    period = data * unit
    return now + period, period, not kn.flags & EV_ONESHOT


class TimerFilter(Filter):
    __slots__ = ()
    name = "TIMER"
    auto_clear = True

    def attach(self, kq: KqueueOps, kn: Knote) -> None:
        if kq.timer_count >= kq.tunables.timer_max:
            raise OSError(errno.ENOMEM, "EVFILT_TIMER limit reached")
        st = TimerState()
        kn.hook = st
        self._start(kq, kn)
        kq.timer_count += 1

    def _start(self, kq: KqueueOps, kn: Knote) -> None:
        st: TimerState = kn.hook
        now = time.monotonic_ns()
        first, period, periodic = _plan(kn, now)
        st.next, st.period, st.periodic, st.count = first, period, periodic, 0

        def expire(now: int, kn: Knote = kn, st: TimerState = st) -> None:
            with kn.lock:
                if st.entry is not entry_box[0] or kn.status & KN_DETACHED:
                    # Superseded by a re-add, or deleted: a delete marks the knote under
                    # this lock before detach() cancels without it, so a re-arm here
                    # after that mark would outlive the knote, firing every period.
                    return
                n = 1
                if st.periodic:
                    late = now - st.next
                    if late > 0 and st.period > 0:
                        n += late // st.period
                    st.next += n * st.period
                    st.entry = entry_box[0] = kq.timers.schedule(st.next, expire)
                else:
                    st.entry = entry_box[0] = None
                st.count += n
            kq.activate(kn)

        entry_box: list[Any] = [None]
        st.entry = entry_box[0] = kq.timers.schedule(first, expire)

    def detach(self, kq: KqueueOps, kn: Knote) -> None:
        st: TimerState = kn.hook
        if st.entry is not None:
            kq.timers.cancel(st.entry)
            st.entry = None
        kq.timer_count -= 1

    def event(self, kq: KqueueOps, kn: Knote) -> bool:
        st: TimerState = kn.hook
        kn.data = st.count
        return st.count > 0

    def touch(self, kq: KqueueOps, kn: Knote, kev: kevent) -> None:
        # Re-adding cancels, drops undelivered expirations and restarts (kqueue(2)); a
        # change without EV_ADD (enable, disable) leaves the timer alone.
        if not kev.flags & EV_ADD:
            return
        old_f, old_d = kn.sfflags, kn.sdata
        kn.sfflags, kn.sdata = kev.fflags, kev.data
        try:
            _plan(kn, time.monotonic_ns())
        except OSError:
            kn.sfflags, kn.sdata = old_f, old_d
            raise
        st: TimerState = kn.hook
        if st.entry is not None:
            kq.timers.cancel(st.entry)
            st.entry = None
        st.count = 0
        kq.unqueue(kn)
        self._start(kq, kn)

    def copyout(self, kq: KqueueOps, kn: Knote) -> tuple[int, int]:
        st: TimerState = kn.hook
        n = st.count
        st.count = 0
        return 0, n
