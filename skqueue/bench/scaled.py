"""``scaled``: the SKQ scalability microbenchmark (docs/semantics.md §6.10), all modes in one run.

Setup.  N pipes each hold one unread byte, so every pipe is always readable and, being
registered level-triggered, is reported again and again; T threads fetch events in a
loop and do ``W`` microseconds of "work" per event; nothing is ever read, so the only
cost measured is the event machinery plus the work.  Each mode runs for D seconds and
reports events per second and its ratio to ``vanilla``:

``vanilla``
    one kqueue per thread, pipes assigned round-robin (no sharing, no balancing);
``legacy``
    one shared kqueue without multi mode; pipes registered ``EV_DISPATCH`` and each
    thread re-arms the events it got with ``EV_ENABLE`` batched into its next
    ``control()`` (the only safe way to share a stock kqueue among threads);
a policy label (``rand``, ``queue0``, ``cpu0``, ``best2``, ``ws``, ``best2_ws``, ...)
    one shared kqueue in SKQ multi mode with that scheduler word; pipes registered with
    a plain ``EV_ADD`` (SKQ's processing ownership makes sharing safe).

Work per event (``--work-kind``):

``hash`` (default)
    a busy loop of ``hashlib.sha256`` over a 4 KiB buffer until W us have passed.
    hashlib releases the GIL for buffers >= 2 KiB, so this work runs in parallel on
    several cores, like real per-request work in C would; it never sleeps.
``sleep``
    ``time.sleep(W us)``: the thread is off the CPU (and off the GIL).
``spin``
    a pure-Python busy loop that holds the GIL: shows GIL serialisation.

With ``W = 0`` (the default) no work is done.  The original pins threads to CPUs;
``--pin`` pins thread i to CPU ``i mod ncpu`` (the CPU/QUEUE policies assume pinning).

Results are machine-dependent and noisy: compare modes within one run, not across
runs.  ``--json`` prints one JSON object instead of the table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .._kevent import kevent
from .._kqueue import kqueue
from ..constants import (
    EV_ADD,
    EV_DISPATCH,
    EV_ENABLE,
    EVFILT_READ,
    KQ_SCHED_CPU,
    KQ_SCHED_QUEUE,
)
from ..sched import Topology, Tunables, parse_sched

__all__ = [
    "DEFAULT_MODES",
    "ModeResult",
    "ScaledConfig",
    "ScaledReport",
    "add_scaled_arguments",
    "format_scaled",
    "run_mode",
    "run_scaled",
    "scaled_main",
]

#: Modes run when ``--modes`` is not given: the two baselines, then SKQ policies.
DEFAULT_MODES = ("vanilla", "legacy", "rand", "queue0", "cpu0", "best2", "ws", "best2_ws")
WORK_KINDS = ("hash", "sleep", "spin")
_BASELINES = ("vanilla", "legacy")
_HASH_BUF = bytes(4096)


@dataclass
class ScaledConfig:
    """Parameters of one ``scaled`` run (see the module docstring)."""

    pipes: int = 64
    threads: int = 2
    events_per_call: int = 1
    work_us: float = 0.0
    work_kind: str = "hash"
    duration: float = 2.0
    modes: tuple[str, ...] = DEFAULT_MODES
    pin: bool = False
    seed: int | None = 1

    def validate(self) -> None:
        """Raise :class:`ValueError` on a bad parameter or unknown mode."""
        if self.pipes < 1:
            raise ValueError(f"pipes must be >= 1, got {self.pipes}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.events_per_call < 1:
            raise ValueError(f"events per call must be >= 1, got {self.events_per_call}")
        if self.work_us < 0:
            raise ValueError(f"work must be >= 0 us, got {self.work_us}")
        if self.work_kind not in WORK_KINDS:
            raise ValueError(f"work kind must be one of {WORK_KINDS}, got {self.work_kind!r}")
        if not self.duration > 0:
            raise ValueError(f"duration must be > 0 s, got {self.duration}")
        if not self.modes:
            raise ValueError("no modes given")
        for m in self.modes:
            if m not in _BASELINES:
                parse_sched(m)  # ValueError names the accepted forms


@dataclass
class ModeResult:
    """Outcome of one mode: totals, rate, ratio to vanilla, per-thread event counts."""

    mode: str
    word: int | None  # SKQ scheduler word; None for the baselines
    events: int
    seconds: float
    events_per_s: float
    ratio_to_vanilla: float | None
    per_thread: list[int] = field(default_factory=list)


@dataclass
class ScaledReport:
    """All modes of one run, in the order run."""

    config: ScaledConfig
    results: list[ModeResult]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (``--json``)."""
        cfg = asdict(self.config)
        cfg["modes"] = list(self.config.modes)
        return {"benchmark": "scaled", "config": cfg,
                "results": [asdict(r) for r in self.results]}


def _make_work(kind: str, work_us: float) -> Callable[[], None] | None:
    if work_us <= 0:
        return None
    ns = int(work_us * 1000)
    clock = time.perf_counter_ns
    if kind == "sleep":
        secs = work_us / 1e6

        def sleep_work() -> None:
            time.sleep(secs)

        return sleep_work
    if kind == "spin":

        def spin_work() -> None:
            end = clock() + ns
            while clock() < end:
                pass

        return spin_work
    sha = hashlib.sha256

    def hash_work() -> None:
        end = clock() + ns
        sha(_HASH_BUF)
        while clock() < end:
            sha(_HASH_BUF)

    return hash_work


def _pin(i: int) -> None:
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[i % len(cpus)]})
    except (OSError, AttributeError):
        pass


def run_mode(mode: str, cfg: ScaledConfig, read_fds: Sequence[int]) -> ModeResult:
    """Run one mode for ``cfg.duration`` seconds over the given always-readable fds."""
    nthreads = cfg.threads
    nev = cfg.events_per_call
    work = _make_work(cfg.work_kind, cfg.work_us)
    word: int | None = None
    kqs: list[kqueue] = []
    if mode == "vanilla":
        kqs = [kqueue() for _ in range(nthreads)]
        for i, fd in enumerate(read_fds):
            kqs[i % nthreads].control([kevent(fd, EVFILT_READ, EV_ADD)], 0)
    elif mode == "legacy":
        kqs = [kqueue()]
        kqs[0].control([kevent(fd, EVFILT_READ, EV_ADD | EV_DISPATCH) for fd in read_fds], 0)
    else:
        word = parse_sched(mode)
        topo = Topology.from_sysfs() if word & (KQ_SCHED_CPU | KQ_SCHED_QUEUE) else None
        kq = kqueue(tunables=Tunables(seed=cfg.seed), topology=topo)
        kq.set_multi(word)
        kqs = [kq]  # pipes are registered once every worker's kevq is active (below)
    counts = [0] * nthreads
    errors: list[BaseException] = []
    stop = threading.Event()
    ready = threading.Barrier(nthreads + 1)
    start = threading.Barrier(nthreads + 1)

    def worker(i: int) -> None:
        if cfg.pin:
            _pin(i)
        kq = kqs[i % len(kqs)]
        control = kq.control
        rearm = mode == "legacy"
        changes: list[kevent] = []
        n = 0
        try:
            if word is not None:
                control(None, 1, 0)  # activate this thread's kevq before any pipe is ready
            ready.wait(10)
            start.wait(10)
            while not stop.is_set():
                evs = control(changes or None, nev, 0.05)
                n += len(evs)
                if rearm:
                    changes = [kevent(e.ident, EVFILT_READ, EV_ENABLE) for e in evs]
                if work is not None:
                    for _ in evs:
                        work()
        except BaseException as e:  # noqa: BLE001 - reported after the run
            errors.append(e)
        finally:
            counts[i] = n
            if word is not None and not kq.closed:
                kq.detach()  # retire this thread's kevq now rather than at thread exit

    threads = [threading.Thread(target=worker, args=(i,), name=f"scaled-{mode}-{i}",
                                daemon=True) for i in range(nthreads)]
    try:
        for t in threads:
            t.start()
        ready.wait(10)
        if word is not None:
            # registered after every kevq is active, so the policy places every pipe
            # (registered earlier, all of them would be orphans handed to the first
            # thread to wait, semantics §3.8, D10)
            kqs[0].control([kevent(fd, EVFILT_READ, EV_ADD) for fd in read_fds], 0)
        start.wait(10)
        t0 = time.perf_counter()
        time.sleep(cfg.duration)
        stop.set()
        t1 = time.perf_counter()
        for t in threads:
            t.join(10)
    finally:
        stop.set()
        for k in kqs:
            k.close()
    if errors:
        raise RuntimeError(f"mode {mode}: worker failed: {errors[0]!r}") from errors[0]
    secs = t1 - t0
    total = sum(counts)
    return ModeResult(mode, word, total, secs, total / secs if secs > 0 else 0.0, None,
                      counts)


def run_scaled(cfg: ScaledConfig) -> ScaledReport:
    """Create the pipes, run every mode of ``cfg`` in turn, compute ratios to vanilla."""
    cfg.validate()
    pipes = [os.pipe() for _ in range(cfg.pipes)]
    try:
        for _r, w in pipes:
            os.write(w, b"x")
        results = [run_mode(m, cfg, [r for r, _w in pipes]) for m in cfg.modes]
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
    base = next((m.events_per_s for m in results if m.mode == "vanilla"), None)
    for m in results:
        m.ratio_to_vanilla = m.events_per_s / base if base else None
    return ScaledReport(cfg, results)


def format_scaled(rep: ScaledReport) -> str:
    """The human-readable table."""
    c = rep.config
    lines = [
        f"scaled: {c.pipes} pipes, {c.threads} threads, {c.events_per_call} event(s)/call, "
        f"work {c.work_us:g} us ({c.work_kind if c.work_us > 0 else 'none'}), "
        f"{c.duration:g} s per mode{', pinned' if c.pin else ''}",
        f"{'mode':<12}{'word':>12}{'events/s':>14}{'x vanilla':>11}  per-thread share",
    ]
    for r in rep.results:
        word = "-" if r.word is None else f"{r.word:#x}"
        ratio = "-" if r.ratio_to_vanilla is None else f"{r.ratio_to_vanilla:.2f}"
        tot = max(1, r.events)
        share = " ".join(f"{100 * n / tot:.0f}%" for n in r.per_thread)
        lines.append(f"{r.mode:<12}{word:>12}{r.events_per_s:>14,.0f}{ratio:>11}  {share}")
    return "\n".join(lines)


def add_scaled_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``skq bench scaled`` (the original's -c/-t/-n/-l/-w, plus modes)."""
    parser.add_argument("-c", "--pipes", type=int, default=64,
                        help="always-readable pipes (default 64)")
    parser.add_argument("-t", "--threads", type=int, default=2,
                        help="worker threads (default 2)")
    parser.add_argument("-n", "--events", type=int, default=1,
                        help="events per control() call (default 1)")
    parser.add_argument("-l", "--work", type=float, default=0.0,
                        help="microseconds of work per event (default 0)")
    parser.add_argument("--work-kind", choices=WORK_KINDS, default="hash",
                        help="hash: GIL-releasing hashlib busy loop (default); sleep; "
                             "spin: GIL-holding Python loop")
    parser.add_argument("-w", "--duration", type=float, default=2.0,
                        help="seconds per mode (default 2)")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help="comma-separated: vanilla, legacy and SKQ policy labels "
                             f"(default {','.join(DEFAULT_MODES)})")
    parser.add_argument("--pin", action="store_true", help="pin thread i to CPU i mod ncpu")
    parser.add_argument("--seed", type=int, default=1, help="scheduler RNG seed (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def scaled_main(args: argparse.Namespace) -> int:
    """Entry point of ``skq bench scaled``; returns the exit status."""
    cfg = ScaledConfig(
        pipes=args.pipes,
        threads=args.threads,
        events_per_call=args.events,
        work_us=args.work,
        work_kind=args.work_kind,
        duration=args.duration,
        modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
        pin=args.pin,
        seed=args.seed,
    )
    try:
        cfg.validate()
    except ValueError as e:
        print(f"skq bench scaled: {e}")
        return 2
    rep = run_scaled(cfg)
    if args.json:
        print(json.dumps(rep.to_dict()))
    else:
        print(format_scaled(rep))
    return 0
