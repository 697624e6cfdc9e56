"""Simulation configuration: every parameter of a run, with where its default comes from.

A run is a pure function of a :class:`SimConfig` (which includes the seed).  The config is
frozen and made of plain values, so it pickles (process pools, Dask) and serialises to JSON
(:meth:`SimConfig.to_dict`).

Provenance tags used below: **spec** = docs/semantics.md (section given), **bench** = the
authors' benchmark setup as summarised in semantics part 6 (section given), **guess** = our
estimate, no source states it; change it when a measurement exists.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["SimConfig", "BASELINES", "ZERO_COSTS"]

#: Policies that are not SKQ scheduler words: partitioned per-thread queues (``vanilla``),
#: an idealised single shared FCFS queue (``shared``) and the stock shared kqueue with its
#: kqueue-wide lock, EV_DISPATCH re-arms and thundering-herd wakeups (``legacy``).
BASELINES = ("vanilla", "shared", "legacy")

#: Field values that turn every overhead off (queueing-theory validation).
ZERO_COSTS: dict[str, int] = {
    "activate_ns": 0,
    "sched_ns": 0,
    "wakeup_ns": 0,
    "kevent_ns": 0,
    "kevent_event_ns": 0,
    "cache_miss_ns": 0,
    "steal_ns": 0,
    "rearm_ns": 0,
    "net_ns": 0,
    "event_cpu_ns": 0,
    "sleep_extra_ns": 0,
    "idle_cpu_ns": 0,
}


@dataclass(frozen=True)
class SimConfig:
    """All parameters of one simulated run.  Times are integer nanoseconds.

    Machine and server
      ``policy``: an SKQ label (``rand``, ``queueN``, ``cpuN``, ``bestN``, ``…_ws[K]``,
      ``ws``), or a baseline from :data:`BASELINES`.  ``cores`` (12, bench 6.7: 12 workers
      pinned one per core + SMT sibling), ``threads`` (12, bench 6.7), ``sockets`` (1, guess;
      the paper's hardware is unknown), ``smt`` (2, bench 6.7: Skylake 12 cores x SMT2;
      siblings share the core's leaf domain and receive RSS interrupts, but a core runs one
      worker at a time, so SMT adds no execution capacity in this model).  Threads are pinned
      round-robin to cores (``ppd -a``).  ``maxevents`` (2048, bench 6.2: ppd's kevent size).
      ``rtshare`` (100, spec 3.3), ``tfreq`` (0, spec 3.3), ``realtime_conns`` (0: how many
      connections, ids ``0..k-1``, are registered ``EV_REALTIME``).  ``probe_conns`` (0: how
      many connections, the last ids, send GETs only at the others' rate, as the
      ``skq bench mixgraph`` probes do; ordinary connections otherwise, reported apart as
      ``probe_*``; the ``rocksdb`` workload only).

    Workload
      ``workload`` (see :mod:`skqueue.sim.workload`), ``load`` = offered load as a fraction
      of the ideal capacity ``min(threads, cores) / mean service time``; ``qps`` overrides it
      when set.  ``connections`` (1440, bench 6.7: 9 agents x 12 threads x 12 connections +
      the master's 12 x 12).  ``interarrival`` (``exponential``; the distributions of spec
      6.5 / ``dist.parse_interarrival``; the authors' default is ``fb_ia``).
      ``requests`` measured completions after ``warmup`` completions (default 10 %).

    Costs (all guesses unless noted; the paper's overhead numbers are unknown, spec 1.5)
      ``activate_ns`` (500): knote activation on the receiving CPU, a delay between a
      request's arrival and its enqueue.  ``sched_ns`` (200): one policy decision
      (SKQ policies only; adds to the same delay and to ``total_sched_time``).
      ``wakeup_ns`` (4000): from waking a sleeping thread to it running again (also after a
      stealing slice ends).  ``kevent_ns`` (1000): one ``kevent()`` call's fixed cost
      (syscall entry/exit, scan setup).  ``kevent_event_ns`` (150): per returned event
      (copy-out).  ``cache_miss_ns`` (2000): extra service time when a connection is served on
      a different leaf (core) than the previous time.  ``steal_ns`` (300): a successful
      steal attempt.  ``rearm_ns`` (300): ``legacy`` only, one ``EV_ENABLE`` re-arm, paid under
      the kqueue lock.  ``net_ns`` (0): one-way network latency, added to both directions
      (0: latencies are server-side response times).
      ``cache_pen_ns`` (476, spec 3.18: 1000 cycles at 2.1 GHz), ``ws_interval_ns``
      (100 000, spec 3.13), ``ws_kn_factor`` (2, spec 3.18).  ``quantum_ns`` (1 000 000,
      guess): when threads outnumber cores, a running thread yields its core at its next
      ``kevent()`` after this long if another thread is waiting for the core.

    Service model (for validation against the Python runtime; defaults = the paper's ppd)
      ``service_on_core`` (True, bench 6.2: ppd spins): the service time occupies the
      thread's core.  False: the service is a wait off the CPU (``time.sleep``, a backend
      call); the thread gives its core up for it and needs the core again to reply.
      ``event_cpu_ns`` (0): CPU time per request of the handler itself (recv, parse, reply)
      beyond ``kevent_event_ns``; on core in both modes, half before and half after an
      off-core service.  ``sleep_extra_ns`` (0): added to every off-core service (the wake-up
      overshoot of ``time.sleep``).  ``idle_cpu_ns`` (0): core time of a scan that finds
      nothing (e.g. each stealing-slice wake-up of an idle thread; in the Python runtime a
      wake-up runs interpreter code under the GIL).  ``gil`` (False): every thread shares
      ONE execution resource, as CPython's GIL serialises the interpreter; topology
      (leaves, RSS CPUs, pinning for the policies) still comes from ``cores``.
      Calibrated values for this machine: :mod:`skqueue.sim.validate`.

    Activation (SKQ policies only)
      ``harvest`` (False: the kernel's way).  False: a request's arrival activates its knote
      at once, as an interrupt does in the kernel.  True: the Python runtime's way
      (docs/design.md, leader/followers): events are activated by a thread that harvests
      epoll.  While some thread sleeps, one of them is the leader in ``epoll_wait`` and
      activates at arrival; while every thread is busy, arrivals wait in epoll until a
      thread comes back to ``kevent()`` and harvests them all, placing each with the policy
      at that moment (the harvesting thread is then the one in the kernel).
      ``idle_first`` (False): every activation goes to an idle thread when one exists,
      before the policy (``Tunables.idle_first``).
    """

    policy: str = "best2_ws"
    cores: int = 12
    threads: int = 12
    sockets: int = 1
    smt: int = 2
    maxevents: int = 2048
    rtshare: int = 100
    tfreq: int = 0
    realtime_conns: int = 0
    probe_conns: int = 0

    workload: str = "echo-mix"
    load: float = 0.5
    qps: float | None = None
    connections: int = 1440
    interarrival: str = "exponential"
    requests: int = 100_000
    warmup: int | None = None
    seed: int = 1

    activate_ns: int = 500
    sched_ns: int = 200
    wakeup_ns: int = 4000
    kevent_ns: int = 1000
    kevent_event_ns: int = 150
    cache_miss_ns: int = 2000
    steal_ns: int = 300
    rearm_ns: int = 300
    net_ns: int = 0
    cache_pen_ns: int = 476
    ws_interval_ns: int = 100_000
    ws_kn_factor: int = 2
    quantum_ns: int = 1_000_000

    service_on_core: bool = True
    event_cpu_ns: int = 0
    sleep_extra_ns: int = 0
    idle_cpu_ns: int = 0
    gil: bool = False

    harvest: bool = False
    idle_first: bool = False

    def __post_init__(self) -> None:
        for name in ("cores", "threads", "sockets", "smt", "maxevents", "connections",
                     "requests", "ws_interval_ns", "ws_kn_factor", "quantum_ns"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cores % self.sockets:
            raise ValueError("cores must be a multiple of sockets")
        for name in ZERO_COSTS:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.cache_pen_ns < 0:
            raise ValueError("cache_pen_ns must be >= 0")
        if not 0 <= self.rtshare <= 100:
            raise ValueError("rtshare must be in 0..100")
        if not 0 <= self.tfreq <= 0xFFFF:
            raise ValueError("tfreq must be in 0..65535")
        if not 0 <= self.realtime_conns <= self.connections:
            raise ValueError("realtime_conns must be in 0..connections")
        if self.probe_conns < 0 or self.realtime_conns + self.probe_conns > self.connections:
            raise ValueError("probe_conns must be >= 0 and fit beside realtime_conns")
        if self.qps is None and not self.load > 0:
            raise ValueError("load must be > 0 (or give qps)")
        if self.qps is not None and not self.qps > 0:
            raise ValueError("qps must be > 0")
        if self.warmup is not None and self.warmup < 0:
            raise ValueError("warmup must be >= 0")

    @property
    def warmup_requests(self) -> int:
        """Completions discarded before measuring (``warmup``, default ``requests // 10``)."""
        return self.requests // 10 if self.warmup is None else self.warmup

    def replace(self, **changes: Any) -> SimConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def zero_costs(self) -> SimConfig:
        """A copy with every overhead set to 0 (an ideal machine, for queueing theory)."""
        changes: dict[str, Any] = dict(ZERO_COSTS)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SimConfig:
        """Inverse of :meth:`to_dict` (unknown keys raise ``TypeError``)."""
        return cls(**d)
