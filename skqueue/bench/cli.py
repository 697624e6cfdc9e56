"""``skq bench SUBCOMMAND``: each benchmark module offers add_arguments() and main()."""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any

_BENCHES = {
    "overhead": ("skqueue.bench.cli", "per-event cost of skqueue.kqueue vs a raw epoll loop"),
    "wakeup": ("skqueue.bench.wakeup", "wake-up latency: leader/followers vs harvester thread"),
    "scaled": ("skqueue.bench.scaled", "scalability: N always-readable pipes, T threads"),
    "run": ("skqueue.bench.run", "policies x loads on a server workload, table/JSON/CSV/plot"),
    "demo": ("skqueue.bench.run", "the default side-by-side comparison (make demo)"),
    "priority": ("skqueue.bench.run", "realtime clients under background load"),
    "memcached": ("skqueue.bench.run", "skq memcached server vs the real memcached"),
    "stall": ("skqueue.bench.stall", "lost wake-ups: sequential sets beside bursts (issue 14)"),
    "mixgraph": ("skqueue.bench.mixgraph", "RocksDB mixgraph: every policy, asyncio baseline"),
    "soak": ("skqueue.bench.soak", "memcached server at 80% of saturation with abuse mixed in"),
    "slowread": ("skqueue.bench.soak", "clients that leave large replies unread: p99 of others"),
}


class _LazyBenches(argparse._SubParsersAction):  # type: ignore[type-arg]
    """The BENCH subcommands: each benchmark module is imported, and its options added,
    only when argparse reaches its name in the arguments being parsed (whatever list
    ``parse_args`` was given; ``skq bench scaled --help`` then shows them)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        name = str(values[0]) if values else ""
        sub = self._name_parser_map.get(name)
        if sub is not None and name in _BENCHES and sub.get_default("_bench_main") is None:
            mod = importlib.import_module(_BENCHES[name][0])
            getattr(mod, f"add_{name}_arguments")(sub)
            sub.set_defaults(_bench_main=getattr(mod, f"{name}_main"))
        super().__call__(parser, namespace, values, option_string)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", action=_LazyBenches)
    sub.required = True
    for name, (_modname, helptext) in _BENCHES.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        if name == "overhead":
            _overhead_args(p)
            p.set_defaults(_bench_main=_overhead_main)


def main(args: Any) -> int:
    rc: int = args._bench_main(args)
    return rc


def _overhead_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipes", type=int, default=64, help="always-readable pipes (default 64)")
    p.add_argument("--events", type=int, default=500_000, help="events per loop (default 500k)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (best counts)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _overhead_main(args: Any) -> int:
    from .overhead import format_overhead, run_overhead

    r = run_overhead(args.pipes, args.events, args.rounds)
    if args.json:
        print(json.dumps(r.to_dict()))
    else:
        print(format_overhead(r))
    return 0
