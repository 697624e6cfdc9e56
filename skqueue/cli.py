"""The ``skq`` command: serve, load, bench, sim, dump.

Each subcommand lives with its package (``skqueue.server.cli``, ``skqueue.load.cli``,
``skqueue.bench.cli``, ``skqueue.sim.cli``) as ``add_arguments(parser)`` plus
``main(args) -> int``, imported only when used so ``skq sim`` never pays for the server.
"""

from __future__ import annotations

import argparse
import importlib
import sys

_COMMANDS = {
    "serve": ("skqueue.server.cli", "run a worker-pool server on one shared kqueue"),
    "dump": ("skqueue.server.dumpcli", "print the kqueue dump of a running `skq serve`"),
    "load": ("skqueue.load.cli", "open-loop load generator"),
    "bench": ("skqueue.bench.cli", "benchmarks: overhead, scaled, run, demo, priority"),
    "sim": ("skqueue.sim.cli", "many-core discrete-event simulator running skqueue.sched"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="skq", description="Schedulable Kqueue for Python")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = argv[0] if argv and not argv[0].startswith("-") else None
    for name, (modname, helptext) in _COMMANDS.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        if name == wanted:
            mod = importlib.import_module(modname)
            mod.add_arguments(p)
            p.set_defaults(_main=mod.main)
    args = parser.parse_args(argv)
    rc: int = args._main(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
