"""The scan's hot-path functions, in C (``skqueue._speedups``) or in Python, chosen once.

Every function on the event path that has a C twin is picked here, from the one decision
``_accel`` makes (helper built and ``SKQUEUE_PURE`` unset): the knote (and kevq) lock,
the descriptor probe and the READ event builder the descriptor filters use, the kevq
batch pop and requeue, the batch delivery of plain READ events, the event class whose
``data`` is read lazily, the kevqs' latency estimator, and ``fast_control``, the whole
common ``kqueue.control()`` call (whose estimator, batch-limit and scan-order
arithmetic are twins of sched's).  Nothing else in the package looks at
``_accel.speedups``.

The Python versions are the reference (``SKQUEUE_PURE=1`` runs them, and the tests
compare the two).  Where the C scan delivers a READ event it leaves ``data`` to be read
the first time the program asks for it (docs/design.md, "The optional C helper"); the
Python scan reads it at once, so its event class is the plain one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import termios
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._accel import speedups, verify
from ._kevent import kevent, make_event
from ._status import KN_ACTIVE, KN_DETACHED, KN_DISABLED, KN_PROCESSING, KN_WS
from .constants import EV_CLEAR, EV_DISPATCH, EV_ONESHOT
from .sched import Estimator

if TYPE_CHECKING:
    from ._kevq import Kevq
    from ._knote import Knote

__all__ = [
    "IMPLEMENTATION", "PROBE_IDENT", "PROBE_OUTQ", "PROBE_READ", "bind_core", "bind_kqueue",
    "bind_watch",
    "deliver", "event_class", "fast_control", "new_estimator", "new_lock", "probe",
    "read_event", "requeue", "take_batch",
]  # fmt: skip

# The C helper hard-codes these: refuse a build that disagrees.
verify({
    "KN_ACTIVE": KN_ACTIVE, "KN_DISABLED": KN_DISABLED, "KN_DETACHED": KN_DETACHED,
    "KN_PROCESSING": KN_PROCESSING, "KN_WS": KN_WS, "EV_ONESHOT": EV_ONESHOT,
    "EV_CLEAR": EV_CLEAR, "EV_DISPATCH": EV_DISPATCH,
})  # fmt: skip

# -- descriptor probe: identity check plus buffer occupancy in one call ------------------

PROBE_READ = 0  # FIONREAD: bytes readable
PROBE_OUTQ = 1  # SIOCOUTQ: bytes not yet sent (acknowledged, for TCP)
PROBE_IDENT = 2  # identity only

_FIONREAD = termios.FIONREAD
_SIOCOUTQ = termios.TIOCOUTQ  # same number as SIOCOUTQ on Linux
_ZERO4 = b"\0\0\0\0"
_BYTEORDER = sys.byteorder


def py_probe(fd: int, dev: int, ino: int, op: int) -> int:
    """Bytes (FIONREAD for PROBE_READ, SIOCOUTQ for PROBE_OUTQ, 0 for PROBE_IDENT); -1
    when ``fd`` is closed or no longer the file ``(dev, ino)``; -2 when the ioctl does not
    apply to this kind of file."""
    try:
        st = os.fstat(fd)
    except OSError:
        return -1
    if st.st_ino != ino or st.st_dev != dev:
        return -1
    if op == PROBE_IDENT:
        return 0
    try:
        return int.from_bytes(
            fcntl.ioctl(fd, _FIONREAD if op == PROBE_READ else _SIOCOUTQ, _ZERO4),
            _BYTEORDER,
            signed=True,
        )
    except OSError as e:
        return -1 if e.errno == errno.EBADF else -2


def py_read_event(
    cls: Any, fd: int, dev: int, ino: int, ident: int, filt: int, flags: int,
    fflags: int, udata: Any,
) -> Any:
    """The READ hot path: an event if bytes are readable, else the probe result (0 or
    negative, as :func:`py_probe`)."""
    n = probe(fd, dev, ino, PROBE_READ)
    if n <= 0:
        return n
    return make_event(cls, ident, filt, flags, fflags, n, udata)


# -- the kevq batch pop and requeue of a scan --------------------------------------------


def py_take_batch(dq: deque[Knote], want: int, q: Kevq) -> tuple[list[Knote], int]:
    """Pop up to ``want`` knotes off the front of ``dq`` (caller holds ``q.lock``), clear
    their ``parked`` and then their ``queued_on``, and count the parked ones (the caller
    takes that many off ``q.nparked``)."""
    batch = [dq.popleft() for _ in range(min(want, len(dq)))]
    parked = 0
    for kn in batch:
        if kn.parked:  # before queued_on: the ordering rule in _kevq.py
            kn.parked = False
            parked += 1
        kn.queued_on = None
    return batch, parked


def py_requeue(dq: deque[Knote], knotes: list[Knote], q: Kevq) -> int:
    """Append to ``dq`` every knote still claimed for ``q`` (caller holds ``q.lock``),
    parking those another kevq's thread owns now; return how many (for ``q.nparked``).

    Without the knote lock, the owner alone says "owned": it is set exactly while
    ``KN_PROCESSING`` is (both change under the knote lock), a claimed knote cannot be
    handed to a thread, and an owner's release clears it and then unparks the knote here
    under ``q.lock``, so either order of the two leaves the count right."""
    parked = 0
    for kn in knotes:
        if kn.queued_on is q:
            dq.append(kn)
            owner = kn.owner
            if owner is not None and owner is not q:
                kn.parked = True
                parked += 1
    return parked


# -- events whose ``data`` the C scan leaves to be read on first access ---------------------
#
# The C scan re-checks a run of plain READ knotes with one poll(2) and each one's identity
# with one fstat, and leaves ``data`` (FIONREAD) to the program's first read of it: the
# event's data slot holds the descriptor's watch until then.  Read once, then fixed; 0 if
# the descriptor was closed or reused in between; and from then on that descriptor's
# events carry it from the scan (the watch's ``want_data``).

_lazy_classes: dict[type[kevent], type[kevent]] = {}
_lazy_classes_lock = threading.Lock()


def _lazy_reduce(ev: kevent) -> tuple[Any, tuple[Any, ...]]:
    base = type(ev).__mro__[1]
    return (base, (ev.ident, ev.filter, ev.flags, ev.fflags, ev.data, ev.udata))


def lazy_event_class(cls: type[kevent]) -> type[kevent]:
    """``cls`` with a lazily read ``data``: same name, fields, comparisons and repr
    (reading ``data`` fills it in); ``isinstance(ev, cls)`` holds; copies and pickles are
    plain ``cls`` instances.  C helper only."""
    lazy = _lazy_classes.get(cls)
    if lazy is not None:
        return lazy
    with _lazy_classes_lock:
        lazy = _lazy_classes.get(cls)
        if lazy is None:
            ns = {
                "__slots__": (),
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "__doc__": cls.__doc__,
                "data": property(
                    speedups.lazy_data, kevent.__dict__["data"].__set__,
                    doc="filter-specific data",
                ),  # fmt: skip
                "__reduce__": _lazy_reduce,
            }
            lazy = type(cls.__name__, (cls,), ns)
            speedups.bind_lazy(lazy)
            _lazy_classes[cls] = lazy
    return lazy


def _same_class(cls: type[kevent]) -> type[kevent]:
    return cls


def bind_core(*classes: Any) -> None:
    """Tell the C helper's ``fast_control`` the layout of the kqueue core, the kevq, the
    backend, the thread slot and the tunables, and the fork counter (called once, by
    ``_kqueue``)."""
    if speedups is not None:
        speedups.bind_core(*classes)


def bind_kqueue(kqueue_cls: type, module_globals: dict[str, Any]) -> None:
    """Let the C helper run ``kqueue.control`` itself (called once, by ``_kqueue``): the
    common call goes to ``fast_control`` without the Python method's frame, as long as
    ``module_globals["fast_control"]`` is the C one; everything else calls the Python
    method, which stays the reference."""
    if speedups is not None:
        speedups.bind_kqueue(kqueue_cls, module_globals)


def bind_watch(knote_cls: type, watch_cls: type) -> None:
    """Tell the C scan the layout of knotes and of the descriptor filters' watches (called
    once, by the module that defines the watch class)."""
    if speedups is not None:
        speedups.bind_knote(knote_cls, watch_cls)


# -- the choice, made once -----------------------------------------------------------------

IMPLEMENTATION: str
new_lock: Callable[[], Any]
probe: Callable[[int, int, int, int], int]
read_event: Callable[..., Any]
take_batch: Callable[[deque[Knote], int, Kevq], tuple[list[Knote], int]]
requeue: Callable[[deque[Knote], list[Knote], Kevq], int]
deliver: Callable[..., int] | None  # None: every knote takes its filter's path
event_class: Callable[[type[kevent]], type[kevent]]
# The runtime kevqs' latency estimator: sched's, or its C twin (64-bit fields, no method
# call from fast_control); the simulator always uses sched's.
new_estimator: Callable[[], Estimator]
# kqueue.control's whole common call in C, or None (see _speedups.c, fast_control)
fast_control: Callable[[Any, int, Any], Any] | None

if speedups is None:
    IMPLEMENTATION = "python"
    new_lock = threading.Lock
    probe = py_probe
    read_event = py_read_event
    take_batch = py_take_batch
    requeue = py_requeue
    deliver = None
    event_class = _same_class
    new_estimator = Estimator
    fast_control = None
else:
    speedups.bind(kevent)
    IMPLEMENTATION = "c"
    new_lock = speedups.Lock  # the C scan takes it without a method call
    probe = speedups.probe
    read_event = speedups.read_event
    take_batch = speedups.take_batch
    requeue = speedups.requeue
    deliver = speedups.deliver
    event_class = lazy_event_class
    new_estimator = speedups.estimator_type()
    fast_control = speedups.fast_control
