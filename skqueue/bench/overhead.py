"""Per-event overhead of skqueue's kqueue against a raw ``select.epoll`` loop.

Both loops watch the same N always-readable pipes (one unread byte each), level
triggered, and fetch up to N events per call, so every call returns N events.  The raw
loop does what the cheapest possible epoll user does: ``poll()`` and one dict lookup per
event.  The kqueue loop is ``kq.control(None, N, 0)``, which re-checks every event and
fills ``data`` (bytes readable), as kqueue(2) requires.  The two alternate in rounds and
the ratio uses the best round of each, so machine noise hits both alike.
"""

from __future__ import annotations

import os
import select
import time
from dataclasses import asdict, dataclass
from typing import Any

from .._kevent import kevent
from .._kqueue import kqueue
from ..constants import EV_ADD, EVFILT_READ


@dataclass
class OverheadResult:
    pipes: int
    events: int
    raw_us_per_event: float
    kq_us_per_event: float
    raw_events_per_s: float
    kq_events_per_s: float
    ratio: float
    # The two system calls a faithful delivery makes per event (identity fstat + FIONREAD
    # for ``data``), timed alone on one of the same pipes: the part of the ratio no
    # amount of Python or C tuning removes.
    syscall_floor_us: float = 0.0
    ratio_floor: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _raw_round(ep: select.epoll, table: dict[int, int], n: int, events: int) -> float:
    got = 0
    t0 = time.perf_counter_ns()
    while got < events:
        for fd, _mask in ep.poll(0, n):
            table[fd]
            got += 1
    return (time.perf_counter_ns() - t0) / got / 1000


def _kq_round(kq: kqueue, n: int, events: int) -> float:
    got = 0
    control = kq.control
    t0 = time.perf_counter_ns()
    while got < events:
        got += len(control(None, n, 0))
    return (time.perf_counter_ns() - t0) / got / 1000


def _floor_round(fd: int, n: int) -> float:
    from ..filters.fd import PROBE_READ, probe

    st = os.fstat(fd)
    dev, ino = st.st_dev, st.st_ino
    t0 = time.perf_counter_ns()
    for _ in range(n):
        probe(fd, dev, ino, PROBE_READ)
    t1 = time.perf_counter_ns()
    for _ in range(n):
        pass
    t2 = time.perf_counter_ns()
    return max(0.0, ((t1 - t0) - (t2 - t1)) / n / 1000)


def run_overhead(pipes: int = 64, events: int = 200_000, rounds: int = 5) -> OverheadResult:
    fds = [os.pipe() for _ in range(pipes)]
    try:
        for _r, w in fds:
            os.write(w, b"x")
        ep = select.epoll()
        table = {}
        for r, _w in fds:
            ep.register(r, select.EPOLLIN)
            table[r] = r
        kq = kqueue()
        kq.control([kevent(r, EVFILT_READ, EV_ADD) for r, _w in fds], 0)
        per_round = max(events // rounds, pipes)
        raw = []
        kqs = []
        _raw_round(ep, table, pipes, per_round // 10)  # warm-up
        _kq_round(kq, pipes, per_round // 10)
        floors = []
        for _ in range(rounds):
            raw.append(_raw_round(ep, table, pipes, per_round))
            kqs.append(_kq_round(kq, pipes, per_round))
            floors.append(_floor_round(fds[0][0], max(per_round // 10, 1000)))
        ep.close()
        kq.close()
    finally:
        for r, w in fds:
            os.close(r)
            os.close(w)
    a, b, f = min(raw), min(kqs), min(floors)
    return OverheadResult(pipes, per_round * rounds, a, b, 1e6 / a, 1e6 / b, b / a, f, f / a)


def format_overhead(r: OverheadResult) -> str:
    return "\n".join(
        [
            f"{'loop':<22}{'us/event':>10}{'events/s':>14}",
            f"{'raw select.epoll':<22}{r.raw_us_per_event:>10.3f}{r.raw_events_per_s:>14,.0f}",
            f"{'skqueue.kqueue':<22}{r.kq_us_per_event:>10.3f}{r.kq_events_per_s:>14,.0f}",
            f"ratio kqueue/raw: {r.ratio:.2f}  ({r.pipes} always-readable pipes, "
            f"{r.events} events per loop, best of rounds)",
            f"floor: identity fstat + FIONREAD per delivered event = {r.syscall_floor_us:.3f} "
            f"us, i.e. ratio {r.ratio_floor:.2f} before any bookkeeping",
        ]
    )
