"""The knote: one registration (ident, filter) in one kqueue, and its life-cycle state.

Status bits (``_status``) keep FreeBSD's names (kern_event.c) so a reader of the kernel or
the SKQ paper finds their way; the numbers are internal.  The lock is ``_scan.new_lock``:
the C helper's mutex when it is in use (the C scan takes it without a method call).

Locking: ``lock`` is the knote's *flux* lock.  Everything about a knote except its queue
membership is changed only while holding it.  Queue membership (``queued_on``, ``parked``
and the position in a kevq's FIFO) is changed only while holding that kevq's lock; the one
exception is a scan *claiming* a knote it popped for its requeue (``queued_on`` set under
the knote lock, the FIFO entry added later under the kevq lock).  Lock order is
knote -> kevq; the one place that needs the reverse (a thief scanning a victim's queue)
uses ``acquire(blocking=False)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._scan import new_lock

if TYPE_CHECKING:
    from ._kevq import Kevq
    from .filters import Filter
    from .sched import Domain



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
        "turns",
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
        # kevq's ``nparked``.  Changed only under that kevq's lock, together with the count,
        # and cleared before ``queued_on`` becomes None (the ordering rule, _kevq.py).
        self.parked = False
        self.owner: Kevq | None = None  # kevq whose thread processes it (KN_PROCESSING)
        self.origin: Kevq | None = None  # EV_AFFINITY binding
        self.dom: Domain | None = None  # QUEUE policy's remembered domain
        self.lock = new_lock()
        self.hook: Any = None  # filter-private state
        self.rt = False  # EV_REALTIME
        self.cpu = -1  # CPU on which the last activation was observed
        self.fast = False  # READ on a socket/pipe without NOTE_LOWAT: inlined in the scan
        # Times it was delivered.  A scan that asks a descriptor's readiness before taking
        # the lock (the C scan polls a run of knotes at once, none owned by a thread)
        # trusts the answer only if the turns are the same under the lock: otherwise
        # another thread was handed the event meanwhile and may have read what the answer
        # saw.
        self.turns = 0

    def __repr__(self) -> str:
        return (
            f"<Knote ident={self.ident} filter={self.filter} flags={self.flags:#x} "
            f"status={self.status:#x}>"
        )
