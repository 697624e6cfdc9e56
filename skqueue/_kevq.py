"""The kevq: one thread's ready queue in a multi-mode kqueue (or the single shared
queue of a legacy kqueue).

It holds two FIFOs (realtime and normal), the list of knotes its thread currently owns,
the latency estimator the policies read, and the dump counters of SKQ's FKQMPRNT.  The
lock guards the FIFOs, the counters and the sleep state; ``cond`` (on the same lock) is
where a follower thread sleeps.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from ._knote import KN_PROCESSING
from .sched import Estimator

if TYPE_CHECKING:
    from ._knote import Knote
    from .sched import Domain


class Kevq:
    __slots__ = (
        "lock",
        "cond",
        "rt",
        "normal",
        "owned",
        "nprocq",
        "est",
        "closing",
        "active",
        "leaf",
        "nfollowers",
        "leader_waiting",
        "promote",
        "thread_name",
        "thread_ident",
        "id",
        "total_fallbacks",
        "total_mismatches",
        "total_worksteal",
        "total_worksteal_scan",
        "total_realtime",
        "total_sched",
        "total_syscall",
        "total_events",
        "dropped_affinity",
        "cpu",
        "scanning",
        "wake_fd",
        "wake_ep",
        "last_log_ns",
        "log_suppressed",
        "__weakref__",
    )

    def __init__(self, ident: int, name: str, thread_ident: int) -> None:
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.rt: deque[Knote] = deque()
        self.normal: deque[Knote] = deque()
        self.owned: list[Knote] = []
        self.nprocq = 0  # queued entries whose knote another kevq's thread still owns
        self.last_log_ns = 0  # the last automatic (log_threshold) dump of this kevq
        self.log_suppressed = 0  # threshold crossings since then, not logged
        self.est = Estimator()
        self.closing = False
        self.active = False
        self.leaf: Domain | None = None
        self.nfollowers = 0
        self.leader_waiting = False
        self.promote = False
        self.thread_name = name
        self.thread_ident = thread_ident
        self.id = ident
        self.total_fallbacks = 0
        self.total_mismatches = 0
        self.total_worksteal = 0
        self.total_worksteal_scan = 0
        self.total_realtime = 0
        self.total_sched = 0
        self.total_syscall = 0
        self.total_events = 0
        self.dropped_affinity = 0
        self.cpu = -1
        self.scanning = False  # its thread is between release and the end of a scan
        self.wake_fd = -1  # eventfd behind kqueue.thread_fileno() (D8), created on demand
        self.wake_ep: Any = None  # epoll over wake_fd and the backend epoll (thread_fileno)

    @property
    def total_queued(self) -> int:
        return len(self.rt) + len(self.normal)

    def available(self) -> int:
        """Queued entries a scan could deliver now (caller holds ``lock``)."""
        return len(self.rt) + len(self.normal) - self.nprocq

    def dump(self, now: int) -> dict[str, Any]:
        est = self.est
        return {
            "ptr": f"{self.id:#x}",
            "thread": self.thread_name,
            "knotes": len(self.normal),
            "rt_knotes": len(self.rt),
            "owned": len(self.owned),
            "avg_rtlimit": est.avg_rtlimit,
            "total_time": est.total_time,
            "total_syscall": self.total_syscall,
            "total_events": self.total_events,
            "avg_latency": est.avg_lat,
            "avg_events": est.avg_events,
            "total_fallbacks": self.total_fallbacks,
            "total_mismatches": self.total_mismatches,
            "total_worksteal": self.total_worksteal,
            "total_worksteal_scan": self.total_worksteal_scan,
            "total_realtime": self.total_realtime,
            "total_sched": self.total_sched,
            "dropped_affinity": self.dropped_affinity,
            "last_kev": -1 if est.in_kernel else est.last_kev,
            "last_nkev": est.last_nkev,
            "cpu": self.cpu,
            "leaf": self.leaf.id if self.leaf is not None else None,
            "active": self.active,
        }


# -- batch pop and requeue of a scan (the C helper has the same two functions) ----------


def py_take_batch(dq: deque[Knote], want: int, q: Kevq) -> tuple[list[Knote], int]:
    """Pop up to ``want`` knotes off the front of ``dq`` (caller holds ``q.lock``), clear
    their ``queued_on``, and count those another kevq's thread still owns (the caller
    takes that many off ``q.nprocq``)."""
    batch = [dq.popleft() for _ in range(min(want, len(dq)))]
    unowned = 0
    for kn in batch:
        kn.queued_on = None
        if kn.status & KN_PROCESSING and kn.owner is not q:
            unowned += 1
    return batch, unowned


def py_requeue(dq: deque[Knote], knotes: list[Knote], q: Kevq) -> int:
    """Append to ``dq`` every knote still claimed for ``q`` (caller holds ``q.lock``);
    return how many of them another kevq's thread still owns (for ``q.nprocq``)."""
    unowned = 0
    for kn in knotes:
        if kn.queued_on is q:
            dq.append(kn)
            if kn.status & KN_PROCESSING and kn.owner is not q:
                unowned += 1
    return unowned
