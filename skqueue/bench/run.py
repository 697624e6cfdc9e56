"""The benchmark harness behind ``skq bench run | demo | priority | memcached``.

What one experiment does
------------------------
For every policy or baseline in the experiment the harness

1. starts the server in a **subprocess** (:mod:`skqueue.bench.servers`; never in this
   process, whose GIL would otherwise be shared with the server) and waits until it answers
   a probe request (the probe doubles as a warm-up of the server's code paths);
2. optionally runs an unmeasured warm-up load;
3. runs its load points with the open-loop generator (:func:`skqueue.load.run_load`, in its
   own processes): either an explicit list of offered loads, or the ramp of docs/semantics.md §6.6
   scaled down (an optional unpaced "MAX" run, then ``start``, ``start + step``, ... with the
   step growing when the throughput gain falls under 50 % of a step, stopping when it falls
   to 1 % or after ``max_points``);
4. stops the server and records its exit code.

Points run back to back on one server, so before each point the harness waits (``--settle``,
up to 10 s) until the server answers a probe within 20 ms: the queue left behind by an
overloaded point is not charged to the next one (the wait is recorded as ``settle_s``).

Per load point it records the offered and achieved QPS, latency percentiles
p50/p90/p95/p99/p99.9 measured from the **intended** send time (open loop, so a stalled
server cannot hide behind the requests it delayed) and from the actual send time (what the
paper's generator reported), errors, unsent requests, and per-class numbers (``rt`` /
``normal``) when realtime connections are used.

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
exceeds ``R``.  So a server cannot meet the SLO by dropping requests.

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
generator processes the other half (semantics §6.13);
``--pin none`` leaves placement to the kernel.  Either way it is recorded in the output.

Outputs
-------
A table on stdout (progress goes to stderr), and under ``--out`` (default ``results/``)
``NAME.json`` (everything, including each point's full generator summary), ``NAME.csv`` (one
row per load point) and ``NAME.png`` (p99 vs achieved QPS, one line per policy, log y; the
priority experiment draws grouped bars instead).  ``NAME`` defaults to
``<experiment>-<timestamp>``.

The four experiments
--------------------
``run``        policies x loads, any protocol and service mode (the general tool);
``demo``       the default comparison (``make demo``): imbalanced echo mix, sleep service,
               4 workers; a short vanilla ramp finds vanilla's saturation ``S``; then every
               policy (vanilla, legacy, rand, best2, best2_ws, cpu2_ws, asyncio) runs at
               0.5/0.7/0.9 x S; table of p99 at ~70 %, ratio to vanilla, low-latency
               throughput.  Sized to finish in under three minutes on two cores;
``priority``   realtime connections bound to 127.0.0.2 (server ``--rt-hosts 127.0.0.2
               --tfreq F``) at light load: their p99 alone, then with background echo load at
               ~90 % of saturation, and the normal connections' p99 in the same run; also the
               same server without the realtime class, for contrast (semantics §6.8);
``memcached``  skq's memcached server under a policy or two vs the real memcached, same
               get/set load (semantics §6.9, scaled down).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from skqueue.bench import report
from skqueue.bench.servers import (
    SERVICE_MODES,
    ServerError,
    ServerProcess,
    ServerSpec,
    ServerUnavailable,
    probe,
    server_kind,
)

__all__ = [
    "CSV_COLUMNS",
    "Experiment",
    "LoadSettings",
    "Point",
    "PolicyResult",
    "Progress",
    "add_demo_arguments",
    "add_fraction_arguments",
    "add_memcached_arguments",
    "add_priority_arguments",
    "add_run_arguments",
    "demo_main",
    "fraction_plan",
    "hist_summary",
    "memcached_main",
    "measure",
    "priority_main",
    "ramp",
    "run_experiment",
    "run_main",
    "settle",
    "slo_latency_us",
    "split_cpus",
]

SCHEMA = "skqueue.bench/1"
RT_HOST = "127.0.0.2"


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
    """The load generator's knobs shared by every point of an experiment."""

    protocol: str = "rpc-echo"
    connections: int = 100
    processes: int = 1
    duration_s: float = 2.0
    warmup_s: float = 0.5
    interarrival: str = "fb_ia"
    mix: str = "echo-mix"
    seed: int = 1
    timeout_s: float = 5.0
    mc_keys: int = 10_000
    mc_key_size: int = 30
    mc_value_size: int = 200
    mc_set_ratio: float = 0.03
    probe_conns: int = 0
    probe_service: str = "zero"
    settle_s: float = 10.0
    cpus: tuple[int, ...] | None = None

    @property
    def total_connections(self) -> int:
        """Background plus probe connections."""
        return self.connections + self.probe_conns

    def config(self, address: tuple[str, int], qps: float, **overrides: Any) -> Any:
        """A :class:`skqueue.load.LoadConfig` for one point at ``qps`` (0 = unpaced).

        With ``probe_conns``, the generator's ``rt`` class (the last ids, not bound to another
        address, so the server treats them as ordinary clients) becomes the probe class:
        service ``probe_service`` and the same per-connection rate as the others.
        """
        from skqueue.load.generator import LoadConfig

        probes: dict[str, Any] = {}
        if self.probe_conns > 0:
            probes = {
                "rt_connections": self.probe_conns,
                "rt_service": self.probe_service,
                "rt_bind": None,
            }
        cfg = LoadConfig(
            host=address[0],
            port=address[1],
            protocol=self.protocol,
            qps=qps,
            connections=self.total_connections,
            processes=self.processes,
            duration_s=self.duration_s,
            warmup_s=self.warmup_s,
            interarrival=self.interarrival,
            service=self.mix,
            seed=self.seed,
            timeout_s=self.timeout_s,
            mc_keys=self.mc_keys,
            mc_key_size=self.mc_key_size,
            mc_value_size=self.mc_value_size,
            mc_set_ratio=self.mc_set_ratio,
        )
        return replace(cfg, **(probes | overrides))

    def class_names(self) -> dict[str, str]:
        """Generator class name -> name shown in results (``rt`` is ``probe`` with probes)."""
        return {"rt": "probe"} if self.probe_conns > 0 else {}

    def slo_class(self) -> str | None:
        """The class whose latency the SLO applies to (``probe`` with probes, else all)."""
        return "probe" if self.probe_conns > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe copy."""
        d = asdict(self)
        d["cpus"] = list(self.cpus) if self.cpus is not None else None
        return d


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

    def row(self) -> dict[str, Any]:
        """The flat CSV row (without experiment-level columns)."""
        r: dict[str, Any] = {
            "policy": self.label,
            "phase": self.phase,
            "target_qps": round(self.target_qps, 1),
            "offered_qps": round(self.offered_qps, 1),
            "achieved_qps": round(self.achieved_qps, 1),
        }
        for k in ("p50", "p90", "p95", "p99", "p999", "mean", "max"):
            r[f"{k}_us"] = _r(self.latency_us.get(k))
        for k in ("p50", "p99", "p999"):
            r[f"actual_{k}_us"] = _r(self.actual_us.get(k))
        r["slo_class"] = self.slo_class or "all"
        r["slo_latency_us"] = _r(self.slo_latency_us)
        r.update(
            intended=self.intended,
            recorded=self.recorded,
            completed=self.completed,
            unsent=self.unsent,
            errors=self.errors,
        )
        for k in CLASS_NAMES:
            c = self.classes.get(k)
            if c is not None and len(self.classes) > 1:
                r[f"{k}_achieved_qps"] = round(c["achieved_qps"], 1)
                r[f"{k}_p50_us"] = _r(c["latency_us"].get("p50"))
                r[f"{k}_p99_us"] = _r(c["latency_us"].get("p99"))
                r[f"{k}_p999_us"] = _r(c["latency_us"].get("p999"))
        return r

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (the generator's full summary under ``detail``)."""
        return asdict(self)


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(float(x), nd)


CLASS_NAMES = ("probe", "rt", "normal")

CSV_COLUMNS: tuple[str, ...] = (
    "experiment",
    "policy",
    "kind",
    "service",
    "phase",
    "target_qps",
    "offered_qps",
    "achieved_qps",
    "p50_us",
    "p90_us",
    "p95_us",
    "p99_us",
    "p999_us",
    "mean_us",
    "max_us",
    "actual_p50_us",
    "actual_p99_us",
    "actual_p999_us",
    "slo_class",
    "slo_latency_us",
    "meets_slo",
    "intended",
    "recorded",
    "completed",
    "unsent",
    "errors",
    *(f"{k}_{m}" for k in CLASS_NAMES for m in ("achieved_qps", "p50_us", "p99_us", "p999_us")),
)


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
def _affinity(cpus: Sequence[int] | None) -> Iterator[None]:
    """Run the block (and the processes it spawns) on ``cpus``; restore afterwards."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


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
        proto = "memcached" if settings.protocol == "memcached" else "rpc"
        settled, waited = settle(address, proto, timeout_s=settings.settle_s)
    cfg = settings.config(address, qps, **overrides)
    retries = 0
    while True:
        try:
            with _affinity(settings.cpus):
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


def run_policy(
    spec: ServerSpec, plan: Plan, progress: Progress, startup_timeout: float = 30.0
) -> PolicyResult:
    """Start ``spec``'s server, run ``plan(address, points)``, stop it; never raises for
    server or load failures (they are recorded in the result's ``status``/``error``)."""
    result = PolicyResult(spec)
    srv = ServerProcess(spec, startup_timeout=startup_timeout)
    t = time.monotonic()
    progress(f"{spec.label}: starting {spec.kind} server ({spec.proto}, {spec.threads} threads)")
    try:
        result.address = srv.start()
    except ServerUnavailable as exc:
        result.status, result.error = "unavailable", str(exc)
        progress(f"{spec.label}: SKIPPED: {exc}")
        return result
    except ServerError as exc:
        result.status, result.error = "failed", str(exc)
        result.returncode = srv.returncode
        progress(f"{spec.label}: FAILED to start: {str(exc).splitlines()[0]}")
        return result
    result.start_s = time.monotonic() - t
    progress(f"{spec.label}: ready on {result.address[0]}:{result.address[1]}")
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
        result.returncode = srv.stop()
    if result.status == "failed" and result.error and "died" in result.error:
        progress(f"{spec.label}: server died (exit code {result.returncode})")
    return result


def _point_line(pt: Point) -> str:
    return (
        f"{pt.label} [{pt.phase}] target {report.fmt_num(pt.target_qps) if pt.paced else 'MAX'}"
        f" -> achieved {report.fmt_num(pt.achieved_qps)} QPS, p50 "
        f"{report.fmt_us(pt.p('p50'))} p99 {report.fmt_us(pt.p('p99'))} "
        f"p99.9 {report.fmt_us(pt.p('p999'))} us, errors {pt.errors}"
        + (f", unsent {pt.unsent}" if pt.unsent else "")
        + (f" (server busy {pt.detail.get('settle_s')} s before)" if _late_settle(pt) else "")
    )


def _late_settle(pt: Point) -> bool:
    return not pt.detail.get("settled", True) or float(pt.detail.get("settle_s", 0.0)) > 0.5


def _measuring(
    settings: LoadSettings,
    label: str,
    slo_pct: float,
    progress: Progress,
    address: tuple[str, int],
    points: list[Point],
    **overrides: Any,
) -> Callable[[float, str], Point]:
    def at(qps: float, phase: str) -> Point:
        pt = measure(address, settings, label, phase, qps, slo_pct, **overrides)
        points.append(pt)
        progress("  " + _point_line(pt))
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

    def service_text(self) -> str:
        """One line naming the server's service-time mode and what it stands for."""
        if self.service is None:
            return "service: none (no artificial service time: the requests' own work)"
        return f"service mode '{self.service}': {SERVICE_MODES.get(self.service, '?')}"

    def slo_text(self) -> str:
        """One line stating the SLO used for low-latency throughput."""
        who = "of the probe requests" if self.settings.slo_class() == "probe" else "of all requests"
        return (
            f"low-latency throughput = highest achieved QPS with p{_pct(self.slo_pct)} {who} "
            f"(from intended send time; lost requests count as infinitely late) "
            f"<= {report.fmt_num(self.slo_us)} us"
        )

    def rows(self) -> list[dict[str, Any]]:
        """One CSV row per load point."""
        out = []
        for pr in self.policies:
            for pt in pr.points:
                r = pt.row()
                r.update(
                    experiment=self.kind,
                    kind=pr.spec.kind,
                    service=self.service or "",
                    meets_slo=int(pt.meets(self.slo_us)),
                )
                out.append(r)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-safe."""
        return {
            "schema": SCHEMA,
            "experiment": self.kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "wall_s": round(self.wall_s, 2),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
                "platform": platform.platform(),
            },
            "service_mode": {
                "name": self.service,
                "meaning": SERVICE_MODES.get(self.service or "", None),
            },
            "latency": {
                "unit": "us",
                "latency_us": "from the intended send time (open loop; no coordinated omission)",
                "actual_us": "from the actual send time (what dismember reported)",
            },
            "slo": {
                "percentile": self.slo_pct,
                "target_us": self.slo_us,
                "latency": "intended",
                "rule": self.slo_text(),
            },
            "cpu_placement": self.pin,
            "load": self.settings.to_dict(),
            "params": self.params,
            "notes": self.notes,
            "summary": self.summary,
            "policies": [pr.to_dict(self.slo_us, self.llt_phases) for pr in self.policies],
        }


def _pct(p: float) -> str:
    return f"{p:g}"


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
    plan_for: Callable[[ServerSpec], Plan],
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


# ----------------------------------------------------------------------------- output


def summary_table(exp: Experiment) -> str:
    """Per policy: saturation, low-latency throughput, status."""
    headers = [
        "policy",
        "kind",
        "points",
        "max achieved QPS",
        f"low-lat. QPS (p{_pct(exp.slo_pct)}<={report.fmt_num(exp.slo_us)}us)",
        "status",
    ]
    rows = []
    for pr in exp.policies:
        rows.append(
            [
                pr.label,
                pr.spec.kind,
                len(pr.points),
                report.fmt_num(pr.saturation_qps()),
                report.fmt_num(pr.low_latency_throughput(exp.slo_us, exp.llt_phases)),
                pr.status if pr.status == "ok" else f"{pr.status}: {_first_line(pr.error)}",
            ]
        )
    return report.format_table(headers, rows, [False, False, True, True, True, False])


def _first_line(s: str | None) -> str:
    return (s or "").strip().splitlines()[0][:70] if (s or "").strip() else ""


def points_table(exp: Experiment) -> str:
    """Every load point."""
    headers = [
        "policy",
        "phase",
        "target",
        "offered",
        "achieved",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "p99 actual",
        f"p{_pct(exp.slo_pct)}*",
        "errors",
        "unsent",
    ]
    probes = exp.settings.slo_class() == "probe"
    if probes:
        headers[9:9] = ["probe p50", "probe p99"]
    rows = []
    for pr in exp.policies:
        for pt in pr.points:
            probe_cols = (
                [report.fmt_us(pt.slo_p("p50")), report.fmt_us(pt.slo_p("p99"))] if probes else []
            )
            rows.append(
                [
                    pr.label,
                    pt.phase,
                    report.fmt_num(pt.target_qps) if pt.paced else "MAX",
                    report.fmt_num(pt.offered_qps),
                    report.fmt_num(pt.achieved_qps),
                    report.fmt_us(pt.p("p50")),
                    report.fmt_us(pt.p("p90")),
                    report.fmt_us(pt.p("p99")),
                    report.fmt_us(pt.p("p999")),
                    *probe_cols,
                    report.fmt_us(pt.actual_us.get("p99")),
                    report.fmt_us(pt.slo_latency_us) + ("" if pt.meets(exp.slo_us) else " x"),
                    pt.errors,
                    pt.unsent,
                ]
            )
    right = [False, False] + [True] * (len(headers) - 2)
    return report.format_table(headers, rows, right)


def header_lines(exp: Experiment) -> list[str]:
    """The lines stating what was measured and how."""
    s = exp.settings
    probes = (
        f" + {s.probe_conns} probe connections (service {s.probe_service}; like dismember's "
        "master, they measure what ordinary requests suffer)"
        if s.probe_conns
        else ""
    )
    lines = [
        f"skq bench {exp.kind}: {exp.service_text()}",
        f"load: {s.protocol}, {s.connections} connections{probes}, "
        f"{s.processes} generator process(es), "
        f"inter-arrival {s.interarrival}"
        + (f", service mix {s.mix}" if s.protocol == "rpc-echo" else "")
        + f", warm-up {s.warmup_s:g} s + {s.duration_s:g} s per point, CPU placement {exp.pin}",
        "latencies in us from the intended send time (open loop); "
        "'p99 actual' from the actual send time",
        exp.slo_text(),
    ]
    return lines


def write_outputs(
    exp: Experiment, out_dir: Path, name: str | None, plot: bool, progress: Progress
) -> dict[str, str]:
    """Write NAME.json, NAME.csv and (if ``plot``) NAME.png; returns the paths written."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(exp.started))
    base = name or f"{exp.kind}-{stamp}"
    files: dict[str, str] = {}
    csv_path = report.write_csv(out_dir / f"{base}.csv", exp.rows(), CSV_COLUMNS)
    files["csv"] = str(csv_path)
    if plot:
        try:
            png = out_dir / f"{base}.png"
            if exp.kind == "priority":
                _plot_priority(exp, png)
            else:
                _plot_curves(exp, png)
            files["png"] = str(png)
        except ImportError as exc:
            exp.notes.append(f"no plot: {exc}")
            progress(f"no plot written ({exc})")
    json_path = out_dir / f"{base}.json"
    files["json"] = str(json_path)
    data = exp.to_dict()
    data["files"] = files
    report.write_json(json_path, data)
    return files


def _plot_curves(exp: Experiment, png: Path) -> None:
    series: dict[str, list[tuple[float, float | None]]] = {}
    for pr in exp.policies:
        # one line per policy over the comparable phases; other paced points (e.g. the
        # reference's ramp in the demo) get a line of their own
        groups: dict[str, list[Point]] = {}
        for p in pr.points:
            if not p.paced:
                continue
            main = exp.llt_phases is None or p.phase in exp.llt_phases
            groups.setdefault(pr.label if main else f"{pr.label} ({p.phase})", []).append(p)
        for name, pts in groups.items():
            pts.sort(key=lambda p: p.target_qps)
            series[name] = [(p.achieved_qps, p.slo_p("p99")) for p in pts]
    who = "probe requests' " if exp.settings.slo_class() == "probe" else ""
    report.plot_latency_curves(
        png,
        series,
        title=f"skq bench {exp.kind}: {who}p99 latency vs achieved throughput",
        ylabel=f"{who}p99 latency, µs (from intended send time, log scale)",
        slo_us=exp.slo_us,
        slo_label=f"SLO p{_pct(exp.slo_pct)} ≤ {report.fmt_num(exp.slo_us)} µs",
        subtitle=exp.service_text(),
    )


def _plot_priority(exp: Experiment, png: Path) -> None:
    rows = exp.summary.get("rows", [])
    groups = [r["config"] for r in rows]
    bars = {
        "rt p99 unloaded": [r.get("rt_p99_unloaded_us") for r in rows],
        "rt p99 loaded": [r.get("rt_p99_loaded_us") for r in rows],
        "normal p99 loaded": [r.get("normal_p99_loaded_us") for r in rows],
    }
    report.plot_bars(
        png,
        groups,
        bars,
        title="skq bench priority: realtime vs normal p99 (µs, from intended send time)",
        ylabel="p99 latency, µs (log scale)",
    )


def finish(
    exp: Experiment,
    args: argparse.Namespace,
    progress: Progress,
    extra_tables: Sequence[str] = (),
    show_points: bool = True,
) -> int:
    """Print the tables, write the files; exit code 0 unless every policy failed."""
    files = write_outputs(exp, Path(args.out), args.name, not args.no_plot, progress)
    out = header_lines(exp)
    if exp.notes:
        out += [f"note: {n}" for n in exp.notes]
    if show_points:
        out += ["", points_table(exp)]
        out += [f"(* p{_pct(exp.slo_pct)} with lost requests counted as infinite; x = misses SLO)"]
    out += ["", summary_table(exp)]
    for t in extra_tables:
        out += ["", t]
    out += ["", "written: " + ", ".join(files[k] for k in ("json", "csv", "png") if k in files)]
    print("\n".join(out), flush=True)
    ok = any(pr.status == "ok" for pr in exp.policies)
    return 0 if ok else 1


# ----------------------------------------------------------------------------- arguments


def _floats(text: str) -> list[float]:
    vals = [float(x) for x in text.replace(" ", "").split(",") if x]
    if not vals or any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError("expected a comma-separated list of numbers >= 0")
    return vals


def _labels(text: str) -> list[str]:
    vals = [x.strip() for x in text.split(",") if x.strip()]
    if not vals:
        raise argparse.ArgumentTypeError("expected a comma-separated list of labels")
    return vals


def _add_common(
    p: argparse.ArgumentParser,
    *,
    duration: float,
    warmup: float,
    conns: int,
    slo_us: float,
    interarrival: str = "fb_ia",
    probe_conns: int | None = None,
    threads: int = 4,
) -> None:
    a = p.add_argument
    a("--threads", type=int, default=threads, help="server worker threads (default %(default)s)")
    a("--conns", type=int, default=conns, help="client connections (default %(default)s)")
    if probe_conns is not None:
        a(
            "--probe-conns",
            type=int,
            default=probe_conns,
            help="extra connections sending zero-service requests whose latency the SLO and "
            "the summary use, like dismember's master (default %(default)s; 0 = SLO on all)",
        )
    a("--procs", type=int, default=1, help="load generator processes (default %(default)s)")
    a("--duration", type=float, default=duration, help="measured s per point (%(default)s)")
    a("--warmup", type=float, default=warmup, help="unmeasured s before each (%(default)s)")
    a("--interarrival", default=interarrival, help="inter-arrival distribution (%(default)s)")
    a("--seed", type=int, default=1, help="load generator seed (default %(default)s)")
    a("--slo-us", type=float, default=slo_us, help="latency target in µs (default %(default)s)")
    a("--slo-pct", type=float, default=99.0, help="SLO percentile (default %(default)s)")
    a(
        "--pin",
        choices=("split", "none"),
        default="split",
        help="split: server on the first half of the CPUs, generator on the rest (default)",
    )
    a("--timeout", type=float, default=5.0, help="generator set-up/drain bound, s (5)")
    a(
        "--settle",
        type=float,
        default=10.0,
        help="before each point, wait up to this many s for the server to answer a probe "
        "promptly (its backlog drained); 0 = off (default %(default)s)",
    )
    a("--out", default="results", help="output directory (default %(default)s)")
    a("--name", default=None, help="output file base name (default EXPERIMENT-TIMESTAMP)")
    a("--no-plot", action="store_true", help="do not write the PNG plot")
    a("--quiet", action="store_true", help="no progress lines on stderr")


def _settings(args: argparse.Namespace, protocol: str, load_cpus: Any) -> LoadSettings:
    return LoadSettings(
        protocol=protocol,
        connections=args.conns,
        processes=args.procs,
        duration_s=args.duration,
        warmup_s=args.warmup,
        interarrival=args.interarrival,
        mix=getattr(args, "mix", "echo-mix"),
        seed=args.seed,
        timeout_s=args.timeout,
        mc_keys=getattr(args, "mc_keys", 10_000),
        mc_value_size=getattr(args, "mc_value_size", 200),
        mc_set_ratio=getattr(args, "mc_set_ratio", 0.03),
        probe_conns=getattr(args, "probe_conns", 0),
        settle_s=args.settle,
        cpus=load_cpus,
    )


def _check_common(args: argparse.Namespace) -> None:
    if args.conns < 1 or args.procs < 1 or args.threads < 1:
        raise SystemExit("--conns, --procs and --threads must be >= 1")
    if getattr(args, "probe_conns", 0) < 0:
        raise SystemExit("--probe-conns must be >= 0")
    if args.duration <= 0 or args.warmup < 0:
        raise SystemExit("--duration must be > 0 and --warmup >= 0")
    if not 0 < args.slo_pct <= 100 or args.slo_us <= 0:
        raise SystemExit("--slo-pct must be in (0, 100] and --slo-us > 0")


# ----------------------------------------------------------------------------- run


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``skq bench run``."""
    a = p.add_argument
    a(
        "--policies",
        type=_labels,
        default=["vanilla", "legacy", "best2_ws", "asyncio"],
        help="comma-separated SKQ labels, vanilla, legacy, asyncio, uvloop, memcached "
        "(default vanilla,legacy,best2_ws,asyncio)",
    )
    a("--proto", choices=("rpc", "memcached"), default="rpc", help="wire protocol")
    a(
        "--service",
        choices=tuple(SERVICE_MODES),
        default="sleep",
        help="server service-time mode: sleep (GIL released, stands for I/O), hash "
        "(GIL-releasing compute), spin (holds the GIL); default sleep",
    )
    a("--mix", default="echo-mix", help="per-request service time spec (rpc; %(default)s)")
    a("--loads", type=_floats, default=None, help="explicit offered loads, QPS (comma list)")
    a(
        "--ramp",
        default="auto",
        help="START:STEP QPS for the docs/semantics.md §6.6 ramp, or 'auto' (an unpaced MAX run, "
        "then START = STEP = MAX/4); ignored with --loads",
    )
    a("--max-points", type=int, default=6, help="ramp: at most this many points (default 6)")
    a("--max-run", action="store_true", help="also do the unpaced MAX run with --ramp S:T")
    a("--ramp-stop-us", type=float, default=None, help="ramp: stop once p99 exceeds this")
    a("--server-warmup", type=float, default=0.0, help="unmeasured load seconds after start")
    a("--mc-keys", type=int, default=10_000, help="memcached: keys (preloaded)")
    a("--mc-value-size", type=int, default=200, help="memcached: value bytes")
    a("--mc-set-ratio", type=float, default=0.03, help="memcached: share of sets")
    _add_common(p, duration=2.0, warmup=0.5, conns=100, slo_us=5000.0, probe_conns=0)


def _parse_ramp(text: str) -> tuple[float, float] | None:
    if text == "auto":
        return None
    try:
        start, step = (float(x) for x in text.split(":"))
    except ValueError:
        raise SystemExit(f"--ramp must be START:STEP or auto, not {text!r}") from None
    if start <= 0 or step <= 0:
        raise SystemExit("--ramp START and STEP must be > 0")
    return start, step


def _specs(
    labels: Sequence[str],
    proto: str,
    threads: int,
    service: str,
    server_cpus: tuple[int, ...] | None,
    **kw: Any,
) -> list[ServerSpec]:
    from skqueue.sched import parse_sched

    specs = []
    for label in labels:
        if server_kind(label) == "skq" and label not in ("vanilla", "legacy"):
            try:
                parse_sched(label)
            except (ValueError, KeyError) as exc:
                raise SystemExit(f"unknown policy label {label!r}: {exc}") from None
        specs.append(
            ServerSpec(
                policy=label,
                proto=proto,
                threads=threads,
                service=service,
                cpus=server_cpus,
                **kw,
            )
        )
    return specs


def _mc_preload(address: tuple[str, int], settings: LoadSettings, progress: Progress) -> None:
    from skqueue.load.generator import memcached_preload

    n = memcached_preload(
        address[0],
        address[1],
        settings.mc_keys,
        settings.mc_key_size,
        settings.mc_value_size,
        settings.timeout_s * 4,
    )
    progress(f"  preloaded {n} keys")


def _standard_plan(
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
    def plan(address: tuple[str, int], points: list[Point]) -> None:
        if settings.protocol == "memcached":
            _mc_preload(address, settings, progress)
        at = _measuring(settings, label, slo_pct, progress, address, points)
        if server_warmup > 0:
            first = (loads[0] if loads else None) or (ramp_spec[0] if ramp_spec else 0.0)
            measure(
                address,
                replace(settings, duration_s=server_warmup, warmup_s=0.0),
                label,
                "warmup",
                first,
                slo_pct,
            )
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


def run_main(args: argparse.Namespace) -> int:
    """``skq bench run``."""
    _check_common(args)
    progress = Progress(quiet=args.quiet)
    server_cpus, load_cpus = split_cpus(args.pin)
    protocol = "memcached" if args.proto == "memcached" else "rpc-echo"
    if "memcached" in args.policies and args.proto != "memcached":
        raise SystemExit("the real memcached baseline needs --proto memcached")
    settings = _settings(args, protocol, load_cpus)
    specs = _specs(args.policies, args.proto, args.threads, args.service, server_cpus)
    ramp_spec = None if args.loads else _parse_ramp(args.ramp)

    def plan_for(spec: ServerSpec) -> Plan:
        return _standard_plan(
            settings,
            args.slo_pct,
            progress,
            loads=args.loads,
            ramp_spec=ramp_spec,
            max_points=args.max_points,
            max_run=args.max_run,
            ramp_stop_us=args.ramp_stop_us,
            server_warmup=args.server_warmup,
            label=spec.label,
        )

    exp = run_experiment(
        "run",
        specs,
        settings,
        plan_for,
        service=args.service if args.proto == "rpc" else None,
        slo_pct=args.slo_pct,
        slo_us=args.slo_us,
        progress=progress,
        pin=_pin_text(args.pin, server_cpus, load_cpus),
        params={
            "policies": args.policies,
            "proto": args.proto,
            "threads": args.threads,
            "loads": args.loads,
            "ramp": args.ramp if not args.loads else None,
            "max_points": args.max_points,
        },
    )
    return finish(exp, args, progress)


def _pin_text(mode: str, server: Any, load: Any) -> str:
    if mode == "none" or server is None:
        return "none (kernel placement)"
    return f"split: server on CPUs {list(server)}, load generator on CPUs {list(load)}"


# ----------------------------------------------------------------------------- demo

DEMO_POLICIES = ["vanilla", "legacy", "rand", "best2", "best2_ws", "cpu2_ws", "asyncio"]


def add_fraction_arguments(
    p: argparse.ArgumentParser, fractions: Sequence[float], ramp_points: int, note: str = ""
) -> None:
    """``--policies``, ``--fractions``, ``--ramp-points`` and ``--saturation`` of
    :func:`fraction_plan` experiments (demo, mixgraph)."""
    a = p.add_argument
    a(
        "--policies",
        type=_labels,
        default=list(DEMO_POLICIES),
        help=f"the first is the reference whose saturation sets the loads{note} "
        f"(default {','.join(DEMO_POLICIES)})",
    )
    a(
        "--fractions",
        type=_floats,
        default=list(fractions),
        help="loads as fractions of the reference's saturation "
        f"(default {','.join(f'{f:g}' for f in fractions)})",
    )
    a("--ramp-points", type=int, default=ramp_points,
      help=f"points of the reference's ramp (default {ramp_points})")
    a("--saturation", type=float, default=None, help="skip the ramp: reference saturation QPS")


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``skq bench demo``."""
    add_fraction_arguments(p, [0.3, 0.5, 0.7, 0.9], 4)
    a = p.add_argument
    a("--service", choices=tuple(SERVICE_MODES), default="sleep", help="service mode (sleep)")
    # The paper's per-connection mix (95/4/1 % at 10/50/200 units) with 100 µs units, i.e.
    # 1 ms / 5 ms / 20 ms: service time, not the interpreter, is then the bottleneck
    # (about 60 µs of Python per request), which is the regime SKQ is about.  With 10 µs
    # units a 2-core GIL machine saturates its one server core first and every policy
    # looks alike (docs/benchmarks.md shows both).
    a("--mix", default="echo-mix:100", help="per-request service time spec (%(default)s)")
    _add_common(
        p, duration=2.5, warmup=0.5, conns=100, slo_us=10000.0, probe_conns=20, threads=8
    )


def demo_main(args: argparse.Namespace) -> int:
    """``skq bench demo``: the default comparison (``make demo``)."""
    _check_common(args)
    progress = Progress(quiet=args.quiet)
    server_cpus, load_cpus = split_cpus(args.pin)
    settings = _settings(args, "rpc-echo", load_cpus)
    specs = _specs(args.policies, "rpc", args.threads, args.service, server_cpus)
    fractions = sorted(args.fractions)
    state: dict[str, Any] = {"saturation": args.saturation, "loads": None, "reference": None}

    def plan_for(spec: ServerSpec) -> Plan:
        return fraction_plan(
            settings, spec.label, args.slo_pct, progress, state, fractions, args.ramp_points
        )

    exp = run_experiment(
        "demo",
        specs,
        settings,
        plan_for,
        service=args.service,
        slo_pct=args.slo_pct,
        slo_us=args.slo_us,
        progress=progress,
        pin=_pin_text(args.pin, server_cpus, load_cpus),
        llt_phases=("load",),
        params={"policies": args.policies, "fractions": fractions, "threads": args.threads},
    )
    table = _demo_summary(exp, fractions, state)
    return finish(exp, args, progress, extra_tables=[table])


def fraction_plan(
    settings: LoadSettings,
    label: str,
    slo_pct: float,
    progress: Progress,
    state: dict[str, Any],
    fractions: Sequence[float],
    ramp_points: int,
    **overrides: Any,
) -> Plan:
    """The demo's plan: the first server that comes up is the reference -- unless
    ``state["saturation"]`` is given, an unpaced MAX run and a ramp find its saturation
    ``S`` -- then every server runs ``fractions`` x ``S`` ("load" points).  ``state`` holds
    ``saturation``, ``loads`` and ``reference`` across the servers; ``overrides`` go to
    every point's load configuration."""

    def plan(address: tuple[str, int], points: list[Point]) -> None:
        at = _measuring(settings, label, slo_pct, progress, address, points, **overrides)
        if state["loads"] is None:
            state["reference"] = label
            if state["saturation"] is None:
                mx = at(0.0, "max")
                base = max(10.0, round(mx.achieved_qps / 4.0, -1))
                rp = ramp(at, base, base, ramp_points)
                state["saturation"] = max(p.achieved_qps for p in rp)
                progress(
                    f"{label}: saturation ~{report.fmt_num(state['saturation'])} QPS "
                    f"(unpaced MAX {report.fmt_num(mx.achieved_qps)})"
                )
            state["loads"] = [max(10.0, round(f * state["saturation"], -1)) for f in fractions]
        for q in state["loads"]:
            at(q, "load")

    return plan


def _demo_summary(exp: Experiment, fractions: Sequence[float], state: dict[str, Any]) -> str:
    loads: list[float] = state["loads"] or []
    sat = state["saturation"]
    ref_label = state["reference"]
    probes = exp.settings.slo_class() == "probe"
    who = "probe " if probes else ""
    # the load closest to 70 % of the reference saturation
    frac = min(fractions, key=lambda f: abs(f - 0.7)) if fractions else 0.7
    q70 = loads[fractions.index(frac)] if loads else None
    ref = next((pr for pr in exp.policies if pr.label == ref_label), None)
    ref_pt = ref.point_near(q70, "load") if (ref and q70 is not None) else None
    ref_p99 = ref_pt.slo_p("p99") if ref_pt else None
    rows = []
    summary_rows = []
    for pr in exp.policies:
        pt = pr.point_near(q70, "load") if q70 is not None else None
        p99 = pt.slo_p("p99") if pt else None
        ratio = (p99 / ref_p99) if (p99 and ref_p99) else None
        llt = pr.low_latency_throughput(exp.slo_us, ("load",))
        rows.append(
            [
                pr.label,
                report.fmt_num(pt.achieved_qps) if pt else "-",
                report.fmt_us(pt.slo_p("p50")) if pt else "-",
                report.fmt_us(p99) if pt else "-",
                report.fmt_us(pt.slo_p("p999")) if pt else "-",
                f"{ratio:.2f}x" if ratio else "-",
                report.fmt_us(pt.p("p99")) if pt else "-",
                report.fmt_num(llt),
                pr.status,
            ]
        )
        summary_rows.append(
            {
                "policy": pr.label,
                "achieved_qps_at_70": pt.achieved_qps if pt else None,
                "slo_class": exp.settings.slo_class() or "all",
                "p50_us_at_70": pt.slo_p("p50") if pt else None,
                "p99_us_at_70": p99,
                "p999_us_at_70": pt.slo_p("p999") if pt else None,
                "all_p99_us_at_70": pt.p("p99") if pt else None,
                "p99_ratio_vs_reference": ratio,
                "low_latency_throughput_qps": llt,
                "status": pr.status,
            }
        )
    exp.summary.update(
        reference=ref_label,
        reference_saturation_qps=sat,
        fractions=list(fractions),
        loads_qps=loads,
        load_at_70_qps=q70,
        rows=summary_rows,
    )
    title = (
        f"At ~{frac:.0%} of {ref_label}'s saturation ({report.fmt_num(sat)} QPS): offered "
        f"{report.fmt_num(q70)} QPS; {who}latency in us from the intended send time"
    )
    headers = [
        "policy",
        "achieved",
        f"{who}p50",
        f"{who}p99",
        f"{who}p99.9",
        f"p99 vs {ref_label}",
        "all p99",
        f"low-lat. QPS ({who}p{_pct(exp.slo_pct)}<={report.fmt_num(exp.slo_us)}us)",
        "status",
    ]
    right = [False, True, True, True, True, True, True, True, False]
    return title + "\n" + report.format_table(headers, rows, right)


# ----------------------------------------------------------------------------- priority


def add_priority_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``skq bench priority``."""
    a = p.add_argument
    a("--policy", default="cpu2_ws", help="SKQ policy of the server (default %(default)s)")
    a("--tfreq", type=int, default=10_000, help="server --tfreq (default %(default)s)")
    a("--rtshare", type=int, default=None, help="server --rtshare (default: server's, 100)")
    a("--rt-conns", type=int, default=4, help="realtime connections (default %(default)s)")
    a("--rt-qps", type=float, default=200.0, help="realtime total QPS (default %(default)s)")
    a("--rt-service", default="zero", help="realtime requests' service spec (%(default)s)")
    a("--bg-fraction", type=float, default=0.9, help="background load / saturation (0.9)")
    a("--bg-qps", type=float, default=None, help="explicit background QPS (skips MAX run)")
    a("--service", choices=tuple(SERVICE_MODES), default="sleep", help="service mode (sleep)")
    a("--mix", default="echo-mix", help="background service time spec (%(default)s)")
    a(
        "--no-contrast",
        action="store_true",
        help="skip the same server without a realtime class",
    )
    _add_common(p, duration=2.0, warmup=0.5, conns=100, slo_us=5000.0, interarrival="exponential")


def priority_main(args: argparse.Namespace) -> int:
    """``skq bench priority``: realtime p99 unloaded vs under ~90 % background load."""
    _check_common(args)
    if args.rt_conns < 1 or args.rt_qps <= 0:
        raise SystemExit("--rt-conns must be >= 1 and --rt-qps > 0")
    progress = Progress(quiet=args.quiet)
    server_cpus, load_cpus = split_cpus(args.pin)
    settings = _settings(args, "rpc-echo", load_cpus)
    base = _specs([args.policy], "rpc", args.threads, args.service, server_cpus)[0]
    specs = [
        replace(
            base,
            name=f"{args.policy}+rt",
            rt_hosts=(RT_HOST,),
            tfreq=args.tfreq,
            rtshare=args.rtshare,
        )
    ]
    if not args.no_contrast:
        specs.append(replace(base, name=f"{args.policy} (no rt)"))
    state: dict[str, Any] = {"bg_qps": args.bg_qps}
    rt_total = args.conns + args.rt_conns

    def plan_for(spec: ServerSpec) -> Plan:
        def plan(address: tuple[str, int], points: list[Point]) -> None:
            def at(qps: float, phase: str, **kw: Any) -> Point:
                pt = measure(address, settings, spec.label, phase, qps, args.slo_pct, **kw)
                points.append(pt)
                progress("  " + _point_line(pt) + _class_text(pt))
                return pt

            # 1. realtime connections alone, light load
            at(
                args.rt_qps,
                "unloaded",
                connections=args.rt_conns,
                rt_connections=args.rt_conns,
                rt_qps=args.rt_qps,
                rt_service=args.rt_service,
                rt_bind=RT_HOST,
            )
            # 2. background saturation (normal connections only), once
            if state["bg_qps"] is None:
                mx = at(0.0, "max")
                state["bg_qps"] = max(10.0, round(args.bg_fraction * mx.achieved_qps, -1))
                progress(f"  background load: {report.fmt_num(state['bg_qps'])} QPS")
            # 3. realtime + background in the same run
            at(
                state["bg_qps"] + args.rt_qps,
                "loaded",
                connections=rt_total,
                rt_connections=args.rt_conns,
                rt_qps=args.rt_qps,
                rt_service=args.rt_service,
                rt_bind=RT_HOST,
            )

        return plan

    exp = run_experiment(
        "priority",
        specs,
        settings,
        plan_for,
        service=args.service,
        slo_pct=args.slo_pct,
        slo_us=args.slo_us,
        progress=progress,
        pin=_pin_text(args.pin, server_cpus, load_cpus),
        llt_phases=("loaded",),
        params={
            "policy": args.policy,
            "tfreq": args.tfreq,
            "rtshare": args.rtshare,
            "rt_conns": args.rt_conns,
            "rt_qps": args.rt_qps,
            "rt_service": args.rt_service,
            "rt_bind": RT_HOST,
            "bg_fraction": args.bg_fraction,
        },
    )
    table = _priority_summary(exp, state)
    return finish(exp, args, progress, extra_tables=[table])


def _class_text(pt: Point) -> str:
    parts = []
    for k in ("rt", "normal"):
        c = pt.classes.get(k)
        if c is not None and len(pt.classes) > 1:
            parts.append(f"{k} p99 {report.fmt_us(c['latency_us'].get('p99'))}")
    return (" | " + ", ".join(parts)) if parts else ""


def _cls(pt: Point | None, klass: str, key: str = "p99") -> float | None:
    if pt is None:
        return None
    c = pt.classes.get(klass)
    if c is None:
        return None
    v = c["latency_us"].get(key)
    return None if v is None else float(v)


def _priority_summary(exp: Experiment, state: dict[str, Any]) -> str:
    rows = []
    summary_rows = []
    for pr in exp.policies:
        un = next((p for p in pr.points if p.phase == "unloaded"), None)
        lo = next((p for p in pr.points if p.phase == "loaded"), None)
        r: dict[str, Any] = {
            "config": pr.label,
            "rt_p99_unloaded_us": _cls(un, "rt"),
            "rt_p50_loaded_us": _cls(lo, "rt", "p50"),
            "rt_p99_loaded_us": _cls(lo, "rt"),
            "rt_p999_loaded_us": _cls(lo, "rt", "p999"),
            "normal_p99_loaded_us": _cls(lo, "normal"),
            "normal_achieved_qps": (lo.classes.get("normal") or {}).get("achieved_qps")
            if lo
            else None,
            "status": pr.status,
        }
        summary_rows.append(r)
        rows.append(
            [
                pr.label,
                report.fmt_us(r["rt_p99_unloaded_us"]) if un else "-",
                report.fmt_us(r["rt_p50_loaded_us"]) if lo else "-",
                report.fmt_us(r["rt_p99_loaded_us"]) if lo else "-",
                report.fmt_us(r["normal_p99_loaded_us"]) if lo else "-",
                report.fmt_num(r["normal_achieved_qps"]),
                pr.status,
            ]
        )
    exp.summary.update(background_qps=state.get("bg_qps"), rows=summary_rows)
    headers = [
        "server",
        "rt p99 alone",
        "rt p50 loaded",
        "rt p99 loaded",
        "normal p99 loaded",
        "normal QPS",
        "status",
    ]
    title = (
        f"Realtime class (bound to {RT_HOST}) alone, then with background load "
        f"{report.fmt_num(state.get('bg_qps'))} QPS (µs, from intended send time)"
    )
    right = [False, True, True, True, True, True, False]
    return title + "\n" + report.format_table(headers, rows, right)


# ----------------------------------------------------------------------------- memcached


def add_memcached_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``skq bench memcached``."""
    a = p.add_argument
    a(
        "--policies",
        type=_labels,
        default=["vanilla", "best2_ws", "memcached"],
        help="skq policies and/or 'memcached' (the real one); default vanilla,best2_ws,memcached",
    )
    a("--loads", type=_floats, default=None, help="explicit offered loads, QPS (comma list)")
    a("--ramp", default="auto", help="START:STEP or auto (MAX run, then MAX/4 steps)")
    a("--max-points", type=int, default=5, help="ramp: at most this many points (default 5)")
    a("--mc-keys", type=int, default=10_000, help="keys (preloaded; default %(default)s)")
    a("--mc-value-size", type=int, default=200, help="value bytes (default %(default)s)")
    a("--mc-set-ratio", type=float, default=0.03, help="share of sets (default %(default)s)")
    _add_common(p, duration=2.0, warmup=0.5, conns=50, slo_us=2000.0)


def memcached_main(args: argparse.Namespace) -> int:
    """``skq bench memcached``: skq's memcached server vs the real memcached."""
    _check_common(args)
    progress = Progress(quiet=args.quiet)
    server_cpus, load_cpus = split_cpus(args.pin)
    settings = _settings(args, "memcached", load_cpus)
    specs = _specs(args.policies, "memcached", args.threads, "sleep", server_cpus)
    ramp_spec = None if args.loads else _parse_ramp(args.ramp)

    def plan_for(spec: ServerSpec) -> Plan:
        return _standard_plan(
            settings,
            args.slo_pct,
            progress,
            loads=args.loads,
            ramp_spec=ramp_spec,
            max_points=args.max_points,
            max_run=False,
            ramp_stop_us=None,
            server_warmup=0.0,
            label=spec.label,
        )

    exp = run_experiment(
        "memcached",
        specs,
        settings,
        plan_for,
        service=None,
        slo_pct=args.slo_pct,
        slo_us=args.slo_us,
        progress=progress,
        pin=_pin_text(args.pin, server_cpus, load_cpus),
        params={"policies": args.policies, "threads": args.threads, "loads": args.loads},
    )
    return finish(exp, args, progress)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m skqueue.bench.run {run,demo,priority,memcached} ...`` (same as skq bench)."""
    parser = argparse.ArgumentParser(prog="python -m skqueue.bench.run")
    sub = parser.add_subparsers(dest="bench", required=True)
    for name, add, fn in (
        ("run", add_run_arguments, run_main),
        ("demo", add_demo_arguments, demo_main),
        ("priority", add_priority_arguments, priority_main),
        ("memcached", add_memcached_arguments, memcached_main),
    ):
        sp = sub.add_parser(name)
        add(sp)
        sp.set_defaults(_fn=fn)
    args = parser.parse_args(argv)
    rc: int = args._fn(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
