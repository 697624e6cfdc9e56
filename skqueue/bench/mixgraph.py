"""``skq bench mixgraph``: the paper's headline experiment on real RocksDB.

One command (``--quick`` for a couple of minutes, the default scale for a recorded run):

1. **Preload** a RocksDB database once (``--keys`` mixgraph keys, ``--value-size`` bytes, write
   batches, then a flush) through :class:`skqueue.server.kv.RocksKV`, and say which backend
   serves and why: the C-API extension, whose whole SEEK runs without the GIL, or the rocksdict
   fallback, which holds the GIL in every iterator step (``--backend`` forces one).
   Every point (below) runs on a server started for it on a fresh copy of that database,
   so no point inherits what earlier ones did to the store (the PUTs' flushes and
   compactions, the reference's unpaced MAX run, the block cache), and the order of the
   points cannot bias them through the store.
2. **Servers**, one after the other in subprocesses (:mod:`skqueue.bench.servers`): ``skq
   serve --kv rocksdb`` under each policy (default vanilla, legacy, rand, best2, best2_ws,
   cpu2_ws) and the asyncio baseline an asyncio user would write: one event loop, the store
   called in the loop's default executor (``python -m skqueue.server.aio --kv-executor``).
3. **Load**: the open-loop generator (:mod:`skqueue.load.generator`, protocol ``rpc-kv``) sends
   the mixgraph stream of :class:`skqueue.load.dist.MixGraph` -- GET/PUT/SEEK 83/14/3 %, hot
   key ranges, Pareto value sizes and scan lengths (modulo ``--scan-cap``) -- with ``fb_ia``
   inter-arrival times.  ``--probe-conns`` extra connections send only GETs at the same
   per-connection rate, like the paper's master: their latency is what ordinary short requests
   suffer from the long scans, and the SLO and the summary use it ("probe" columns); the
   all-requests p99 is reported beside it.
4. **Points**, as ``skq bench demo``, each on its own server
   (:class:`skqueue.bench.experiment.FreshServers`): the reference (the first policy,
   vanilla) first runs a light "unloaded" point (``--unloaded-qps``), then an unpaced MAX
   run and a short ramp to find its saturation ``S``
   (:func:`skqueue.bench.experiment.fraction_stages`); then every policy runs
   ``--fractions`` x ``S``.  ``--seeds N`` repeats the point
   nearest 70 % of ``S`` with N - 1 further seeds (arrival schedule and request stream), for
   the spread.
5. **SLO**: ``--slo-us`` (default 0 = automatic: ten times the reference's unloaded probe
   p99, rounded up to two significant digits, at least 500 µs).  Low-latency throughput = the
   highest achieved QPS among the "load" points whose probe p99 (lost requests counted as
   infinitely late) meets it.

Output: progress on stderr; the points table, the summary at ~70 %, the seed spread and the
verdict against the issue's goals on stdout; ``NAME.json`` / ``.csv`` / ``.png`` (probe p99 vs
achieved QPS, one line per policy) under ``--out``.

CPU placement (``--pin``, default split) gives the server half the CPUs.  On the 2-core build
machine that is ONE core: a SEEK without the GIL then overlaps other workers' Python only
through the kernel's time slicing, not in parallel; ``--pin none`` lets the server use both.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from skqueue.bench import report
from skqueue.bench.experiment import (
    Experiment,
    FreshServers,
    Plan,
    Point,
    Progress,
    fraction_stages,
    measuring,
)
from skqueue.bench.run import Setup, add_common_arguments, add_fraction_arguments
from skqueue.bench.servers import AIO_KINDS, ServerSpec

__all__ = ["add_mixgraph_arguments", "auto_slo_us", "mixgraph_main", "seed_spread"]

#: (option, full-scale default, --quick value)
_SCALE: tuple[tuple[str, Any, Any], ...] = (
    ("duration", 4.0, 1.5),
    ("warmup", 1.0, 0.5),
    ("keys", 100_000, 20_000),
    ("fractions", [0.1, 0.3, 0.5, 0.7, 0.9, 1.1], [0.3, 0.7]),
    ("ramp_points", 4, 3),
    ("seeds", 5, 1),
)
_FULL = {name: full for name, full, _ in _SCALE}
SKQ_BASELINES = ("vanilla", "legacy", *AIO_KINDS)


def add_mixgraph_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``skq bench mixgraph``."""
    add_fraction_arguments(p, _FULL["fractions"], _FULL["ramp_points"],
                           "; asyncio/uvloop call the store in the loop's default executor")
    a = p.add_argument
    a("--quick", action="store_true", help="small scale, about a minute, for options not given: "
      + ", ".join(f"{n}={q} (else {f})" for n, f, q in _SCALE))
    a("--keys", type=int, default=None, help="preloaded keys = key space")
    a("--value-size", type=int, default=100, help="preloaded value bytes (%(default)s)")
    a("--scan-cap", type=int, default=10_000, help="SEEK length modulo (%(default)s; 0 = none)")
    a("--backend", choices=("auto", "capi", "rocksdict"), default="auto",
      help="RocksDB binding of every server (auto: the C extension if built)")
    a("--point-nogil", action="store_true",
      help="servers release the GIL in point get/put too (default: only SEEK does)")
    a("--db-dir", default=None, help="keep the databases here (default: a temporary directory)")
    a("--seeds", type=int, default=None,
      help="runs of the ~70%% point per policy, each with its own seed")
    a("--unloaded-qps", type=float, default=200.0, help="the reference's light point (200)")
    add_common_arguments(p, duration=_FULL["duration"], warmup=_FULL["warmup"], conns=100,
                         slo_us=0.0, probe_conns=10, threads=8)
    p.set_defaults(**{name: None for name, _, _ in _SCALE})  # resolved by _apply_scale


def _apply_scale(args: argparse.Namespace) -> None:
    """Options not given on the command line take the --quick or the full-scale value."""
    for name, full, quick in _SCALE:
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)


def auto_slo_us(unloaded_p99_us: float | None) -> float:
    """Ten times the unloaded p99, rounded up to two significant digits, at least 500 µs."""
    if unloaded_p99_us is None or unloaded_p99_us <= 0:
        return 10_000.0
    x = 10.0 * unloaded_p99_us
    step = 10.0 ** max(0, math.floor(math.log10(x)) - 1)
    return max(500.0, math.ceil(x / step) * step)


def _preload(args: argparse.Namespace, root: Path, progress: Progress) -> dict[str, Any]:
    from skqueue.server.kv import RocksKV, populate

    t0 = time.monotonic()
    db = RocksKV(str(root / "template"), backend=args.backend)
    try:
        populate(db, args.keys, value_size=args.value_size)
        info = db.describe()
    finally:
        db.close()
    info["preload_s"] = round(time.monotonic() - t0, 2)
    info["keys"] = args.keys
    info["value_size"] = args.value_size
    progress(
        f"preloaded {args.keys} keys of {args.value_size} B in {info['preload_s']} s; "
        f"store: RocksDB via {info['backend']} ({info['reason']})"
    )
    return info


def _server_specs(setup: Setup, root: Path, backend: str) -> list[ServerSpec]:
    """One spec per policy, each on its own database directory (``plan_for`` copies the
    preloaded one there before every start), all opening it with the backend that wrote it
    (``backend``)."""
    args = setup.args
    specs = []
    for spec in setup.specs(args.policies, "rpc", "sleep"):
        path = root / f"db-{spec.label}"
        if spec.kind in AIO_KINDS:
            extra: tuple[str, ...] = ("--kv", f"rocks:{path}", "--kv-executor")
        else:
            extra = ("--kv", "rocksdb", "--kv-path", str(path))
        if args.point_nogil:
            extra += ("--kv-release-gil",)
        specs.append(replace(spec, extra_args=(*spec.extra_args, *extra, "--kv-backend", backend)))
    return specs


def _near_70(state: dict[str, Any], fractions: list[float]) -> float | None:
    loads = state.get("loads")
    if not loads:
        return None
    frac = min(fractions, key=lambda f: abs(f - 0.7))
    q: float = loads[fractions.index(frac)]
    return q


def mixgraph_main(args: argparse.Namespace) -> int:
    """``skq bench mixgraph``."""
    _apply_scale(args)
    auto_slo = args.slo_us <= 0
    if auto_slo:
        args.slo_us = 1.0  # replaced by the automatic SLO once measured
    setup = Setup.from_args(args, "rpc-kv")
    if args.keys < 1 or args.seeds < 1 or not args.fractions:
        raise SystemExit("--keys and --seeds must be >= 1, --fractions not empty")
    settings, progress = setup.settings, setup.progress
    kv_load = {
        "kv_keyspace": args.keys,
        "kv_scan_cap": args.scan_cap or None,
        "kv_rt_get_only": True,
    }
    fractions = sorted(args.fractions)
    state: dict[str, Any] = {
        "saturation": args.saturation,
        "loads": None,
        "reference": None,
        "slo_us": None if auto_slo else args.slo_us,
        "unloaded_p99_us": None,
    }
    extra_seeds = [args.seed + i for i in range(1, args.seeds)]
    tmp = None if args.db_dir else tempfile.TemporaryDirectory(prefix="skq-mixgraph-")
    root = Path(args.db_dir or (tmp.name if tmp else "."))
    root.mkdir(parents=True, exist_ok=True)
    try:
        store = _preload(args, root, progress)
        specs = _server_specs(setup, root, store["backend"])

        def plan_for(spec: ServerSpec) -> FreshServers:
            def at(address: tuple[str, int], points: list[Point],
                   **seed: int) -> Callable[[float, str], Point]:
                return measuring(settings, spec.label, args.slo_pct, progress, address, points,
                                 **seed, **kv_load)

            def unloaded(address: tuple[str, int], points: list[Point]) -> None:
                if state["slo_us"] is None:
                    pt = at(address, points)(args.unloaded_qps, "unloaded")
                    state["unloaded_p99_us"] = pt.slo_p("p99")
                    state["slo_us"] = auto_slo_us(state["unloaded_p99_us"])
                    progress(f"SLO: probe p{args.slo_pct:g} <= "
                             f"{report.fmt_num(state['slo_us'])} us (10 x the unloaded p99 "
                             f"{report.fmt_us(state['unloaded_p99_us'])} us)")

            ref_and_loads = fraction_stages(settings, spec.label, args.slo_pct, progress, state,
                                            fractions, args.ramp_points, first=unloaded,
                                            **kv_load)

            def seed_point(seed: int, q70: float) -> Plan:
                def plan(address: tuple[str, int], points: list[Point]) -> None:
                    at(address, points, seed=seed, kv_seed=seed)(q70, "seed").detail["seed"] = seed
                return plan

            def stages() -> Iterator[Plan]:
                yield from ref_and_loads.stages()
                q70 = _near_70(state, fractions)
                if q70 is not None:
                    yield from (seed_point(seed, q70) for seed in extra_seeds)

            path = root / f"db-{spec.label}"

            def fresh_copy() -> None:
                shutil.rmtree(path, ignore_errors=True)
                shutil.copytree(root / "template", path)

            return FreshServers(stages, fresh_copy)

        exp = setup.run(
            "mixgraph",
            specs,
            plan_for,
            service=None,
            llt_phases=("load",),
            params={
                "policies": args.policies,
                "fractions": fractions,
                "threads": args.threads,
                "seeds": [args.seed, *extra_seeds],
                "scan_cap": args.scan_cap,
                "point_ops_release_gil": args.point_nogil,
                "quick": args.quick,
                "store": store,
                "asyncio": "one event loop; every store call in its default executor",
                "probes": "GET-only connections at the same per-connection rate (the paper's "
                "master); the SLO and the summary use their latency",
            },
        )
    finally:
        if tmp is not None:
            tmp.cleanup()
    exp.slo_us = state["slo_us"] or 10_000.0
    exp.summary["slo_auto"] = auto_slo
    exp.summary["unloaded_p99_us"] = state["unloaded_p99_us"]
    exp.notes.append(f"store: RocksDB {store.get('rocksdb_version', '')} via "
                     f"{store['backend']}: {store['reason']}")
    tables = [report.demo_summary(exp, fractions, state), seed_spread(exp, state, fractions)]
    tables.append(_verdict(exp))
    return setup.finish(exp, extra_tables=tables)


def seed_spread(exp: Experiment, state: dict[str, Any], fractions: list[float]) -> str:
    """Table of the ~70 % point's probe p99 over the seeds, per policy (also in the summary)."""
    q70 = _near_70(state, fractions)
    rows: list[list[Any]] = []
    out: dict[str, list[float]] = {}
    cpu_out: dict[str, list[float]] = {}
    for pr in exp.policies:
        pts = [p for p in pr.points if p.phase in ("load", "seed") and q70 is not None
               and abs(p.target_qps - q70) < 1e-6]
        vals = [v for v in (p.slo_p("p99") for p in pts) if v is not None]
        cpus = [c for c in (p.server_cpu_us_per_req for p in pts) if c is not None]
        out[pr.label] = vals
        cpu_out[pr.label] = cpus
        med = statistics.median(vals) if vals else None
        rows.append([
            pr.label,
            len(vals),
            report.fmt_us(min(vals)) if vals else "-",
            report.fmt_us(med),
            report.fmt_us(max(vals)) if vals else "-",
            " ".join(report.fmt_us(v) for v in vals) or "-",
            report.fmt_us(statistics.median(cpus)) if cpus else "-",
        ])
    exp.summary["p99_us_at_70_by_seed"] = out
    exp.summary["server_cpu_us_per_req_at_70_by_seed"] = cpu_out
    title = (f"Probe p99 at ~70 % ({report.fmt_num(q70)} QPS) over {len(exp.params['seeds'])} "
             "seed(s), us; the server's CPU per request, median over the same runs")
    headers = ["policy", "runs", "min", "median", "max", "each run", "CPU/req"]
    return title + "\n" + report.format_table(headers, rows, [False] + [True] * 6)


def _verdict(exp: Experiment) -> str:
    """The issue's goals: best SKQ p99 >= 10x lower than vanilla's at ~70 %, and its
    low-latency throughput >= 3x vanilla's."""
    by_seed: dict[str, list[float]] = exp.summary.get("p99_us_at_70_by_seed", {})
    med = {k: statistics.median(v) for k, v in by_seed.items() if v}
    llt = {pr.label: pr.low_latency_throughput(exp.slo_us, ("load",)) for pr in exp.policies}
    skq = [k for k in med if k not in SKQ_BASELINES]
    lines = [f"Goals (probe p99, SLO {report.fmt_num(exp.slo_us)} us):"]
    verdict: dict[str, Any] = {}
    if "vanilla" in med and skq:
        best = min(skq, key=lambda k: med[k])
        ratio = med["vanilla"] / med[best] if med[best] > 0 else None
        verdict.update(best_policy=best, p99_ratio=ratio)
        lines.append(f"  p99 at ~70 %: vanilla {report.fmt_us(med['vanilla'])} us, best SKQ "
                     f"({best}) {report.fmt_us(med[best])} us -> "
                     f"{'-' if ratio is None else f'{ratio:.1f}x'} lower (goal >= 10x: "
                     f"{'met' if ratio and ratio >= 10 else 'not met'})")
        best_llt = max((llt[k] or 0.0) for k in skq)
        van = llt.get("vanilla")
        lt = best_llt / van if van else None
        verdict.update(llt_best=best_llt, llt_vanilla=van, llt_ratio=lt)
        lines.append(
            f"  low-latency throughput: vanilla {report.fmt_num(van)} QPS, best SKQ "
            f"{report.fmt_num(best_llt)} QPS -> "
            + (f"{lt:.1f}x (goal >= 3x: {'met' if lt >= 3 else 'not met'})" if lt else
               "vanilla meets the SLO at no load point" if best_llt else "no policy meets it")
        )
        for base in ("legacy", *AIO_KINDS):
            if base in med:
                lines.append(f"  baseline {base}: p99 {report.fmt_us(med[base])} us, "
                             f"low-latency QPS {report.fmt_num(llt.get(base))}")
    else:
        lines.append("  (needs vanilla and at least one SKQ policy with a ~70 % point)")
    exp.summary["verdict"] = verdict
    return "\n".join(lines)
