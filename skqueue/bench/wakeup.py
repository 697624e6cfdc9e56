"""Wake-up latency of the two ways to turn OS readiness into work (docs/design.md).

* leader/followers: the worker itself is blocked in ``epoll_wait`` (one wake-up);
* harvester thread: a dedicated thread in ``epoll_wait`` hands the event to a worker
  sleeping on a ``threading.Condition`` (two wake-ups and a GIL hand-off).

One socketpair, ping-pong of one byte; latency from send to the worker's ``recv``.

A second measurement prices what a follower's sleep costs: two threads hand a turn back
and forth, each sleeping on its own condition variable between turns, once with
``threading.Condition`` and once with the kevq's :class:`~skqueue._kevq.KevqCond`
(rounds interleaved).  Per round trip (two sleeps, two wake-ups): the wall time and the
process's CPU time.  On a free-threaded 3.13 a ``threading.Condition`` sleeper spins on
a PyMutex before it sleeps, which the CPU column shows.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .._kevq import KevqCond
from .._scan import new_lock

Design = Callable[["select.epoll", int], tuple[Callable[[], None], list[Callable[[], None]]]]


def _ping_pong(n: int, design: Design) -> list[int]:
    """``n`` one-byte pings to a worker thread that waits as ``design`` says; returns the
    wake-up latency of each (send to the worker running), in ns."""
    a, b = socket.socketpair()
    ep = select.epoll()
    ep.register(b.fileno(), select.EPOLLIN | select.EPOLLET)
    wait, helpers = design(ep, n)
    lat: list[int] = []
    sent = [0]
    done = threading.Event()

    def worker() -> None:
        for _ in range(n):
            wait()
            t = time.perf_counter_ns()
            b.recv(8)
            lat.append(t - sent[0])
            done.set()

    ths = [threading.Thread(target=worker), *(threading.Thread(target=h) for h in helpers)]
    for th in ths:
        th.start()
    time.sleep(0.05)
    for _ in range(n):
        done.clear()
        sent[0] = time.perf_counter_ns()
        a.send(b"x")
        done.wait(5)
    for th in ths:
        th.join()
    ep.close()
    a.close()
    b.close()
    return lat


def _leader(ep: select.epoll, n: int) -> tuple[Callable[[], None], list[Callable[[], None]]]:
    """The worker itself blocks in epoll (leader/followers)."""

    def wait() -> None:
        ep.poll(-1)

    return wait, []


def _harvester(
    ep: select.epoll, n: int
) -> tuple[Callable[[], None], list[Callable[[], None]]]:
    """A harvester thread blocks in epoll and hands each event to the worker through a
    condition variable (two wake-ups per event)."""
    cond = threading.Condition()
    box: list[int] = []

    def harvest() -> None:
        for _ in range(n):
            ep.poll(-1)
            with cond:
                box.append(1)
                cond.notify()

    def wait() -> None:
        with cond:
            while not box:
                cond.wait()
            box.pop()

    return wait, [harvest]


def run_wakeup(n: int = 3000, rounds: int = 2) -> dict[str, Any]:
    designs: list[tuple[str, Design]] = [
        ("leader/followers", _leader),
        ("harvester thread", _harvester),
    ]
    out: dict[str, Any] = {name: [] for name, _ in designs}
    for _ in range(rounds):  # interleaved, so noise hits both alike
        for name, fn in designs:
            lat = sorted(_ping_pong(n, fn))
            out[name].append(
                {"p50_us": lat[len(lat) // 2] / 1000, "p99_us": lat[int(len(lat) * 0.99)] / 1000}
            )
    return out


def _handoff(n: int, make_cond: Callable[[Any], Any]) -> tuple[float, float]:
    """``n`` round trips of a turn between two threads, each sleeping on its own
    condition (``make_cond(lock)``) over one shared lock; (wall, CPU) us per round trip."""
    lock = new_lock()
    conds = (make_cond(lock), make_cond(lock))
    turn = [0]

    def player(me: int) -> None:
        mine, theirs = conds[me], conds[1 - me]
        with lock:
            for _ in range(n):
                while turn[0] != me:
                    mine.wait(5.0)
                turn[0] = 1 - me
                theirs.notify()

    ths = [threading.Thread(target=player, args=(i,)) for i in (0, 1)]
    c0, t0 = time.process_time(), time.perf_counter()
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    t1, c1 = time.perf_counter(), time.process_time()
    return (t1 - t0) / n * 1e6, (c1 - c0) / n * 1e6


def run_handoff(n: int = 5000, rounds: int = 3) -> dict[str, Any]:
    """Wall and CPU us per round trip, per round, for both condition variables."""
    kinds: list[tuple[str, Callable[[Any], Any]]] = [
        ("threading.Condition", threading.Condition),
        ("KevqCond", KevqCond),
    ]
    out: dict[str, Any] = {name: [] for name, _ in kinds}
    for _ in range(rounds):  # interleaved, so noise hits both alike
        for name, make in kinds:
            wall, cpu = _handoff(n, make)
            out[name].append({"wall_us": wall, "cpu_us": cpu})
    return out


def add_wakeup_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=3000, help="ping-pongs per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", action="store_true")


def wakeup_main(args: Any) -> int:
    r = run_wakeup(args.n, args.rounds)
    h = run_handoff(args.n, args.rounds)
    if args.json:
        print(json.dumps({**r, "handoff": h}))
        return 0
    for name, rows in r.items():
        for row in rows:
            print(f"{name:20s} p50 {row['p50_us']:7.1f} us   p99 {row['p99_us']:7.1f} us")
    print("a turn handed between two sleeping threads, per round trip:")
    for name, rows in h.items():
        for row in rows:
            print(f"{name:20s} wall {row['wall_us']:7.1f} us   CPU {row['cpu_us']:7.1f} us")
    return 0
