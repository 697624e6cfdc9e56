"""The simulated server: cores, worker threads, kevqs, connections and a load generator.

What is modelled
----------------
*Machine.*  ``cores`` cores in ``sockets`` sockets with ``smt`` hardware threads each,
described by the real :class:`skqueue.sched.Topology` (leaves = cores, as docs/semantics.md §3.15).
Worker thread *i* is pinned to core ``i mod cores`` (``ppd -a``); a core runs one thread at
a time.  A thread keeps its core until it blocks in ``kevent()``, or, when another thread
of the same core is runnable, until its next ``kevent()`` after ``quantum_ns``.

*Connections and load.*  Each connection is one knote (a level-triggered ``EV_ADD`` read
event, as ``ppd`` registers them) and is hashed once to a receive CPU (RSS).  The load
generator is open loop with depth 1, like ``dismember`` (semantics §6.5): connection *c*
has an intended send schedule ``next += gap()``; a request is sent at its intended time,
or at once when the previous reply arrives late; latency runs from the *intended* send
time to the reply (so overload shows up, no coordinated omission).

*Activation.*  A request's arrival activates its knote on the receive CPU after
``activate_ns`` (+ ``sched_ns`` for SKQ policies).  Then the policy places it: every SKQ
label goes through the real :func:`skqueue.sched.choose` (the activating CPU is the RSS
CPU); ``vanilla`` uses the thread the connection was assigned to round-robin at accept;
``shared``/``legacy`` use the single queue.  Placing on a kevq whose thread sleeps wakes
that thread (it runs again ``wakeup_ns`` later).  With ``harvest`` (SKQ policies), the
activation is the Python runtime's instead: while no thread sleeps (none is in epoll), an
arrival waits until a thread starts a scan or goes to sleep, which harvests every waiting
arrival and places each with ``choose`` then.

*The worker loop* mimics one ``control()`` call (semantics §3.9-§3.14):
estimator ``enter``; release of the knotes owned since the previous call (a knote
re-activated while owned becomes available where it was queued, waking that kevq's
thread; a level-triggered knote with data left goes back to the head of this kevq);
:func:`batch_limits`; then RETRY: steal (``pick_victim`` + ``steal_slice``) when nothing is
available, sleep when still nothing (with stealing: in ``ws_interval_ns`` slices, stealing
again after each); else :func:`take_batch` (owned entries are moved behind the marker,
i.e. to the tail) and estimator ``leave``.  The batch is then processed in order: each
event costs its service time plus ``cache_miss_ns`` when its connection was last served
on another leaf; the reply is sent at the end of each event.  The next ``kevent()`` call
follows the batch.

*Off-core service* (``service_on_core=False``, the Python runtime's sleep service): each
event of the batch costs ``event_cpu_ns / 2`` on the core, then the thread gives the core up
for the service time (+ ``sleep_extra_ns``), then waits for the core again, spends the other
half of ``event_cpu_ns`` and sends the reply.  With ``gil=True`` all threads share one
execution resource (the GIL), whatever ``cores`` says about the topology.

*Baselines.*  ``vanilla``: one stock kqueue per thread, no ownership, no stealing.
``shared``: one FCFS queue served by every thread, free of any lock or herd cost (with
zero overheads it is an exact M/M/c-style queue).  ``legacy``: the stock shared kqueue of
semantics §1.2(b): every activation and every scan serialise on one kqueue lock (a FIFO
resource held for ``activate_ns`` per activation and for the scan's cost per scan), each
delivered event is disabled (``EV_DISPATCH``) until its thread re-arms it with
``EV_ENABLE`` in its next call (``rearm_ns`` each, under the lock), and an activation
wakes every sleeping thread (thundering herd).

Time bookkeeping and simplifications (documented, deliberate)
------------------------------------------------------------
- A batch is decided when the scan starts and its events' completion times are computed
  at once; this is exact because nothing outside can change an owned event's service.
  The events' replies are scheduled as the next arrivals of their connections.
- Activation and policy costs delay the enqueue but do not steal CPU time from the
  thread running on the receive CPU (interrupt time is not modelled).
- ``legacy``: the scan takes its decision when it is entered, then waits for the lock;
  a wakeup that finds nothing costs a lock hold of ``kevent_ns``.
- ``vanilla``: a delivered level-triggered knote is not re-appended at once as stock
  kqueue does (that only inserts a stale entry that the next scan drops); it is queued
  when its next request arrives.
- The brief's requeue rule ("a connection with another request already arrived while
  owned goes back to the same thread's head on release") is implemented as semantics §3.10
  states it: a knote re-activated while owned was placed by the policy and becomes
  available there on release; only a knote left *unqueued* with data goes back to the
  head of its owner's kevq.  With depth-1 connections the second case does not arise.

Everything is integer nanoseconds and seeded: a run is a pure function of its config.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any

from skqueue.load.dist import Exponential, parse_interarrival
from skqueue.sched import (
    Domain,
    KevqCounters,
    Rng,
    SchedWord,
    Topology,
    batch_limits,
    choose,
    insert_head,
    parse_sched,
    pick_victim,
    steal_slice,
    take_batch,
)

from .config import BASELINES, SimConfig
from .engine import Engine
from .workload import SimWorkload, make_workload

__all__ = ["Conn", "SimKevq", "Worker", "Core", "Server"]


class Conn:
    """One client connection = one knote on the server."""

    __slots__ = ("id", "dom", "rss_cpu", "svc_ns", "rt", "queued_on", "owner", "ws",
                 "disabled", "pending", "intended", "next_intended", "last_leaf", "home",
                 "probe")

    def __init__(self, cid: int, rss_cpu: int, svc_ns: int, rt: bool,
                 probe: bool = False) -> None:
        self.id = cid
        #: QUEUE policy: the domain remembered at the first activation (set by choose()).
        self.dom: Domain | None = None
        self.rss_cpu = rss_cpu
        #: Constant service time, or -1 when drawn per request.
        self.svc_ns = svc_ns
        #: Registered EV_REALTIME.
        self.rt = rt
        #: A probe connection (GETs only; its latencies are also recorded apart).
        self.probe = probe
        #: The kevq it is queued on (QUEUED), or None.
        self.queued_on: SimKevq | None = None
        #: The kevq owning it while processing (PROCESSING), or None.
        self.owner: SimKevq | None = None
        #: Stolen, not yet delivered (WS).
        self.ws = False
        #: legacy: disabled by EV_DISPATCH until re-armed.
        self.disabled = False
        #: A request is readable (the filter would report data).
        self.pending = False
        #: Intended send time of the current request and of the next one.
        self.intended = 0
        self.next_intended = 0
        #: Leaf id where it was last served (-1: never).
        self.last_leaf = -1
        #: vanilla: the kevq it was assigned to at accept; shared: the one queue.
        self.home: SimKevq | None = None

    def taken(self, q: SimKevq, is_rt: bool) -> None:
        """A scan of ``q`` took it: off the queue, no longer stolen, its request read."""
        self.queued_on = None
        self.ws = False
        self.pending = False
        if is_rt:
            q.total_realtime += 1


class SimKevq(KevqCounters):
    """A per-thread (or, for the shared baselines, the single) kevq with its counters."""

    __slots__ = ("idx", "total_queued", "closing", "leaf", "leaf_id", "rt", "normal",
                 "owned", "owned_count", "sleepers",
                 "total_cache_misses", "total_sleeps", "total_wakeups")

    def __init__(self, idx: int, leaf: Domain | None) -> None:
        super().__init__()
        self.idx = idx
        #: rt + normal entries, including owned-but-queued ones.
        self.total_queued = 0
        self.closing = False
        self.leaf = leaf
        self.leaf_id = leaf.id if leaf is not None else -1
        self.rt: deque[Conn] = deque()
        self.normal: deque[Conn] = deque()
        self.owned: list[Conn] = []
        #: Entries queued here but owned (PROCESSING) by some kevq: not available.
        self.owned_count = 0
        self.sleepers: deque[Worker] = deque()
        self.total_cache_misses = 0
        self.total_sleeps = 0
        self.total_wakeups = 0

    def dump(self) -> dict[str, int]:
        """Counters under the semantics §3.4 ``<kevq>`` names (plus simulator extras)."""
        return {
            "ptr": self.idx,
            "knotes": len(self.normal),
            "rt_knotes": len(self.rt),
            **self.counter_dump(),
            "total_cache_misses": self.total_cache_misses,
            "total_sleeps": self.total_sleeps,
            "total_wakeups": self.total_wakeups,
        }


class Worker:
    """A worker thread pinned to one core."""

    __slots__ = ("idx", "core", "kevq", "leaf_id", "sleeping", "gen", "slice_start",
                 "resume", "maxev", "rtlimit", "rearm", "active", "batch", "bi", "svc")

    def __init__(self, idx: int, core: Core, kevq: SimKevq, leaf_id: int) -> None:
        self.idx = idx
        self.core = core
        self.kevq = kevq
        self.leaf_id = leaf_id
        self.sleeping = False
        #: Generation counter: invalidates pending stealing-slice timers.
        self.gen = 0
        self.slice_start = 0
        #: What to run when the thread gets its core back.
        self.resume: Callable[[Worker], None] | None = None
        self.maxev = 1
        self.rtlimit = 1
        #: legacy: knotes delivered by the last call, to re-arm in the next one.
        self.rearm: list[Conn] = []
        self.active = False
        #: Off-core service: the batch being processed, its next index, the current service.
        self.batch: list[Conn] = []
        self.bi = 0
        self.svc = 0


class Core:
    """One core: at most one running thread, the others wait in ``runq``."""

    __slots__ = ("idx", "running", "runq")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.running: Worker | None = None
        self.runq: deque[Worker] = deque()


class Server:
    """One simulation: build with a :class:`SimConfig`, call :meth:`run`, read the stats."""

    def __init__(self, cfg: SimConfig, workload: SimWorkload | None = None) -> None:
        self.cfg = cfg
        self.eng = Engine()
        master = random.Random(cfg.seed)
        self.arr_rng = random.Random(master.getrandbits(64))
        self.svc_rng = random.Random(master.getrandbits(64))
        self.rng = Rng(master.getrandbits(64))
        setup_rng = random.Random(master.getrandbits(64))

        policy = cfg.policy.strip().lower()
        if policy in BASELINES:
            self.mode = policy
            self.sw: SchedWord | None = None
        else:
            self.mode = "skq"
            self.sw = SchedWord.from_word(parse_sched(policy))
        self.multi = self.mode == "skq"
        self.ws = self.sw is not None and self.sw.ws
        self.fargs = self.sw.fargs if self.sw is not None else 0
        self.herd = self.mode == "legacy"

        self.topo = Topology.synthetic(cfg.sockets, cfg.cores // cfg.sockets, cfg.smt)
        self.ncpu = self.topo.ncpu
        self.cores = [Core(i) for i in range(1 if cfg.gil else cfg.cores)]
        self.kevqs: list[SimKevq] = []
        self.workers: list[Worker] = []
        shared: SimKevq | None = None
        if self.mode in ("shared", "legacy"):
            shared = SimKevq(0, None)
            self.kevqs.append(shared)
        for i in range(cfg.threads):
            core = self.cores[0 if cfg.gil else i % cfg.cores]
            leaf = self.topo.leaf_of((i % cfg.cores) * cfg.smt)
            if shared is None:
                q = SimKevq(i, leaf)
                self.kevqs.append(q)
            else:
                q = shared
            self.workers.append(Worker(i, core, q, leaf.id))
        self.shared = shared
        #: The active-kevq vector (semantics §3.6), in activation order.
        self.active: list[SimKevq] = []
        self.orphans: list[Conn] = []
        #: harvest mode: arrivals waiting in "epoll" while no thread sleeps, and how many
        #: threads sleep (one of them would be the leader in epoll_wait).
        self.harvest = cfg.harvest and self.mode == "skq"
        self.epoll: list[Conn] = []
        self.n_sleeping = 0
        self.total_deferred = 0

        self.wl = workload if workload is not None else make_workload(cfg.workload)
        self.conns: list[Conn] = []
        first_probe = cfg.connections - cfg.probe_conns
        probe_ns = self.wl.probe_ns() if cfg.probe_conns else 0
        for c in range(cfg.connections):
            probe = c >= first_probe
            conn = Conn(c, setup_rng.randrange(self.ncpu),
                        probe_ns if probe else self.wl.fixed_ns(c), c < cfg.realtime_conns,
                        probe)
            if self.mode == "vanilla":
                conn.home = self.kevqs[c % cfg.threads]
            elif self.mode == "shared":
                conn.home = shared
            self.conns.append(conn)

        self.mean_service_ns = self.wl.mean_ns(cfg.connections)
        if cfg.probe_conns:  # the probes' GETs are part of the offered work
            n, k = cfg.connections, cfg.probe_conns
            self.mean_service_ns = (self.mean_service_ns * (n - k) + probe_ns * k) / n
        self._on_core = cfg.service_on_core
        if cfg.service_on_core:
            # a request holds a core for its service (+ handler CPU)
            per_req = self.mean_service_ns + cfg.event_cpu_ns
            servers = min(cfg.threads, cfg.cores)
            self.capacity_qps = servers * 1e9 / per_req if per_req > 0 else float("inf")
        else:
            # a request holds a thread for service + overshoot + CPU, and a core for the CPU
            per_req = self.mean_service_ns + cfg.sleep_extra_ns + cfg.event_cpu_ns
            by_threads = cfg.threads * 1e9 / per_req if per_req > 0 else float("inf")
            execs = 1 if cfg.gil else min(cfg.threads, cfg.cores)
            by_cpu = execs * 1e9 / cfg.event_cpu_ns if cfg.event_cpu_ns > 0 else float("inf")
            self.capacity_qps = min(by_threads, by_cpu)
        self.offered_qps = float(cfg.qps) if cfg.qps is not None else cfg.load * self.capacity_qps
        if not 0 < self.offered_qps < float("inf"):
            raise ValueError("offered load must be finite and > 0 (zero-cost workload "
                             "with a load fraction? give qps instead)")
        per_conn = self.offered_qps / cfg.connections
        self._gap = parse_interarrival(cfg.interarrival, per_conn)
        self._mean_gap_ns = 1e9 / per_conn

        self.act_delay = cfg.activate_ns + (cfg.sched_ns if self.multi else 0)
        self.lock_free = 0
        self.total_sched_time = 0

        # measurement
        self.warmup = cfg.warmup_requests
        self.target = self.warmup + cfg.requests
        self.completed = 0
        self.latencies: list[int] = []
        self.rt_latencies: list[int] = []
        self.probe_latencies: list[int] = []
        self.t_first = -1
        #: Sum of the service times (cache misses included) of the measured requests.
        self.svc_sum = 0
        self.t_last = 0

        self._idle_cpu = cfg.idle_cpu_ns
        self._legacy = self.mode == "legacy"
        self._kevent_ns = cfg.kevent_ns
        self._rearm_ns = cfg.rearm_ns
        if self.mode == "skq":
            self._arrive: Callable[[Conn], None] = self._arrive_skq
        elif self.mode in ("vanilla", "shared"):
            self._arrive = self._arrive_home
        else:
            self._arrive = self._arrive_legacy
        # constants of the hot loop, unpacked in one go by _retry
        self._hot = (cfg.cache_miss_ns, cfg.net_ns, self.act_delay, self.wl.draw_ns,
                     self.svc_rng, self._gap.sample, self.arr_rng, self._arrive, self.eng.at,
                     self.latencies, self.rt_latencies, cfg.kevent_ns, cfg.kevent_event_ns,
                     self.mode == "skq", self.mode == "legacy",
                     self.mode in ("skq", "vanilla"))

    # ---------------------------------------------------------------- setup / run

    def _gap_ns(self) -> int:
        return int(self._gap.sample(self.arr_rng) * 1e9 + 0.5)

    def start(self) -> None:
        """Schedule every thread's first ``kevent()`` and every connection's first send."""
        eng = self.eng
        for w in self.workers:
            eng.at(0, self._ready, w)
            w.resume = self._kcall
        r = self.arr_rng
        net = self.cfg.net_ns
        # First sends start each connection's schedule in equilibrium: the residual of an
        # exponential gap is exponential (memoryless), that of a fixed gap uniform; other
        # laws get a uniform phase over one mean gap (their transient dies out in warmup).
        exp_gaps = isinstance(self._gap, Exponential)
        for conn in self.conns:
            if exp_gaps:
                phase = self._gap_ns()
            else:
                phase = int(r.random() * self._mean_gap_ns)
            conn.intended = phase
            conn.next_intended = phase + self._gap_ns()
            eng.at(phase + net + self.act_delay, self._arrive, conn)

    def run(self) -> None:
        """Run until ``warmup + requests`` requests have completed."""
        self.start()
        self.eng.run()

    # ---------------------------------------------------------------- activation

    @staticmethod
    def _push(q: SimKevq, conn: Conn, head: bool = False) -> None:
        """Queue ``conn`` on ``q`` (at the head: a level-triggered leftover)."""
        dq = q.rt if conn.rt else q.normal
        if head:
            dq.appendleft(conn)
        else:
            dq.append(conn)
        conn.queued_on = q
        q.total_queued += 1

    def _enqueue(self, q: SimKevq, conn: Conn) -> None:
        self._push(q, conn)
        if conn.owner is not None:
            q.owned_count += 1
        if q.sleepers:
            self._wake_sleepers(q)

    def _arrive_skq(self, conn: Conn) -> None:
        conn.pending = True
        if conn.queued_on is not None:
            return
        if self.harvest and not self.n_sleeping:  # nobody in epoll: wait for a harvest
            self.epoll.append(conn)
            self.total_deferred += 1
            return
        self._place_skq(conn)

    def _harvest(self) -> None:
        """A thread harvests epoll (harvest mode): place every waiting arrival now."""
        waiting, self.epoll = self.epoll, []
        for conn in waiting:
            if conn.queued_on is None:
                self._place_skq(conn)

    def _place_skq(self, conn: Conn) -> None:
        """The SKQ activation of ``conn``: ``choose`` a kevq and queue it there."""
        now = self.eng.now
        pl = choose(self.sw, conn, conn.rss_cpu, self.active, self.topo, self.rng,  # type: ignore[arg-type]
                    now, self.cfg.cache_pen_ns, False, self.cfg.idle_first)
        self.total_sched_time += self.cfg.sched_ns
        q = pl.kevq
        if q is None:  # no active kevq yet: keep it (D10) until one activates
            self.orphans.append(conn)
            return
        q.count_placement(pl.fallback, pl.mismatch)
        self._enqueue(q, conn)

    def _arrive_home(self, conn: Conn) -> None:
        """vanilla (its thread's kevq) and shared (the one queue): a fixed destination."""
        conn.pending = True
        if conn.queued_on is None:
            q = conn.home
            assert q is not None
            q.total_sched += 1
            self._enqueue(q, conn)

    def _arrive_legacy(self, conn: Conn) -> None:
        # arrival: the activation itself needs the kqueue lock (the act delay is the hold)
        conn.pending = True
        now = self.eng.now
        start = self.lock_free if self.lock_free > now else now
        self.lock_free = start + self.cfg.activate_ns
        self.eng.at(self.lock_free, self._activate_legacy, conn)

    def _activate_legacy(self, conn: Conn) -> None:
        if conn.disabled or conn.queued_on is not None or not conn.pending:
            return
        q = self.shared
        assert q is not None
        q.total_sched += 1
        self._enqueue(q, conn)

    # ---------------------------------------------------------------- threads and cores

    def _wake_sleepers(self, q: SimKevq) -> None:
        sleepers = q.sleepers
        eng = self.eng
        delay = self.cfg.wakeup_ns
        while sleepers:
            w = sleepers.popleft()
            w.sleeping = False
            self.n_sleeping -= 1
            w.gen += 1
            q.total_wakeups += 1
            eng.after(delay, self._ready, w)
            if not self.herd:
                break

    def _slice_end(self, arg: tuple[Worker, int]) -> None:
        w, gen = arg
        if w.gen != gen or not w.sleeping:
            return
        w.kevq.sleepers.remove(w)
        w.sleeping = False
        self.n_sleeping -= 1
        w.gen += 1
        self.eng.after(self.cfg.wakeup_ns, self._ready, w)

    def _ready(self, w: Worker) -> None:
        core = w.core
        if core.running is None:
            core.running = w
            w.slice_start = self.eng.now
            assert w.resume is not None
            w.resume(w)
        else:
            core.runq.append(w)

    def _release_core(self, w: Worker) -> None:
        core = w.core
        core.running = None
        if core.runq:
            nxt = core.runq.popleft()
            core.running = nxt
            nxt.slice_start = self.eng.now
            assert nxt.resume is not None
            nxt.resume(nxt)

    def _sleep(self, w: Worker) -> None:
        q = w.kevq
        if self.epoll:  # harvest mode: the thread becomes the leader and harvests first
            self._harvest()
            if q.total_queued - q.owned_count > 0:
                self._retry(w)
                return
        self.n_sleeping += 1
        q.sleepers.append(w)
        q.total_sleeps += 1
        w.sleeping = True
        w.gen += 1
        w.resume = self._retry
        if self.ws:
            self.eng.after(self.cfg.ws_interval_ns, self._slice_end, (w, w.gen))
        self._release_core(w)

    def _sleep_checked(self, w: Worker) -> None:
        """End of an empty scan's CPU (``idle_cpu_ns``): sleep, unless work arrived."""
        q = w.kevq
        if q.total_queued - q.owned_count > 0:
            self._retry(w)
        else:
            self._sleep(w)

    def _activate_kevq(self, w: Worker) -> None:
        """First wait of a thread: its kevq joins the active vector (and its leaf)."""
        w.active = True
        q = w.kevq
        if self.mode == "skq":
            self.active.append(q)
            if self.sw is not None and self.sw.uses_topology and q.leaf is not None:
                self.topo.insert(q, q.leaf)
            if self.orphans:
                orphans, self.orphans = self.orphans, []
                for conn in orphans:
                    self._arrive_skq(conn)

    # ---------------------------------------------------------------- the worker loop

    def _kcall(self, w: Worker) -> None:
        """The thread enters ``kevent()`` (semantics §3.9 steps 1-5)."""
        now = self.eng.now
        core = w.core
        if core.runq and now - w.slice_start >= self.cfg.quantum_ns:
            w.resume = self._kcall
            core.runq.append(w)
            self._release_core(w)
            return
        if not w.active:
            self._activate_kevq(w)
        q = w.kevq
        mode = self.mode
        if mode != "shared" and mode != "legacy":
            q.est.enter(now)
        if q.owned:  # release_owned (semantics §3.10)
            for conn in q.owned:
                conn.owner = None
                qq = conn.queued_on
                if qq is not None:
                    qq.owned_count -= 1
                    if qq.sleepers:
                        self._wake_sleepers(qq)
                elif conn.pending:  # level-triggered leftover: head of this kevq
                    self._push(q, conn, head=True)
            q.owned = []
        if w.rearm:  # legacy: EV_ENABLE of last call's events (cost paid in the scan)
            for conn in w.rearm:
                conn.disabled = False
                if conn.pending and conn.queued_on is None:
                    self._enqueue(q, conn)
        cfg = self.cfg
        w.maxev, w.rtlimit = batch_limits(cfg.maxevents, self.multi, cfg.tfreq, cfg.rtshare,
                                          q.est.avg_lat)
        if mode != "shared" and mode != "legacy":
            q.est.note_rtlimit(w.rtlimit)
        self._retry(w)

    def _accept(self, conn: Conn, is_rt: bool) -> bool:
        if conn.owner is not None:  # PROCESSING elsewhere: move behind the marker
            q = conn.queued_on
            assert q is not None
            (q.rt if is_rt else q.normal).append(conn)
            return False
        return True

    @staticmethod
    def _eligible(conn: Conn) -> bool:
        return conn.owner is None and not conn.ws

    def _steal(self, me: SimKevq) -> int:
        """One steal attempt (semantics §3.13); returns its cost in ns (0 if nothing)."""
        victim = pick_victim(self.active, me, self.rng)
        if victim is None or victim.closing or victim.total_queued - victim.owned_count <= 0:
            return 0
        taken, scanned = steal_slice(victim.rt, victim.normal, self.fargs,
                                     self.cfg.ws_kn_factor, self._eligible)
        me.total_worksteal_scan += scanned
        if not taken:
            return 0
        k = len(taken)
        victim.total_queued -= k
        me.total_queued += k
        for conn in taken:
            conn.queued_on = me
            conn.ws = True
        insert_head(me.rt if taken[0].rt else me.normal, taken)
        me.total_worksteal += k
        return self.cfg.steal_ns

    def _retry(self, w: Worker) -> None:
        """RETRY of the scan: steal, sleep, or take a batch and run it."""
        if self.epoll:  # harvest mode: every scan starts with a harvest
            self._harvest()
        q = w.kevq
        eng = self.eng
        now = eng.now
        extra = 0
        if q.total_queued - q.owned_count <= 0:
            if self.ws:
                extra = self._steal(q)
            if q.total_queued - q.owned_count <= 0:
                if self._legacy:  # an empty scan still holds the kqueue lock
                    start = self.lock_free if self.lock_free > now else now
                    self.lock_free = start + self._kevent_ns + len(w.rearm) * self._rearm_ns
                    w.rearm = []
                if self._idle_cpu:
                    eng.after(self._idle_cpu, self._sleep_checked, w)
                else:
                    self._sleep(w)
                return
        batch = take_batch(q.rt, q.normal, w.maxev, w.rtlimit, self._accept)
        n = len(batch)
        if n == 0:  # only owned entries (cannot happen with available > 0); wait
            self._sleep(w)
            return
        (miss, net, act, draw, svc_rng, gap, arr_rng, arrive, at, lat, rtl,
         kevent_ns, kevent_event_ns, skq, legacy, use_est) = self._hot
        if legacy:
            start = self.lock_free if self.lock_free > now else now
            t = start + kevent_ns + n * kevent_event_ns + len(w.rearm) * self._rearm_ns
            self.lock_free = t
        else:
            t = now + kevent_ns + n * kevent_event_ns + extra
        q.total_queued -= n
        q.total_syscall += 1
        q.total_events += n
        if use_est:
            q.est.leave(t, n)
        if not self._on_core:
            self._take_offcore(w, q, batch, t)
            return
        leaf = w.leaf_id
        ev_cpu = self.cfg.event_cpu_ns
        warmup = self.warmup
        owned: list[Conn] = []
        for conn, is_rt in batch:
            conn.taken(q, is_rt)
            svc = conn.svc_ns
            if svc < 0:
                svc = draw(conn.id, svc_rng)
            svc += ev_cpu
            if conn.last_leaf != leaf:
                if conn.last_leaf >= 0:
                    svc += miss
                    q.total_cache_misses += 1
                conn.last_leaf = leaf
            t += svc
            done = t + net
            self.completed += 1
            if self.completed > warmup:
                if self.t_first < 0 or done < self.t_first:
                    self.t_first = done
                if done > self.t_last:
                    self.t_last = done
                if conn.rt:
                    rtl.append(done - conn.intended)
                else:
                    lat.append(done - conn.intended)
                    self.svc_sum += svc
                    if conn.probe:
                        self.probe_latencies.append(done - conn.intended)
                if self.completed >= self.target:
                    eng.stop()
            nxt = conn.next_intended
            send = done if done > nxt else nxt
            conn.intended = nxt
            conn.next_intended = nxt + int(gap(arr_rng) * 1e9 + 0.5)
            at(send + net + act, arrive, conn)
            if skq:
                conn.owner = q
                owned.append(conn)
            elif legacy:
                conn.disabled = True
        if skq:
            q.owned = owned
        elif legacy:
            w.rearm = [c for c, _ in batch]
        at(t, self._kcall, w)

    # ---------------------------------------------------------------- off-core service

    def _take_offcore(self, w: Worker, q: SimKevq, batch: list[tuple[Conn, bool]],
                      t: int) -> None:
        """Own the batch now (as the scan does), then serve it event by event from ``t``."""
        skq = self.mode == "skq"
        legacy = self.mode == "legacy"
        conns: list[Conn] = []
        for conn, is_rt in batch:
            conn.taken(q, is_rt)
            if skq:
                conn.owner = q
            elif legacy:
                conn.disabled = True
            conns.append(conn)
        if skq:
            q.owned = list(conns)
        elif legacy:
            w.rearm = list(conns)
        w.batch = conns
        w.bi = 0
        self.eng.at(t, self._ev_start, w)

    def _ev_start(self, w: Worker) -> None:
        """The thread (holding its core) starts the next event of its batch, or calls
        ``kevent()`` again when the batch is done."""
        if w.bi >= len(w.batch):
            w.batch = []
            self._kcall(w)
            return
        conn = w.batch[w.bi]
        cfg = self.cfg
        cpu = cfg.event_cpu_ns // 2
        if conn.last_leaf != w.leaf_id:
            if conn.last_leaf >= 0:
                cpu += cfg.cache_miss_ns
                w.kevq.total_cache_misses += 1
            conn.last_leaf = w.leaf_id
        svc = conn.svc_ns
        if svc < 0:
            svc = self.wl.draw_ns(conn.id, self.svc_rng)
        w.svc = svc + cfg.sleep_extra_ns
        self.eng.after(cpu, self._ev_wait, w)

    def _ev_wait(self, w: Worker) -> None:
        """The service wait: the core is free meanwhile."""
        w.resume = self._ev_back
        self._release_core(w)
        self.eng.after(w.svc, self._ready, w)

    def _ev_back(self, w: Worker) -> None:
        """Core regained after the wait: the rest of the handler, then the reply."""
        self.eng.after(self.cfg.event_cpu_ns - self.cfg.event_cpu_ns // 2, self._ev_reply, w)

    def _ev_reply(self, w: Worker) -> None:
        conn = w.batch[w.bi]
        w.bi += 1
        self._complete(conn, self.eng.now, w.svc + self.cfg.event_cpu_ns)
        self._ev_start(w)

    def _complete(self, conn: Conn, t: int, svc: int) -> None:
        """Reply of ``conn`` leaves the server at ``t``: record it, schedule the next send."""
        net = self.cfg.net_ns
        done = t + net
        self.completed += 1
        if self.completed > self.warmup:
            if self.t_first < 0 or done < self.t_first:
                self.t_first = done
            if done > self.t_last:
                self.t_last = done
            if conn.rt:
                self.rt_latencies.append(done - conn.intended)
            else:
                self.latencies.append(done - conn.intended)
                self.svc_sum += svc
                if conn.probe:
                    self.probe_latencies.append(done - conn.intended)
            if self.completed >= self.target:
                self.eng.stop()
        nxt = conn.next_intended
        send = done if done > nxt else nxt
        conn.intended = nxt
        conn.next_intended = nxt + self._gap_ns()
        self.eng.at(send + net + self.act_delay, self._arrive, conn)

    # ---------------------------------------------------------------- results

    def kevq_dump(self) -> list[dict[str, int]]:
        """Per-kevq counters (semantics §3.4 field names)."""
        return [q.dump() for q in self.kevqs]

    def summary(self) -> dict[str, Any]:
        """Raw run facts for :mod:`skqueue.sim.run`."""
        return {
            "mode": self.mode,
            "capacity_qps": self.capacity_qps,
            "offered_qps": self.offered_qps,
            "mean_service_ns": self.mean_service_ns,
            "completed": self.completed,
            "sim_time_ns": self.eng.now,
            "events": self.eng.events_run,
            "total_sched_time": self.total_sched_time,
            "harvest": self.harvest,
            "deferred_activations": self.total_deferred,
        }
