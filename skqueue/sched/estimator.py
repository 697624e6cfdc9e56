"""Per-kevq latency estimator (docs/semantics.md §3.11, §3.9; D5: monotonic ns everywhere).

Each kevq (one per thread per kqueue) learns how long its thread spends in user
space per event it was handed, and from that predicts when it would finish a newly
queued event.  The policies compare these predictions (best-of-N, hybrids).

The quantities, all integer nanoseconds (the original counted TSC cycles):

* **Sample** (§3.11, taken in :meth:`Estimator.enter`): when a thread re-enters
  ``control()``, ``dt = now - last_kev`` is the user-space time since the previous
  return, and ``sample = dt // last_nkev`` the time per event.  No sample is taken
  when the previous call returned 0 events (timeout/signal: nothing to divide by) or
  when the thread is still "in the kernel" (``in_kernel``: it never returned, e.g. a
  call with ``nevents == 0`` never reaches the scan that records the return).
  ``dt`` also accumulates into ``total_time``.
* **EWMA** (§3.11): ``avg <- (95*avg + 5*sample) // 100``, the first
  sample (``avg == 0``) taken as is; used for ``avg_lat``, ``avg_events`` and
  ``avg_rtlimit``.
* **Expected completion** (§3.11), an absolute timestamp, smaller is better::

      start   = now                                          if in_kernel
              = max(last_kev, now - last_nkev * avg_lat)     otherwise (the clamp)
      exp_lat = avg_lat * (total_queued + last_nkev) + start

  A thread in the kernel can start on new work right away.  A thread in user space
  is still working through its last batch of ``last_nkev`` events; the batch is
  assumed to have started at ``last_kev`` but never so long ago that it would
  already be finished (the clamp), so it is charged in full from ``start``.  Then
  everything queued (``total_queued``, including owned-but-queued entries) follows.

The estimator never reads a clock itself (``now`` is always passed in), so the
simulator drives it with virtual time.

Threads: it takes no lock.  In multi mode only the kevq's own thread writes it and the
policies of other threads read it; in legacy mode the one shared kevq's estimator is
written by every thread that calls ``control()``.  So every method reads each field it
uses once, into a local: a concurrent update can make a result stale or drop one
sample (statistics, never correctness), but can never pair a check with a different
value than the one used (``last_nkev > 0`` then ``dt // last_nkev`` once divided by a
0 that another thread's ``leave`` had just stored).
"""

from __future__ import annotations

__all__ = ["Estimator", "ewma"]


def ewma(old: int, new: int) -> int:
    """95 % old / 5 % new, in integers; the first sample (``old == 0``) is taken as is.

    semantics §3.11.  ``(95*old + 5*new) // 100``.
    """
    if old == 0:
        return new
    return (95 * old + 5 * new) // 100


class Estimator:
    """Latency estimator of one kevq (semantics §3.11); see the module docstring.

    A fresh estimator is "in the kernel" (``in_kernel = True``) with ``last_nkev = 0``
    and no history (``avg_lat = 0``), so its expected completion is simply ``now``.
    """

    __slots__ = (
        "avg_lat",
        "last_kev",
        "last_nkev",
        "in_kernel",
        "total_time",
        "avg_events",
        "avg_rtlimit",
    )

    def __init__(self) -> None:
        #: EWMA of user-space nanoseconds per returned event (dump: ``avg_latency``).
        self.avg_lat: int = 0
        #: Monotonic ns timestamp of the last return to user space.
        self.last_kev: int = 0
        #: Events returned by the last call (0 after a timeout).
        self.last_nkev: int = 0
        #: True while the thread is inside ``control()`` (or has never returned).
        self.in_kernel: bool = True
        #: Summed user-space ns between calls that returned events.
        self.total_time: int = 0
        #: EWMA of events returned per call.
        self.avg_events: int = 0
        #: EWMA of the per-call realtime limit (see :meth:`note_rtlimit`).
        self.avg_rtlimit: int = 0

    def enter(self, now: int) -> None:
        """The thread re-enters ``control()`` at ``now`` (semantics §3.9 step 1, §3.11).

        If it was in user space after a call that returned ``last_nkev > 0`` events:
        ``dt = now - last_kev``; ``total_time += dt``; ``avg_lat = ewma(avg_lat,
        dt // last_nkev)``.  Then the thread counts as in the kernel.
        """
        nkev = self.last_nkev  # once: another thread's leave() may store 0 meanwhile
        if not self.in_kernel and nkev > 0:
            dt = now - self.last_kev
            if dt < 0:  # a caller mixing clocks; never let it poison the average
                dt = 0
            self.total_time += dt
            self.avg_lat = ewma(self.avg_lat, dt // nkev)
        self.in_kernel = True

    def leave(self, now: int, nevents: int) -> None:
        """The scan returns ``nevents`` events to user space at ``now`` (semantics §3.9 step 7).

        ``last_kev = now``; ``last_nkev = nevents``; ``in_kernel = False``;
        ``avg_events = ewma(avg_events, nevents)``.  Also called after a timeout (0).
        """
        self.last_kev = now
        self.last_nkev = nevents
        self.in_kernel = False
        self.avg_events = ewma(self.avg_events, nevents)

    def note_rtlimit(self, rtlimit: int) -> None:
        """Record a scan's realtime limit: ``avg_rtlimit = ewma(avg_rtlimit, rtlimit)``
        (semantics §3.9, dump field ``avg_rtlimit``)."""
        self.avg_rtlimit = ewma(self.avg_rtlimit, rtlimit)

    def start(self, now: int) -> int:
        """When this kevq could start on new work (semantics §3.11): ``now`` if in the
        kernel, else ``max(last_kev, now - last_nkev * avg_lat)`` (the clamp)."""
        return self._start(now, self.last_nkev, self.avg_lat)

    def _start(self, now: int, nkev: int, lat: int) -> int:
        if self.in_kernel:
            return now
        return max(self.last_kev, now - nkev * lat)

    def exp_lat(self, now: int, total_queued: int) -> int:
        """Expected completion timestamp (ns) of an event queued now (semantics §3.11):
        ``avg_lat * (total_queued + last_nkev) + start(now)``.  Smaller is better."""
        nkev, lat = self.last_nkev, self.avg_lat  # one snapshot for both terms
        return lat * (total_queued + nkev) + self._start(now, nkev, lat)

    def as_dict(self) -> dict[str, int | bool]:
        """The estimator's dump fields under their semantics §3.4 names."""
        return {
            "avg_latency": self.avg_lat,
            "last_kev": self.last_kev,
            "last_nkev": self.last_nkev,
            "in_kernel": self.in_kernel,
            "total_time": self.total_time,
            "avg_events": self.avg_events,
            "avg_rtlimit": self.avg_rtlimit,
        }

    def __repr__(self) -> str:
        return (f"Estimator(avg_lat={self.avg_lat}, last_kev={self.last_kev}, "
                f"last_nkev={self.last_nkev}, in_kernel={self.in_kernel})")
