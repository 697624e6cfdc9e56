"""``skq bench stall``: issue 14's lost-wake-up pattern against the memcached server.

One connection sends back-to-back ``set`` commands (values of 1 B to 4 KiB, each waiting
for its reply: the pattern of memcslap's initial load), then a burst of concurrent
connections sets keys as fast as they can, and the two alternate for ``--duration``
seconds.  Every request is timed by the client.  A request slower than ``--slow-ms``
(50 ms) on this workload, whose service time is microseconds, means a ready event reached
no awake worker: before the fix, such requests waited for the workers' ``poll_interval``.

The burst uses memcslap (Debian's libmemcached-tools) when it is installed, as the issue
did, plus timed Python clients; with ``--no-memcslap`` only the timed clients.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .servers import ServerProcess, ServerSpec

DEFAULT_POLICIES = ("best2_ws", "best2", "rand", "cpu2_ws", "vanilla")


@dataclass
class StallResult:
    """One policy's run: every request's latency summarised."""

    policy: str
    requests: int = 0
    slow: int = 0
    max_ms: float = 0.0
    p99_ms: float = 0.0
    worst_sequence_s: float = 0.0
    sequences: int = 0
    errors: list[str] = field(default_factory=list)


def _set(sock: socket.socket, key: bytes, value: bytes) -> None:
    sock.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = sock.recv(64)
        if not chunk:
            raise ConnectionError("server closed the connection")
        reply += chunk
    if reply != b"STORED\r\n":
        raise ConnectionError(f"unexpected reply {reply!r}")


def _connect(addr: tuple[str, int], timeout: float) -> socket.socket:
    s = socket.create_connection(addr, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def run_policy(
    policy: str,
    duration: float,
    sets: int,
    burst_conns: int,
    burst_sets: int,
    slow_ms: float,
    memcslap: bool,
    seed: int,
    threads: int = 4,
    poll_interval: float | None = None,
) -> StallResult:
    """Start the server with ``policy``, run the alternating pattern, return the summary."""
    res = StallResult(policy)
    lat: list[float] = []
    lock = threading.Lock()
    rng = random.Random(seed)
    timeout = 30.0
    extra = ("--poll-interval", str(poll_interval)) if poll_interval else ()
    spec = ServerSpec(policy, proto="memcached", threads=threads, extra_args=extra)
    with ServerProcess(spec) as srv:
        addr = srv.address
        assert addr is not None
        end = time.monotonic() + duration

        def burster(k: int) -> None:
            try:
                with _connect(addr, timeout) as s:
                    mine: list[float] = []
                    for i in range(burst_sets):
                        t = time.perf_counter()
                        _set(s, b"b%d.%d" % (k, i), b"x" * (1 + (i * 97) % 1024))
                        mine.append(time.perf_counter() - t)
                with lock:
                    lat.extend(mine)
            except OSError as e:
                with lock:
                    res.errors.append(f"burst client {k}: {e!r}")

        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                with _connect(addr, timeout) as s:
                    for i in range(sets):
                        value = b"v" * rng.randint(1, 4096)
                        t = time.perf_counter()
                        _set(s, b"k%d" % i, value)
                        lat.append(time.perf_counter() - t)
            except OSError as e:
                res.errors.append(f"sequential client: {e!r}")
                break
            res.sequences += 1
            res.worst_sequence_s = max(res.worst_sequence_s, time.perf_counter() - t0)
            slap = None
            if memcslap:
                slap = subprocess.Popen(
                    ["memcslap", f"--servers={addr[0]}:{addr[1]}", "--concurrency=16",
                     f"--execute-number={burst_sets}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            ths = [threading.Thread(target=burster, args=(k,)) for k in range(burst_conns)]
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            if slap is not None and slap.wait(timeout=120) != 0:
                res.errors.append(f"memcslap exited with {slap.returncode}")
    lat.sort()
    res.requests = len(lat)
    if lat:
        res.slow = sum(1 for x in lat if x * 1e3 > slow_ms)
        res.max_ms = lat[-1] * 1e3
        res.p99_ms = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3
    return res


def format_table(results: list[StallResult], slow_ms: float) -> str:
    head = (
        f"{'policy':<10} {'requests':>9} {f'>{slow_ms:g}ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'worst seq s':>11} {'errors':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.policy:<10} {r.requests:>9} {r.slow:>8} {r.p99_ms:>8.2f} {r.max_ms:>8.1f} "
            f"{r.worst_sequence_s:>11.2f} {len(r.errors):>6}"
        )
    return "\n".join(lines)


def add_stall_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policies", default=",".join(DEFAULT_POLICIES),
                   help="comma-separated policies (default %(default)s)")  # fmt: skip
    p.add_argument("--duration", type=float, default=25.0, help="seconds per policy")
    p.add_argument("--sets", type=int, default=2000, help="sequential sets per sequence")
    p.add_argument("--burst-conns", type=int, default=16, help="timed burst connections")
    p.add_argument("--burst-sets", type=int, default=200, help="sets per burst connection")
    p.add_argument("--slow-ms", type=float, default=50.0, help="a request over this is slow")
    p.add_argument("--no-memcslap", action="store_true", help="timed Python clients only")
    p.add_argument("--poll-interval", type=float, default=None, metavar="S",
                   help="the skq server's worker timeout (default the server's, 0.2 s); "
                        "a large one shows that no timer is what bounds latency")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def stall_main(args: Any) -> int:
    memcslap = not args.no_memcslap and shutil.which("memcslap") is not None
    results = []
    for policy in [x for x in args.policies.split(",") if x]:
        poll = args.poll_interval if policy != "memcached" else None  # skq servers only
        r = run_policy(policy, args.duration, args.sets, args.burst_conns, args.burst_sets,
                       args.slow_ms, memcslap, args.seed, poll_interval=poll)  # fmt: skip
        results.append(r)
        if not args.json:
            print(f"{policy}: {r.requests} requests, {r.slow} over {args.slow_ms:g} ms, "
                  f"max {r.max_ms:.1f} ms", flush=True)  # fmt: skip
    if args.json:
        print(json.dumps({"memcslap": memcslap, "results": [asdict(r) for r in results]}))
    else:
        print(f"\nburst: {args.burst_conns} timed connections"
              + (" + memcslap --concurrency=16" if memcslap else ""))  # fmt: skip
        print(format_table(results, args.slow_ms))
    return 1 if any(r.errors for r in results) else 0
