"""kqueue(2) in user space, with SKQ's multi-threaded event scheduling.

How it fits together
--------------------
A kqueue owns a registration table of knotes (``(ident, filter) -> Knote``), one
``Backend`` (an edge-triggered epoll set plus wake-up descriptors), a timer heap, and
one or more *kevqs* (ready queues).  In **legacy** mode (the default) there is a single
kevq shared by every thread, with stock FreeBSD semantics.  After ``set_multi(word)``
(**multi** mode) every thread that calls ``control()`` gets its own kevq, and each ready
event is *pushed* by the scheduling policy (``skqueue.sched``) to exactly one kevq.

Readiness to activation: leader/followers
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
OS readiness reaches knotes only when some thread runs ``epoll_wait`` on the backend.
We use leader/followers rather than a dedicated harvester thread:

* every ``control()`` that will scan first does a non-blocking harvest if nobody holds
  the leader lock (so activation is never starved while all workers are busy: a worker
  returning to ``control()`` harvests for everybody);
* a thread that finds its kevq empty and has to wait tries to become the *leader* and
  blocks in ``epoll_wait``; the others are *followers* and sleep on their own kevq's
  condition variable, so an activation wakes only the chosen kevq's thread;
* the leader activates what it harvests (possibly into its own kevq: then it simply
  returns with its events) and, on leaving, *promotes* one sleeping follower, so a
  sleeping thread always exists in epoll while any thread sleeps;
* waits shorter than epoll's 1 ms resolution (and work-stealing slices of
  ``ws_interval``, 100 µs) are taken as followers on the condition variable.

The rejected alternative, a harvester thread, costs every event a second thread wake-up
and a GIL hand-off even with one thread, and the single-threaded kqueue must stay
cheap (docs/design.md has the measurements).

Locking (no kqueue-wide lock on the event path)
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
* ``Knote.lock`` (flux) guards a knote's status, data and ownership; ``Kevq.lock`` guards
  its FIFOs and counters and a knote's ``queued_on`` field.  Order: knote -> kevq.  A
  scan pops under the kevq lock, drops it, then takes each knote's lock; a thief uses
  trylock on the victim.  Activation takes only the knote's and the target kevq's locks.
* ``_reg_lock`` serialises changelist processing (registration), as the kernel's kqueue
  lock does; it is never taken on activation or delivery.
* The active-kevq vector is an immutable tuple swapped under ``_active_lock``, so
  policies read it without locking.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import select
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable
from typing import Any

from ._kevent import kevent, make_event
from ._kevq import Kevq
from ._knote import Knote
from ._scan import (
    bind_core,
    bind_kqueue,
    deliver,
    event_class,
    fast_control,
    new_lock,
    requeue,
    take_batch,
)
from ._status import KN_ACTIVE, KN_DETACHED, KN_DISABLED, KN_PROCESSING, KN_SRCGONE, KN_WS
from .backend import Backend
from .backend.timers import TimerHeap
from .constants import (
    EV_ADD,
    EV_AFFINITY,
    EV_CLEAR,
    EV_DELETE,
    EV_DISABLE,
    EV_DISPATCH,
    EV_ENABLE,
    EV_ERROR,
    EV_FORCEONESHOT,
    EV_ONESHOT,
    EV_REALTIME,
    EV_RECEIPT,
    EV_SYSFLAGS,
    EVFILT_AIO,
    EVFILT_READ,
    KQ_SCHED_CPU,
    KQ_SCHED_QUEUE,
    KQTUNE_FREQ,
    KQTUNE_RTSHARE,
)
from .filters import filter_table
from .filters.fd import K_FILE, K_KQUEUE, FdWatch
from .sched import (
    Rng,
    ScanOrder,
    SchedWord,
    Topology,
    Tunables,
    batch_limits,
    choose,
    cpu_source,
    ewma,
    pick_victim,
    steal_slice,
    validate_tune,
)

log = logging.getLogger("skqueue")

_STORED_MASK = ~(EV_ADD | EV_DELETE | EV_ENABLE | EV_DISABLE | EV_FORCEONESHOT | EV_SYSFLAGS)
_INT_MAX = 2**31 - 1
_THRESHOLD_DUMP_EVERY_NS = 1_000_000_000  # automatic dumps: at most one per kevq per second

# Fork generation: a child's kqueues are dead (FreeBSD: kqueues are not inherited).  Any
# fork after which Python runs goes through PyOS_AfterFork_Child, which runs this hook,
# so control() compares a counter instead of calling getpid() each time.
_forks = [0]


def _after_fork_in_child() -> None:
    _forks[0] += 1  # (the C helper's fast_control reads it too)


os.register_at_fork(after_in_child=_after_fork_in_child)

# Process-wide registry behind kqueue.fromfd(): fd number -> live kqueue core.
_registry: weakref.WeakValueDictionary[int, KqueueCore] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


def _closed_error() -> ValueError:
    return ValueError("I/O operation on closed kqueue object")


class _ThreadSlot:
    """Lives in a kqueue's threading.local; its finaliser re-homes the thread's kevq."""

    __slots__ = ("kevq", "core", "__weakref__")

    def __init__(self, core: KqueueCore, kevq: Kevq) -> None:
        self.kevq = kevq
        self.core: weakref.ref[KqueueCore] = weakref.ref(core)

    def __del__(self) -> None:
        core = self.core()
        if core is not None and not core.closed:
            try:
                core.drain(self.kevq)
            except Exception:  # noqa: BLE001 - never raise from a finaliser
                log.exception("skqueue: re-homing the kevq of an exiting thread failed")


class _CacheKey:
    """Names one kqueue in the C helper's per-thread kevq cache without keeping it alive
    (weak-referenceable so that tests can see that the cache holds one per thread)."""

    __slots__ = ("__weakref__",)


class KqueueCore:
    """The shared state of one kqueue; ``kqueue`` objects are handles on it."""

    # What the C helper's fast_control reads (by slot offset); the rest lives in __dict__.
    __slots__ = (
        "closed", "_forks", "multi", "single", "_tls", "_tkey", "topo", "pollable", "_gone",
        "_sleepers", "event_cls", "_lazy_base", "_lazy_cls", "tfreq", "rtshare", "used",
        "active", "backend", "tunables", "_ws", "__dict__", "__weakref__",
    )  # fmt: skip

    def __init__(self, tunables: Tunables | None = None, topology: Topology | None = None) -> None:
        self.tunables = tunables if tunables is not None else Tunables()
        self.backend = Backend(new_lock)
        self.timers = TimerHeap(self.backend.timer)
        self.backend.on_timer = self._on_timer
        self.filters = filter_table()
        self.event_cls: type[kevent] = kevent
        # _scan.event_class(event_cls), cached; compat sets event_cls after __init__
        self._lazy_base: type[kevent] | None = None
        self._lazy_cls: type[kevent] = kevent
        self.knotes: dict[tuple[int, int], Knote] = {}
        self.fdwatches: dict[int, FdWatch] = {}
        self._reg_lock = threading.RLock()
        self.timer_count = 0
        self.empty_states: dict[int, Any] = {}
        self._inotify: Any = None
        self.closed = False
        self._forks = _forks[0]
        # mode
        self.used = False  # control() was called: set_multi() is refused from now on
        self.multi = False
        self.sw = SchedWord.from_word(0)
        self._ws = False  # multi and self.sw.ws
        self.rtshare = 100
        self.tfreq = 0
        # ns spent choosing kevqs: each kevq's ``sched_ns`` (under its lock, where the
        # placement is counted) plus those of exited threads, added up by dump()
        self._retired_sched_ns = 0
        self.dropped_affinity = 0  # EV_AFFINITY knotes dropped because their thread exited
        self._kevq_ids = itertools.count(1)
        self.single = Kevq(0, "shared", 0)
        self.single.active = True
        self.kevqs: list[Kevq] = [self.single]
        self.active: tuple[Kevq, ...] = ()
        self._active_lock = threading.Lock()
        self._tls = threading.local()
        self._tkey = _CacheKey()  # the C helper's per-thread kevq cache is keyed by it
        self._topology = topology
        self.topo: Topology | None = None
        self._cpu = cpu_source()
        self._seed_counter = itertools.count()
        self._orphans: list[Knote] = []
        self._orphan_lock = threading.Lock()
        self._gone: list[Knote] = []
        self._gone_lock = threading.Lock()
        self._sleepers: set[Kevq] = set()
        self._sleepers_lock = threading.Lock()
        # Idle stealing threads asleep because nothing was stealable; an enqueue onto a
        # busy thread's kevq wakes one of them (instead of every thief polling forever).
        self._thieves: set[Kevq] = set()
        # The pollable descriptor: an epoll over the backend epoll and a "pending" eventfd.
        self.outer = select.epoll()
        self.pending_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # Guards pending_fd against close(): a thread still inside control() may signal
        # after another closed the kqueue, and must never write to a descriptor number
        # the program has reused meanwhile (close sets it to -1 under this lock).
        self._fd_lock = threading.Lock()
        self.outer.register(self.backend.ep.fileno(), select.EPOLLIN)
        self.outer.register(self.pending_fd, select.EPOLLIN)
        self.pollable = False
        self.fd = self.outer.fileno()
        with _registry_lock:
            _registry[self.fd] = self

    # ------------------------------------------------------------------ helpers
    def check(self) -> None:
        if self.closed:
            raise _closed_error()
        if _forks[0] != self._forks:
            raise OSError(errno.EBADF, "kqueue is not inherited across fork()")

    def rng(self) -> Rng:
        r: Rng | None = getattr(self._tls, "rng", None)
        if r is None:
            seed = self.tunables.seed
            r = Rng(None if seed is None else seed + next(self._seed_counter))
            self._tls.rng = r
        return r

    def inotify(self) -> Any:
        if self._inotify is None:
            from .filters.vnode import Inotify

            self._inotify = Inotify(self)
        return self._inotify

    # ------------------------------------------------------------------ SKQ ioctls
    def set_multi(self, word: int) -> None:
        self.check()
        with self._reg_lock:
            if self.used or self.multi:
                raise OSError(errno.EINVAL, "set_multi() must come before the kqueue's first use")
            try:
                sw = SchedWord.from_word(word)
            except ValueError as e:
                raise OSError(errno.EINVAL, str(e)) from None
            self.sw = sw
            self._ws = bool(sw.ws)
            self.multi = True
            self.kevqs = []
            if sw.sched & (KQ_SCHED_CPU | KQ_SCHED_QUEUE):
                self.topo = self._topology if self._topology is not None else Topology.from_sysfs()

    def tune(self, word: int) -> None:
        self.check()
        try:
            obj, val = validate_tune(word, self.multi)
        except ValueError as e:
            raise OSError(errno.EINVAL, str(e)) from None
        if obj == KQTUNE_RTSHARE:
            self.rtshare = val
        elif obj == KQTUNE_FREQ:
            self.tfreq = val

    # ------------------------------------------------------------------ kevqs
    def my_kevq(self) -> Kevq:
        if not self.multi:
            return self.single
        slot: _ThreadSlot | None = getattr(self._tls, "slot", None)
        if slot is not None:
            return slot.kevq
        t = threading.current_thread()
        q = Kevq(next(self._kevq_ids), t.name, threading.get_ident())
        with self._active_lock:
            self.kevqs.append(q)
        self._tls.slot = _ThreadSlot(self, q)
        return q

    def _activate_kevq(self, q: Kevq) -> None:
        """First wait of a thread: make its kevq eligible for events (docs/semantics.md §3.7)."""
        with self._active_lock:
            if q.active or q.closing:
                return
            q.active = True
            if self.topo is not None:
                q.cpu = self._cpu()
                leaf = self.topo.leaf_of(q.cpu)
                q.leaf = leaf
                self.topo.insert(q, leaf)
            self.active = self.active + (q,)
        # D10: events that became ready while no kevq was active.  Taken after the new
        # vector is published, under the lock under which _orphan re-reads it.
        with self._orphan_lock:
            orphans, self._orphans = self._orphans, []
        for kn in orphans:
            self.activate(kn)

    def _migrate(self, q: Kevq) -> None:
        """D12: follow a thread that moved to another leaf domain."""
        topo = self.topo
        if topo is None or q.leaf is None:
            return
        cpu = self._cpu()
        if cpu == q.cpu:
            return
        q.cpu = cpu
        leaf = topo.leaf_of(cpu)
        if leaf is q.leaf:
            return
        with self._active_lock:
            if q.closing:
                return
            topo.remove(q, q.leaf)
            topo.insert(q, leaf)
            q.leaf = leaf

    def detach_thread(self) -> None:
        """Explicitly retire the calling thread's kevq, re-homing its events."""
        if not self.multi:
            return
        slot: _ThreadSlot | None = getattr(self._tls, "slot", None)
        if slot is None:
            return
        del self._tls.slot
        self.drain(slot.kevq)

    def drain(self, q: Kevq) -> None:
        """Thread exit (semantics §3.16): remove the kevq, move its events to the survivors."""
        with self._active_lock:
            if q.closing:
                return
            q.closing = True
            if q.active:
                self.active = tuple(x for x in self.active if x is not q)
                if self.topo is not None and q.leaf is not None:
                    self.topo.remove(q, q.leaf)
            if q in self.kevqs:
                self.kevqs.remove(q)
        with self._sleepers_lock:
            self._sleepers.discard(q)
            self._thieves.discard(q)
        _close_wake(q)
        # Release what it owned: level-triggered leftovers are re-scheduled elsewhere.
        owned, q.owned = q.owned, []
        for kn in owned:
            with kn.lock:
                kn.status &= ~KN_PROCESSING
                kn.owner = None
                if kn.status & KN_DETACHED:
                    continue
                qq = kn.queued_on
                if qq is not None:
                    self._unpark(qq, kn)
                elif not kn.flags & EV_CLEAR and not kn.status & KN_DISABLED:
                    self._activate_locked(kn)
        with q.lock:
            pending = q.clear()
            retired = q.sched_ns  # no placement reaches a closing kevq after this
        with self._active_lock:
            self._retired_sched_ns += retired
        for kn in pending:
            with kn.lock:
                if kn.status & KN_DETACHED:
                    continue
                if kn.flags & EV_AFFINITY and kn.origin is q:
                    self._drop_affinity(kn, q)
                    continue
                kn.status &= ~KN_WS
                self._activate_locked(kn)
        self._reap_gone()

    # ------------------------------------------------------------------ activation
    def activate(self, kn: Knote) -> None:
        """An event source saw activity on ``kn`` (any thread)."""
        with kn.lock:
            self._activate_locked(kn)

    def _activate_locked(self, kn: Knote) -> None:
        st = kn.status
        if st & KN_DETACHED:
            return
        kn.status = st | KN_ACTIVE
        if kn.queued_on is not None or st & KN_DISABLED:
            return
        if not self.multi:
            q: Kevq | None = self.single
            fallback = mismatch = False
            sched_ns = 0
        else:
            t0 = time.perf_counter_ns()
            if kn.flags & EV_AFFINITY:
                q = kn.origin
                fallback = mismatch = False
                if q is None or q.closing:
                    self._drop_affinity(kn, q)
                    return
            else:
                cpu = self._cpu() if self.topo is not None else 0
                while True:
                    active = self.active
                    p = choose(
                        self.sw,
                        kn,
                        cpu,
                        active,
                        self.topo,
                        self.rng(),
                        time.monotonic_ns(),
                        self.tunables.cache_pen_ns,
                        self.tunables.rt_idle_first,
                        self.tunables.idle_first,
                    )
                    q, fallback, mismatch = p.kevq, p.fallback, p.mismatch
                    if q is not None or self._orphan(kn, active):
                        break
                if q is None:
                    return
            sched_ns = time.perf_counter_ns() - t0
        assert q is not None
        self._enqueue(q, kn, False, fallback, mismatch, sched_ns)

    def _orphan(self, kn: Knote, seen: tuple[Kevq, ...]) -> bool:
        """No kevq could take ``kn`` (D10: no thread has waited yet): keep it for the next
        thread's first wait, unless the active vector is no longer ``seen`` (the one
        ``choose`` was given); then False, and the caller chooses again.

        The check is under ``_orphan_lock`` because ``_activate_kevq`` publishes the new
        vector first and then takes the orphans under that lock: appending after its
        take, on the strength of the old vector, would leave ``kn`` active and unqueued
        while a thread waits (until some other thread's first wait)."""
        with self._orphan_lock:
            if self.active is not seen:
                return False
            self._orphans.append(kn)
        if self.pollable:
            self._signal_pending()
        return True

    def _enqueue(
        self,
        q: Kevq,
        kn: Knote,
        head: bool,
        fallback: bool = False,
        mismatch: bool = False,
        sched_ns: int = -1,
    ) -> None:
        """Put ``kn`` on ``q`` (caller holds kn.lock) and wake q's thread.  ``sched_ns``
        >= 0: a scheduling decision (not a requeue or a steal) that took that long."""
        busy = False
        poke = False
        with q.lock:
            if q.closing:
                # Lost a race with drain(): schedule it again elsewhere.
                closing = True
            else:
                closing = False
                q.push(kn, head)
                if sched_ns >= 0:
                    q.count_placement(fallback, mismatch)
                    q.sched_ns += sched_ns
                busy = not q.nfollowers and not q.leader_waiting and not head
                poke = self._wake_locked(q)
        if closing:
            if self.multi:
                if kn.flags & EV_AFFINITY:
                    # Bound to that thread, which is exiting (it passed the caller's
                    # check just before drain() marked it): dropped, as drain drops it.
                    self._drop_affinity(kn, q)
                else:
                    self._activate_locked(kn)
            return
        if poke:
            self.backend.poke()
        elif busy and self._thieves:
            self._wake_thief(q)
        self._signal_ready(q)

    def _wake_thief(self, target: Kevq) -> None:
        """Work landed on a busy thread's kevq: wake one idle thief to come and steal."""
        with self._sleepers_lock:
            if not self._thieves:
                return
            t = self._thieves.pop()
        if t is target:
            return
        with t.lock:
            # The flag also covers a thief that registered but is not asleep yet: its
            # wait sees it and returns at once instead of sleeping out of the set.
            t.promote = True
            if t.nfollowers:
                t.cond.notify()
                return
            poke = t.leader_waiting
        if poke:
            self.backend.poke()

    def _wake_locked(self, q: Kevq) -> bool:
        """``q`` has an available entry (caller holds ``q.lock``): wake its sleeping thread.

        Returns whether the thread sleeping in epoll (the leader) must be poked, which the
        caller does after releasing the lock.  The wake-up invariant (docs/design.md):
        every change that makes an entry available calls this under the same lock under
        which a thread checks ``available()`` before it sleeps.
        """
        if q.nfollowers:
            if self.multi:
                q.cond.notify()  # SKQ: wake only the chosen kevq's thread
                return False
            # Stock kqueue wakes every sleeping waiter (wakeup(9) on the kq): each
            # rescans, so a level-triggered event reaches them all.
            q.cond.notify_all()
        return q.leader_waiting

    def _unpark(self, qq: Kevq, kn: Knote) -> None:
        """``kn`` (queued on ``qq``) stopped being owned: it is available there now."""
        with qq.lock:
            qq.unpark(kn)
            poke = self._wake_locked(qq)
        if poke:
            self.backend.poke()
        self._signal_ready(qq)

    def _signal_ready(self, q: Kevq) -> None:
        """q has an available event: make the pollable descriptors say so."""
        if self.pollable:
            self._signal_pending()
        if q.wake_fd >= 0:
            with q.lock:  # against _close_wake
                if q.wake_fd >= 0:
                    _eventfd_set(q.wake_fd)

    def unqueue(self, kn: Knote) -> None:
        """Take ``kn`` off whatever queue holds it (caller holds kn.lock)."""
        while True:
            q = kn.queued_on
            if q is None:
                return
            with q.lock:
                if kn.queued_on is not q:
                    continue
                q.remove(kn)
                return

    def _drop_affinity(self, kn: Knote, q: Kevq | None) -> None:
        """An EV_AFFINITY knote whose thread is gone (caller holds kn.lock): deleted and
        counted, on the kqueue and on that thread's kevq.  Under the gone list's lock:
        activations of different knotes (different knote locks) get here at once."""
        self.mark_gone(kn)
        with self._gone_lock:
            self.dropped_affinity += 1
            if q is not None:
                q.dropped_affinity += 1

    def mark_gone(self, kn: Knote) -> None:
        """Schedule ``kn`` for deletion outside the knote lock (caller holds kn.lock)."""
        kn.status |= KN_DETACHED
        with self._gone_lock:
            self._gone.append(kn)

    def _reap_gone(self) -> None:
        if not self._gone:
            return
        with self._gone_lock:
            gone, self._gone = self._gone, []
        with self._reg_lock:
            for kn in gone:
                self._delete_locked(kn)
                if kn.fop.gone(kn):
                    self._forget_watch(kn.hook)

    def _on_timer(self) -> None:
        self.timers.run_expired(time.monotonic_ns())

    # ------------------------------------------------------------------ descriptors
    def fd_attach(self, kn: Knote, interest: int, refuse_files: bool = False) -> None:
        fd = kn.ident
        w = self.fdwatches.get(fd)
        if w is not None and not w.check():
            self._forget_watch(w)
            w = None
        if w is None:
            try:
                st = os.fstat(fd)
            except OSError:
                raise OSError(errno.EBADF, os.strerror(errno.EBADF)) from None
            w = FdWatch(fd, st)
            with _registry_lock:
                inner = _registry.get(fd)
            if inner is not None and not inner.closed and inner.outer.fileno() == fd:
                if inner is self:
                    raise OSError(errno.EINVAL, "a kqueue cannot watch itself")
                w.kind = K_KQUEUE
                w.inner = inner
            self.fdwatches[fd] = w
        # Checked for every knote, not only the watch's first: a READ knote on a kqueue
        # must not let a WRITE one in (FreeBSD's kqueue_kqfilter: EINVAL).
        if w.kind == K_KQUEUE and kn.filter != EVFILT_READ:
            refused = "only EVFILT_READ applies to a kqueue"
        elif refuse_files and w.kind == K_FILE:
            refused = "this filter does not apply to a regular file"
        else:
            refused = ""
        if refused:
            if not w.knotes:
                del self.fdwatches[fd]
            raise OSError(errno.EINVAL, refused)
        if w.kind == K_KQUEUE and not w.knotes:
            w.inner.pollable = True
            w.inner._signal_pending_if_any()
        kn.hook = w
        w.add_knote(kn)
        if w.kind == K_FILE:
            return
        mask = w.mask | interest
        cb = self._fd_callback(w)
        if not w.registered:
            try:
                self.backend.register(fd, mask, cb)
            except PermissionError:
                # epoll refuses this kind of file: treat as always-ready like a file.
                w.kind = K_FILE
                return
            w.registered = True
        elif mask != w.mask:
            try:
                self.backend.modify(fd, mask)
            except FileNotFoundError:
                self.backend.register(fd, mask, cb)
        w.mask = mask

    def _fd_callback(self, w: FdWatch) -> Any:
        ref = weakref.ref(self)

        def cb(mask: int) -> None:
            core = ref()
            if core is not None:
                w.on_epoll(core, mask)

        return cb

    def fd_detach(self, kn: Knote) -> None:
        w: FdWatch = kn.hook
        w.knotes = tuple(k for k in w.knotes if k is not kn)
        if not w.knotes and self.fdwatches.get(w.fd) is w:
            del self.fdwatches[w.fd]
            if w.registered and not w.gone:
                self.backend.unregister(w.fd)
            w.registered = False

    def _forget_watch(self, w: FdWatch) -> None:
        """The descriptor behind ``w`` was closed or reused: drop its knotes (close(2))."""
        for kn in w.knotes:
            with kn.lock:
                kn.status |= KN_DETACHED | KN_SRCGONE
                self.unqueue(kn)
            self.knotes.pop((kn.ident, kn.filter), None)
        w.knotes = ()
        if self.fdwatches.get(w.fd) is w:
            del self.fdwatches[w.fd]
        if w.registered:
            # Only unregister if the number still names the same file; otherwise the
            # epoll entry died with the file (or belongs to a later registration).
            if w.same_file():
                self.backend.unregister(w.fd)
            else:
                self.backend.callbacks.pop(w.fd, None)
            w.registered = False

    def forget(self, fd: int) -> None:
        """The caller closed ``fd`` (or is about to): drop every knote on it."""
        self.check()
        with self._reg_lock:
            w = self.fdwatches.get(fd)
            if w is not None:
                w.gone = True
                self._forget_watch(w)
            for key in [k for k in self.knotes if k[0] == fd and self.knotes[k].fop.fd_based]:
                self._delete_locked(self.knotes[key])

    # ------------------------------------------------------------------ registration
    def register(self, kev: kevent) -> int:
        """Apply one change; return 0 or an errno (semantics §2.7)."""
        filt = kev.filter
        flags = kev.flags & ~EV_SYSFLAGS
        fop = self.filters.get(filt)
        if fop is None:
            return errno.EPERM if filt == EVFILT_AIO else errno.EINVAL
        if flags & EV_ENABLE and flags & EV_DISABLE:
            return errno.EINVAL
        ident = kev.ident
        if fop.fd_based:
            if ident < 0 or ident > _INT_MAX:
                return errno.EBADF
            try:
                os.fstat(ident)
            except OSError:
                # FreeBSD's close() already removed any knote on this descriptor.
                with self._reg_lock:
                    w = self.fdwatches.get(ident)
                    if w is not None:
                        w.gone = True
                        self._forget_watch(w)
                return errno.EBADF
        with self._reg_lock:
            if self.closed:
                # close() ran meanwhile: its sweep of the registrations is done (or
                # waits for this lock), so nothing may be added after it.
                return errno.EBADF
            kn = self.knotes.get((ident, filt))
            if kn is not None and fop.fd_based and isinstance(kn.hook, FdWatch):
                if not kn.hook.check():
                    self._forget_watch(kn.hook)
                    kn = None
            if kn is None:
                if not flags & EV_ADD:
                    return errno.ENOENT
                return self._add_new(kev, fop, flags)
            if flags & EV_DELETE:
                self._delete_locked(kn)
                return 0
            return self._modify(kn, kev, flags)

    def _add_new(self, kev: kevent, fop: Any, flags: int) -> int:
        kn = Knote(self, kev.ident, kev.filter, fop)
        kn.flags = flags & _STORED_MASK
        if fop.auto_clear:
            kn.flags |= EV_CLEAR
        if flags & EV_FORCEONESHOT:
            kn.flags |= EV_ONESHOT
        kn.sfflags = kev.fflags
        kn.sdata = kev.data
        kn.udata = kev.udata
        kn.rt = bool(flags & EV_REALTIME)
        if flags & EV_DISABLE:
            kn.status |= KN_DISABLED
        if flags & EV_AFFINITY and self.multi:
            kn.origin = self.my_kevq()  # D1: bind to the registering thread's kevq
        try:
            fop.attach(self, kn)
        except OSError as e:
            return e.errno or errno.EINVAL
        self.knotes[(kn.ident, kn.filter)] = kn
        with kn.lock:
            if flags & EV_FORCEONESHOT:
                self._activate_locked(kn)
            elif not kn.status & KN_DISABLED and fop.event(self, kn):
                self._activate_locked(kn)
        return 0

    def _modify(self, kn: Knote, kev: kevent, flags: int) -> int:
        fop = kn.fop
        with kn.lock:
            kn.udata = kev.udata
            try:
                fop.touch(self, kn, kev)
            except OSError as e:
                return e.errno or errno.EINVAL
            if flags & EV_DISABLE:
                kn.status |= KN_DISABLED
            if flags & EV_ENABLE:
                kn.status &= ~KN_DISABLED
            if flags & EV_FORCEONESHOT:
                kn.flags |= EV_ONESHOT
                self._activate_locked(kn)
                return 0
            if not kn.status & KN_DISABLED and kn.queued_on is None:
                # EV_ENABLE queues a knote that is already active (e.g. forced while
                # disabled) without asking the filter; otherwise the filter decides.
                if (flags & EV_ENABLE and kn.status & KN_ACTIVE) or fop.event(self, kn):
                    self._activate_locked(kn)
        return 0

    def _delete_locked(self, kn: Knote) -> None:
        """Remove ``kn`` and detach it from its source, once (caller holds _reg_lock)."""
        with kn.lock:
            kn.status |= KN_DETACHED
            self.unqueue(kn)
            detach = not kn.status & KN_SRCGONE
            kn.status |= KN_SRCGONE
        if self.knotes.get((kn.ident, kn.filter)) is kn:
            del self.knotes[(kn.ident, kn.filter)]
        if detach:
            try:
                kn.fop.detach(self, kn)
            except OSError:
                pass

    # ------------------------------------------------------------------ control()
    def control(
        self, changelist: Iterable[kevent] | None, max_events: int, timeout: float | None
    ) -> list[kevent]:
        self.check()
        if max_events < 0:
            raise ValueError(f"Length of eventlist must be 0 or positive, got {max_events}")
        if timeout is not None:
            if timeout < 0:
                raise ValueError(f"Timeout must be None or >= 0, got {timeout}")
            if timeout > _INT_MAX:
                timeout = None
        q = self.my_kevq()
        now = time.monotonic_ns()
        q.est.enter(now)
        self.used = True
        out: list[kevent] = []
        if changelist is not None:
            for kev in changelist:
                if not isinstance(kev, kevent):
                    raise TypeError("changelist must be an iterable of kevent objects")
                if kev.filter == 0:
                    continue
                err = self.register(kev)
                if err or kev.flags & EV_RECEIPT:
                    if len(out) < max_events:
                        out.append(
                            make_event(
                                type(kev), kev.ident, kev.filter, EV_ERROR, kev.fflags, err,
                                kev.udata,
                            )
                        )
                    elif err:
                        self._reap_gone()
                        raise OSError(err, os.strerror(err))
                    else:
                        break  # the no-slot receipt quirk: the call ends here (semantics §2.6)
            self._reap_gone()
        if out or max_events == 0:
            q.est.leave(time.monotonic_ns(), 0)
            return out
        events = self.scan(q, max_events, timeout, now)
        return events

    # ------------------------------------------------------------------ waiting
    def harvest_nowait(self) -> None:
        b = self.backend
        if b.leader.acquire(False):
            try:
                if not self.closed:
                    b.harvest(0)
            finally:
                b.leader.release()

    def _backlog_elsewhere(self, q: Kevq) -> bool:
        """Does a busy thread (not waiting) have available work a thief could take?"""
        for x in self.active:
            if x is not q and not x.closing and not x.nfollowers and not x.leader_waiting:
                if x.available() > 0:  # unlocked: a hint, re-checked by the steal
                    return True
        return False

    def _wait(self, q: Kevq, timeout: float | None, thief: bool = False) -> None:
        """Sleep until q may have work, ``timeout`` passes or the kqueue closes.

        A *thief* (an idle stealing thread that found nothing to steal) is also woken
        when work lands on a busy thread's kevq (``_wake_thief``).
        """
        if thief:
            with self._sleepers_lock:
                self._thieves.add(q)
            if self._backlog_elsewhere(q):  # raced with an enqueue: go and steal
                with self._sleepers_lock:
                    self._thieves.discard(q)
                return
        try:
            self._wait_inner(q, timeout)
        finally:
            if thief:
                with self._sleepers_lock:
                    self._thieves.discard(q)

    def _wait_inner(self, q: Kevq, timeout: float | None) -> None:
        b = self.backend
        if timeout is None or timeout >= 0.001:
            with self._sleepers_lock:
                self._sleepers.add(q)
            if b.leader.acquire(False):
                with self._sleepers_lock:
                    self._sleepers.discard(q)
                try:
                    with q.lock:
                        if q.available() > 0 or self.closed or q.promote:
                            q.promote = False
                            return
                        q.fluxwait |= q.influx > 0
                        q.leader_waiting = True
                    nt = self.timers.next_deadline()
                    if nt:
                        ahead = max(0.0, (nt - time.monotonic_ns()) / 1e9)
                        if timeout is None or ahead < timeout:
                            timeout = ahead
                    if not self.closed:
                        b.harvest(-1 if timeout is None else timeout)
                finally:
                    with q.lock:
                        q.leader_waiting = False
                    b.leader.release()
                    self._promote()
                return
        with q.lock:
            if q.available() == 0 and not q.promote and not self.closed:
                q.fluxwait |= q.influx > 0
                q.nfollowers += 1
                try:
                    q.cond.wait(timeout)
                finally:
                    q.nfollowers -= 1
            q.promote = False
        with self._sleepers_lock:
            self._sleepers.discard(q)

    def _promote(self) -> None:
        """The leader left epoll: wake one sleeping follower to take its place."""
        with self._sleepers_lock:
            if not self._sleepers:
                return
            q = next(iter(self._sleepers))
        with q.lock:
            q.promote = True
            q.cond.notify()

    # ------------------------------------------------------------------ scan
    def scan(
        self, q: Kevq, maxev: int, timeout: float | None, start_ns: int = 0
    ) -> list[kevent]:
        if not q.active:
            self._activate_kevq(q)
        elif self.topo is not None:
            self._migrate(q)
        multi = self.multi
        if multi:
            q.scanning = True  # the kernel's SCAN state: thieves leave this kevq alone
            self._release_owned(q)
        maxev, rtlimit = batch_limits(maxev, multi, self.tfreq, self.rtshare, q.est.avg_lat)
        est = q.est
        est.avg_rtlimit = ewma(est.avg_rtlimit, rtlimit)
        queued = len(q.rt) + len(q.normal)
        if queued >= self.tunables.log_threshold > 0:  # 0: off (the default)
            self._threshold_dump(q, queued)
        if timeout is None:
            deadline = None
        else:
            deadline = (start_ns or time.monotonic_ns()) + int(timeout * 1e9)
        ws = self._ws
        ws_slice = self.tunables.ws_interval_ns / 1e9 if ws else 0.0
        out: list[kevent] = []
        while True:
            if self.closed:
                raise OSError(errno.EBADF, "kqueue closed while waiting")
            self.harvest_nowait()
            if multi and rtlimit and not q.rt and self.tunables.rt_steal:
                self._steal_rt(q)
            q.scanning = multi
            self._collect(q, maxev, rtlimit, out)
            q.scanning = False
            if out:
                break
            if ws:
                self._steal(q)
                if q.available() > 0:
                    continue
            if deadline is None:
                remaining: float | None = None
            else:
                remaining = (deadline - time.monotonic_ns()) / 1e9
                if remaining <= 0:
                    break
            thief = False
            if ws and (remaining is None or remaining > ws_slice):
                if self._backlog_elsewhere(q):
                    remaining = ws_slice  # retry stealing every ws_interval (semantics §3.13)
                else:
                    thief = True  # nothing to steal: sleep until work appears somewhere
            self._wait(q, remaining, thief)
        # Keep the invariant "while any thread sleeps, one sleeping thread is in epoll":
        # a promoted follower that found work of its own returns without taking the
        # leader role, so the thread leaving here hands the role on if it is vacant.
        if self._sleepers and not self.backend.leader.locked():
            self._promote()
        now = time.monotonic_ns()
        q.est.leave(now, len(out))
        q.total_syscall += 1
        q.total_events += len(out)
        if self._gone:
            self._reap_gone()
        if self.pollable:
            self._settle_pending()
        if q.wake_fd >= 0:
            self._settle_wake(q)
        return out

    def _settle_wake(self, q: Kevq) -> None:
        """After a scan: make ``q``'s thread_fileno() unreadable if nothing is left."""
        with q.lock:  # an enqueue signals after its push, under this lock too
            if q.wake_fd >= 0 and q.available() <= 0:
                _eventfd_clear(q.wake_fd)

    def _threshold_dump(self, q: Kevq, queued: int) -> None:
        """SKQ's automatic dump (a kevq holding >= log_threshold knotes), a diagnostic
        switched on by the ``log_threshold`` tunable (off by default: stock kqueue prints
        nothing, and thousands of ready connections are normal for a server).  At most
        once per second per kevq: the original printed it on every scan, which floods
        the log and costs a whole dump per call exactly when the server is busiest."""
        now = time.monotonic_ns()
        if q.last_log_ns and now - q.last_log_ns < _THRESHOLD_DUMP_EVERY_NS:
            q.log_suppressed += 1
            return
        suppressed, q.log_suppressed, q.last_log_ns = q.log_suppressed, 0, now
        log.warning(
            "skqueue: kevq %s holds %d knotes (>= log_threshold %d; %d more such scans "
            "since the last dump): %s",
            q.thread_name, queued, self.tunables.log_threshold, suppressed, self.dump(),
        )

    def _release_owned(self, q: Kevq) -> None:
        owned = q.owned
        if not owned:
            return
        q.owned = []
        requeue: list[Knote] = []
        for kn in owned:
            with kn.lock:
                if kn.owner is q:
                    kn.status &= ~KN_PROCESSING
                    kn.owner = None
                if kn.status & (KN_DETACHED | KN_PROCESSING):
                    continue
                qq = kn.queued_on
                if qq is not None:
                    if qq is not q:
                        self._unpark(qq, kn)
                    continue
                if not kn.flags & EV_CLEAR and not kn.status & KN_DISABLED:
                    requeue.append(kn)
        # Level-triggered leftovers go back to the head of *this* queue, in order.
        for kn in reversed(requeue):
            with kn.lock:
                if kn.queued_on is None and not kn.status & (KN_DETACHED | KN_PROCESSING):
                    self._enqueue(q, kn, True)

    def _collect(self, q: Kevq, maxev: int, rtlimit: int, out: list[kevent]) -> None:
        """Dequeue up to ``maxev`` deliverable events from q into ``out`` (semantics §3.9).

        Only entries queued when the scan starts are considered (the kernel's end
        markers).  Work-conserving order (D7): realtime entries until ``rtlimit`` of them
        were delivered, then normal ones, then realtime ones again while slots remain.
        Entries are popped in batches under the kevq lock and checked under their own
        knote lock; requeued ones are *claimed* (``queued_on`` set under the knote lock)
        and appended in one batch at the end, behind the markers.  The C helper's
        ``fast_control`` does the same (``_speedups.c``, collect), calling
        :meth:`_scan_knote` for the knotes its own loop does not take.
        """
        lock = q.lock
        with lock:
            n_rt = len(q.rt)
            n_normal = len(q.normal)
        if n_rt + n_normal == 0:
            return
        multi = self.multi
        cls = self.event_cls
        if deliver is None:
            lazy_cls = cls
        else:
            if self._lazy_base is not cls:
                self._lazy_cls = event_class(cls)
                self._lazy_base = cls
            lazy_cls = self._lazy_cls
        owned = q.owned
        requeue_rt: list[Knote] = []
        requeue_norm: list[Knote] = []
        scan_knote = self._scan_knote
        popped = 0  # legacy: entries this scan took out of the shared kevq (in flux)
        # The scan order (D7) is sched's: realtime up to rtlimit, normal, realtime again.
        order = ScanOrder(n_rt, n_normal, maxev - len(out), rtlimit)
        while True:
            from_rt, want = order.next_run()
            if not want:
                break
            with lock:
                batch, parked = take_batch(q.rt if from_rt else q.normal, want, q)
                q.nparked -= parked
                if not multi:
                    q.influx += len(batch)
                    popped += len(batch)
            before_run = len(out)
            if deliver is None:
                for kn in batch:
                    scan_knote(kn, q, cls, out, requeue_rt, requeue_norm, owned, multi)
            else:
                i = 0
                nb = len(batch)
                while i < nb:
                    # Plain READ knotes in one C call (a run of them shares one poll(2)),
                    # up to the first knote that needs the filter's path.
                    i = deliver(batch, i, lazy_cls, q, out, requeue_rt, requeue_norm, owned, multi)
                    if i < nb:
                        scan_knote(batch[i], q, cls, out, requeue_rt, requeue_norm, owned, multi)
                        i += 1
            order.took(from_rt, want, len(batch), len(out) - before_run)
        if order.taken_rt:
            q.total_realtime += order.taken_rt
        if requeue_rt or requeue_norm or popped:
            with lock:
                q.nparked += requeue(q.rt, requeue_rt, q) + requeue(q.normal, requeue_norm, q)
                poke = False
                if popped:
                    # Legacy: a waiter that found only entries in flux (popped by this
                    # scan) sleeps until they are settled, as FreeBSD's KQ_FLUXWAIT.
                    q.influx -= popped
                    if q.fluxwait:
                        q.fluxwait = False
                        poke = self._wake_locked(q)
            if poke:
                self.backend.poke()

    def _scan_knote(
        self, kn: Knote, q: Kevq, cls: type[kevent], out: list[kevent],
        requeue_rt: list[Knote], requeue_norm: list[Knote], owned: list[Knote], multi: bool,
    ) -> None:
        """One popped knote of a scan of ``q``: re-check it under its lock, append its
        event to ``out`` and settle it (requeue claimed for the tail, owned, or gone).
        The C scan calls this for every knote its own loop does not take."""
        with kn.lock:
            if kn.queued_on is not None:
                # Queued again since the pop (an activation found it unqueued): that
                # entry stands for it, this one is void.
                return
            st = kn.status
            if st & (KN_DETACHED | KN_DISABLED):
                kn.status = st & ~KN_WS
                return
            if st & KN_PROCESSING and kn.owner is not q:
                # Another thread still owns it: behind the marker it goes.
                kn.queued_on = q
                (requeue_rt if kn.rt else requeue_norm).append(kn)
                return
            kn.status = st & ~KN_WS
            fop = kn.fop
            # A filter's own hot path first (READ: identity and FIONREAD in one call),
            # then the general re-check and copy-out.
            ev = fop.scan_event(self, kn, cls) if kn.fast else None
            if ev is False:
                return  # stale: the filter cleared KN_ACTIVE
            if ev is None:
                if not fop.event(self, kn):
                    # ONESHOT is delivered without a re-check (FreeBSD), unless its
                    # source vanished behind our back.
                    gone = fop.gone(kn)
                    if gone:
                        self.mark_gone(kn)
                    if gone or not kn.flags & EV_ONESHOT:
                        kn.status &= ~KN_ACTIVE
                        return
                fflags, data = fop.copyout(self, kn)
                ev = make_event(cls, kn.ident, kn.filter, kn.flags, fflags, data, kn.udata)
            out.append(ev)
            kn.turns += 1
            flags = kn.flags
            if flags & EV_ONESHOT:
                self.mark_gone(kn)
                return
            if flags & (EV_CLEAR | EV_DISPATCH):
                if flags & EV_CLEAR:
                    kn.data = 0
                    kn.fflags = 0
                if flags & EV_DISPATCH:
                    kn.status |= KN_DISABLED
                kn.status &= ~KN_ACTIVE
                if multi:
                    kn.status |= KN_PROCESSING
                    kn.owner = q
                    owned.append(kn)
            elif multi:
                kn.status |= KN_PROCESSING
                kn.owner = q
                owned.append(kn)
            else:
                # Stock FreeBSD (D14): straight back to the tail.
                kn.queued_on = q
                (requeue_rt if kn.rt else requeue_norm).append(kn)

    def _steal_rt(self, q: Kevq) -> None:
        """Take the oldest available realtime event waiting on a busy thread's kevq.

        A skqueue extension (``Tunables.rt_steal``): push scheduling parks a realtime
        event on one kevq; if that thread is deep in a long request, the event would
        wait for it even though another thread is back first.  Idle threads are left
        alone (they are being woken for their own queue) and the victim lock is only
        tried, never waited for.
        """
        for victim in self.active:
            if victim is q or not victim.rt or victim.closing or victim.scanning:
                continue
            if victim.nfollowers or victim.leader_waiting:
                continue  # its thread is waking up for it anyway
            taken, _ = self._take(q, victim, 1, rt_only=True)
            if taken:
                return

    def _steal(self, q: Kevq) -> None:
        """Work stealing (semantics §3.13): take up to fargs knotes from one random victim."""
        victim = pick_victim(self.active, q, self.rng())
        if victim is None or victim.closing or victim.scanning:
            return
        _, scanned = self._take(q, victim, self.sw.fargs, rt_only=False)
        q.total_worksteal_scan += scanned

    def _take(self, q: Kevq, victim: Kevq, k: int, rt_only: bool) -> tuple[int, int]:
        """Move up to ``k`` of the victim's oldest stealable knotes to the head of q.

        The victim's lock is only tried.  The knotes keep their order (D15) and are
        counted in ``q.total_worksteal``.  Returns (knotes taken from the victim,
        entries examined); a taken knote that was deleted or re-queued meanwhile is
        left alone.
        """
        if not victim.lock.acquire(blocking=False):
            return 0, 0
        try:
            taken, scanned = steal_slice(
                victim.rt,
                _EMPTY_DEQUE if rt_only else victim.normal,
                k,
                self.tunables.ws_kn_factor,
                _stealable,
            )
            victim.detach_taken(taken)
        finally:
            victim.lock.release()
        got = 0
        for kn in reversed(taken):
            with kn.lock:
                if kn.queued_on is not None or kn.status & KN_DETACHED:
                    continue
                kn.status |= KN_WS
                self._enqueue(q, kn, True)
                got += 1
        q.total_worksteal += got
        return len(taken), scanned

    # ------------------------------------------------------------------ pollability
    def pending_count(self) -> int:
        """Events deliverable now, over every kevq (kqueue-in-kqueue ``data``, D9)."""
        if self.closed:
            return 0
        self.harvest_nowait()
        return self._available_total()

    def _available_total(self) -> int:
        n = len(self._orphans)  # ready, waiting for a thread to wait (D10)
        for q in list(self.kevqs):
            with q.lock:
                n += max(0, q.available())
        return n

    def _signal_pending(self) -> None:
        with self._fd_lock:
            if self.pending_fd >= 0:
                _eventfd_set(self.pending_fd)

    def _signal_pending_if_any(self) -> None:
        if self.pending_count():
            self._signal_pending()

    def _settle_pending(self) -> None:
        """After a scan: make the pending descriptor unreadable if nothing is left.

        Clear first, then look: an enqueue racing with us either lands before the
        look (and we set it again) or signals after the clear itself.
        """
        if self._available_total() == 0:
            with self._fd_lock:
                if self.pending_fd >= 0:
                    _eventfd_clear(self.pending_fd)
            if self._available_total():
                self._signal_pending()

    def thread_fileno(self) -> int:
        """D8: a descriptor readable iff the calling thread's kevq has events for it.

        In legacy mode this is the kqueue-wide ``fileno()``.  In multi mode it is an
        eventfd owned by the calling thread's kevq (created, and the kevq with it, on the
        first call), so a thread can multiplex its own share of the kqueue with other
        descriptors.  Like ``fileno()``, it may report ready spuriously after a racing
        scan; a following ``control(..., timeout=0)`` tells.
        """
        self.check()
        if not self.multi:
            return self.fileno()
        q = self.my_kevq()
        if q.wake_ep is None:
            ep = select.epoll()
            q.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            ep.register(q.wake_fd, select.EPOLLIN)
            # Unharvested OS readiness also makes it readable (it may be for this thread;
            # control(timeout=0) harvests and tells), exactly as fileno() does.
            ep.register(self.backend.ep.fileno(), select.EPOLLIN)
            q.wake_ep = ep
            with q.lock:
                if q.available() > 0:
                    _eventfd_set(q.wake_fd)
        fd: int = q.wake_ep.fileno()
        return fd

    def fileno(self) -> int:
        self.check()
        if not self.pollable:
            self.pollable = True
            self._signal_pending_if_any()
        return self.fd

    # ------------------------------------------------------------------ dump / close
    def dump(self) -> dict[str, Any]:
        now = time.monotonic_ns()
        sw = self.sw
        d: dict[str, Any] = {
            "ptr": f"{id(self):#x}",
            "multi": self.multi,
            "sched": f"{sw.sched:#x}",
            "sargs": f"{sw.sargs:#x}",
            "feat": f"{sw.feat:#x}",
            "fargs": f"{sw.fargs:#x}",
            "policy": sw.label if self.multi else "legacy",
            "rtshare": self.rtshare,
            "tfreq": self.tfreq,
            "total_sched_time": self._retired_sched_ns + sum(q.sched_ns for q in list(self.kevqs)),
            "dropped_affinity": self.dropped_affinity,
            "cache_pen": self.tunables.cache_pen_ns,
            "ws_interval": self.tunables.ws_interval_ns,
            "ws_kn_factor": self.tunables.ws_kn_factor,
            "log_threshold": self.tunables.log_threshold,
            "knotes": len(self.knotes),
            "orphans": len(self._orphans),
            "kevqs": [q.dump(now) for q in list(self.kevqs)],
        }
        if self.topo is not None:
            d["kqdom"] = self.topo.to_dict(lambda q: f"{getattr(q, 'id', 0):#x}")
        return d

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with _registry_lock:
            if _registry.get(self.fd) is self:
                del _registry[self.fd]
        # Wake every waiter: followers through their condition, the leader through epoll.
        for q in list(self.kevqs) + [self.single]:
            with q.lock:
                q.cond.notify_all()
        self.backend.poke()
        got = self.backend.leader.acquire(timeout=5)
        try:
            with self._reg_lock:
                for kn in list(self.knotes.values()):
                    try:
                        self._delete_locked(kn)
                    except Exception:  # noqa: BLE001 - close must finish
                        log.debug("skqueue: detaching %r at close failed", kn, exc_info=True)
            if self._inotify is not None:
                self._inotify.close()
            for q in list(self.kevqs):
                _close_wake(q)
            self.backend.close()
            self.outer.close()
            with self._fd_lock:
                os.close(self.pending_fd)
                self.pending_fd = -1
        finally:
            if got:
                self.backend.leader.release()


_EMPTY_DEQUE: deque[Knote] = deque()


def _close_wake(q: Kevq) -> None:
    """Close the thread's pollable descriptor (D8) and its eventfd, under q's lock so a
    late signal from another thread cannot write to the number once it is reused."""
    with q.lock:
        if q.wake_ep is not None:
            q.wake_ep.close()
            q.wake_ep = None
        if q.wake_fd >= 0:
            os.close(q.wake_fd)
            q.wake_fd = -1


def _eventfd_set(fd: int) -> None:
    try:
        os.eventfd_write(fd, 1)
    except OSError:
        pass


def _eventfd_clear(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except OSError:
        pass


def _stealable(kn: Knote) -> bool:
    st = kn.status
    if kn.flags & EV_AFFINITY:
        return False  # hard affinity: only the bound thread may ever get it
    if kn.parked:
        return False  # its owner's next control() makes it available where it is
    return bool(st & KN_ACTIVE) and not st & (KN_DISABLED | KN_WS | KN_PROCESSING | KN_DETACHED)


# The C helper's fast_control reads these classes' slots.
bind_core(KqueueCore, Kevq, Backend, _ThreadSlot, Tunables, _forks)


def lookup(fd: int) -> KqueueCore | None:
    with _registry_lock:
        return _registry.get(fd)


class kqueue:  # noqa: N801 - mirrors select.kqueue
    """A kqueue: ``kqueue()`` creates one; ``kqueue.fromfd(fd)`` is a handle on a live one.

    ``control(changelist, max_events, timeout=None)`` applies the changes, then waits up to
    ``timeout`` seconds (None: forever; 0: poll) for at most ``max_events`` events.
    Keyword-only ``tunables`` and ``topology`` configure SKQ (defaults are SKQ's).
    """

    __slots__ = ("_core", "__weakref__")

    def __init__(
        self, *, tunables: Tunables | None = None, topology: Topology | None = None
    ) -> None:
        self._core: KqueueCore | None = KqueueCore(tunables, topology)

    @classmethod
    def fromfd(cls, fd: int) -> kqueue:
        """A new handle on the live kqueue whose ``fileno()`` is ``fd``."""
        core = lookup(fd)
        if core is None or core.closed:
            raise OSError(errno.EBADF, f"{fd} is not the descriptor of a live skqueue kqueue")
        h = cls.__new__(cls)
        h._core = core
        return h

    def _live(self) -> KqueueCore:
        core = self._core
        if core is None or core.closed:
            raise _closed_error()
        return core

    @property
    def closed(self) -> bool:
        return self._core is None or self._core.closed

    def close(self) -> None:
        """Close the kqueue; threads blocked in control() end with OSError(EBADF)."""
        core = self._core
        if core is not None:
            core.close()

    def fileno(self) -> int:
        """A descriptor that polls readable exactly when events are pending."""
        return self._live().fileno()

    def thread_fileno(self) -> int:
        """Multi mode: a descriptor readable iff the calling thread has events (D8)."""
        return self._live().thread_fileno()

    def control(
        self,
        changelist: Iterable[kevent] | None,
        max_events: int,
        timeout: float | None = None,
    ) -> list[kevent]:
        """Apply ``changelist``, then return up to ``max_events`` pending events."""
        core = self._core
        if fast_control is not None and core is not None and (
            changelist is None or (changelist.__class__ is list and not changelist)
        ):
            # The C helper takes the common call whole (no changes, events at once);
            # None: something it leaves to the Python path below (which it mirrors).
            evs: list[kevent] | None = fast_control(core, max_events, timeout)
            if evs is not None:
                return evs
        return self._live().control(changelist, max_events, timeout)

    # (With the C helper, bind_kqueue below puts a C method here that does the same.)

    # -- descriptors -------------------------------------------------------------
    def forget(self, fd: int) -> None:
        """Tell the kqueue that ``fd`` was closed: drop every knote on it (close(2))."""
        self._live().forget(fd)

    # -- SKQ ------------------------------------------------------------------
    def set_multi(self, word: int) -> None:
        """Switch to multi mode with a KQSCHED_MAKE word; only before first use."""
        self._live().set_multi(word)

    def tune(self, word: int) -> None:
        """Apply a KQTUNE_MAKE word (KQTUNE_RTSHARE 0..100, KQTUNE_FREQ 0..65535)."""
        self._live().tune(word)

    def dump(self) -> dict[str, Any]:
        """The FKQMPRNT state dump as a JSON-serialisable dict."""
        return self._live().dump()

    def detach(self) -> None:
        """Retire the calling thread's kevq now (also done automatically at thread exit)."""
        self._live().detach_thread()

    @property
    def multi(self) -> bool:
        return self._live().multi

    @property
    def tunables(self) -> Tunables:
        return self._live().tunables

    def __enter__(self) -> kqueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<skqueue.kqueue closed>"
        core = self._live()
        mode = core.sw.label if core.multi else "legacy"
        return f"<skqueue.kqueue fd={core.fd} mode={mode} knotes={len(core.knotes)}>"


# The C helper runs kqueue.control itself (the method above, minus its Python frame).
bind_kqueue(kqueue, globals())
