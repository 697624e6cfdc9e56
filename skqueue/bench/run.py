"""The commands behind ``skq bench run | demo | priority | memcached``.

Each command parses its options, derives the common set-up once (:class:`Setup`: the checks,
the CPU placement, the load settings, the progress lines), runs its experiment with
:mod:`skqueue.bench.experiment` and prints and writes the results with
:mod:`skqueue.bench.report` (both modules' docstrings say what is measured and how).

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
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from skqueue.bench import report

# the data model and the measuring were defined here before the harness was split by job:
# what tests and users imported from this module still imports from it
from skqueue.bench.experiment import (
    Experiment,
    FreshServers,
    LoadSettings,
    Plan,
    Point,
    PolicyResult,
    Progress,
    fraction_stages,
    hist_summary,
    measure,
    ramp,
    run_experiment,
    run_policy,
    settle,
    slo_latency_us,
    split_cpus,
    standard_plan,
)
from skqueue.bench.report import CSV_COLUMNS
from skqueue.bench.servers import SERVICE_MODES, ServerSpec, server_kind
from skqueue.load.config import LoadConfig

__all__ = [
    "CSV_COLUMNS",
    "Experiment",
    "LoadSettings",
    "Point",
    "PolicyResult",
    "Progress",
    "Setup",
    "add_common_arguments",
    "add_demo_arguments",
    "add_fraction_arguments",
    "add_memcached_arguments",
    "add_priority_arguments",
    "add_run_arguments",
    "demo_main",
    "fraction_stages",
    "hist_summary",
    "memcached_main",
    "measure",
    "priority_main",
    "ramp",
    "run_experiment",
    "run_main",
    "run_policy",
    "settle",
    "slo_latency_us",
    "split_cpus",
]

RT_HOST = "127.0.0.2"
#: A policy label with this suffix runs the policy with ``Tunables.idle_first``.
IDLE_SUFFIX = "+idle"


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


def add_common_arguments(
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
    """The options every command has (server threads, load, SLO, placement, output), with
    the command's defaults; :meth:`Setup.from_args` reads them."""
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


def _check_common(args: argparse.Namespace) -> None:
    if args.conns < 1 or args.procs < 1 or args.threads < 1:
        raise SystemExit("--conns, --procs and --threads must be >= 1")
    if getattr(args, "probe_conns", 0) < 0:
        raise SystemExit("--probe-conns must be >= 0")
    if args.duration <= 0 or args.warmup < 0:
        raise SystemExit("--duration must be > 0 and --warmup >= 0")
    if not 0 < args.slo_pct <= 100 or args.slo_us <= 0:
        raise SystemExit("--slo-pct must be in (0, 100] and --slo-us > 0")


def _settings(
    args: argparse.Namespace, protocol: str, load_cpus: tuple[int, ...] | None
) -> LoadSettings:
    """The load settings of the common options, and of ``--mix`` and ``--mc-*`` where the
    command has them (else the generator's defaults)."""
    mc = ("mc_keys", "mc_value_size", "mc_set_ratio")
    load = LoadConfig(
        protocol=protocol,
        connections=args.conns,
        processes=args.procs,
        duration_s=args.duration,
        warmup_s=args.warmup,
        interarrival=args.interarrival,
        service=getattr(args, "mix", "echo-mix"),
        seed=args.seed,
        timeout_s=args.timeout,
        **{k: getattr(args, k) for k in mc if hasattr(args, k)},
    )
    return LoadSettings(
        load, probe_conns=getattr(args, "probe_conns", 0), settle_s=args.settle, cpus=load_cpus
    )


def _pin_text(mode: str, server: Any, load: Any) -> str:
    if mode == "none" or server is None:
        return "none (kernel placement)"
    return f"split: server on CPUs {list(server)}, load generator on CPUs {list(load)}"


@dataclass
class Setup:
    """What every ``skq bench`` command derives from its common options, done once:
    :meth:`from_args` checks them, splits the CPUs (``--pin``) and builds the load settings;
    :meth:`specs`, :meth:`run` and :meth:`finish` then fill in what the commands share."""

    args: argparse.Namespace
    progress: Progress
    settings: LoadSettings
    server_cpus: tuple[int, ...] | None
    pin: str

    @classmethod
    def from_args(cls, args: argparse.Namespace, protocol: str) -> Setup:
        """Check the common options; ``protocol`` is the generator's wire protocol."""
        _check_common(args)
        progress = Progress(quiet=args.quiet)
        server_cpus, load_cpus = split_cpus(args.pin)
        settings = _settings(args, protocol, load_cpus)
        pin = _pin_text(args.pin, server_cpus, load_cpus)
        return cls(args, progress, settings, server_cpus, pin)

    def specs(self, labels: Sequence[str], proto: str, service: str) -> list[ServerSpec]:
        """One server spec per policy label (``--threads``, on the server's CPUs); an unknown
        SKQ label exits with a message.  An SKQ label ending in ``+idle`` (``best2_ws+idle``)
        runs that policy with ``Tunables.idle_first`` (``skq serve --idle-first``)."""
        from skqueue.sched import parse_sched

        specs = []
        for label in labels:
            idle = label.endswith(IDLE_SUFFIX)
            policy = label.removesuffix(IDLE_SUFFIX)
            if server_kind(policy) == "skq" and policy not in ("vanilla", "legacy"):
                try:
                    parse_sched(policy)
                except (ValueError, KeyError) as exc:
                    raise SystemExit(f"unknown policy label {label!r}: {exc}") from None
            elif idle:
                raise SystemExit(f"{label!r}: {IDLE_SUFFIX} needs an SKQ policy")
            specs.append(
                ServerSpec(
                    policy=policy,
                    proto=proto,
                    threads=self.args.threads,
                    service=service,
                    cpus=self.server_cpus,
                    name=label if idle else "",
                    extra_args=("--idle-first",) if idle else (),
                )
            )
        return specs

    def run(
        self,
        kind: str,
        specs: Sequence[ServerSpec],
        plan_for: Callable[[ServerSpec], Plan | FreshServers],
        *,
        service: str | None,
        params: dict[str, Any],
        llt_phases: tuple[str, ...] | None = ("ramp", "load"),
    ) -> Experiment:
        """:func:`run_experiment` with the SLO options, the settings and the CPU placement."""
        return run_experiment(
            kind,
            specs,
            self.settings,
            plan_for,
            service=service,
            slo_pct=self.args.slo_pct,
            slo_us=self.args.slo_us,
            progress=self.progress,
            pin=self.pin,
            llt_phases=llt_phases,
            params=params,
        )

    def finish(self, exp: Experiment, extra_tables: Sequence[str] = ()) -> int:
        """Write the files, print the tables; exit code 0 unless every policy failed."""
        a = self.args
        files = report.write_outputs(exp, Path(a.out), a.name, not a.no_plot, self.progress)
        print(report.render(exp, files, extra_tables), flush=True)
        return 0 if any(pr.status == "ok" for pr in exp.policies) else 1


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
    add_common_arguments(p, duration=2.0, warmup=0.5, conns=100, slo_us=5000.0, probe_conns=0)


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


def _ramp_main(setup: Setup, kind: str, specs: list[ServerSpec], **run: Any) -> int:
    """``run`` and ``memcached``: every server runs :func:`standard_plan` (``--loads`` or the
    ramp); ``run`` holds :meth:`Setup.run`'s ``service`` and ``params``."""
    args = setup.args
    ramp_spec = None if args.loads else _parse_ramp(args.ramp)

    def plan_for(spec: ServerSpec) -> Plan:
        return standard_plan(
            setup.settings,
            args.slo_pct,
            setup.progress,
            loads=args.loads,
            ramp_spec=ramp_spec,
            max_points=args.max_points,
            max_run=getattr(args, "max_run", False),
            ramp_stop_us=getattr(args, "ramp_stop_us", None),
            server_warmup=getattr(args, "server_warmup", 0.0),
            label=spec.label,
        )

    return setup.finish(setup.run(kind, specs, plan_for, **run))


def run_main(args: argparse.Namespace) -> int:
    """``skq bench run``."""
    setup = Setup.from_args(args, "memcached" if args.proto == "memcached" else "rpc-echo")
    if "memcached" in args.policies and args.proto != "memcached":
        raise SystemExit("the real memcached baseline needs --proto memcached")
    specs = setup.specs(args.policies, args.proto, args.service)
    return _ramp_main(
        setup,
        "run",
        specs,
        service=args.service if args.proto == "rpc" else None,
        params={
            "policies": args.policies,
            "proto": args.proto,
            "threads": args.threads,
            "loads": args.loads,
            "ramp": args.ramp if not args.loads else None,
            "max_points": args.max_points,
        },
    )


# ----------------------------------------------------------------------------- demo

DEMO_POLICIES = ["vanilla", "legacy", "rand", "best2", "best2_ws", "cpu2_ws", "asyncio"]


def add_fraction_arguments(
    p: argparse.ArgumentParser, fractions: Sequence[float], ramp_points: int, note: str = ""
) -> None:
    """``--policies``, ``--fractions``, ``--ramp-points`` and ``--saturation`` of
    :func:`fraction_stages` experiments (demo, mixgraph)."""
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
    add_common_arguments(
        p, duration=2.5, warmup=0.5, conns=100, slo_us=10000.0, probe_conns=20, threads=8
    )




def demo_main(args: argparse.Namespace) -> int:
    """``skq bench demo``: the default comparison (``make demo``)."""
    setup = Setup.from_args(args, "rpc-echo")
    specs = setup.specs(args.policies, "rpc", args.service)
    fractions = sorted(args.fractions)
    state: dict[str, Any] = {"saturation": args.saturation, "loads": None, "reference": None}

    def plan_for(spec: ServerSpec) -> FreshServers:
        return fraction_stages(
            setup.settings, spec.label, args.slo_pct, setup.progress, state, fractions,
            args.ramp_points,
        )  # fmt: skip

    exp = setup.run(
        "demo",
        specs,
        plan_for,
        service=args.service,
        llt_phases=("load",),
        params={"policies": args.policies, "fractions": fractions, "threads": args.threads},
    )
    return setup.finish(exp, extra_tables=[report.demo_summary(exp, fractions, state)])


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
    add_common_arguments(
        p, duration=2.0, warmup=0.5, conns=100, slo_us=5000.0, interarrival="exponential"
    )


def priority_main(args: argparse.Namespace) -> int:
    """``skq bench priority``: realtime p99 unloaded vs under ~90 % background load."""
    setup = Setup.from_args(args, "rpc-echo")
    if args.rt_conns < 1 or args.rt_qps <= 0:
        raise SystemExit("--rt-conns must be >= 1 and --rt-qps > 0")
    settings, progress = setup.settings, setup.progress
    base = setup.specs([args.policy], "rpc", args.service)[0]
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
    rt: dict[str, Any] = {
        "rt_connections": args.rt_conns,
        "rt_qps": args.rt_qps,
        "rt_service": args.rt_service,
        "rt_bind": RT_HOST,
    }

    def plan_for(spec: ServerSpec) -> Plan:
        def plan(address: tuple[str, int], points: list[Point]) -> None:
            def at(qps: float, phase: str, **kw: Any) -> Point:
                pt = measure(address, settings, spec.label, phase, qps, args.slo_pct, **kw)
                points.append(pt)
                progress("  " + report.point_line(pt) + report.class_text(pt))
                return pt

            # 1. realtime connections alone, light load
            at(args.rt_qps, "unloaded", connections=args.rt_conns, **rt)
            # 2. background saturation (normal connections only), once
            if state["bg_qps"] is None:
                mx = at(0.0, "max")
                state["bg_qps"] = max(10.0, round(args.bg_fraction * mx.achieved_qps, -1))
                progress(f"  background load: {report.fmt_num(state['bg_qps'])} QPS")
            # 3. realtime + background in the same run
            at(state["bg_qps"] + args.rt_qps, "loaded", connections=rt_total, **rt)

        return plan

    exp = setup.run(
        "priority",
        specs,
        plan_for,
        service=args.service,
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
    return setup.finish(exp, extra_tables=[report.priority_summary(exp, state)])


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
    add_common_arguments(p, duration=2.0, warmup=0.5, conns=50, slo_us=2000.0)



def memcached_main(args: argparse.Namespace) -> int:
    """``skq bench memcached``: skq's memcached server vs the real memcached."""
    setup = Setup.from_args(args, "memcached")
    specs = setup.specs(args.policies, "memcached", "sleep")
    params = {"policies": args.policies, "threads": args.threads, "loads": args.loads}
    return _ramp_main(setup, "memcached", specs, service=None, params=params)


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
