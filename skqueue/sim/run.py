"""Running simulations: one run, sweeps over a process pool or Dask, and summaries.

:func:`simulate` is a pure function of its :class:`SimConfig` (seed included): two calls
with equal configs return equal :class:`SimResult` objects, bit for bit (wall-clock time
is kept out of the comparison).  That is what lets :func:`sweep` fan runs out to worker
processes or a Dask cluster and still be reproducible.

Percentiles are nearest-rank over the measured latencies (no interpolation, no
histogram bucketing), reported in µs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .config import SimConfig
from .model import Server

__all__ = ["SimResult", "simulate", "sweep", "low_latency_throughput", "percentile"]


def percentile(sorted_values: Sequence[int], pct: float) -> int:
    """Nearest-rank percentile of an ascending sequence (``pct`` in 0..100); 0 if empty."""
    n = len(sorted_values)
    if n == 0:
        return 0
    rank = math.ceil(pct / 100.0 * n)
    return sorted_values[min(n, max(1, rank)) - 1]


@dataclass
class SimResult:
    """Outcome of one run.  Latencies in µs (from the intended send time), rates in req/s.

    ``mean_wait`` is the mean latency minus the mean service time actually given (cache-miss
    penalties included) and the network delay: with zero overheads, the queueing delay.
    ``kevqs`` holds the per-kevq counters under the docs/semantics.md §3.4 dump names.  ``rt_*`` are
    the same statistics for realtime connections (all 0 when there are none); the main
    percentiles cover the other connections, or all of them when none is realtime.
    """

    config: dict[str, Any]
    policy: str
    load: float
    offered: float
    throughput: float
    capacity: float
    p50: float
    p90: float
    p95: float
    p99: float
    p999: float
    mean: float
    mean_wait: float
    max: float
    measured: int
    rt_p50: float
    rt_p99: float
    rt_measured: int
    sim_time_s: float
    events: int
    mean_service_us: float
    total_sched_time: int
    kevqs: list[dict[str, int]]
    #: Probe connections (``probe_conns``): their p50/p99 in µs and how many were measured
    #: (they also count in the main percentiles).
    probe_p50: float = 0.0
    probe_p99: float = 0.0
    probe_measured: int = 0
    #: Harvest mode: arrivals that waited in epoll for a thread to harvest them.
    deferred_activations: int = 0
    wall_s: float = field(default=0.0, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return asdict(self)

    def brief(self) -> dict[str, Any]:
        """The headline numbers only (no per-kevq counters, no config)."""
        d = self.to_dict()
        d.pop("kevqs")
        d.pop("config")
        return d


def _stats(values: list[int]) -> tuple[float, float, float, float, float, float, float]:
    if not values:
        return (0.0,) * 7
    values.sort()
    us = 1e-3
    return (percentile(values, 50) * us, percentile(values, 90) * us,
            percentile(values, 95) * us, percentile(values, 99) * us,
            percentile(values, 99.9) * us, sum(values) / len(values) * us, values[-1] * us)


def _p50_p99(values: list[int]) -> tuple[float, float]:
    """p50 and p99 in µs of ``values`` (ns; sorted here), zeros when empty."""
    if not values:
        return 0.0, 0.0
    values.sort()
    return percentile(values, 50) * 1e-3, percentile(values, 99) * 1e-3


def simulate(cfg: SimConfig) -> SimResult:
    """Run one simulation and summarise it (see :class:`SimResult`)."""
    t0 = time.perf_counter()
    srv = Server(cfg)
    srv.run()
    wall = time.perf_counter() - t0
    lat = srv.latencies
    p50, p90, p95, p99, p999, mean, mx = _stats(lat)
    rt = srv.rt_latencies
    rt_p50, rt_p99 = _p50_p99(rt)
    probe = srv.probe_latencies
    probe_p50, probe_p99 = _p50_p99(probe)
    measured = len(lat) + len(rt)
    # waiting = latency minus service (cache misses included) minus the network both ways
    mean_wait = (mean - srv.svc_sum / len(lat) * 1e-3 - 2 * cfg.net_ns * 1e-3) if lat else 0.0
    span = srv.t_last - srv.t_first
    throughput = (measured - 1) * 1e9 / span if span > 0 and measured > 1 else 0.0
    s = srv.summary()
    return SimResult(
        config=cfg.to_dict(),
        policy=cfg.policy,
        load=s["offered_qps"] / s["capacity_qps"] if s["capacity_qps"] > 0 else 0.0,
        offered=s["offered_qps"],
        throughput=throughput,
        capacity=s["capacity_qps"],
        p50=p50, p90=p90, p95=p95, p99=p99, p999=p999, mean=mean, max=mx,
        mean_wait=mean_wait,
        measured=measured,
        rt_p50=rt_p50, rt_p99=rt_p99, rt_measured=len(rt),
        sim_time_s=s["sim_time_ns"] * 1e-9,
        events=s["events"],
        mean_service_us=s["mean_service_ns"] * 1e-3,
        total_sched_time=s["total_sched_time"],
        kevqs=srv.kevq_dump(),
        probe_p50=probe_p50, probe_p99=probe_p99, probe_measured=len(probe),
        deferred_activations=s["deferred_activations"],
        wall_s=wall,
    )


def sweep(cfgs: Iterable[SimConfig], processes: int | None = 1,
          dask_address: str | None = None) -> list[SimResult]:
    """Run many configs; results come back in input order.

    ``dask_address`` (e.g. ``"tcp://host:8786"``) sends the runs to a Dask cluster
    (``dask.distributed`` is imported only then; it is an optional dependency, extra
    ``skqueue[dask]``).  Otherwise ``processes`` > 1 uses a local process pool
    (``None`` = one per CPU) and 1 runs inline.  Every run is independent and seeded by its
    own config, so the results do not depend on how they are spread.
    """
    cfg_list = list(cfgs)
    if dask_address:
        try:
            from dask.distributed import Client  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("sweep(dask_address=...) needs dask.distributed "
                               "(pip install 'skqueue[dask]')") from exc
        client = Client(dask_address)
        try:
            futures = client.map(simulate, cfg_list, pure=False)
            return list(client.gather(futures))
        finally:
            client.close()
    if processes == 1 or len(cfg_list) <= 1:
        return [simulate(c) for c in cfg_list]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=processes) as pool:
        return list(pool.map(simulate, cfg_list))


def low_latency_throughput(results: Iterable[SimResult], slo_us: float,
                           pct: float = 99) -> float:
    """The highest achieved throughput (req/s) among runs whose ``pct`` latency is at most
    ``slo_us`` µs (semantics §6.12); 0.0 when none qualifies.

    ``pct`` must be one the result reports: 50, 90, 95, 99 or 99.9.  The paper's own
    target and percentile are unknown; always state the ones used.
    """
    attr = {50: "p50", 90: "p90", 95: "p95", 99: "p99", 99.9: "p999"}.get(pct)
    if attr is None:
        raise ValueError(f"pct must be one of 50, 90, 95, 99, 99.9; got {pct}")
    best = 0.0
    for r in results:
        if getattr(r, attr) <= slo_us and r.throughput > best:
            best = r.throughput
    return best
