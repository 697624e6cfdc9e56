"""``skq load``: run one open-loop load point from the command line.

``skqueue.cli`` wires this in as a sub-command::

    sub = subparsers.add_parser("load", help="open-loop load generator")
    skqueue.load.cli.add_arguments(sub)
    ...
    return skqueue.load.cli.main(args)

It can also run alone: ``python -m skqueue.load.cli --port 9000 --qps 2000``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from skqueue.load.config import PROTOCOLS, LoadConfig, LoadResult
from skqueue.load.generator import run_load

__all__ = ["add_arguments", "config_from_args", "format_table", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``skq load`` options to ``parser``."""
    d = LoadConfig()
    a = parser.add_argument
    a("--host", default=d.host, help="server address (default %(default)s)")
    a("--port", type=int, required=True, help="server TCP port")
    a("--proto", choices=PROTOCOLS, default=d.protocol, help="wire protocol")
    a("--qps", type=float, default=d.qps, help="total target QPS; <= 0 means unpaced")
    a("--conns", type=int, default=d.connections, help="total connections")
    a("--procs", type=int, default=d.processes, help="worker processes (0 = inline)")
    a("--duration", type=float, default=d.duration_s, help="measurement seconds")
    a("--warmup", type=float, default=d.warmup_s, help="warm-up seconds (not measured)")
    a(
        "--interarrival",
        default=d.interarrival,
        help="fb_ia, exponential, fixed, uniform, normal[:f], pareto:l,s,k, gev:l,s,k",
    )
    a(
        "--service",
        default=d.service,
        help="ECHO service time: echo-mix[:unit_us], fixed:US, exp:MEAN_US, bimodal:P:A:B, zero",
    )
    a("--seed", type=int, default=d.seed, help="random seed (schedules are deterministic)")
    a("--rt-conns", type=int, default=0, help="realtime connections (class 'rt')")
    a("--rt-bind", default=d.rt_bind, help="local loopback address of rt connections")
    a("--rt-qps", type=float, default=None, help="QPS share of the rt connections")
    a("--rt-service", default=None, help="service spec of rt connections (e.g. zero)")
    a("--bind", default=None, help="local loopback address of normal connections")
    a("--timeout", type=float, default=d.timeout_s, help="set-up/drain bound in seconds")
    a("--payload", type=int, default=d.payload_size, help="ECHO payload bytes")
    a("--kv-keyspace", type=int, default=d.kv_keyspace, help="rpc-kv key count")
    a("--kv-quirk", action="store_true", help="rpc-kv: reproduce the authors' key quirk")
    a("--kv-scan-cap", type=int, default=d.kv_scan_cap, help="SEEK length modulo (0 = none)")
    a("--mc-keys", type=int, default=d.mc_keys, help="memcached key count")
    a("--mc-key-size", type=int, default=d.mc_key_size, help="memcached key length")
    a("--mc-value-size", type=int, default=d.mc_value_size, help="memcached value bytes")
    a("--mc-set-ratio", type=float, default=d.mc_set_ratio, help="share of sets")
    a("--mc-preload", action="store_true", help="store every key before the run")
    a("--json", action="store_true", help="print the full result as JSON")


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    """Turn parsed ``skq load`` arguments into a :class:`LoadConfig`."""
    return LoadConfig(
        host=args.host,
        port=args.port,
        protocol=args.proto,
        qps=args.qps,
        connections=args.conns,
        processes=args.procs,
        duration_s=args.duration,
        warmup_s=args.warmup,
        interarrival=args.interarrival,
        service=args.service,
        seed=args.seed,
        rt_connections=args.rt_conns,
        rt_bind=args.rt_bind,
        rt_qps=args.rt_qps,
        rt_service=args.rt_service,
        bind=args.bind,
        timeout_s=args.timeout,
        payload_size=args.payload,
        kv_keyspace=args.kv_keyspace,
        kv_authors_quirk=args.kv_quirk,
        kv_scan_cap=args.kv_scan_cap or None,
        mc_keys=args.mc_keys,
        mc_key_size=args.mc_key_size,
        mc_value_size=args.mc_value_size,
        mc_set_ratio=args.mc_set_ratio,
        mc_preload=args.mc_preload,
    )


def _row(name: str, qps: float, lat: dict[str, Any]) -> str:
    return (
        f"{name:<18} {qps:>10.1f} {lat['count']:>9d} {lat['p50']:>9.1f} {lat['p90']:>9.1f} "
        f"{lat['p99']:>9.1f} {lat['p999']:>9.1f} {lat['max']:>10.1f}"
    )


def format_table(result: LoadResult) -> str:
    """A short human-readable summary (latencies in µs)."""
    cfg = result.config
    d = result.to_dict()
    lines = [
        f"skq load {cfg.protocol} {cfg.host}:{cfg.port}  conns {cfg.connections} "
        f"(ok {result.connections_ok}) procs {result.processes}  "
        f"{cfg.interarrival}  window {cfg.duration_s:g}s after {cfg.warmup_s:g}s warm-up",
        f"target {result.target_qps:.1f} qps  offered {result.offered_qps:.1f}  "
        f"achieved {result.achieved_qps:.1f}  errors {result.errors} {result.error_kinds or ''}"
        f"  unsent {result.unsent}  in-flight-at-end {result.in_flight_at_end}",
        f"{'latency (us)':<18} {'qps':>10} {'count':>9} {'p50':>9} {'p90':>9} {'p99':>9} "
        f"{'p99.9':>9} {'max':>10}",
        _row("all/intended", result.achieved_qps, d["latency_intended_us"]),
        _row("all/actual", result.achieved_qps, d["latency_actual_us"]),
    ]
    if len(result.classes) > 1:
        for name, c in d["classes"].items():
            lines.append(_row(f"{name}/intended", c["achieved_qps"], c["latency_intended_us"]))
            lines.append(_row(f"{name}/actual", c["achieved_qps"], c["latency_actual_us"]))
    lag = d["send_lag_us"]
    lines.append(f"send lag (us): p50 {lag['p50']:.1f}  p99 {lag['p99']:.1f}  max {lag['max']:.1f}")
    return "\n".join(lines)


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``skq load``; returns the exit status (0 ok, 1 errors in the run, 2 bad config)."""
    stream = out if out is not None else sys.stdout
    try:
        cfg = config_from_args(args)
        cfg.validate()
    except ValueError as exc:
        print(f"skq load: {exc}", file=sys.stderr)
        return 2
    result = run_load(cfg)
    if args.json:
        json.dump(result.to_dict(), stream, indent=2)
        stream.write("\n")
    else:
        stream.write(format_table(result) + "\n")
    return 1 if result.connections_ok == 0 else 0


if __name__ == "__main__":  # pragma: no cover
    _p = argparse.ArgumentParser(prog="skq load", description=__doc__)
    add_arguments(_p)
    sys.exit(main(_p.parse_args()))
