"""Service-time models: what a server does for ``us`` microseconds of "work".

The original ``ppd`` busy-spins the requested wall-clock time (docs/semantics.md §6.2).  On
CPython that is only one of three honest choices, and they behave very differently under the
GIL, so the benchmarks pick one explicitly:

``SleepService``  ("sleep")
    ``time.sleep``: the thread waits without holding the GIL, like a worker blocked on a backend
    call (database, RPC).  Linux's default timer slack of 50 µs would stretch every short sleep,
    so each calling thread lowers its own slack to 1 ns once, with
    ``prctl(PR_SET_TIMERSLACK, 1)`` through ctypes (the flag is thread-local: slack is a
    per-thread attribute).  Even so the wake-up path adds tens of µs (measured on the 2-core
    build machine: 10 µs asked -> ~50 µs, 100 µs -> ~150 µs): short service times are rounded
    *up*, never down.

``HashService``   ("hash")
    Real computation that releases the GIL: ``hashlib.sha256`` over 2 KiB blocks (CPython drops
    the GIL for hash updates of >= 2048 bytes).  The number of blocks per µs (``per_us``) is
    calibrated once at construction over about 50 ms; ``serve(us)`` hashes ``round(us *
    per_us)`` blocks (at least one when ``us > 0``), passed to hashlib as contiguous slices of
    up to 64 KiB so that the GIL is dropped and re-taken once per slice, not once per block.
    Measured on the 2-core machine: one 2 KiB block ~1.2-1.5 µs.  With one call per 2 KiB the
    hashing thread must win the GIL back every ~1.5 µs, and on a busy interpreter that hand-off can
    dominate the hashing; slices cut the hand-offs to one per ~45 µs of work.  The
    calibration uses a low percentile of many ~10 µs samples, so a loaded machine does not
    make ``per_us`` (and hence every service time) too small.

``SpinService``   ("spin")
    Pure-Python busy loop on ``time.perf_counter_ns`` until the deadline: it holds the GIL the
    whole time (apart from the interpreter's forced switches every 5 ms), exactly like CPU-bound
    Python request handlers do.  This is the faithful port of ``ppd``'s spin and the worst case
    for any multi-threaded Python server.

Every model also has ``async def aserve(us)`` for the single-threaded asyncio/uvloop baselines
(``skqueue.server.aio``): the sleep model awaits ``asyncio.sleep`` (the loop serves other
connections meanwhile, which is what an asyncio programmer would write), the two CPU models just
call ``serve`` and so block the loop (which is what CPU work does to an event loop).
``is_async`` tells a driver whether awaiting ``aserve`` can yield to the loop.

Models hold no mutable shared state after construction (the slack flag is thread-local), so one
instance may be used by any number of threads.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = [
    "PR_SET_TIMERSLACK",
    "HashService",
    "Service",
    "SleepService",
    "SpinService",
    "make_service",
    "set_timer_slack",
]

PR_SET_TIMERSLACK = 29


class Service(Protocol):
    """What every service-time model offers."""

    name: str
    is_async: bool

    def serve(self, us: int) -> None:
        """Spend ``us`` microseconds of service time in the calling thread."""

    async def aserve(self, us: int) -> None:
        """Same, for a coroutine on an event loop."""


def set_timer_slack(ns: int = 1) -> bool:
    """Set the calling thread's timer slack to ``ns`` nanoseconds; False if prctl failed."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return False
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return int(prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0)) == 0


class SleepService:
    """Service time as a GIL-free wait (``time.sleep``), standing for I/O such as a backend call."""

    __slots__ = ("_sleep", "_slack_ns", "_tls")

    name = "sleep"
    is_async = True

    def __init__(self, slack_ns: int = 1, sleep: Callable[[float], None] = time.sleep) -> None:
        self._tls = threading.local()
        self._slack_ns = slack_ns
        self._sleep = sleep

    def serve(self, us: int) -> None:
        """Sleep ``us`` µs (after lowering this thread's timer slack, once per thread)."""
        if us <= 0:
            return
        tls = self._tls
        if not getattr(tls, "slack_set", False):
            set_timer_slack(self._slack_ns)
            tls.slack_set = True
        self._sleep(us / 1e6)

    async def aserve(self, us: int) -> None:
        """``await asyncio.sleep``: the event loop serves other connections meanwhile."""
        if us > 0:
            await asyncio.sleep(us / 1e6)

    def __repr__(self) -> str:
        return "SleepService()"


class HashService:
    """Service time as SHA-256 over 2 KiB blocks (CPU work that releases the GIL).

    ``per_us`` is the calibrated number of 2 KiB blocks hashed per µs.  ``serve(us)`` hashes
    ``round(us * per_us)`` blocks (at least one), fed to one SHA-256 object as contiguous slices
    of up to ``max_chunk`` bytes: each slice is one hashlib call that runs without the GIL, so
    a request costs one GIL release/re-acquire per slice rather than one per block (with 2 KiB
    calls, two threads mostly convoy on the GIL hand-off instead of running in parallel).
    """

    __slots__ = ("_blocks_per_call", "_view", "per_us")

    name = "hash"
    is_async = False

    BLOCK = 2048  # CPython releases the GIL for hash updates of >= 2048 bytes

    def __init__(
        self,
        per_us: float | None = None,
        max_chunk: int = 64 * 1024,
        calibrate_s: float = 0.05,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if max_chunk < self.BLOCK:
            raise ValueError(f"max_chunk must be >= {self.BLOCK} (GIL release threshold)")
        self._blocks_per_call = max_chunk // self.BLOCK
        self._view = memoryview(bytes(range(256)) * (self._blocks_per_call * self.BLOCK // 256))
        if per_us is None:
            per_us = self._calibrate(calibrate_s, clock)
        if per_us <= 0:
            raise ValueError("per_us must be positive")
        #: calibrated 2 KiB hash blocks per microsecond of service time
        self.per_us = float(per_us)

    def _calibrate(self, seconds: float, clock: Callable[[], float]) -> float:
        # Time many requests of 8 blocks (~10 µs, the common service time, so the per-call
        # overhead is part of the rate) and use a low percentile of their durations: a busy
        # machine preempts some of them, and an average would then under-estimate the rate.
        batch = 8
        self._rounds(64)  # warm-up
        samples: list[float] = []
        start = clock()
        now = start
        while now - start < seconds or len(samples) < 20:
            t0 = clock()
            self._rounds(batch)
            now = clock()
            samples.append(now - t0)
        samples.sort()
        fast = samples[len(samples) // 10]
        return batch / max(fast * 1e6, 1e-3)

    def _rounds(self, n: int) -> None:
        view = self._view
        per_call = self._blocks_per_call
        block = self.BLOCK
        update = hashlib.sha256().update
        while n > 0:
            k = n if n < per_call else per_call
            update(view[: k * block])
            n -= k

    def serve(self, us: int) -> None:
        """Hash for about ``us`` µs (``round(us * per_us)`` 2 KiB blocks, at least one)."""
        if us <= 0:
            return
        self._rounds(max(1, round(us * self.per_us)))

    async def aserve(self, us: int) -> None:
        """Blocks the event loop for the whole service time (honest single-thread baseline)."""
        self.serve(us)

    def __repr__(self) -> str:
        return f"HashService(per_us={self.per_us:.3f})"


class SpinService:
    """Service time as a pure-Python busy loop holding the GIL (``ppd``'s spin)."""

    __slots__ = ("_now_ns",)

    name = "spin"
    is_async = False

    def __init__(self, clock_ns: Callable[[], int] = time.perf_counter_ns) -> None:
        self._now_ns = clock_ns

    def serve(self, us: int) -> None:
        """Spin until ``us`` µs of wall-clock time have passed."""
        if us <= 0:
            return
        now = self._now_ns
        deadline = now() + us * 1000
        while now() < deadline:
            pass

    async def aserve(self, us: int) -> None:
        """Blocks the event loop for the whole service time (honest single-thread baseline)."""
        self.serve(us)

    def __repr__(self) -> str:
        return "SpinService()"


def make_service(name: str) -> SleepService | HashService | SpinService:
    """Build a service model by name: ``"sleep"``, ``"hash"`` or ``"spin"``."""
    if name == "sleep":
        return SleepService()
    if name == "hash":
        return HashService()
    if name == "spin":
        return SpinService()
    raise ValueError(f"unknown service model {name!r} (expected sleep, hash or spin)")
