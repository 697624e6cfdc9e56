"""The measuring side of ``skq bench``: the data model of an experiment and how it is measured.

What one experiment does
------------------------
For every policy or baseline in the experiment the harness (:func:`run_experiment`,
:func:`run_policy`)

1. starts the server in a **subprocess** (:mod:`skqueue.bench.servers`; never in this
   process, whose GIL would otherwise be shared with the server) and waits until it answers
   a probe request (the probe doubles as a warm-up of the server's code paths);
2. optionally runs an unmeasured warm-up load;
3. runs its load points with the open-loop generator (:func:`skqueue.load.run_load`, in its
   own processes): either an explicit list of offered loads, or the ramp of
   docs/semantics.md §6.6 scaled down (:func:`ramp`: an optional unpaced "MAX" run, then
   ``start``, ``start + step``, ... with the step growing when the throughput gain falls under
   50 % of a step, stopping when it falls to 1 % or after ``max_points``);
4. stops the server and records its exit code.

Points run back to back on one server, so before each point the harness waits (``--settle``,
up to 10 s) until the server answers a probe within 20 ms: the queue left behind by an
overloaded point is not charged to the next one (the wait is recorded as ``settle_s``).

Per load point (:class:`Point`) it records the offered and achieved QPS, latency percentiles
p50/p90/p95/p99/p99.9 measured from the **intended** send time (open loop, so a stalled
server cannot hide behind the requests it delayed) and from the actual send time (what the
paper's generator reported), errors, unsent requests, and per-class numbers (``rt`` /
``normal``) when realtime connections are used.

It also records what the point cost the **server in CPU**: the server process's user +
system time over the whole generator run (:meth:`ServerProcess.cpu_s`) divided by every
reply the generator received in that run, warm-up and drain included
(``server_cpu_us_per_req``).  A policy that keeps its tail low by burning more CPU per
request shows it here, and so does a baseline's thinner path.  It is ``None`` for a server
the harness did not start.  The kernel counts CPU in 10 ms ticks, so a short point's figure
is coarse (``server_cpu_s`` is recorded beside it).

Probe connections
-----------------
The paper's generator measured latency only on its master's connections, which always asked
for zero service time (semantics §6.3, §6.5): the latency an *ordinary short request* suffers
from the long ones, without the long requests' own service time in the tail.  With
``--probe-conns K`` (the demo uses 10) the harness adds K such connections (the generator's
second class, not bound to another address, so the server treats them like any client);
their percentiles are reported as ``probe`` and the SLO applies to them.  Without probes the
SLO applies to all requests.

Low-latency throughput (semantics §6.12)
-----------------------------------------
The paper's SLO is unknown, so every report states its own: **the highest achieved QPS among
the paced load points whose p-th percentile latency (intended-time; of the probe requests when
there are probes) is at most T µs**, with
``p`` = ``--slo-pct`` (default 99) and ``T`` = ``--slo-us``.  Requests that were due in the
measurement window but never answered (unsent behind a late reply, timed out, failed) count as
infinitely late: with ``N`` intended and ``R`` recorded requests, the SLO latency is the
value of rank ``ceil(p/100 * N)`` among the ``R`` recorded ones, or infinite if that rank
exceeds ``R`` (:func:`slo_latency_us`).  So a server cannot meet the SLO by dropping requests.

Service-time modes
------------------
CPython's GIL makes "service time" ambiguous for a Python server, so every result states which
mode the server used (``--service``): ``sleep`` (the GIL is released; it stands for I/O),
``hash`` (GIL-releasing compute) or ``spin`` (holds the GIL).  The per-request service time
is chosen by the load generator (``--mix``, default ``echo-mix``: 95/4/1 % of connections at
10/50/200 units of 10 µs, i.e. 100 µs / 500 µs / 2 ms, semantics §6.3 scaled by ten).

CPU placement
-------------
On a small machine the generator and the server compete for cores.  ``--pin split`` (the
default when there are at least 2 CPUs) gives the server the first half of the CPUs and the
generator processes the other half (semantics §6.13; :func:`split_cpus`); ``--pin none``
leaves placement to the kernel.  Either way it is recorded in the output.

The tables, files and plots: :mod:`skqueue.bench.report`; the commands: :mod:`skqueue.bench.run`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TextIO

from skqueue.bench import report
from skqueue.bench.servers import (
    ServerError,
    ServerProcess,
    ServerSpec,
    ServerUnavailable,
    probe,
)
from skqueue.load.config import LoadConfig

__all__ = [
    "Experiment",
    "FreshServers",
    "LoadSettings",
    "Plan",
    "Point",
    "PolicyResult",
    "Progress",
    "fraction_stages",
    "hist_summary",
    "measure",
    "measuring",
    "point_from_result",
    "ramp",
    "run_experiment",
    "run_policy",
    "settle",
    "slo_latency_us",
    "split_cpus",
    "standard_plan",
]


# ----------------------------------------------------------------------------- progress


class Progress:
    """Progress lines on a stream (stderr by default), prefixed by the elapsed time."""

    def __init__(
        self,
        stream: TextIO | None = None,
        quiet: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.clock = clock
        self.t0 = clock()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{self.clock() - self.t0:6.1f}s] {msg}", file=self.stream, flush=True)


# ----------------------------------------------------------------------------- load points


@dataclass
class LoadSettings:
    """What every load point of an experiment shares.

    ``load`` is the generator's configuration of every point: each point sets its address and
    rate (``host``, ``port``, ``qps``) and may override more (:meth:`config`).  Its
    ``connections`` are the background connections; ``probe_conns`` more join them.  The
    other fields are the harness's own: the probes' service, the settle wait before each
    point and the CPUs the generator runs on.
    """

    load: LoadConfig = field(default_factory=LoadConfig)
    probe_conns: int = 0
    probe_service: str = "zero"
    settle_s: float = 10.0
    cpus: tuple[int, ...] | None = None

    @property
    def total_connections(self) -> int:
        """Background plus probe connections."""
        return self.load.connections + self.probe_conns

    def config(self, address: tuple[str, int], qps: float, **overrides: Any) -> LoadConfig:
        """The :class:`skqueue.load.LoadConfig` of one point at ``qps`` (0 = unpaced).

        With ``probe_conns``, the generator's ``rt`` class (the last ids, not bound to another
        address, so the server treats them as ordinary clients) becomes the probe class:
        service ``probe_service`` and the same per-connection rate as the others.
        """
        point: dict[str, Any] = {
            "host": address[0],
            "port": address[1],
            "qps": qps,
            "connections": self.total_connections,
        }
        if self.probe_conns > 0:
            point.update(
                rt_connections=self.probe_conns, rt_service=self.probe_service, rt_bind=None
            )
        return replace(self.load, **(point | overrides))

    def class_names(self) -> dict[str, str]:
        """Generator class name -> name shown in results (``rt`` is ``probe`` with probes)."""
        return {"rt": "probe"} if self.probe_conns > 0 else {}

    def slo_class(self) -> str | None:
        """The class whose latency the SLO applies to (``probe`` with probes, else all)."""
        return "probe" if self.probe_conns > 0 else None


def hist_summary(hist: Any) -> dict[str, float]:
    """count, mean, min, max and percentiles (µs) of a :class:`LatencyHistogram` (ns).

    Deliberately no standard deviation: HdrHistogram's pure-Python ``get_stddev`` walks every
    bucket and costs about a second per histogram (which is why this is not
    ``LatencyHistogram.to_dict``).
    """
    from skqueue.load.hist import SUMMARY_PERCENTILES

    ps = hist.percentiles([p for _, p in SUMMARY_PERCENTILES])
    out = {
        "count": float(hist.count),
        "mean": float(hist.mean) / 1e3,
        "min": float(hist.min) / 1e3,
        "max": float(hist.max) / 1e3,
    }
    for name, p in SUMMARY_PERCENTILES:
        out[name] = float(ps[p]) / 1e3
    return out


def slo_latency_us(hist: Any, intended: int, recorded: int, pct: float) -> float | None:
    """The ``pct`` percentile latency (µs) with unanswered requests counted as infinite.

    ``hist`` holds the ``recorded`` latencies (ns) of the ``intended`` requests due in the
    window; returns ``None`` (infinite) when more than ``100 - pct`` % of them are missing,
    and ``0.0`` for an empty window.
    """
    total = max(intended, recorded)
    if total <= 0:
        return 0.0
    rank = max(1, math.ceil(pct / 100.0 * total - 1e-9))
    if rank > recorded:
        return None
    p = min(100.0, rank * 100.0 / recorded)
    return float(hist.percentile(p)) / 1e3


@dataclass
class Point:
    """One measured load point (latencies in µs)."""

    label: str
    phase: str
    target_qps: float
    offered_qps: float
    achieved_qps: float
    intended: int
    recorded: int
    completed: int
    unsent: int
    errors: int
    error_kinds: dict[str, int]
    latency_us: dict[str, float]
    actual_us: dict[str, float]
    slo_pct: float
    slo_latency_us: float | None
    slo_class: str | None = None
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    wall_s: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)
    #: The server's CPU seconds over the generator run, and per reply in µs (None: unknown).
    server_cpu_s: float | None = None
    server_cpu_us_per_req: float | None = None

    @property
    def paced(self) -> bool:
        """False for unpaced (closed-loop "MAX") runs."""
        return self.target_qps > 0

    def p(self, key: str) -> float | None:
        """A latency percentile (``"p99"`` ...) from the intended send time, µs."""
        v = self.latency_us.get(key)
        return None if v is None else float(v)

    def slo_p(self, key: str) -> float | None:
        """A percentile of the SLO class (the probes, if any; else all requests), µs."""
        if self.slo_class is None:
            return self.p(key)
        c = self.classes.get(self.slo_class)
        v = None if c is None else c["latency_us"].get(key)
        return None if v is None else float(v)

    def meets(self, slo_us: float) -> bool:
        """True when this paced point's SLO latency is at most ``slo_us``."""
        return self.paced and self.slo_latency_us is not None and self.slo_latency_us <= slo_us

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (the generator's full summary under ``detail``)."""
        return asdict(self)




def point_from_result(
    label: str,
    phase: str,
    target: float,
    res: Any,
    slo_pct: float,
    class_names: dict[str, str] | None = None,
    slo_class: str | None = None,
) -> Point:
    """Turn a :class:`skqueue.load.LoadResult` into a :class:`Point`.

    ``class_names`` renames generator classes (``{"rt": "probe"}``); ``slo_class`` names the
    class whose latency decides the SLO (``None``: all requests).
    """
    names = class_names or {}
    classes: dict[str, dict[str, Any]] = {}
    recorded = 0
    dur = res.duration_s
    for k, c in res.classes.items():
        recorded += c.recorded
        classes[names.get(k, k)] = {
            "connections": c.connections,
            "target_qps": c.target_qps,
            "offered_qps": c.intended / dur,
            "achieved_qps": c.completed / dur,
            "intended": c.intended,
            "recorded": c.recorded,
            "completed": c.completed,
            "unsent": c.unsent,
            "latency_us": hist_summary(c.latency_intended),
            "actual_us": hist_summary(c.latency_actual),
            "slo_latency_us": slo_latency_us(c.latency_intended, c.intended, c.recorded, slo_pct),
        }
    cfg = {k: v for k, v in asdict(res.config).items() if k not in ("host", "port")}
    detail = {
        "config": cfg,
        "duration_s": dur,
        "target_qps": res.target_qps,
        "sent": res.sent,
        "replies": res.replies,
        "not_found": res.not_found,
        "in_flight_at_end": res.in_flight_at_end,
        "connections_ok": res.connections_ok,
        "processes": res.processes,
        "send_lag_us": hist_summary(res.send_lag),
    }
    slo_lat = slo_latency_us(res.latency_intended, res.intended, recorded, slo_pct)
    if slo_class is not None:
        sc = classes.get(slo_class)
        slo_lat = sc["slo_latency_us"] if sc is not None else None
    return Point(
        label=label,
        phase=phase,
        target_qps=float(target),
        offered_qps=float(res.offered_qps),
        achieved_qps=float(res.achieved_qps),
        intended=int(res.intended),
        recorded=recorded,
        completed=int(res.completed),
        unsent=int(res.unsent),
        errors=int(res.errors),
        error_kinds=dict(res.error_kinds),
        latency_us=hist_summary(res.latency_intended),
        actual_us=hist_summary(res.latency_actual),
        slo_pct=slo_pct,
        slo_latency_us=slo_lat,
        slo_class=slo_class,
        classes=classes,
        wall_s=float(res.wall_s),
        detail=detail,
    )


@contextlib.contextmanager
def pinned(cpus: Sequence[int] | None) -> Iterator[None]:
    """Run the block (and the threads and processes it starts) on ``cpus``; restore
    afterwards.  Only the calling thread's own mask changes."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


#: The CPU clock of the server a plan is measuring (:meth:`ServerProcess.cpu_s`), set
#: by :func:`run_policy` around each plan, read by :func:`measure`: plans only see the
#: server's address.
_server_cpu: contextvars.ContextVar[Callable[[], float | None] | None] = contextvars.ContextVar(
    "skq_bench_server_cpu", default=None
)


def measure(
    address: tuple[str, int],
    settings: LoadSettings,
    label: str,
    phase: str,
    qps: float,
    slo_pct: float = 99.0,
    **overrides: Any,
) -> Point:
    """Run one load point against ``address`` and summarise it.

    First waits (up to ``settings.settle_s``) until the server answers a probe promptly, so
    a backlog left by the previous point is not charged to this one.
    """
    from skqueue.load.generator import run_load

    settled, waited = True, 0.0
    if settings.settle_s > 0:
        proto = "memcached" if settings.load.protocol == "memcached" else "rpc"
        settled, waited = settle(address, proto, timeout_s=settings.settle_s)
    cfg = settings.config(address, qps, **overrides)
    server_cpu = _server_cpu.get()
    retries = 0
    while True:
        cpu0 = server_cpu() if server_cpu is not None else None
        try:
            with pinned(settings.cpus):
                res = run_load(cfg)
            break
        except RuntimeError:
            # a generator process that died during start-up is retried once; a second
            # failure is the caller's (run_policy records it)
            if retries >= 1:
                raise
            retries += 1
            time.sleep(0.5)
    names = settings.class_names() if cfg.rt_connections else {}
    slo_class = settings.slo_class() if cfg.rt_connections else None
    pt = point_from_result(label, phase, qps, res, slo_pct, names, slo_class)
    cpu1 = server_cpu() if server_cpu is not None else None
    if cpu0 is not None and cpu1 is not None:
        pt.server_cpu_s = round(cpu1 - cpu0, 3)
        if res.replies:
            pt.server_cpu_us_per_req = (cpu1 - cpu0) / res.replies * 1e6
    pt.detail["settle_s"] = round(waited, 3)
    pt.detail["generator_retries"] = retries
    pt.detail["settled"] = settled
    return pt


def settle(
    address: tuple[str, int],
    proto: str,
    *,
    rtt_s: float = 0.02,
    timeout_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[bool, float]:
    """Wait until the server answers a probe within ``rtt_s`` (its backlog from an
    overloaded point is drained); returns ``(settled, seconds waited)``.

    Points run back to back on one server; without this, the queue left by an overloaded
    point would be charged to the next one.
    """
    t0 = clock()
    while True:
        t = clock()
        try:
            probe(proto, address, timeout=max(0.1, min(2.0, timeout_s)), requests=1)
            if clock() - t <= rtt_s:
                return True, clock() - t0
        except ServerError:
            pass
        if clock() - t0 >= timeout_s:
            return False, clock() - t0
        sleep(0.1)


def ramp(
    measure_at: Callable[[float, str], Point],
    start: float,
    step: float,
    max_points: int,
    *,
    stop_gain_pct: float = 1.0,
    stop_latency_us: float | None = None,
) -> list[Point]:
    """The load ramp of semantics §6.6 (without its MAX run).

    ``cur = start``; after each run ``gain = floor((achieved - last) / step * 100)``; stop if
    ``gain <= stop_gain_pct``; if ``gain <= 50`` the step multiplier grows by 100 %; then
    ``cur += step * mul / 100``.  Also stops after ``max_points`` runs and, if
    ``stop_latency_us`` is given, once a point's p99 exceeds it (the server is drowning).
    ``measure_at(qps, phase)`` runs one point.
    """
    if start <= 0 or step <= 0:
        raise ValueError("ramp start and step must be > 0")
    points: list[Point] = []
    cur = float(start)
    last = 0.0
    step_mul = 100
    while len(points) < max_points:
        pt = measure_at(cur, "ramp")
        points.append(pt)
        gain = math.floor((pt.achieved_qps - last) / step * 100.0)
        if gain <= stop_gain_pct:
            break
        p99 = pt.p("p99")
        if stop_latency_us is not None and (p99 is None or p99 > stop_latency_us):
            break
        if gain <= 50:
            step_mul += 100
        last = pt.achieved_qps
        cur += step * step_mul / 100.0
    return points


# ----------------------------------------------------------------------------- policies


@dataclass
class PolicyResult:
    """Everything measured for one server (policy or baseline)."""

    spec: ServerSpec
    points: list[Point] = field(default_factory=list)
    status: str = "ok"
    error: str | None = None
    returncode: int | None = None
    address: tuple[str, int] | None = None
    start_s: float = 0.0

    @property
    def label(self) -> str:
        """The policy's display name."""
        return self.spec.label

    def saturation_qps(self) -> float | None:
        """The highest achieved QPS over all points (None without points)."""
        vals = [p.achieved_qps for p in self.points]
        return max(vals) if vals else None

    def low_latency_throughput(
        self, slo_us: float, phases: Sequence[str] | None = None
    ) -> float | None:
        """Highest achieved QPS among paced points meeting the SLO (None if none does)."""
        ok = [
            p.achieved_qps
            for p in self.points
            if p.meets(slo_us) and (phases is None or p.phase in phases)
        ]
        return max(ok) if ok else None

    def point_near(self, qps: float, phase: str | None = None) -> Point | None:
        """The paced point whose target is closest to ``qps``."""
        cands = [p for p in self.points if p.paced and (phase is None or p.phase == phase)]
        if not cands:
            return None
        return min(cands, key=lambda p: abs(p.target_qps - qps))

    def to_dict(self, slo_us: float, phases: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-safe summary plus all points."""
        return {
            "label": self.label,
            "server": self.spec.to_dict(),
            "status": self.status,
            "error": self.error,
            "server_returncode": self.returncode,
            "server_start_s": round(self.start_s, 3),
            "saturation_qps": self.saturation_qps(),
            "low_latency_throughput_qps": self.low_latency_throughput(slo_us, phases),
            "points": [p.to_dict() for p in self.points],
        }


Plan = Callable[[tuple[str, int], list[Point]], None]


@dataclass
class FreshServers:
    """A plan in stages, each on a server started for it, so no stage inherits the state
    an earlier one left in the server (a store's flushes and compactions after PUTs, its
    caches).  ``stages()`` yields the stages one at a time: a stage may depend on what the
    earlier ones measured.  ``prepare()`` runs before every start (for instance, a fresh
    copy of the server's database)."""

    stages: Callable[[], Iterator[Plan]]
    prepare: Callable[[], None] = lambda: None


def run_policy(
    spec: ServerSpec, plan: Plan | FreshServers, progress: Progress,
    startup_timeout: float = 30.0,
) -> PolicyResult:
    """Start ``spec``'s server, run ``plan(address, points)``, stop it -- once per stage of
    a :class:`FreshServers` plan, until a stage fails.  Never raises for server or load
    failures (they are recorded in the result's ``status``/``error``)."""
    result = PolicyResult(spec)
    if not isinstance(plan, FreshServers):
        _on_one_server(spec, plan, result, progress, startup_timeout)
        return result
    for stage in plan.stages():
        plan.prepare()
        if not _on_one_server(spec, stage, result, progress, startup_timeout):
            break
    return result


def _on_one_server(
    spec: ServerSpec, plan: Plan, result: PolicyResult, progress: Progress,
    startup_timeout: float,
) -> bool:
    """One server's life for ``plan``, recorded in ``result``; False if anything failed."""
    srv = ServerProcess(spec, startup_timeout=startup_timeout)
    t = time.monotonic()
    progress(f"{spec.label}: starting {spec.kind} server ({spec.proto}, {spec.threads} threads)")
    try:
        result.address = srv.start()
    except ServerUnavailable as exc:
        result.status, result.error = "unavailable", str(exc)
        progress(f"{spec.label}: SKIPPED: {exc}")
        return False
    except ServerError as exc:
        result.status, result.error = "failed", str(exc)
        result.returncode = srv.returncode
        progress(f"{spec.label}: FAILED to start: {str(exc).splitlines()[0]}")
        return False
    result.start_s = max(result.start_s, time.monotonic() - t)
    progress(f"{spec.label}: ready on {result.address[0]}:{result.address[1]}")
    token = _server_cpu.set(srv.cpu_s)
    try:
        plan(result.address, result.points)
        if not srv.alive():
            result.status = "failed"
            result.error = "server died during the run\n" + srv.log_tail()
    except (RuntimeError, OSError, ValueError) as exc:
        result.status = "failed"
        result.error = f"{type(exc).__name__}: {exc}"
        progress(f"{spec.label}: FAILED: {str(exc).splitlines()[0] if str(exc) else exc!r}")
    finally:
        _server_cpu.reset(token)
        t_stop = time.monotonic()
        result.returncode = srv.stop()
        if result.returncode != 0 and not result.error:
            result.error = (
                f"server exited with code {result.returncode} after a stop request "
                f"({time.monotonic() - t_stop:.1f} s)\n" + srv.log_tail()
            )
    if result.status == "failed" and result.error and "died" in result.error:
        progress(f"{spec.label}: server died (exit code {result.returncode})")
    return result.status == "ok"


def measuring(
    settings: LoadSettings,
    label: str,
    slo_pct: float,
    progress: Progress,
    address: tuple[str, int],
    points: list[Point],
    **overrides: Any,
) -> Callable[[float, str], Point]:
    """``at(qps, phase)``: :func:`measure` one point, append it to ``points``, report it."""

    def at(qps: float, phase: str) -> Point:
        pt = measure(address, settings, label, phase, qps, slo_pct, **overrides)
        points.append(pt)
        progress("  " + report.point_line(pt))
        return pt

    return at


# ----------------------------------------------------------------------------- experiments


@dataclass
class Experiment:
    """The outcome of one ``skq bench`` experiment."""

    kind: str
    settings: LoadSettings
    service: str | None
    slo_pct: float
    slo_us: float
    policies: list[PolicyResult] = field(default_factory=list)
    llt_phases: tuple[str, ...] | None = None
    notes: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    pin: str = "none"
    started: float = field(default_factory=time.time)
    wall_s: float = 0.0


def split_cpus(mode: str, ncpu: int | None = None) -> tuple[tuple[int, ...] | None, ...]:
    """``(server_cpus, load_cpus)`` for ``--pin``: ``split`` halves the allowed CPUs."""
    if mode == "none":
        return (None, None)
    if mode != "split":
        raise ValueError(f"--pin must be none or split, not {mode!r}")
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if ncpu is not None:
        allowed = list(range(ncpu))
    if len(allowed) < 2:
        return (None, None)
    half = len(allowed) // 2
    return (tuple(allowed[:half]), tuple(allowed[half:]))


def run_experiment(
    kind: str,
    specs: Sequence[ServerSpec],
    settings: LoadSettings,
    plan_for: Callable[[ServerSpec], Plan | FreshServers],
    *,
    service: str | None,
    slo_pct: float,
    slo_us: float,
    progress: Progress,
    pin: str = "none",
    llt_phases: tuple[str, ...] | None = ("ramp", "load"),
    params: dict[str, Any] | None = None,
) -> Experiment:
    """Run every spec in turn with the plan ``plan_for(spec)``."""
    exp = Experiment(
        kind,
        settings,
        service,
        slo_pct,
        slo_us,
        llt_phases=llt_phases,
        params=dict(params or {}),
        pin=pin,
    )
    t0 = time.monotonic()
    try:
        for spec in specs:
            exp.policies.append(run_policy(spec, plan_for(spec), progress))
    except KeyboardInterrupt:
        # the interrupted policy's server was stopped by run_policy; keep what is complete
        exp.notes.append("interrupted: partial results")
        progress("interrupted; writing the results so far")
    exp.wall_s = time.monotonic() - t0
    return exp


# ----------------------------------------------------------------------------- plans


def mc_preload(address: tuple[str, int], settings: LoadSettings, progress: Progress) -> None:
    """Store every key of the memcached load once (before a server's first point)."""
    from skqueue.load.memcache_client import memcached_preload

    load = settings.load
    n = memcached_preload(
        address[0], address[1], load.mc_keys, load.mc_key_size, load.mc_value_size,
        load.timeout_s * 4,
    )  # fmt: skip
    progress(f"  preloaded {n} keys")


def standard_plan(
    settings: LoadSettings,
    slo_pct: float,
    progress: Progress,
    *,
    loads: Sequence[float] | None,
    ramp_spec: tuple[float, float] | None,
    max_points: int,
    max_run: bool,
    ramp_stop_us: float | None,
    server_warmup: float,
    label: str,
) -> Plan:
    """The plan of ``skq bench run`` and ``memcached``: after an optional unmeasured warm-up
    (``server_warmup`` seconds), the explicit ``loads``, or the ramp ``ramp_spec`` (``None``:
    an unpaced MAX run first, then ``START = STEP = MAX/4``; ``max_run`` adds the MAX run to
    a given ramp)."""

    def plan(address: tuple[str, int], points: list[Point]) -> None:
        if settings.load.protocol == "memcached":
            mc_preload(address, settings, progress)
        at = measuring(settings, label, slo_pct, progress, address, points)
        if server_warmup > 0:
            first = (loads[0] if loads else None) or (ramp_spec[0] if ramp_spec else 0.0)
            measure(address, settings, label, "warmup", first, slo_pct,
                    duration_s=server_warmup, warmup_s=0.0)  # fmt: skip
            progress(f"  {label}: warmed up ({server_warmup:g} s)")
        if loads:
            for q in loads:
                at(q, "load" if q > 0 else "max")
            return
        if ramp_spec is None:
            mx = at(0.0, "max")
            base = max(10.0, round(mx.achieved_qps / 4.0, -1))
            start, step = base, base
        else:
            if max_run:
                at(0.0, "max")
            start, step = ramp_spec
        ramp(at, start, step, max_points, stop_latency_us=ramp_stop_us)

    return plan


def fraction_stages(
    settings: LoadSettings,
    label: str,
    slo_pct: float,
    progress: Progress,
    state: dict[str, Any],
    fractions: Sequence[float],
    ramp_points: int,
    *,
    first: Plan | None = None,
    **overrides: Any,
) -> FreshServers:
    """The points of the demo and mixgraph, each on a server of its own.  The first policy
    whose server comes up is the reference: on a server of its own too, ``first`` runs
    (mixgraph's unloaded point), then -- unless ``state["saturation"]`` is given -- an
    unpaced MAX run and a ramp find its saturation ``S``.  Then every policy runs
    ``fractions`` x ``S`` ("load" points).  ``state`` holds ``saturation``, ``loads`` and
    ``reference`` across the policies; ``overrides`` go to every point's load
    configuration."""

    def set_loads() -> None:
        state["reference"] = label
        state["loads"] = [max(10.0, round(f * state["saturation"], -1)) for f in fractions]

    def calibrate(address: tuple[str, int], points: list[Point]) -> None:
        if first is not None:
            first(address, points)
        if state["saturation"] is None:
            at = measuring(settings, label, slo_pct, progress, address, points, **overrides)
            mx = at(0.0, "max")
            base = max(10.0, round(mx.achieved_qps / 4.0, -1))
            rp = ramp(at, base, base, ramp_points)
            state["saturation"] = max(p.achieved_qps for p in rp)
            progress(
                f"{label}: saturation ~{report.fmt_num(state['saturation'])} QPS "
                f"(unpaced MAX {report.fmt_num(mx.achieved_qps)})"
            )
        set_loads()

    def load(i: int) -> Plan:
        def plan(address: tuple[str, int], points: list[Point]) -> None:
            if state["loads"] is None:  # the given saturation: this server is the reference
                set_loads()
            at = measuring(settings, label, slo_pct, progress, address, points, **overrides)
            at(state["loads"][i], "load")

        return plan

    def stages() -> Iterator[Plan]:
        if state["loads"] is None and (state["saturation"] is None or first is not None):
            yield calibrate
        yield from (load(i) for i in range(len(fractions)))

    return FreshServers(stages)
