"""Validating the simulator against the real runtime on the machine in hand.

The simulator predicts many-core behaviour we cannot measure here, so the only honest check
is to point it at a configuration that *does* fit this machine, measure that configuration
with the real server runtime and the real load generator, and compare.  The configuration
(``skq sim validate``):

* the real :class:`skqueue.server.runtime.Server` with ``threads`` workers (default 4), the
  RPC protocol and the **sleep** service model, so service time is spent off the CPU and off
  the GIL (a spinning Python service would serialise on the GIL and measure CPython, not the
  scheduler);
* the real open-loop generator :func:`skqueue.load.generator.run_load` in its own process
  (``processes=1``), ``connections`` (default 100: the echo mix is defined by ``id mod 100``)
  with exponential inter-arrivals and the ``echo-mix:UNIT`` service mix (default unit
  10 µs: 100 µs / 500 µs / 2 ms, long enough for Python to resolve);
* the simulator in ``service_on_core=False`` mode with ``gil=True`` (see
  :mod:`skqueue.sim.config`).

Calibration (:func:`calibrate`), all from measurements of the real stack:

1. ``sleep_extra_ns`` -- how much longer than asked ``time.sleep`` lasts on this machine
   (timer slack lowered to 1 ns as the sleep service does): the mean overshoot of many
   sleeps of each service length of the mix, weighted by the mix.
2. ``event_cpu_ns`` -- interpreter (GIL) time per request in the server: the server
   process's CPU time (``time.process_time``) divided by the requests it answered; it covers
   ``control()``, ``recv``, parsing, the reply and the bookkeeping.  It is NOT constant: at
   low load every request pays a full block/wake-up cycle of the worker (leader election,
   condition variables, ``epoll``), at higher load the cycles are shared (measured here:
   ~200 µs/request at 1000 req/s, ~60-80 µs at 5000-7000 req/s).  The low-load value is
   kept in the calibration; each validation point is predicted with the CPU per request
   measured in that point's own real runs (a cost, not the latency being predicted), and
   the prediction with the low-load value is reported beside it.
3. ``net_ns`` -- what the client side adds (generator timing, loopback, client parsing):
   from a low-load run, ``(median latency - median short service - sleep overshoot -
   event_cpu_ns) / 2`` (the sim adds ``net_ns`` in each direction).
4. ``idle_cpu_ns`` -- work-stealing policies only: an idle SKQ worker wakes every
   ``ws_interval`` (100 µs) to try a steal, and in Python each wake-up runs interpreter code
   under the GIL.  The server's CPU time per second with no load, ``f``, is spread over the
   simulated wake-ups: ``idle_cpu_ns = f * ws_interval_ns / threads``.  For policies without
   stealing it is 0 (an idle worker blocks in ``control()``).  The slice itself is a
   condition-variable wait of 100 µs that lasts longer in practice: ``ws_interval_ns`` is its
   measured mean.
5. ``ws_activate_ns`` -- stealing policies only: every wait is a sub-millisecond slice, so
   no worker blocks in ``epoll`` and a request is noticed only when some worker's scan
   harvests ``epoll`` (``harvest_nowait``).  The simulator has no such polling; this delay is
   given to it as the activation cost, fitted (bisection) so that the simulated median
   matches a low-load best2_ws measurement.  The validation points are other loads.

:func:`measure_real` runs one point of the real system; :func:`predict` the matching
simulation.  Wall-clock measurements are noisy on a shared 2-core machine: repeat them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import SimConfig
from .run import simulate

__all__ = ["RealPoint", "Calibration", "measure_real", "measure_sleep", "measure_idle_cpu",
           "measure_slice_ns", "calibrate", "predict", "sim_config", "add_arguments", "main"]


@dataclass
class RealPoint:
    """One measured load point of the real runtime (latencies in µs)."""

    policy: str
    qps: float
    offered: float
    achieved: float
    p50: float
    p90: float
    p99: float
    mean: float
    requests: int
    cpu_per_req_us: float
    errors: int
    unsent: int

    def to_dict(self) -> dict[str, Any]:
        """Plain dict."""
        return dict(self.__dict__)


@dataclass
class Calibration:
    """Per-event costs of the real stack, in ns (see the module docstring)."""

    sleep_extra_ns: int
    event_cpu_ns: int
    net_ns: int
    idle_cpu_ns: int
    ws_interval_ns: int
    ws_activate_ns: int
    notes: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict."""
        return dict(self.__dict__)


def measure_real(policy: str, qps: float, duration_s: float = 8.0, warmup_s: float = 1.0,
                 threads: int = 4, connections: int = 100, unit_us: float = 10.0,
                 seed: int = 1, kv: Any = None, server_cpus: Sequence[int] | None = None,
                 load_cpus: Sequence[int] | None = None, **load: Any) -> RealPoint:
    """One point: start the real server here, drive it from a generator process.  ``kv``
    (a store), ``load`` (``LoadConfig`` fields, e.g. ``protocol="rpc-kv"``) and the CPUs
    serve :mod:`skqueue.sim.validate_kv`: the server's threads are started on
    ``server_cpus`` and the generator process on ``load_cpus``, as ``skq bench --pin``
    places them."""
    from skqueue.bench.experiment import pinned
    from skqueue.load.generator import LoadConfig, run_load
    from skqueue.server.proto_rpc import RpcSession
    from skqueue.server.runtime import Server, ServerConfig
    from skqueue.server.service import make_service

    service = make_service("sleep")
    srv = Server(ServerConfig(threads=threads, policy=policy), lambda: RpcSession(service, kv))
    with pinned(server_cpus):  # the server's threads inherit this thread's mask
        host, port = srv.start()
    try:
        cfg = LoadConfig(**{
            "host": host, "port": port, "protocol": "rpc-echo", "qps": qps,
            "connections": connections, "processes": 1, "duration_s": duration_s,
            "warmup_s": warmup_s, "interarrival": "exponential",
            "service": f"echo-mix:{unit_us:g}", "seed": seed, "timeout_s": 10.0, **load})
        req0 = srv.dump()["totals"]["requests"]
        cpu0 = time.process_time()
        with pinned(load_cpus):
            res = run_load(cfg)
        cpu1 = time.process_time()
        req1 = srv.dump()["totals"]["requests"]
    finally:
        srv.stop()
    lat = res.latency_intended.to_dict()
    nreq = max(1, int(req1) - int(req0))
    return RealPoint(policy=policy, qps=qps, offered=res.offered_qps,
                     achieved=res.achieved_qps, p50=float(lat["p50"]), p90=float(lat["p90"]),
                     p99=float(lat["p99"]), mean=float(lat["mean"]), requests=nreq,
                     cpu_per_req_us=(cpu1 - cpu0) / nreq * 1e6, errors=res.errors,
                     unsent=res.unsent)


def measure_idle_cpu(policy: str, threads: int = 4, seconds: float = 2.0) -> float:
    """CPU seconds per second of an idle real server (connections open, no requests)."""
    import socket

    from skqueue.server.proto_rpc import RpcSession
    from skqueue.server.runtime import Server, ServerConfig
    from skqueue.server.service import make_service

    service = make_service("sleep")
    srv = Server(ServerConfig(threads=threads, policy=policy),
                 lambda: RpcSession(service, None))
    host, port = srv.start()
    socks = []
    try:
        for _ in range(8):
            socks.append(socket.create_connection((host, port)))
        time.sleep(0.5)
        c0, t0 = time.process_time(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = time.process_time(), time.monotonic()
    finally:
        for s in socks:
            s.close()
        srv.stop()
    return (c1 - c0) / (t1 - t0)


def measure_sleep(us_values: tuple[int, ...] = (100, 500, 2000), n: int = 200) -> dict[int, float]:
    """Mean actual duration (µs) of ``time.sleep(us)`` in a thread with 1 ns timer slack."""
    from skqueue.server.service import set_timer_slack

    out: dict[int, float] = {}

    def body() -> None:
        set_timer_slack(1)
        for us in us_values:
            d = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                time.sleep(us / 1e6)
                d.append((time.perf_counter_ns() - t0) / 1e3)
            out[us] = statistics.fmean(d)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return out


def _mix_weights(unit_us: float) -> dict[int, float]:
    u = unit_us
    return {int(round(10 * u)): 0.95, int(round(50 * u)): 0.04, int(round(200 * u)): 0.01}


def calibrate(unit_us: float = 10.0, threads: int = 4, connections: int = 100,
              low_qps: float = 1000.0, duration_s: float = 5.0) -> Calibration:
    """Measure the per-event costs (see the module docstring)."""
    weights = _mix_weights(unit_us)
    sleeps = measure_sleep(tuple(sorted(weights)))
    extra = sum(w * (sleeps[us] - us) for us, w in weights.items())
    low = measure_real("vanilla", low_qps, duration_s=duration_s, threads=threads,
                       connections=connections, unit_us=unit_us)
    short = min(weights)
    event_cpu = low.cpu_per_req_us
    short_extra = sleeps[short] - short
    net = max(0.0, (low.p50 - short - short_extra - event_cpu) / 2)
    slice_ns = measure_slice_ns()
    idle = measure_idle_cpu("best2_ws", threads)
    idle_cpu = idle * slice_ns / threads
    cal = Calibration(sleep_extra_ns=int(extra * 1e3), event_cpu_ns=int(event_cpu * 1e3),
                      net_ns=int(net * 1e3), idle_cpu_ns=int(idle_cpu), ws_interval_ns=slice_ns,
                      ws_activate_ns=0,
                      notes={"sleep_means_us": sleeps, "low_load_vanilla": low.to_dict(),
                             "idle_cpu_per_s_best2_ws": idle,
                             "idle_cpu_per_s_vanilla": measure_idle_cpu("vanilla", threads)})
    # Stealing policies: nobody blocks in epoll (every wait is a sub-ms slice), so arrivals
    # are discovered only when some worker's scan harvests epoll.  Fit that delay so the
    # simulated median matches a low-load best2_ws measurement.
    low_ws = measure_real("best2_ws", low_qps, duration_s=duration_s, threads=threads,
                          connections=connections, unit_us=unit_us)
    cal.notes["low_load_best2_ws"] = low_ws.to_dict()
    lo, hi = 0, 400_000
    for _ in range(9):
        mid = (lo + hi) // 2
        cal.ws_activate_ns = mid
        r = simulate(sim_config("best2_ws", low_qps, cal, threads=threads,
                                connections=connections, unit_us=unit_us, requests=20_000))
        if r.p50 < low_ws.p50:
            lo = mid
        else:
            hi = mid
    cal.ws_activate_ns = (lo + hi) // 2
    return cal


def measure_slice_ns(n: int = 500) -> int:
    """Mean real duration (ns) of a 100 µs wait on a kevq's condition variable (the
    stealing slice), as the runtime takes it."""
    from skqueue._kevq import KevqCond
    from skqueue._scan import new_lock

    lock = new_lock()
    cond = KevqCond(lock)
    d = []
    with lock:
        for _ in range(n):
            t0 = time.perf_counter_ns()
            cond.wait(SimConfig().ws_interval_ns / 1e9)
            d.append(time.perf_counter_ns() - t0)
    return int(statistics.fmean(d))


def sim_config(policy: str, qps: float, cal: Calibration, threads: int = 4, cores: int = 2,
               connections: int = 100, unit_us: float = 10.0, requests: int = 200_000,
               seed: int = 1, warmup: int | None = None) -> SimConfig:
    """The simulator configuration that models :func:`measure_real`'s setup."""
    ws = "ws" in policy.lower()
    return SimConfig(
        policy=policy, cores=cores, threads=threads, smt=1, workload=f"echo-mix:{unit_us:g}",
        qps=qps, connections=connections, interarrival="exponential", requests=requests,
        seed=seed, warmup=warmup, maxevents=64, service_on_core=False, gil=True,
        sleep_extra_ns=cal.sleep_extra_ns, event_cpu_ns=cal.event_cpu_ns, net_ns=cal.net_ns,
        idle_cpu_ns=cal.idle_cpu_ns if ws else 0, ws_interval_ns=cal.ws_interval_ns,
        activate_ns=cal.ws_activate_ns if ws else 0, sched_ns=0, wakeup_ns=0, kevent_ns=0,
        kevent_event_ns=0,
        cache_miss_ns=0, steal_ns=0,
    )


def predict(policy: str, qps: float, cal: Calibration, seeds: int = 1, **kw: Any) -> float:
    """Predicted p99 (µs) of the simulator for the real setup, the mean over ``seeds``.

    A point near saturation (vanilla's busiest thread) has a p99 that keeps growing
    with the length of the run, so the simulated window must be the real one: pass
    ``requests``/``warmup`` as the real run's rate x its measured and warm-up seconds.
    """
    kw.pop("seed", None)
    return statistics.fmean(
        simulate(sim_config(policy, qps, cal, seed=i + 1, **kw)).p99 for i in range(seeds)
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``skq sim validate``."""
    p.add_argument("--policies", default="vanilla,best2_ws")
    p.add_argument("--qps", default=None,
                   help="comma-separated request rates (default: --loads x capacity)")
    p.add_argument("--loads", default="0.5,0.7",
                   help="fractions of the measured vanilla capacity")
    p.add_argument("--capacity", type=float, default=None,
                   help="vanilla capacity, req/s (used with --loads; give --qps or this)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per real point")
    p.add_argument("--repeat", type=int, default=2, help="real runs per point")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--unit-us", type=float, default=10.0)
    p.add_argument("--sim-requests", type=int, default=None,
                   help="simulated requests per point (default: the real window, "
                   "rate x duration, after rate x 1 s of warm-up)")
    p.add_argument("--sim-seeds", type=int, default=4,
                   help="simulations averaged per point (default 4)")
    p.add_argument("--json", action="store_true")


def main(args: argparse.Namespace) -> int:
    """Run ``skq sim validate``: calibrate, measure, predict, print the table."""
    cal = calibrate(args.unit_us, args.threads, args.connections)
    print(f"calibration: {json.dumps(cal.to_dict())}", flush=True)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if args.qps:
        rates = [float(x) for x in args.qps.split(",")]
    else:
        cap = args.capacity
        if cap is None:
            raise SystemExit("skq sim validate: give --qps or --capacity")
        rates = [float(x) * cap for x in args.loads.split(",")]
    rows: list[dict[str, Any]] = []
    for qps in rates:
        for pol in policies:
            real = [measure_real(pol, qps, duration_s=args.duration, threads=args.threads,
                                 connections=args.connections, unit_us=args.unit_us, seed=i + 1)
                    for i in range(args.repeat)]
            # the handler CPU per request falls with load (fewer wake-ups per request), so
            # the point's own measured server CPU per request is used (see the docstring)
            cpu_ns = int(statistics.fmean(r.cpu_per_req_us for r in real) * 1e3)
            pcal = dataclasses.replace(cal, event_cpu_ns=cpu_ns)
            if args.sim_requests is None:  # the same window as the real measurement
                win: dict[str, Any] = {"requests": max(1000, int(qps * args.duration)),
                                       "warmup": int(qps * 1.0)}
            else:
                win = {"requests": args.sim_requests}
            pred = predict(pol, qps, pcal, seeds=args.sim_seeds, threads=args.threads,
                           connections=args.connections, unit_us=args.unit_us, **win)
            pred_low = predict(pol, qps, cal, seeds=args.sim_seeds, threads=args.threads,
                               connections=args.connections, unit_us=args.unit_us, **win)
            meas = statistics.fmean(r.p99 for r in real)
            row = {"policy": pol, "qps": qps, "measured_p99": [r.p99 for r in real],
                   "measured_p99_mean": meas, "predicted_p99": pred,
                   "predicted_p99_low_load_cpu": pred_low, "event_cpu_ns": cpu_ns,
                   "error_pct": (pred - meas) / meas * 100 if meas else 0.0,
                   "real": [r.to_dict() for r in real]}
            rows.append(row)
            print(f"{pol:>10} {qps:>8.0f} req/s: measured p99 "
                  + " / ".join(f"{r.p99:.0f}" for r in real)
                  + f" us, predicted {pred:.0f} us, error {row['error_pct']:+.0f} % "
                  f"(with the low-load CPU cost: {pred_low:.0f} us)", flush=True)
    if args.json:
        print(json.dumps({"calibration": cal.to_dict(), "rows": rows}, indent=2))
    return 0
