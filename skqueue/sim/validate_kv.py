"""Re-calibrating the simulator's ``rocksdb`` workload against a real ``skq bench mixgraph`` run.

``skq sim validate`` (:mod:`skqueue.sim.validate`) checks the simulator on the echo mix; this
is the same method for the RocksDB mixgraph (``skq sim validate-kv --bench RESULT.json``):

1. **Store costs** (:func:`measure_store_costs`): the real store (same backend, key count and
   value size as the run) is timed in one thread in this process: GETs, PUTs of two value
   sizes (a line through them gives ``put`` and ``byte``), SEEKs of 0 to 10,000 items (a
   least-squares line gives ``seek`` and ``item``).  They become the workload string
   ``rocksdb:get=..,put=..,byte=..,seek=..,item=..,cap=..,keys=..``
   (:func:`skqueue.sim.workload.rocksdb_spec`): the simulator draws the run's mixgraph stream
   and prices each request with them.
2. **Runtime costs**: :func:`skqueue.sim.validate.calibrate` (net, stealing slice, idle CPU,
   stealing's activation delay, measured on the echo setup; they do not depend on the
   request), then the interpreter CPU per request of THIS protocol: a low-load run of the real
   server with the real store and the rpc-kv load, in this process
   (:func:`skqueue.sim.validate.measure_real`); no ``time.sleep`` overshoot (no sleeping).
3. **Points**: the run's "load" points of the chosen policies (default: vanilla and best2_ws
   at the two loads nearest 50 % and 70 % of the reference's saturation).  Each is also
   measured again in this process, ``--repeat`` times (the real server and store, the
   generator in its own process), for its server CPU per request and a p99 measured beside
   the prediction.  The CPU per request falls with load, so each load is predicted with
   its own; and it is the handler's cost, which does not depend on the policy, so every
   policy at a load is predicted with the reference policy's (vanilla's, measured first):
   what a policy adds (idle scans, stealing slices) the simulator models itself, and a
   free-threaded thief that polls an idle core burns CPU that no request waits for.  Each
   row shows the policy's own CPU per request beside.  ``--cpu capacity`` uses instead
   what the run's own saturation leaves per request after the store's mean cost (server
   cores / saturation - store time), the same at every load: on a free-threaded build the
   measured CPU fills the core whatever the load (contended mutexes spin and yield).
4. **Predictions**: the simulator with the run's threads, connections (probes included),
   inter-arrival law and measurement window, and as many cores as the server had
   (``--pin split``: half the CPUs), and the run's interpreter:

   - a GIL build (``gil=True``: one execution resource for all threads): the C-API
     backend's SEEK runs without the GIL, so the store work is an off-GIL service
     (``service_on_core=False``); the rocksdict backend holds the GIL for it
     (``service_on_core=True``);
   - a free-threaded build with the GIL off (``gil=False``): the threads share the server's
     cores and the store work occupies the core of the thread that runs it
     (``service_on_core=True``).

   The run's JSON says which interpreter it ran on (``machine.gil``); this command must run
   on the same kind (it measures the real server in process), and refuses otherwise.
   Compared with the p99 of all requests (the simulator has no GET-only probe class)
   measured here and in the bench run: the error per point.

Simplifications (stated with the result): the store costs are single-thread costs (no
contention inside RocksDB); the in-process runs are pinned as the bench's server and
generator were (the run's ``cpu_placement`` and ``load.cpus``), but the server process here
also holds the store whose costs were timed and the Python of this command;
on a GIL build with one server core, a GIL-free SEEK really competes with the interpreter
for that core, which the off-GIL service does not model; on a free-threaded build the
simulator's threads give up their core only between ``kevent()`` calls (``quantum_ns``), so
a long SEEK is not time-sliced as Linux would slice it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from skqueue.load.dist import KVServiceModel

from .run import simulate
from .validate import Calibration, calibrate, measure_real, sim_config
from .workload import make_workload, rocksdb_spec

__all__ = ["add_arguments", "main", "measure_store_costs", "predict_kv", "bench_points"]

_SEEK_LENGTHS = (0, 10, 100, 1000, 10_000)


def _timed(fn: Any, args: list[tuple[Any, ...]]) -> float:
    """Mean µs of ``fn(*a)`` over ``args``."""
    t0 = time.perf_counter()
    for a in args:
        fn(*a)
    return (time.perf_counter() - t0) / len(args) * 1e6


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``; ``(a, b)`` with both clipped at 0."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return max(0.0, my - b * mx), max(0.0, b)


def measure_store_costs(path: str, backend: str = "auto", keys: int = 100_000,
                        value_size: int = 100, ops: int = 20_000) -> tuple[KVServiceModel,
                                                                          dict[str, Any]]:
    """Time the real store (a new database at ``path``) in one thread; see the module
    docstring.  Returns the fitted costs and the raw means."""
    from skqueue.server.kv import RocksKV, mixgraph_key, populate

    rng = random.Random(7)
    db = RocksKV(path, backend=backend)
    try:
        populate(db, keys, value_size=value_size)
        ids = [rng.randrange(keys) for _ in range(ops)]
        get_us = _timed(db.get, [(mixgraph_key(i),) for i in ids])
        sizes = (16, 1024)
        put = [_timed(db.put, [(mixgraph_key(i), rng.randbytes(n)) for i in ids[: ops // 4]])
               for n in sizes]
        put_us, byte_us = _line([float(n) for n in sizes], put)
        seek = []
        for n in _SEEK_LENGTHS:
            reps = max(5, min(ops // 4, 200_000 // (n + 1)))
            seek.append(_timed(db.seek, [(mixgraph_key(i), n) for i in ids[:reps]]))
        seek_us, item_us = _line([float(n) for n in _SEEK_LENGTHS], seek)
        backend_used = db.backend
    finally:
        db.close()
    kv = KVServiceModel(get_us=get_us, put_us=put_us, put_per_byte_us=byte_us,
                        seek_base_us=seek_us, per_item_us=item_us)
    raw = {"backend": backend_used, "get_us": get_us, "put_us_by_size": dict(zip(sizes, put,
           strict=True)), "seek_us_by_length": dict(zip(_SEEK_LENGTHS, seek, strict=True))}
    return kv, raw


def _server_cpus(placement: str) -> tuple[int, ...] | None:
    """The CPUs the bench's server was pinned to, from its ``cpu_placement`` text, or None."""
    m = re.search(r"server on CPUs \[([^\]]*)\]", placement)
    if m:
        return tuple(int(c) for c in m.group(1).split(",") if c.strip()) or None
    return None


def _server_cores(placement: str) -> int:
    """Cores the bench's server had, from its ``cpu_placement`` text."""
    return len(_server_cpus(placement) or ()) or os.cpu_count() or 1


def bench_points(data: dict[str, Any], policies: list[str],
                 loads: list[float] | None) -> list[tuple[str, dict[str, Any]]]:
    """``(policy, point)`` for the "load" points to compare: those at ``loads`` (QPS), or the
    two loads nearest 50 % and 70 % of the reference saturation."""
    summ = data.get("summary", {})
    all_loads: list[float] = summ.get("loads_qps") or []
    if loads is None:
        sat = summ.get("reference_saturation_qps") or 0.0
        loads = sorted({min(all_loads, key=lambda q: abs(q - f * sat)) for f in (0.5, 0.7)}
                       ) if all_loads else []
    out = []
    for pol in data.get("policies", []):
        if pol["label"] not in policies:
            continue
        for pt in pol["points"]:
            if pt["phase"] == "load" and any(abs(pt["target_qps"] - q) < 1e-6 for q in loads):
                out.append((pol["label"], pt))
    return out


def predict_kv(policy: str, qps: float, cal: Calibration, workload: str, *, threads: int,
               cores: int, connections: int, interarrival: str, duration_s: float,
               warmup_s: float, service_on_core: bool, gil: bool = True,
               seeds: int = 4) -> float:
    """Mean simulated p99 (µs) over ``seeds`` for one point of the real run."""
    p99s = []
    for seed in range(1, seeds + 1):
        cfg = sim_config(policy, qps, cal, threads=threads, cores=cores,
                         connections=connections, requests=max(1000, int(qps * duration_s)),
                         seed=seed, warmup=int(qps * warmup_s))
        cfg = replace(cfg, workload=workload, interarrival=interarrival,
                      service_on_core=service_on_core, gil=gil, sleep_extra_ns=0)
        p99s.append(simulate(cfg).p99)
    return statistics.fmean(p99s)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``skq sim validate-kv``."""
    p.add_argument("--bench", required=True, help="the JSON of a `skq bench mixgraph` run")
    p.add_argument("--policies", default="vanilla,best2_ws")
    p.add_argument("--qps", default=None,
                   help="comma-separated loads of the run to compare (default: the two "
                   "nearest 50%% and 70%% of the reference saturation)")
    p.add_argument("--repeat", type=int, default=2,
                   help="in-process real runs per point, for its CPU per request (0 = none: "
                   "predict with the low-load CPU only)")
    p.add_argument("--calibration", default=None,
                   help="reuse a runtime calibration (JSON from a previous --json output) "
                   "instead of measuring it again")
    p.add_argument("--low-qps", type=float, default=1000.0,
                   help="load of the low-load CPU-per-request measurement (default 1000)")
    p.add_argument("--cpu", choices=("measured", "capacity"), default="measured",
                   help="the handler's CPU per request: 'measured' in the in-process runs "
                   "(the reference policy's at each load), or 'capacity': what the run's "
                   "measured saturation leaves after the store's own cost (server cores / "
                   "saturation - mean store time), the same for every load")
    p.add_argument("--sim-seeds", type=int, default=4)
    p.add_argument("--json", action="store_true")


def main(args: argparse.Namespace) -> int:
    """Run ``skq sim validate-kv``: store costs, runtime costs, predictions vs the run."""
    from skqueue.bench.report import gil_enabled
    from skqueue.server.kv import RocksKV

    data = json.loads(Path(args.bench).read_text())
    if data.get("experiment") != "mixgraph":
        raise SystemExit(f"{args.bench}: not a `skq bench mixgraph` result")
    gil, run_gil = gil_enabled(), data.get("machine", {}).get("gil")
    kind = {True: "a GIL build", False: "a free-threaded build with the GIL off"}
    if run_gil is None:
        print(f"the run does not record its interpreter: taken to be this one ({kind[gil]})")
    elif run_gil != gil:
        raise SystemExit(f"{args.bench} ran on {kind[run_gil]}, this interpreter is {kind[gil]}"
                         ": run validate-kv with the interpreter the run used")
    params, load = data["params"], data["load"]
    store = params["store"]
    threads = int(params["threads"])
    connections = int(load["connections"]) + int(load.get("probe_conns", 0))
    cores = _server_cores(data.get("cpu_placement", ""))
    server_cpus = _server_cpus(data.get("cpu_placement", ""))
    load_cpus = tuple(load["cpus"]) if load.get("cpus") else None
    cap = params.get("scan_cap") or None
    policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    points = bench_points(data, policies, [float(x) for x in args.qps.split(",")]
                          if args.qps else None)
    if not points:
        print("no matching load points in the run (check --policies / --qps)")
        return 1
    window = {"duration_s": float(load["duration_s"]), "warmup_s": float(load["warmup_s"])}
    sim_kw = {"threads": threads, "cores": cores, "connections": connections,
              "interarrival": load["interarrival"], "gil": gil,
              "service_on_core": store["backend"] != "capi" or not gil,
              "seeds": args.sim_seeds, **window}
    rows = []
    with tempfile.TemporaryDirectory(prefix="skq-validate-kv-") as tmp:
        kv, raw = measure_store_costs(str(Path(tmp) / "costs"), store["backend"],
                                      store["keys"], store["value_size"])
        workload = rocksdb_spec(kv, cap, store["keys"])
        print(f"store costs ({raw['backend']}): {workload}", flush=True)
        cap_cpu_ns = None
        if args.cpu == "capacity":
            sat = float(data.get("summary", {}).get("reference_saturation_qps") or 0.0)
            if sat <= 0:
                raise SystemExit(f"{args.bench}: no reference saturation for --cpu capacity")
            store_ns = make_workload(workload).mean_ns(connections)
            cap_cpu_ns = max(0, int(cores * 1e9 / sat - store_ns))
            print(f"CPU per request from capacity: {cores} core(s) / {sat:,.0f} req/s - "
                  f"{store_ns / 1e3:.1f} us of store = {cap_cpu_ns / 1e3:.1f} us", flush=True)
        print(f"model: {'gil=True' if gil else 'gil=False'}, store work "
              f"{'on the core' if sim_kw['service_on_core'] else 'off the GIL'}, "
              f"{threads} threads on {cores} server core(s); real runs here: server on CPUs "
              f"{list(server_cpus) if server_cpus else 'any'}, generator on "
              f"{list(load_cpus) if load_cpus else 'any'}", flush=True)
        if args.calibration:
            cal = Calibration(**json.loads(Path(args.calibration).read_text())["calibration"])
        else:
            cal = calibrate(threads=threads)
        shutil.copytree(Path(tmp) / "costs", Path(tmp) / "db")
        db = RocksKV(str(Path(tmp) / "db"), backend=store["backend"])

        def real(policy: str, qps: float, seed: int = 1, **kw: Any) -> Any:
            return measure_real(policy, qps, threads=threads, connections=connections, seed=seed,
                                kv=db, protocol="rpc-kv", interarrival=load["interarrival"],
                                kv_keyspace=store["keys"], kv_scan_cap=cap,
                                server_cpus=server_cpus, load_cpus=load_cpus, **kw)

        try:
            low = real("vanilla", args.low_qps, duration_s=4.0)
            cal = replace(cal, event_cpu_ns=int(low.cpu_per_req_us * 1e3), sleep_extra_ns=0)
            print(f"runtime: {json.dumps(cal.to_dict(), default=str)}", flush=True)
            print(f"server CPU per rpc-kv request at {args.low_qps:g} req/s: "
                  f"{low.cpu_per_req_us:.0f} us", flush=True)
            ref_cpu: dict[float, float] = {}  # load -> the reference policy's CPU/request
            ref_policy = data.get("summary", {}).get("reference", "vanilla")
            for policy, pt in sorted(points, key=lambda p: p[0] != ref_policy):
                qps = float(pt["target_qps"])
                runs = [real(policy, qps, seed=i + 1, **window) for i in range(args.repeat)]
                pcal, own = cal, None
                if runs:
                    own = statistics.fmean(r.cpu_per_req_us for r in runs)
                    if policy == ref_policy:
                        ref_cpu[qps] = own
                    pcal = replace(cal, event_cpu_ns=int(ref_cpu.get(qps, own) * 1e3))
                if cap_cpu_ns is not None:
                    pcal = replace(pcal, event_cpu_ns=cap_cpu_ns)
                pred = predict_kv(policy, qps, pcal, workload, **sim_kw)
                bench = float(pt["latency_us"]["p99"])
                here = statistics.fmean(r.p99 for r in runs) if runs else None
                ref = here if here else bench
                row = {"policy": policy, "qps": qps, "bench_p99_us": bench,
                       "measured_p99_us": [r.p99 for r in runs], "predicted_p99_us": pred,
                       "own_cpu_per_req_us": own,
                       "event_cpu_ns": pcal.event_cpu_ns,
                       "error_pct": (pred - ref) / ref * 100 if ref else 0.0,
                       "error_vs_bench_pct": (pred - bench) / bench * 100 if bench else 0.0,
                       "real": [r.to_dict() for r in runs]}
                rows.append(row)
                print(f"{policy:>10} {qps:>8.0f} req/s: bench p99 {bench:.0f} us, here "
                      + (" / ".join(f"{r.p99:.0f}" for r in runs) or "-")
                      + f" us, predicted {pred:.0f} us (CPU/req {pcal.event_cpu_ns / 1e3:.0f} us"
                      + (f", own {own:.0f} us" if own is not None else "")
                      + f"), error {row['error_pct']:+.0f} % (vs bench "
                      f"{row['error_vs_bench_pct']:+.0f} %)", flush=True)
        finally:
            db.close()
    if args.json:
        print(json.dumps({"workload": workload, "store_raw": raw, "calibration": cal.to_dict(),
                          "gil": gil, "service_on_core": sim_kw["service_on_core"],
                          "cpu": args.cpu, "capacity_cpu_ns": cap_cpu_ns,
                          "low_load": low.to_dict(), "cores": cores, "rows": rows},
                         indent=2, default=str))
    return 0
