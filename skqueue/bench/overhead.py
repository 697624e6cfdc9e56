"""Per-event overhead of skqueue's kqueue against a raw ``select.epoll`` loop.

Both loops watch the same N always-readable pipes (one unread byte each), level
triggered, and fetch up to N events per call, so every call returns N events.  The raw
loop does what the cheapest possible epoll user does: ``poll()`` and one dict lookup per
event.  The kqueue loop is ``kq.control(None, N, 0)``, which does what kqueue(2)
requires per event: re-checks that the knote is still readable (one poll(2) per run of
knotes) and that the descriptor is still the file that was registered (one fstat per
event; Linux has no cheaper way to see a descriptor closed and reused).  ``data`` is read
when the program first asks for it (see skqueue/_scan.py), so a third loop reads
``ev.data`` of every event: the cost for a program that uses it.  The loops alternate in
rounds and the ratios use the best round of each, so machine noise hits all alike.
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
    # The loop that also reads ``ev.data`` of every event (one FIONREAD, plus the identity
    # check that guards it).
    kq_data_us_per_event: float = 0.0
    ratio_data: float = 0.0
    # The system call a faithful delivery makes per event (the identity fstat), timed
    # alone on one of the same pipes: the part of the ratio no tuning removes.
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


def _kq_data_round(kq: kqueue, n: int, events: int) -> float:
    got = 0
    total = 0
    control = kq.control
    t0 = time.perf_counter_ns()
    while got < events:
        for ev in control(None, n, 0):
            total += ev.data
            got += 1
    return (time.perf_counter_ns() - t0) / got / 1000


def _floor_round(fd: int, n: int) -> float:
    from .._scan import PROBE_IDENT, probe

    st = os.fstat(fd)
    dev, ino = st.st_dev, st.st_ino
    t0 = time.perf_counter_ns()
    for _ in range(n):
        probe(fd, dev, ino, PROBE_IDENT)
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
        # A second kqueue for the loop that reads data: a kqueue learns per descriptor
        # that the program reads it (fd.py, want_data), so the loops must not share one.
        kqd = kqueue()
        kqd.control([kevent(r, EVFILT_READ, EV_ADD) for r, _w in fds], 0)
        per_round = max(events // rounds, pipes)
        raw = []
        kqs = []
        kqds = []
        _raw_round(ep, table, pipes, per_round // 10)  # warm-up
        _kq_round(kq, pipes, per_round // 10)
        _kq_data_round(kqd, pipes, per_round // 10)
        floors = []
        for _ in range(rounds):
            raw.append(_raw_round(ep, table, pipes, per_round))
            kqs.append(_kq_round(kq, pipes, per_round))
            kqds.append(_kq_data_round(kqd, pipes, per_round))
            floors.append(_floor_round(fds[0][0], max(per_round // 10, 1000)))
        ep.close()
        kq.close()
        kqd.close()
    finally:
        for r, w in fds:
            os.close(r)
            os.close(w)
    a, b, d, f = min(raw), min(kqs), min(kqds), min(floors)
    return OverheadResult(
        pipes, per_round * rounds, a, b, 1e6 / a, 1e6 / b, b / a, d, d / a, f, f / a
    )


def format_overhead(r: OverheadResult) -> str:
    return "\n".join(
        [
            f"{'loop':<22}{'us/event':>10}{'events/s':>14}",
            f"{'raw select.epoll':<22}{r.raw_us_per_event:>10.3f}{r.raw_events_per_s:>14,.0f}",
            f"{'skqueue.kqueue':<22}{r.kq_us_per_event:>10.3f}{r.kq_events_per_s:>14,.0f}",
            f"{'  + reading ev.data':<22}{r.kq_data_us_per_event:>10.3f}"
            f"{1e6 / r.kq_data_us_per_event:>14,.0f}",
            f"ratio kqueue/raw: {r.ratio:.2f}  ({r.pipes} always-readable pipes, "
            f"{r.events} events per loop, best of rounds)",
            f"ratio with ev.data read for every event: {r.ratio_data:.2f}",
            f"floor: identity fstat per delivered event = {r.syscall_floor_us:.3f} us, "
            f"i.e. ratio {r.ratio_floor:.2f} before any bookkeeping",
        ]
    )
