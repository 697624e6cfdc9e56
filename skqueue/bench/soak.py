"""``skq bench soak`` and ``skq bench slowread``: the memcached server under abuse.

``soak`` runs a memcached server (skq under one policy, or the real memcached) at a fraction
of its saturation (``--load``, 0.8) for ``--duration`` seconds, in windows of ``--window``
seconds, while an abuser mixes in what real deployments see: connections reset mid-request,
garbage lines, the binary magic, half-sent large values, and slow readers (some read a
large multi-get at a trickle, some never read).  Every window reports what the
well-behaved clients saw (achieved QPS, p50/p99/max latency from the intended send time,
errors) and the server's RSS (the median of samples every 0.5 s).  The summary says whether
well-behaved clients saw 0 errors and whether RSS stayed flat: growth from the middle
window to the last one under ``--rss-growth`` (5 %).

``slowread`` measures the issue-14 scenario: the same open-loop load without and with
``--slow`` connections that each leave ``--slow-mib`` MiB of multi-get replies unread; it
reports p99 both ways and their ratio, then checks that the slow clients get every byte
once they read.

Saturation is measured first, with the abuse already going on, by an unpaced run (every
connection sends its next request as soon as the reply arrives) for ``--saturation``
seconds; ``--qps`` sets the rate directly instead.  Servers run in their own processes
(``skqueue.bench.servers``), the load generator in others, the abuser in a thread of this
process.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from skqueue.bench.servers import ServerProcess, ServerSpec
from skqueue.load.generator import LoadConfig, LoadResult, memcached_preload, run_load

__all__ = [
    "Abuser",
    "SoakConfig",
    "add_slowread_arguments",
    "add_soak_arguments",
    "run_slowread",
    "run_soak",
    "slowread_main",
    "soak_main",
]

_BIG_VALUE = 1_000_000  # bytes of each "big" value (under memcached's 1 MiB item limit)


def rss_kib(pid: int) -> int:
    """Resident set size of a process, KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _big_key(i: int) -> bytes:
    return b"soak:big:%d" % i


def preload_big(address: tuple[str, int], count: int, size: int = _BIG_VALUE) -> None:
    """Store ``count`` values of ``size`` bytes under the big keys (for slow readers)."""
    with socket.create_connection(address, timeout=30) as s:
        for i in range(count):
            s.sendall(b"set %b 0 0 %d\r\n" % (_big_key(i), size) + b"B" * size + b"\r\n")
            reply = s.recv(100)
            if reply != b"STORED\r\n":
                raise RuntimeError(f"preloading a big value failed: {reply!r}")


def mget_big(count: int) -> bytes:
    return b"get " + b" ".join(_big_key(i) for i in range(count)) + b"\r\n"


def mget_reply_size(count: int, size: int = _BIG_VALUE) -> int:
    return sum(len(b"VALUE %b 0 %d\r\n" % (_big_key(i), size)) + size + 2
               for i in range(count)) + len(b"END\r\n")


def slow_socket(address: tuple[str, int]) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(30)
    s.connect(address)
    return s


class Abuser:
    """A thread that keeps abusing a memcached server until ``stop()``; counts its acts."""

    ACTS = ("reset", "garbage", "binary", "halfset", "slowread", "stalled")

    def __init__(self, address: tuple[str, int], rate: float, big_keys: int, seed: int = 1,
                 max_slow: int = 8, slow_hold_s: float = 5.0, stalled_first: int = 2) -> None:
        self.address = address
        self.rate = rate
        self.big_keys = big_keys
        self.rng = random.Random(seed)
        self.max_slow = max_slow
        self.slow_hold_s = slow_hold_s
        self.stalled_first = stalled_first
        self.counts: dict[str, int] = dict.fromkeys(self.ACTS, 0)
        self.failures = 0  # the abuser's own connects that failed (server refused)
        self._slow: list[tuple[socket.socket, float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="skq-abuser", daemon=True)

    def start(self) -> None:
        """Open ``stalled_first`` stalled readers at once (they matter most while the
        well-behaved load runs), then abuse at ``rate`` acts per second."""
        for _ in range(min(self.stalled_first, self.max_slow)):
            self._stalled()
            self.counts["stalled"] += 1
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for s, _, _ in self._slow:
            s.close()
        self._slow.clear()

    def _run(self) -> None:
        period = 1.0 / self.rate
        while not self._stop.wait(period):
            self._tend_slow()
            act = self.rng.choice(self.ACTS)
            if act in ("slowread", "stalled") and len(self._slow) >= self.max_slow:
                act = "garbage"  # as many slow readers as wanted already
            try:
                getattr(self, "_" + act)()
                self.counts[act] += 1
            except OSError:
                self.failures += 1

    def _tend_slow(self) -> None:
        now = time.monotonic()
        keep = []
        for s, until, reads in self._slow:
            if now >= until:
                s.close()
                continue
            if reads:
                try:
                    s.setblocking(False)
                    s.recv(16384)  # a trickle: a few KiB per tick
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    s.close()
                    continue
            keep.append((s, until, reads))
        self._slow = keep

    def _reset(self) -> None:
        s = socket.create_connection(self.address, timeout=5)
        s.sendall(b"get soak:big:0 some:other:key\r\nset x 0 0 100\r\nabc")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # RST, with requests and a half value in flight

    def _garbage(self) -> None:
        with socket.create_connection(self.address, timeout=5) as s:
            junk = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 400)))
            s.sendall(junk.replace(b"\n", b" ") + b"\r\n" + junk + b"\r\n")

    def _binary(self) -> None:
        with socket.create_connection(self.address, timeout=5) as s:
            s.sendall(b"\x80\x00\x00\x05" + b"\x00" * 20)

    def _halfset(self) -> None:
        with socket.create_connection(self.address, timeout=5) as s:
            s.sendall(b"set soak:half 0 0 900000\r\n" + b"h" * 20000)

    def _slowread(self, reads: bool = True) -> None:
        s = slow_socket(self.address)
        s.sendall(mget_big(self.big_keys))
        self._slow.append((s, time.monotonic() + self.slow_hold_s, reads))

    def _stalled(self) -> None:
        self._slowread(reads=False)


@dataclass
class SoakConfig:
    """Settings of one soak run (``skq bench soak``)."""

    policy: str = "best2_ws"
    threads: int = 4
    duration_s: float = 600.0
    window_s: float = 30.0
    load: float = 0.8
    qps: float | None = None
    connections: int = 16
    saturation_s: float = 5.0
    abuse_rate: float = 20.0
    big_keys: int = 4  # values of 1 MB a slow reader asks for at once
    mc_keys: int = 10_000
    mc_value_size: int = 200
    rss_growth: float = 0.05
    seed: int = 1
    server_cpus: tuple[int, ...] | None = None


@dataclass
class SoakWindow:
    t_s: float
    achieved_qps: float
    p50_us: float
    p99_us: float
    max_us: float
    errors: int
    rss_kib: int
    error_kinds: dict[str, int] = field(default_factory=dict)
    # rss_kib: the median of the server's RSS sampled every 0.5 s during the window


@dataclass
class SoakResult:
    config: SoakConfig
    saturation_qps: float
    target_qps: float
    windows: list[SoakWindow] = field(default_factory=list)
    abuse: dict[str, int] = field(default_factory=dict)
    server_alive: bool = True

    @property
    def errors(self) -> int:
        return sum(w.errors for w in self.windows)

    @property
    def rss_growth(self) -> float:
        """RSS growth over the second half of the run (fraction)."""
        if len(self.windows) < 2:
            return 0.0
        half = self.windows[len(self.windows) // 2]
        return (self.windows[-1].rss_kib - half.rss_kib) / max(half.rss_kib, 1)

    @property
    def passed(self) -> bool:
        return self.server_alive and self.errors == 0 and self.rss_growth < self.config.rss_growth

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(errors=self.errors, rss_growth=self.rss_growth, passed=self.passed)
        return d


def _load(address: tuple[str, int], cfg: SoakConfig, qps: float, seconds: float,
          warmup: float) -> LoadResult:
    return run_load(LoadConfig(
        host=address[0], port=address[1], protocol="memcached", qps=qps,
        connections=cfg.connections, processes=1, duration_s=seconds, warmup_s=warmup,
        interarrival="exponential", service="echo-mix", seed=cfg.seed, timeout_s=10.0,
        mc_keys=cfg.mc_keys, mc_value_size=cfg.mc_value_size,
    ))


def _window(t: float, res: LoadResult, rss: int) -> SoakWindow:
    lat = res.latency_intended
    return SoakWindow(
        t_s=round(t, 1), achieved_qps=res.achieved_qps, p50_us=lat.percentile(50) / 1e3,
        p99_us=lat.percentile(99) / 1e3, max_us=lat.max / 1e3, errors=res.errors,
        rss_kib=rss, error_kinds=dict(res.error_kinds),
    )


class RssSampler:
    """Samples a process's RSS every ``period`` seconds; ``take()`` returns the median of
    the samples since the last call (slow readers' buffers come and go; the median of many
    samples shows the trend, one sample shows the moment)."""

    def __init__(self, pid: int, period: float = 0.5) -> None:
        self.pid = pid
        self.period = period
        self._samples: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="skq-rss", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            kib = rss_kib(self.pid)
            with self._lock:
                self._samples.append(kib)

    def take(self) -> int:
        with self._lock:
            samples, self._samples = sorted(self._samples), []
        return samples[len(samples) // 2] if samples else rss_kib(self.pid)


def run_soak(cfg: SoakConfig, report: Any = None) -> SoakResult:
    """Run one soak; ``report(line)`` gets a line per window as it ends."""
    spec = ServerSpec(cfg.policy, proto="memcached", threads=cfg.threads, cpus=cfg.server_cpus)
    with ServerProcess(spec) as srv:
        assert srv.address is not None
        address = srv.address
        memcached_preload(address[0], address[1], cfg.mc_keys, 30, cfg.mc_value_size)
        preload_big(address, cfg.big_keys)
        abuser = Abuser(address, cfg.abuse_rate, cfg.big_keys, cfg.seed)
        abuser.start()  # saturation is measured with the abuse going on
        rss = RssSampler(srv.pid or 0)
        rss.start()
        try:
            if cfg.qps is None:
                sat = _load(address, cfg, 0.0, cfg.saturation_s, 0.5).achieved_qps
                target = max(1.0, cfg.load * sat)
            else:
                sat, target = 0.0, cfg.qps
            result = SoakResult(cfg, sat, target)
            t0 = time.monotonic()
            for _ in range(max(1, round(cfg.duration_s / cfg.window_s))):
                rss.take()
                res = _load(address, cfg, target, cfg.window_s, 0.2)
                w = _window(time.monotonic() - t0, res, rss.take())
                result.windows.append(w)
                if report is not None:
                    report(_window_line(w))
                if not srv.alive():
                    result.server_alive = False
                    break
        finally:
            rss.stop()
            abuser.stop()
        result.abuse = dict(abuser.counts)
        result.server_alive = result.server_alive and srv.alive()
    return result


def _window_line(w: SoakWindow) -> str:
    return (f"{w.t_s:8.1f} s  {w.achieved_qps:9.0f} qps  p50 {w.p50_us:8.0f} us  "
            f"p99 {w.p99_us:9.0f} us  max {w.max_us:9.0f} us  errors {w.errors:4d}  "
            f"rss {w.rss_kib / 1024:7.1f} MiB" + (f"  {w.error_kinds}" if w.errors else ""))


def add_soak_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``skq bench soak``."""
    p.add_argument("--policy", default="best2_ws",
                   help="skq policy (best2_ws, vanilla, ...) or memcached (the real one)")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    p.add_argument("--window", type=float, default=30.0, help="seconds per report line")
    p.add_argument("--load", type=float, default=0.8, help="fraction of saturation")
    p.add_argument("--qps", type=float, default=None, help="fixed rate instead of --load")
    p.add_argument("--connections", type=int, default=16, help="well-behaved connections")
    p.add_argument("--saturation", type=float, default=5.0, help="seconds to measure it")
    p.add_argument("--abuse-rate", type=float, default=20.0, help="abusive acts per second")
    p.add_argument("--rss-growth", type=float, default=0.05,
                   help="largest RSS growth over the second half that passes (0.05)")
    p.add_argument("--server-cpus", default=None, help="pin the server, e.g. 0 or 0,1")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result")


def _cpus(text: str | None) -> tuple[int, ...] | None:
    return tuple(int(c) for c in text.split(",")) if text else None


def soak_main(args: argparse.Namespace) -> int:
    """``skq bench soak``: exit 0 if the soak passed."""
    cfg = SoakConfig(policy=args.policy, threads=args.threads, duration_s=args.duration,
                     window_s=args.window, load=args.load, qps=args.qps,
                     connections=args.connections, saturation_s=args.saturation,
                     abuse_rate=args.abuse_rate, rss_growth=args.rss_growth,
                     server_cpus=_cpus(args.server_cpus))
    print(f"soak: {cfg.policy}, {cfg.threads} threads, {cfg.duration_s:.0f} s, "
          f"abuse {cfg.abuse_rate:g}/s", flush=True)
    res = run_soak(cfg, report=lambda line: print(line, flush=True))
    print(f"saturation {res.saturation_qps:.0f} qps, target {res.target_qps:.0f} qps; "
          f"abuse {res.abuse}")
    print(f"errors seen by well-behaved clients: {res.errors}; RSS growth over the second "
          f"half: {res.rss_growth * 100:+.1f} %; server alive: {res.server_alive}; "
          f"{'PASS' if res.passed else 'FAIL'}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res.to_dict(), f, indent=1)
    return 0 if res.passed else 1


# ----------------------------------------------------------------------------- slowread


def _read_all(s: socket.socket, n: int) -> int:
    s.setblocking(True)
    s.settimeout(60)
    got = 0
    while got < n:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    return got


def run_slowread(policy: str, threads: int, qps: float, connections: int, seconds: float,
                 slow: int, slow_mib: int, server_cpus: tuple[int, ...] | None = None
                 ) -> dict[str, Any]:
    """One policy: the load alone, then with ``slow`` stalled readers; their data after."""
    big = max(1, slow_mib * (1 << 20) // _BIG_VALUE)
    cfg = SoakConfig(policy=policy, threads=threads, connections=connections)
    spec = ServerSpec(policy, proto="memcached", threads=threads, cpus=server_cpus)
    with ServerProcess(spec) as srv:
        assert srv.address is not None
        address = srv.address
        memcached_preload(address[0], address[1], cfg.mc_keys, 30, cfg.mc_value_size)
        preload_big(address, big)
        alone = _load(address, cfg, qps, seconds, 1.0)
        stalled = [slow_socket(address) for _ in range(slow)]
        for s in stalled:
            s.sendall(mget_big(big))
        time.sleep(1.0)  # let the server fill their sockets (the scenario, not a sync)
        loaded = _load(address, cfg, qps, seconds, 1.0)
        want = mget_reply_size(big)
        complete = [_read_all(s, want) == want for s in stalled]
        for s in stalled:
            s.close()
    p99_alone = alone.latency_intended.percentile(99) / 1e3
    p99_slow = loaded.latency_intended.percentile(99) / 1e3
    return {
        "policy": policy, "qps": qps, "p99_alone_us": p99_alone, "p99_slow_us": p99_slow,
        "ratio": p99_slow / max(p99_alone, 1e-9), "errors_alone": alone.errors,
        "errors_slow": loaded.errors, "achieved_alone": alone.achieved_qps,
        "achieved_slow": loaded.achieved_qps, "slow_clients_complete": sum(complete),
        "slow_clients": slow, "unread_mib_each": round(want / (1 << 20), 1),
    }


def add_slowread_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``skq bench slowread``."""
    p.add_argument("--policies", default="vanilla,best2_ws,memcached",
                   help="comma-separated skq policies and/or memcached")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--qps", type=float, default=2000.0, help="well-behaved load (open loop)")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    p.add_argument("--slow", type=int, default=8, help="stalled connections")
    p.add_argument("--slow-mib", type=int, default=16, help="unread MiB per stalled one")
    p.add_argument("--server-cpus", default=None, help="pin the server, e.g. 0 or 0,1")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results")


def slowread_main(args: argparse.Namespace) -> int:
    """``skq bench slowread``: exit 0 if every policy kept p99 within 2x and every stalled
    client got all its data."""
    rows = []
    print(f"{'policy':<10} {'p99 alone':>10} {'p99 slow':>10} {'ratio':>6} "
          f"{'errors':>7} {'slow done':>10}")
    for policy in [p.strip() for p in args.policies.split(",") if p.strip()]:
        r = run_slowread(policy, args.threads, args.qps, args.connections, args.seconds,
                         args.slow, args.slow_mib, _cpus(args.server_cpus))
        rows.append(r)
        print(f"{policy:<10} {r['p99_alone_us']:>8.0f}us {r['p99_slow_us']:>8.0f}us "
              f"{r['ratio']:>6.2f} {r['errors_alone'] + r['errors_slow']:>7d} "
              f"{r['slow_clients_complete']:>4d}/{r['slow_clients']:<5d}", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    ok = all(r["ratio"] <= 2.0 and r["errors_alone"] + r["errors_slow"] == 0
             and r["slow_clients_complete"] == r["slow_clients"] for r in rows)
    return 0 if ok else 1
