"""Wake-up latency of the two ways to turn OS readiness into work (docs/design.md).

* leader/followers: the worker itself is blocked in ``epoll_wait`` (one wake-up);
* harvester thread: a dedicated thread in ``epoll_wait`` hands the event to a worker
  sleeping on a ``threading.Condition`` (two wake-ups and a GIL hand-off).

One socketpair, ping-pong of one byte; latency from send to the worker's ``recv``.
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


def _leader(n: int) -> list[int]:
    a, b = socket.socketpair()
    ep = select.epoll()
    ep.register(b.fileno(), select.EPOLLIN | select.EPOLLET)
    lat: list[int] = []
    sent = [0]
    done = threading.Event()

    def worker() -> None:
        for _ in range(n):
            ep.poll(-1)
            t = time.perf_counter_ns()
            b.recv(8)
            lat.append(t - sent[0])
            done.set()

    th = threading.Thread(target=worker)
    th.start()
    time.sleep(0.05)
    for _ in range(n):
        done.clear()
        sent[0] = time.perf_counter_ns()
        a.send(b"x")
        done.wait(5)
    th.join()
    ep.close()
    a.close()
    b.close()
    return lat


def _harvester(n: int) -> list[int]:
    a, b = socket.socketpair()
    ep = select.epoll()
    ep.register(b.fileno(), select.EPOLLIN | select.EPOLLET)
    cond = threading.Condition()
    box: list[int] = []
    lat: list[int] = []
    sent = [0]
    done = threading.Event()

    def harvest() -> None:
        for _ in range(n):
            ep.poll(-1)
            with cond:
                box.append(1)
                cond.notify()

    def worker() -> None:
        for _ in range(n):
            with cond:
                while not box:
                    cond.wait()
                box.pop()
            t = time.perf_counter_ns()
            b.recv(8)
            lat.append(t - sent[0])
            done.set()

    ths = [threading.Thread(target=harvest), threading.Thread(target=worker)]
    for t in ths:
        t.start()
    time.sleep(0.05)
    for _ in range(n):
        done.clear()
        sent[0] = time.perf_counter_ns()
        a.send(b"x")
        done.wait(5)
    for t in ths:
        t.join()
    ep.close()
    a.close()
    b.close()
    return lat


def run_wakeup(n: int = 3000, rounds: int = 2) -> dict[str, Any]:
    designs: list[tuple[str, Callable[[int], list[int]]]] = [
        ("leader/followers", _leader),
        ("harvester thread", _harvester),
    ]
    out: dict[str, Any] = {name: [] for name, _ in designs}
    for _ in range(rounds):  # interleaved, so noise hits both alike
        for name, fn in designs:
            lat = sorted(fn(n))
            out[name].append(
                {"p50_us": lat[len(lat) // 2] / 1000, "p99_us": lat[int(len(lat) * 0.99)] / 1000}
            )
    return out


def add_wakeup_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=3000, help="ping-pongs per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", action="store_true")


def wakeup_main(args: Any) -> int:
    r = run_wakeup(args.n, args.rounds)
    if args.json:
        print(json.dumps(r))
        return 0
    for name, rows in r.items():
        for row in rows:
            print(f"{name:20s} p50 {row['p50_us']:7.1f} us   p99 {row['p99_us']:7.1f} us")
    return 0
