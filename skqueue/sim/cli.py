"""``skq sim``: run one simulation, or sweep policies x loads.

Examples::

    skq sim --policy best2_ws --cores 12 --threads 12 --workload echo-mix --load 0.8 \\
        --requests 200000 --seed 1 --json
    skq sim sweep --policies vanilla,shared,best2_ws,ws --loads 0.5,0.7,0.9 \\
        --processes 2 --plot p99.png
    skq sim validate --qps 3000,4200 --duration 8 --repeat 2
    skq sim validate-kv --bench results/mixgraph-DATE.json

The top-level ``skq`` command wires this in with :func:`add_arguments` and :func:`main`;
``python -m skqueue.sim`` runs it standalone.  Cost parameters without a dedicated option
are set with ``--set NAME=VALUE`` (any :class:`SimConfig` field, e.g.
``--set wakeup_ns=2000``); ``--zero-costs`` turns every overhead off.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from .config import SimConfig
from .run import SimResult, low_latency_throughput, simulate, sweep

__all__ = ["add_arguments", "main", "build_parser", "run_cli"]

#: Default latency target for "low-latency throughput".  The paper's target and percentile
#: are unknown (docs/semantics.md §6.12); this is our choice and is printed with every result.
DEFAULT_SLO_US = 500.0


def _add_common(p: argparse.ArgumentParser) -> None:
    d = SimConfig()
    p.add_argument("--cores", type=int, default=d.cores, help=f"cores (default {d.cores})")
    p.add_argument("--threads", type=int, default=d.threads,
                   help=f"worker threads (default {d.threads})")
    p.add_argument("--sockets", type=int, default=d.sockets)
    p.add_argument("--smt", type=int, default=d.smt)
    p.add_argument("--workload", default=d.workload,
                   help="echo-mix, uniform10, exp, bimodal, rocksdb, or a service spec")
    p.add_argument("--requests", type=int, default=d.requests,
                   help=f"measured requests (default {d.requests})")
    p.add_argument("--warmup", type=int, default=None,
                   help="requests discarded first (default requests/10)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--connections", type=int, default=d.connections)
    p.add_argument("--interarrival", default=d.interarrival)
    p.add_argument("--maxevents", type=int, default=d.maxevents)
    p.add_argument("--rtshare", type=int, default=d.rtshare)
    p.add_argument("--tfreq", type=int, default=d.tfreq)
    p.add_argument("--realtime-conns", type=int, default=d.realtime_conns)
    p.add_argument("--probe-conns", type=int, default=d.probe_conns,
                   help="connections that send GETs only, reported apart (rocksdb workload)")
    p.add_argument("--zero-costs", action="store_true", help="set every overhead to 0")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="set any SimConfig field (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``skq sim`` options (single run) and the ``sweep`` sub-command."""
    parser.add_argument("--policy", default=SimConfig().policy,
                        help="SKQ label (best2_ws, cpu0, ws, ...) or vanilla/shared/legacy")
    parser.add_argument("--load", type=float, default=SimConfig().load,
                        help="offered load as a fraction of ideal capacity")
    parser.add_argument("--qps", type=float, default=None, help="offered load in req/s")
    _add_common(parser)
    sub = parser.add_subparsers(dest="sim_cmd")
    sw = sub.add_parser("sweep", help="policies x loads; p99 table and low-latency throughput")
    sw.add_argument("--policies", default="vanilla,shared,best2_ws,ws",
                    help="comma-separated policies")
    sw.add_argument("--loads", default="0.5,0.7,0.9",
                    help="comma-separated load fractions")
    sw.add_argument("--processes", type=int, default=1,
                    help="local worker processes (0 = one per CPU)")
    sw.add_argument("--dask", default=None, metavar="ADDR",
                    help="dask.distributed scheduler address")
    sw.add_argument("--plot", default=None, metavar="PNG",
                    help="write p99 vs throughput (needs matplotlib)")
    sw.add_argument("--slo-us", type=float, default=DEFAULT_SLO_US,
                    help=f"latency target for low-latency throughput (default {DEFAULT_SLO_US})")
    sw.add_argument("--pct", type=float, default=99.0,
                    help="percentile for the target: 50, 90, 95, 99 or 99.9")
    _add_common(sw)
    from . import validate

    va = sub.add_parser("validate", help="calibrate on the real runtime (sleep service) and "
                        "compare measured vs predicted p99 (loopback, takes minutes)")
    validate.add_arguments(va)
    from . import validate_kv

    vk = sub.add_parser("validate-kv", help="re-calibrate the rocksdb workload on the real store "
                        "and compare with a `skq bench mixgraph` run (takes a minute or two)")
    validate_kv.add_arguments(vk)


def _coerce(field: dataclasses.Field[Any], text: str) -> Any:
    kind = str(field.type)
    if text.lower() == "none":
        return None
    if kind == "bool":
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{field.name}: expected true or false, got {text!r}")
    if "int" in kind and "float" not in kind:
        return int(text)
    if "float" in kind:
        return float(text)
    return text


def _config(args: argparse.Namespace, policy: str, load: float) -> SimConfig:
    fields = {f.name: f for f in dataclasses.fields(SimConfig)}
    kw: dict[str, Any] = {
        "policy": policy, "load": load, "qps": getattr(args, "qps", None),
        "cores": args.cores, "threads": args.threads, "sockets": args.sockets, "smt": args.smt,
        "workload": args.workload, "requests": args.requests, "warmup": args.warmup,
        "seed": args.seed, "connections": args.connections, "interarrival": args.interarrival,
        "maxevents": args.maxevents, "rtshare": args.rtshare, "tfreq": args.tfreq,
        "realtime_conns": args.realtime_conns, "probe_conns": args.probe_conns,
    }
    for item in args.set:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE with a SimConfig field name")
        kw[name] = _coerce(fields[name], value.strip())
    cfg = SimConfig(**kw)
    return cfg.zero_costs() if args.zero_costs else cfg


def _print_single(r: SimResult) -> None:
    print(f"policy {r.policy}: offered {r.offered:,.0f} req/s ({r.load:.2f} of capacity "
          f"{r.capacity:,.0f}), achieved {r.throughput:,.0f} req/s")
    print(f"latency us: p50 {r.p50:.1f}  p90 {r.p90:.1f}  p95 {r.p95:.1f}  p99 {r.p99:.1f}  "
          f"p99.9 {r.p999:.1f}  mean {r.mean:.1f}  max {r.max:.1f}")
    if r.rt_measured:
        print(f"realtime: p50 {r.rt_p50:.1f}  p99 {r.rt_p99:.1f} us ({r.rt_measured} requests)")
    if r.probe_measured:
        print(f"probes: p50 {r.probe_p50:.1f}  p99 {r.probe_p99:.1f} us "
              f"({r.probe_measured} requests)")
    print(f"{r.measured} requests, {r.sim_time_s:.3f} s simulated, {r.events} events, "
          f"{r.wall_s:.2f} s wall")


def _plot(results: list[SimResult], policies: list[str], path: str, title: str = "") -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib") from exc
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for pol in policies:
        rs = [r for r in results if r.policy == pol]
        ax.plot([r.throughput / 1e3 for r in rs], [r.p99 for r in rs], marker="o", label=pol)
    ax.set_xlabel("achieved throughput (k req/s)")
    ax.set_ylabel("p99 latency (us)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _run_sweep(args: argparse.Namespace) -> int:
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    loads = [float(x) for x in args.loads.split(",") if x.strip()]
    cfgs = [_config(args, pol, load) for pol in policies for load in loads]
    procs = None if args.processes == 0 else args.processes
    results = sweep(cfgs, processes=procs, dask_address=args.dask)
    llt = {pol: low_latency_throughput([r for r in results if r.policy == pol],
                                       args.slo_us, args.pct) for pol in policies}
    if args.plot:
        c = cfgs[0]
        title = (f"{c.workload}, {c.threads} threads / {c.cores} cores, "
                 f"{c.connections} conns, {c.requests} req/point, seed {c.seed}, "
                 f"cache_miss {c.cache_miss_ns} ns")
        _plot(results, policies, args.plot, title)
    if args.json:
        print(json.dumps({
            "slo_us": args.slo_us, "pct": args.pct,
            "results": [r.brief() for r in results],
            "low_latency_throughput": llt,
        }, indent=2))
        return 0
    w = max(8, *(len(p) for p in policies))
    print(f"p{args.pct:g} latency (us) vs offered load; workload {args.workload}, "
          f"{args.threads} threads on {args.cores} cores")
    print(f"{'policy':<{w}}" + "".join(f"{load:>12.2f}" for load in loads))
    for pol in policies:
        attr = {50.0: "p50", 90.0: "p90", 95.0: "p95", 99.0: "p99", 99.9: "p999"}[args.pct]
        row = [getattr(r, attr) for r in results if r.policy == pol]
        print(f"{pol:<{w}}" + "".join(f"{v:>12.1f}" for v in row))
    if args.probe_conns:
        print(f"\nprobe p99 latency (us), the {args.probe_conns} GET-only connections")
        for pol in policies:
            row = [r.probe_p99 for r in results if r.policy == pol]
            print(f"{pol:<{w}}" + "".join(f"{v:>12.1f}" for v in row))
    print(f"\nlow-latency throughput (p{args.pct:g} <= {args.slo_us:g} us; target is our "
          "choice, the paper's is unknown):")
    for pol in policies:
        print(f"  {pol:<{w}} {llt[pol]:>14,.0f} req/s")
    return 0


def main(args: argparse.Namespace) -> int:
    """Run ``skq sim`` with parsed ``args``; returns the exit status."""
    try:
        if getattr(args, "sim_cmd", None) == "sweep":
            return _run_sweep(args)
        if getattr(args, "sim_cmd", None) == "validate":
            from . import validate

            return validate.main(args)
        if getattr(args, "sim_cmd", None) == "validate-kv":
            from . import validate_kv

            return validate_kv.main(args)
        r = simulate(_config(args, args.policy, args.load))
    except ValueError as exc:
        print(f"skq sim: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
    else:
        _print_single(r)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """A standalone parser for ``skq sim``."""
    p = argparse.ArgumentParser(prog="skq sim", description="SKQ many-core simulator")
    add_arguments(p)
    return p


def run_cli(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run (``python -m skqueue.sim``)."""
    return main(build_parser().parse_args(argv))
