"""SKQ placement, batching and stealing decisions (docs/semantics.md §3.12-§3.14;
D2, D3, D6, D7, D15).

This module decides; it does not own queues, locks, threads or clocks.  The runtime
(``skqueue._kqueue``) and the simulator (``skqueue.sim``) both call it with their own
kevq objects, so every function here works on small *views*:

* a kevq is anything with ``est`` (an :class:`~skqueue.sched.estimator.Estimator`),
  ``total_queued`` (realtime + normal entries, including owned-but-queued ones),
  ``closing`` and ``leaf`` (:class:`KevqView`);
* a knote is anything with a mutable ``dom`` attribute, the QUEUE policy's remembered
  domain (:class:`KnoteView`);
* ``active`` is the kqueue's active-kevq vector: an indexable snapshot (the runtime
  swaps an immutable tuple on change, semantics §3.17);
* time (``now``), the current CPU, the random source and the penalty are arguments.

Placement (:func:`choose`, semantics §3.12), with the defects fixed:

* **CPU (0x02)** places in the leaf domain of the CPU *activating* the event, looked
  up afresh every time.  **QUEUE (0x01)** places in the domain remembered at the
  knote's first activation (``kn.dom``); an activation on a CPU outside it is a
  *mismatch*.  (The original header comments have these two swapped, D3.)
* Both pick a uniform local candidate among the domain's kevqs that are active and not
  closing.  With ``sargs > 0`` (hybrid) they also take the best of ``sargs`` distinct
  draws from the whole active vector, excluding the local candidate (D6), and the
  remote one wins only if ``exp_lat(remote) + cache_pen < exp_lat(local)``, i.e. it
  beats the local one by *more* than the cache penalty (D2; the original had the sign
  inverted), or if there is no local candidate.
* **BEST (0x04)** takes the lowest ``exp_lat`` among ``sargs`` distinct uniform draws
  (N capped at the number of active kevqs; ties go to the earlier draw).
* **Random (0)**, and every policy that found nothing, does a linear probe from a
  uniform index to the first kevq that is not closing.  Such choices are *fallbacks*,
  so under ``sched == 0`` every placement is one (``total_fallbacks == total_sched``,
  semantics §3.18).  A closing kevq drawn by best-of-N or a hybrid simply loses (it is
  skipped when comparing); the original could pick it and then fall back.

Counters (semantics §3.4) are left to the caller, from the returned :class:`Placement`:
every non-``None`` placement is a ``total_sched``; ``fallback`` is a
``total_fallbacks``; ``mismatch`` (QUEUE only, and only for a choice made by the
local/hybrid path, as in the original) is a ``total_mismatches`` of the chosen kevq.
``EV_AFFINITY`` and legacy mode bypass the policy and are the caller's business.

Batching (:func:`batch_limits`, :class:`ScanOrder`, :func:`take_batch`; semantics
§3.9, §3.14, D5, D7) and stealing (:func:`pick_victim`, :func:`steal_slice`; semantics
§3.13, D15) are documented where they are defined.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, NamedTuple, Protocol, TypeVar

from skqueue.constants import KQ_SCHED_BEST, KQ_SCHED_CPU, KQ_SCHED_QUEUE

from .estimator import Estimator
from .rng import Rng
from .topology import Domain, Topology
from .word import SchedWord

__all__ = [
    "KevqView",
    "KnoteView",
    "Placement",
    "choose",
    "exp_lat",
    "batch_limits",
    "ScanOrder",
    "take_batch",
    "pick_victim",
    "steal_slice",
    "insert_head",
    "ONE_SECOND_NS",
]

ONE_SECOND_NS = 1_000_000_000


class KevqView(Protocol):
    """What the policy reads from a kevq (all read-only here)."""

    @property
    def est(self) -> Estimator:
        """The kevq's latency estimator."""
        ...

    @property
    def total_queued(self) -> int:
        """Realtime + normal entries, including owned-but-queued ones."""
        ...

    @property
    def closing(self) -> bool:
        """True once the kevq is draining; it must not receive new events."""
        ...

    @property
    def leaf(self) -> Domain | None:
        """Its leaf domain (CPU/QUEUE policies), else ``None``."""
        ...


class KnoteView(Protocol):
    """What the policy reads and writes on a knote: the QUEUE policy's domain."""

    dom: Domain | None


K = TypeVar("K", bound=KevqView)
E = TypeVar("E")


class Placement(NamedTuple, Generic[K]):
    """Result of :func:`choose`: the kevq (``None`` if none is available), whether it
    came from the random/fallback path, and whether it is a QUEUE-policy mismatch."""

    kevq: K | None
    fallback: bool
    mismatch: bool


def exp_lat(q: KevqView, now: int) -> int:
    """Expected completion timestamp of ``q`` (semantics §3.11): ``q.est.exp_lat(now,
    q.total_queued)``.  Smaller is better."""
    return q.est.exp_lat(now, q.total_queued)


def _index(seq: Sequence[K], obj: object) -> int:
    """Index of ``obj`` in ``seq`` by identity, or -1."""
    try:
        i = seq.index(obj)  # C-speed, but may match an equal-but-distinct object
    except ValueError:
        return -1
    if seq[i] is obj:
        return i
    for j, x in enumerate(seq):  # an equal-but-distinct object came first
        if x is obj:
            return j
    return -1


def _local_pick(kevqs: Sequence[object], active: Sequence[K], rng: Rng) -> int:
    """Uniform pick among ``kevqs`` that are in ``active`` and not closing, as an index
    into ``active`` (-1 if none).

    Fast path: one uniform draw over the whole list, accepted if eligible.  Otherwise a
    uniform draw over the eligible ones; overall every eligible kevq has probability
    1/m (m eligible): 1/L + (k/L)(1/m) = 1/m with k = L - m ineligible.
    """
    m = len(kevqs)
    if m == 0:
        return -1
    i = _index(active, kevqs[rng.randrange(m) if m > 1 else 0])
    if i >= 0 and not active[i].closing:
        return i
    eligible = [j for j in (_index(active, q) for q in kevqs) if j >= 0 and not active[j].closing]
    if not eligible:
        return -1
    return eligible[rng.randrange(len(eligible))] if len(eligible) > 1 else eligible[0]


def _best_of(active: Sequence[K], n: int, exclude: int | None, rng: Rng,
             now: int) -> tuple[int, int]:
    """``(index, exp_lat)`` of the lowest ``exp_lat`` among ``n`` distinct uniform draws
    from ``active`` minus ``exclude`` (D6); closing kevqs never win.  ``(-1, 0)`` if none."""
    best = -1
    best_lat = 0
    for i in rng.sample_distinct(len(active), n, exclude):
        q = active[i]
        if q.closing:
            continue
        lat = q.est.exp_lat(now, q.total_queued)
        if best < 0 or lat < best_lat:
            best, best_lat = i, lat
    return best, best_lat


def _need_topo(topo: Topology | None) -> Topology:
    if topo is None:
        raise ValueError("the CPU and QUEUE policies need a topology")
    return topo


def _idle(q: KevqView) -> bool:
    """Its thread waits in the kernel and nothing is queued for it."""
    return q.est.in_kernel and q.total_queued == 0 and not q.closing


def choose(sw: SchedWord, kn: KnoteView, cpu: int, active: Sequence[K],
           topo: Topology | None, rng: Rng, now: int, cache_pen: int,
           rt_idle_first: bool = False, idle_first: bool = False) -> Placement[K]:
    """Pick the kevq for an activation of ``kn`` on ``cpu`` at ``now`` (semantics §3.12).

    ``active`` is the active-kevq vector, ``topo`` the kqdom tree (required by the CPU
    and QUEUE policies), ``cache_pen`` the hybrid penalty in ns.  May set ``kn.dom``
    (QUEUE, first activation).  Returns ``Placement(None, False, False)`` when no
    kevq is available.  See the module docstring for the policies.

    ``rt_idle_first`` (a skqueue extension, not in the original): an activation of a
    realtime knote (``kn.rt``) goes to a uniformly chosen *idle* kevq (its thread is
    waiting in the kernel with nothing queued) when one exists, before any policy.  The
    original's estimator cannot see a thread deep inside one long request (the clamp
    of §3.11 makes it look about to finish), so push scheduling can park a realtime event
    behind it; an idle thread starts it at once.  Such a placement is not a fallback.

    ``idle_first`` (a skqueue extension, off by default): the same rule for every
    activation.  Besides the clamp, the estimate of an idle thread never improves while
    it gets no work (it is re-sampled only when events are served), so best-of-N over a
    few kevqs can keep feeding a busy thread while another sits idle
    (docs/simulator.md section 5f).
    """
    n = len(active)
    if n == 0:
        return Placement(None, False, False)
    if idle_first or (rt_idle_first and getattr(kn, "rt", False)):
        idle = [i for i in range(n) if _idle(active[i])]
        if idle:
            pick = idle[rng.randrange(len(idle))] if len(idle) > 1 else idle[0]
            return Placement(active[pick], False, False)
    sched = sw.sched
    if sched == KQ_SCHED_CPU or sched == KQ_SCHED_QUEUE:
        mismatch = False
        if sched == KQ_SCHED_CPU:
            dom = _need_topo(topo).leaf_of(cpu)
        else:
            known = kn.dom
            if known is None:
                known = kn.dom = _need_topo(topo).leaf_of(cpu)
            dom = known
            mismatch = cpu not in dom.cpus
        ci = _local_pick(dom.kevqs, active, rng)
        if sw.sargs > 0:  # hybrid: compare with the best of sargs remote draws
            oi, other_lat = _best_of(active, sw.sargs, ci if ci >= 0 else None, rng, now)
            # D2: the remote must beat the local candidate by more than the penalty
            if oi >= 0 and (ci < 0 or other_lat + cache_pen < exp_lat(active[ci], now)):
                ci = oi
        if ci >= 0:
            return Placement(active[ci], False, mismatch)
    elif sched == KQ_SCHED_BEST:
        bi, _ = _best_of(active, sw.sargs, None, rng, now)
        if bi >= 0:
            return Placement(active[bi], False, False)
    # random policy, or fallback: linear probe from a uniform start
    start = rng.randrange(n) if n > 1 else 0
    for k in range(n):
        q = active[(start + k) % n]
        if not q.closing:
            return Placement(q, True, False)
    return Placement(None, False, False)


# -- batching -------------------------------------------------------------------------------


def batch_limits(maxev: int, multi: bool, tfreq: int, rtshare: int,
                 avg_lat: int) -> tuple[int, int]:
    """Batch size and realtime limit of one scan (semantics §3.14; D5, D7).

    In multi mode with ``tfreq > 0`` and ``avg_lat > 0`` (ns/event) the batch is capped
    so the thread returns about ``tfreq`` times a second:
    ``maxev = min(maxev, max(1, 1e9 // (avg_lat * tfreq)))``.  Then
    ``rtlimit = ceil(maxev * rtshare / 100)``, which is 0 for ``rtshare == 0``.
    Returns ``(maxev, rtlimit)``.
    """
    if multi and tfreq > 0 and avg_lat > 0:
        maxev = min(maxev, max(1, ONE_SECOND_NS // (avg_lat * tfreq)))
    rtlimit = (maxev * rtshare + 99) // 100 if rtshare > 0 and maxev > 0 else 0
    return maxev, rtlimit


class ScanOrder:
    """The order of one scan over a kevq's two FIFOs (semantics §3.9, D7), as *runs*.

    Order: realtime entries while fewer than ``rtlimit`` realtime events have been
    delivered, then normal entries, then realtime entries again while slots remain.  So
    with both classes backlogged the first ``rtlimit`` events are realtime and the rest
    normal (the authors' share test), yet a realtime backlog is never left behind when
    the normal queue runs dry, and ``rtlimit == 0`` cannot spin.

    The original's end-of-queue *markers* are budgets: the scan examines at most as many
    entries of each FIFO as it held when the scan started (``n_rt``, ``n_normal``).
    Anything appended at a tail meanwhile (an entry moved behind the marker, a concurrent
    activation) is not examined by this scan, so it always terminates.

    The runtime pops whole runs under one lock acquisition; the simulator pops one entry
    at a time (:func:`take_batch`).  Both follow the same protocol::

        order = ScanOrder(len(rt), len(normal), maxev, rtlimit)
        while True:
            from_rt, n = order.next_run()
            if not n:
                break
            popped = up to n entries taken off the front of rt (from_rt) or normal
            delivered = how many of them were delivered (re-checked, not stale or moved)
            order.took(from_rt, n, len(popped), delivered)

    A run never exceeds what is left of the batch, of the realtime share or of the
    budget, so delivering every entry of a run never overshoots either limit.
    """

    __slots__ = ("maxev", "rtlimit", "taken", "taken_rt", "rt_left", "normal_left")

    def __init__(self, n_rt: int, n_normal: int, maxev: int, rtlimit: int) -> None:
        self.maxev = maxev
        self.rtlimit = rtlimit
        #: Entries delivered so far, and how many of them came from the realtime FIFO.
        self.taken = 0
        self.taken_rt = 0
        self.rt_left = n_rt
        self.normal_left = n_normal

    def next_run(self) -> tuple[bool, int]:
        """``(from_rt, n)``: pop up to ``n`` entries from that FIFO next; ``n == 0``
        when the scan is over (batch full or both budgets spent)."""
        room = self.maxev - self.taken
        if room <= 0:
            return False, 0
        if self.rt_left:
            share = self.rtlimit - self.taken_rt
            if share > 0:
                return True, min(room, share, self.rt_left)
            if not self.normal_left:
                return True, min(room, self.rt_left)
        return False, min(room, self.normal_left)

    def took(self, from_rt: bool, asked: int, popped: int, delivered: int) -> None:
        """Account for a run: ``popped`` of the ``asked`` entries were there (fewer means
        the FIFO ran dry: its budget ends), ``delivered`` of them were delivered."""
        if from_rt:
            self.rt_left = self.rt_left - popped if popped == asked else 0
            self.taken_rt += delivered
        else:
            self.normal_left = self.normal_left - popped if popped == asked else 0
        self.taken += delivered


def take_batch(rt: deque[E], normal: deque[E], maxev: int, rtlimit: int,
               accept: Callable[[E, bool], bool]) -> list[tuple[E, bool]]:
    """One whole scan in :class:`ScanOrder`, entry by entry; return the accepted
    ``(entry, is_rt)`` (the simulator's scan).

    ``accept(entry, is_rt)`` is called on each popped entry and says whether it
    counts toward the batch (True: delivered) or not (False: stale, discarded, or
    moved to a tail).  If ``accept`` raises, the entry is put back at the head of its
    deque and the exception propagates.  Examines each entry present at the start at
    most once, so it never spins; with an always-True ``accept`` it returns
    ``min(maxev, len(rt) + len(normal))`` entries.
    """
    order = ScanOrder(len(rt), len(normal), maxev, rtlimit)
    out: list[tuple[E, bool]] = []
    while True:
        from_rt, n = order.next_run()
        if not n:
            return out
        dq = rt if from_rt else normal
        if not dq:
            order.took(from_rt, 1, 0, 0)
            continue
        entry = dq.popleft()
        try:
            ok = accept(entry, from_rt)
        except BaseException:
            dq.appendleft(entry)
            raise
        order.took(from_rt, 1, 1, int(ok))
        if ok:
            out.append((entry, from_rt))


# -- work stealing ----------------------------------------------------------------------------


def pick_victim(active: Sequence[K], me: KevqView, rng: Rng) -> K | None:
    """One uniform pick among ``active`` minus ``me`` (semantics §3.13); ``None`` if no
    other kevq exists.  The caller then checks the victim (available, not scanning or
    stealing, has available entries) and try-locks it; it never blocks."""
    me_i = _index(active, me)
    picks = rng.sample_distinct(len(active), 1, me_i if me_i >= 0 else None)
    return active[picks[0]] if picks else None


def steal_slice(victim_rt: deque[E], victim_normal: deque[E], k: int, factor: int,
                eligible: Callable[[E], bool]) -> tuple[list[E], int]:
    """Take up to ``k`` of the victim's oldest eligible entries (semantics §3.13, D15).

    Scans from the head of the realtime FIFO if it is non-empty, else of the normal
    FIFO (one list only), examining at most ``k * factor`` entries and stopping early
    once ``k`` are taken.  ``eligible(entry)`` decides (ACTIVE, not disabled, not
    owned, flux lock obtainable...); eligible entries are removed from the deque,
    the others stay in place and in order.  Returns ``(taken, scanned)`` with
    ``taken`` in queue order (the original reversed it); put them at the head of the
    thief's queue with :func:`insert_head` to serve them next, in order.
    """
    src = victim_rt if victim_rt else victim_normal
    limit = k * factor
    taken: list[E] = []
    kept: list[E] = []
    scanned = 0
    try:
        while len(taken) < k and scanned < limit and src:
            entry = src.popleft()
            scanned += 1
            try:
                ok = eligible(entry)
            except BaseException:
                kept.append(entry)
                raise
            (taken if ok else kept).append(entry)
    finally:
        src.extendleft(reversed(kept))
    return taken, scanned


def insert_head(dq: deque[E], entries: Sequence[E]) -> None:
    """Insert ``entries`` at the head of ``dq`` keeping their order (D15)."""
    dq.extendleft(reversed(entries))
