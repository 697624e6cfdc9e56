"""The per-kevq counters of SKQ's dump (FKQMPRNT, docs/semantics.md §3.4) and the estimator the
policies read, in one class shared by the runtime's ``Kevq`` and the simulator's
``SimKevq``: both count the same events and report them under the same names."""

from __future__ import annotations

from .estimator import Estimator

__all__ = ["KevqCounters"]


class KevqCounters:
    """Plain counters, guarded by the owning kevq's lock (the simulator has none)."""

    __slots__ = (
        "est",
        "total_fallbacks",
        "total_mismatches",
        "total_worksteal",
        "total_worksteal_scan",
        "total_realtime",
        "total_sched",
        "total_syscall",
        "total_events",
    )

    def __init__(self) -> None:
        self.est = Estimator()
        self.total_fallbacks = 0
        self.total_mismatches = 0
        self.total_worksteal = 0
        self.total_worksteal_scan = 0
        self.total_realtime = 0
        self.total_sched = 0
        self.total_syscall = 0
        self.total_events = 0

    def count_placement(self, fallback: bool, mismatch: bool) -> None:
        """A scheduling decision put an event here (see :class:`~.policy.Placement`)."""
        self.total_sched += 1
        if fallback:
            self.total_fallbacks += 1
        if mismatch:
            self.total_mismatches += 1

    def counter_dump(self) -> dict[str, int]:
        """The counters and estimator state under the dump's names."""
        e = self.est
        return {
            "avg_rtlimit": e.avg_rtlimit,
            "total_time": e.total_time,
            "total_syscall": self.total_syscall,
            "total_events": self.total_events,
            "avg_latency": e.avg_lat,
            "avg_events": e.avg_events,
            "total_fallbacks": self.total_fallbacks,
            "total_mismatches": self.total_mismatches,
            "total_worksteal": self.total_worksteal,
            "total_worksteal_scan": self.total_worksteal_scan,
            "total_realtime": self.total_realtime,
            "total_sched": self.total_sched,
            "last_kev": -1 if e.in_kernel else e.last_kev,
            "last_nkev": e.last_nkev,
        }
