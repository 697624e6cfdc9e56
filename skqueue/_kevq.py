"""The kevq: one thread's ready queue in a multi-mode kqueue (or the single shared
queue of a legacy kqueue).

It holds two FIFOs (realtime and normal), the list of knotes its thread currently owns,
the latency estimator the policies read, and the dump counters of SKQ's FKQMPRNT.  The
lock (``_scan.new_lock``, like the knote lock) guards the FIFOs, the counters and the
sleep state; ``cond`` (a :class:`KevqCond` on the same lock) is where a follower thread
sleeps.

No lost wake-ups (docs/design.md, "The wake-up invariant")
--------------------------------------------------------
A thread decides to sleep only after seeing ``available() == 0`` under the kevq lock, and
whoever makes an entry available (an enqueue, or an owner releasing a parked knote) wakes
the kevq's thread under that same lock.  That is only as good as ``available()``: an entry
is *parked* (queued here while another kevq's thread still owns its knote, so not
deliverable yet) exactly when ``kn.parked`` is set, and ``nparked`` counts those flags.
Both change together, under this lock, at every place an entry enters or leaves a FIFO
(``push``, ``unpark``, ``remove``, ``clear``, the batch pop and requeue, a steal), so the
count cannot drift whatever the owner does to the knote's status meanwhile.  An earlier
version recomputed "owned elsewhere" from the knote's status at pop time instead; an owner
releasing the knote between enqueue and pop left the count one too high for good, and the
kevq's thread then slept through a queued event until its timeout.

One ordering rule keeps the flag this kevq's: when an entry leaves a FIFO, ``parked`` is
cleared (and counted) *before* ``queued_on`` becomes None.  Those exits hold the kevq lock
but not always the knote lock (a scan's pop, a steal), and a thread holding only the knote
lock may push the knote onto another kevq the moment it reads None; that push may set
``parked`` for the other kevq.  Cleared in the other order, the exit here read that flag as
its own: this count one too low, the other kevq's one too high for good, so its thread
could sleep beside a deliverable event.  The free-threaded CI run found it, and
``tests/test_ft_stress.py`` reproduces it.  Hence: ``queued_on is None`` implies
``parked`` is false, and ``push`` only ever sets the flag.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import TYPE_CHECKING, Any

from ._scan import new_estimator, new_lock
from ._status import KN_PROCESSING
from .sched import KevqCounters

if TYPE_CHECKING:
    from ._knote import Knote
    from .sched import Domain


class KevqCond:
    """Where a kevq's threads sleep: ``threading.Condition``'s ``wait``, ``notify`` and
    ``notify_all`` on the kevq lock, with each sleeper blocked on a *gate* of
    ``new_lock``'s type that a notify opens.

    Not ``threading.Condition``, because its sleepers block on a ``_thread.lock``: on a
    free-threaded CPython 3.13 that is a PyMutex, whose blocked acquire spins through up
    to 40 ``sched_yield()`` calls before it sleeps.  A sleep and its wake-up then cost
    about five times the CPU of the C helper's lock, which waits on a semaphore
    (docs/benchmarks.md section 1e).  A follower sleeps each time its kevq runs dry, so
    that CPU comes out of the cores that serve.  Without the helper the gates are
    ``threading.Lock``s and this behaves as ``threading.Condition`` does.

    Every method is called with the kevq lock held, and every field changes under it.
    Gates are reused (a multi-mode kevq has one thread, so one gate).
    """

    __slots__ = ("_lock", "_sleepers", "_spare")

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._sleepers: deque[Any] = deque()  # the gates of the sleeping threads, FIFO
        self._spare: list[Any] = []  # closed gates, ready for the next sleeper

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until notified or ``timeout`` seconds pass, the kevq lock released
        meanwhile and held again on return.  True if notified in time."""
        spare = self._spare
        if spare:
            gate = spare.pop()
        else:
            gate = new_lock()
            gate.acquire()  # a closed gate: held until a notify releases it
        self._sleepers.append(gate)
        self._lock.release()
        woken = False
        try:
            woken = bool(gate.acquire(True, -1 if timeout is None else timeout))
        finally:
            # Not acquire(): on the C lock that method is interruptible, and a signal
            # handler raising here must not leave the kevq lock unheld.
            self._lock.__enter__()
            if not woken:  # timed out or interrupted
                try:
                    self._sleepers.remove(gate)
                except ValueError:
                    # A notify took it off the list after the timeout and opened it
                    # under the lock now held: close it again (this does not block).
                    gate.acquire()
            spare.append(gate)
        return woken

    def notify(self) -> None:
        """Wake the longest-sleeping thread, if any."""
        if self._sleepers:
            self._sleepers.popleft().release()

    def notify_all(self) -> None:
        """Wake every sleeping thread."""
        sleepers = self._sleepers
        while sleepers:
            sleepers.popleft().release()


class Kevq(KevqCounters):
    __slots__ = (
        "lock",
        "cond",
        "rt",
        "normal",
        "owned",
        "nparked",
        "influx",
        "fluxwait",
        "closing",
        "active",
        "leaf",
        "nfollowers",
        "leader_waiting",
        "promote",
        "thread_name",
        "thread_ident",
        "id",
        "dropped_affinity",
        "sched_ns",
        "cpu",
        "scanning",
        "wake_fd",
        "wake_ep",
        "last_log_ns",
        "log_suppressed",
        "__weakref__",
    )

    def __init__(self, ident: int, name: str, thread_ident: int) -> None:
        super().__init__()
        self.est = new_estimator()  # sched's Estimator, or its C twin (_scan)
        # The knote lock's type (the C helper's mutex when it is in use: the C scan takes
        # it directly); its KevqCond releases it and takes it back around a sleep.
        self.lock = new_lock()
        self.cond = KevqCond(self.lock)
        self.rt: deque[Knote] = deque()
        self.normal: deque[Knote] = deque()
        self.owned: list[Knote] = []
        self.nparked = 0  # queued entries with ``parked`` set (owned by another kevq)
        # Legacy (one kevq, many scanners): entries popped by running scans, not settled
        # yet, and whether a waiter went to sleep because it found only those.
        self.influx = 0
        self.fluxwait = False
        self.last_log_ns = 0  # the last automatic (log_threshold) dump of this kevq
        self.log_suppressed = 0  # threshold crossings since then, not logged
        self.closing = False
        self.active = False
        self.leaf: Domain | None = None
        self.nfollowers = 0
        self.leader_waiting = False
        self.promote = False
        self.thread_name = name
        self.thread_ident = thread_ident
        self.id = ident
        self.dropped_affinity = 0
        self.sched_ns = 0  # time spent choosing this kevq for its placements (the dump)
        self.cpu = -1
        self.scanning = False  # its thread is between release and the end of a scan
        self.wake_fd = -1  # eventfd behind kqueue.thread_fileno() (D8), created on demand
        self.wake_ep: Any = None  # epoll over wake_fd and the backend epoll (thread_fileno)

    @property
    def total_queued(self) -> int:
        return len(self.rt) + len(self.normal)

    def available(self) -> int:
        """Queued entries a scan could deliver now (caller holds ``lock``)."""
        return len(self.rt) + len(self.normal) - self.nparked

    # -- FIFO membership: every change goes through these (caller holds ``lock``) ------

    def push(self, kn: Knote, head: bool) -> None:
        """Queue ``kn`` here; it is parked if another kevq's thread owns it."""
        dq = self.rt if kn.rt else self.normal
        if head:
            dq.appendleft(kn)
        else:
            dq.append(kn)
        kn.queued_on = self
        if kn.status & KN_PROCESSING and kn.owner is not self:
            kn.parked = True
            self.nparked += 1

    def unpark(self, kn: Knote) -> None:
        """``kn``'s owner released it: if it is parked here, it is deliverable now."""
        if kn.queued_on is self and kn.parked:
            kn.parked = False
            self.nparked -= 1

    def remove(self, kn: Knote) -> None:
        """Take ``kn`` (queued here) out of its FIFO.

        A knote queued here but not in the FIFO is *claimed* by this kevq's running scan,
        which will append it again; it stays claimed (clearing ``queued_on`` would let an
        activation queue it here a second time before that append).  Its next pop re-asks
        the filter, so a deleted or reset knote is not delivered from that entry.
        """
        try:
            (self.rt if kn.rt else self.normal).remove(kn)
        except ValueError:
            return
        if kn.parked:  # before queued_on (the ordering rule above)
            kn.parked = False
            self.nparked -= 1
        kn.queued_on = None

    def clear(self) -> list[Knote]:
        """Empty both FIFOs; return their knotes (realtime first), no longer queued."""
        pending = list(self.rt) + list(self.normal)
        self.rt.clear()
        self.normal.clear()
        self.nparked = 0
        for kn in pending:
            kn.parked = False
            if kn.queued_on is self:
                kn.queued_on = None
        return pending

    def detach_taken(self, taken: list[Knote]) -> None:
        """``taken`` were removed from the FIFOs by a thief: they are no longer queued."""
        for kn in taken:
            if kn.parked:  # before queued_on (the ordering rule above)
                kn.parked = False
                self.nparked -= 1
            kn.queued_on = None

    def check(self) -> None:
        """Assert the queue invariants (tests; caller holds ``lock``)."""
        parked = 0
        for kn in itertools.chain(self.rt, self.normal):
            if kn.queued_on is not self:
                raise AssertionError(f"{kn!r} is in kevq {self.id} but queued on {kn.queued_on}")
            parked += kn.parked
        if parked != self.nparked:
            raise AssertionError(f"kevq {self.id}: nparked {self.nparked}, {parked} parked")

    def dump(self, now: int) -> dict[str, Any]:
        return {
            "ptr": f"{self.id:#x}",
            "thread": self.thread_name,
            "knotes": len(self.normal),
            "rt_knotes": len(self.rt),
            "owned": len(self.owned),
            **self.counter_dump(),
            "dropped_affinity": self.dropped_affinity,
            "cpu": self.cpu,
            "leaf": self.leaf.id if self.leaf is not None else None,
            "active": self.active,
        }
