"""The knote: one registration (ident, filter) in one kqueue, and its life-cycle state.

Status bits keep FreeBSD's names (kern_event.c) so a reader of the kernel or the SKQ paper
finds their way; the numbers are internal.

Locking: ``lock`` is the knote's *flux* lock.  Everything about a knote except its queue
membership is changed only while holding it.  Queue membership (``queued_on``, ``parked``
and the position in a kevq's FIFO) is changed only while holding that kevq's lock; the one
exception is a scan *claiming* a knote it popped for its requeue (``queued_on`` set under
the knote lock, the FIFO entry added later under the kevq lock).  Lock order is
knote -> kevq; the one place that needs the reverse (a thief scanning a victim's queue)
uses ``acquire(blocking=False)``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._accel import speedups, verify
from .constants import EV_CLEAR, EV_DISPATCH, EV_ONESHOT

if TYPE_CHECKING:
    from ._kevq import Kevq
    from .filters import Filter
    from .sched import Domain


# The knote lock: the C helper's Lock (the scan in C takes it without a method call),
# else threading.Lock.  Both are plain non-reentrant mutexes.
new_lock: Callable[[], Any] = threading.Lock if speedups is None else speedups.Lock

KN_ACTIVE = 0x01  # the condition fired and has not been consumed
KN_DISABLED = 0x04  # EV_DISABLE / EV_DISPATCH: not reported
KN_DETACHED = 0x08  # deleted; a queued entry is discarded when reached
KN_SRCGONE = 0x20  # detached from its event source (fop.detach done or source gone)
KN_PROCESSING = 0x80  # owned by a kevq's thread until its next control()
KN_WS = 0x100  # taken by a thief, not yet delivered

# The C helper hard-codes these and three flags: refuse a build that disagrees.
verify({
    "KN_ACTIVE": KN_ACTIVE, "KN_DISABLED": KN_DISABLED, "KN_DETACHED": KN_DETACHED,
    "KN_PROCESSING": KN_PROCESSING, "KN_WS": KN_WS, "EV_ONESHOT": EV_ONESHOT,
    "EV_CLEAR": EV_CLEAR, "EV_DISPATCH": EV_DISPATCH,
})  # fmt: skip


class Knote:
    """A registered event source in a kqueue."""

    __slots__ = (
        "kq",
        "ident",
        "filter",
        "flags",
        "sfflags",
        "sdata",
        "udata",
        "fflags",
        "data",
        "fop",
        "status",
        "queued_on",
        "parked",
        "owner",
        "origin",
        "dom",
        "lock",
        "hook",
        "rt",
        "cpu",
        "fast",
        "__weakref__",
    )

    def __init__(self, kq: Any, ident: int, filt: int, fop: Filter) -> None:
        self.kq = kq
        self.ident = ident
        self.filter = filt
        self.flags = 0  # behaviour flags fixed at creation, plus output flags (EV_EOF)
        self.sfflags = 0  # filter input: fflags of the registration
        self.sdata = 0  # filter input: data of the registration
        self.udata: Any = None
        self.fflags = 0  # output
        self.data = 0  # output
        self.fop = fop
        self.status = 0
        self.queued_on: Kevq | None = None
        # Queued on ``queued_on`` while another kevq's thread owns it, and counted in that
        # kevq's ``nparked``.  Changed only under that kevq's lock, together with the count.
        self.parked = False
        self.owner: Kevq | None = None  # kevq whose thread processes it (KN_PROCESSING)
        self.origin: Kevq | None = None  # EV_AFFINITY binding
        self.dom: Domain | None = None  # QUEUE policy's remembered domain
        self.lock = new_lock()
        self.hook: Any = None  # filter-private state
        self.rt = False  # EV_REALTIME
        self.cpu = -1  # CPU on which the last activation was observed
        self.fast = False  # READ on a socket/pipe without NOTE_LOWAT: inlined in the scan

    def __repr__(self) -> str:
        return (
            f"<Knote ident={self.ident} filter={self.filter} flags={self.flags:#x} "
            f"status={self.status:#x}>"
        )
