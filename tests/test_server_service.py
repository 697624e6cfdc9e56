"""Service-time models: each serves roughly the asked time (generous bounds)."""

from __future__ import annotations

import asyncio
import ctypes
import threading
import time

import pytest

from skqueue.server.service import (
    HashService,
    SleepService,
    SpinService,
    make_service,
    set_timer_slack,
)

PR_GET_TIMERSLACK = 30


def _get_timer_slack() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.restype = ctypes.c_int
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    return int(libc.prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0))


def _timed(fn: object, *args: int) -> float:
    t0 = time.perf_counter()
    fn(*args)  # type: ignore[operator]
    return time.perf_counter() - t0


def test_make_service_names() -> None:
    assert make_service("sleep").name == "sleep"
    assert make_service("spin").name == "spin"
    hs = make_service("hash")
    assert hs.name == "hash"
    assert isinstance(hs, HashService)
    with pytest.raises(ValueError):
        make_service("nap")


def test_is_async_flags() -> None:
    assert SleepService.is_async is True
    assert SpinService.is_async is False
    assert HashService.is_async is False


def test_spin_serves_at_least_the_time() -> None:
    svc = SpinService()
    dt = _timed(svc.serve, 20_000)
    assert 0.020 <= dt < 1.0
    assert _timed(svc.serve, 0) < 0.01


def test_spin_uses_injected_clock() -> None:
    ticks = iter(range(0, 10_000_000, 1000))  # each read advances 1 µs
    reads = []

    def clock() -> int:
        v = next(ticks)
        reads.append(v)
        return v

    SpinService(clock_ns=clock).serve(5)
    # deadline = 0 + 5000 ns; the loop stops at the first read >= 5000
    assert reads[-1] == 5000


def test_sleep_serves_at_least_the_time() -> None:
    svc = SleepService()
    times: list[float] = []

    def worker() -> None:  # in a thread: serve() changes the calling thread's timer slack
        times.append(_timed(svc.serve, 20_000))
        times.append(_timed(svc.serve, 0))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert 0.020 <= times[0] < 1.0
    assert times[1] < 0.01


def test_sleep_lowers_timer_slack_once_per_thread() -> None:
    slept: list[float] = []
    svc = SleepService(sleep=slept.append)
    seen: dict[str, int] = {}

    def worker() -> None:
        # threads inherit their creator's slack: start from a known value
        set_timer_slack(50_000)
        seen["before"] = _get_timer_slack()
        svc.serve(100)
        seen["after"] = _get_timer_slack()
        set_timer_slack(40_000)
        svc.serve(200)  # the flag is per thread: not lowered a second time
        seen["later"] = _get_timer_slack()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert slept == [100e-6, 200e-6]
    assert seen == {"before": 50_000, "after": 1, "later": 40_000}


def test_set_timer_slack_returns_true() -> None:
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(set_timer_slack(1000)))
    t.start()
    t.join()
    assert result == [True]


def test_hash_calibration_and_time() -> None:
    svc = HashService(calibrate_s=0.02)
    assert svc.per_us > 0
    dt = _timed(svc.serve, 20_000)
    assert 0.005 <= dt < 1.0


def test_hash_round_count() -> None:
    calls: list[int] = []

    class Counting(HashService):
        __slots__ = ()

        def _rounds(self, n: int) -> None:
            calls.append(n)

    svc = Counting(per_us=2.0)
    svc.serve(10)
    svc.serve(0)
    svc.serve(-5)
    assert calls == [20]
    slow = Counting(per_us=0.1)
    slow.serve(1)  # rounds to 0 but a positive service time does at least one round
    assert calls == [20, 1]


def test_hash_rejects_small_buffer_and_bad_rate() -> None:
    with pytest.raises(ValueError):
        HashService(per_us=1.0, max_chunk=1024)
    with pytest.raises(ValueError):
        HashService(per_us=0.0)


def test_aserve_sleep_lets_the_loop_run_others() -> None:
    svc = SleepService()

    async def main() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(svc.aserve(400_000) for _ in range(6)))
        return time.perf_counter() - t0

    dt = asyncio.run(main())
    assert 0.4 <= dt < 1.6  # overlapped: ~0.4 s; serial would be 2.4 s


def test_aserve_spin_blocks_the_loop() -> None:
    svc = SpinService()
    ticks: list[float] = []

    async def ticker() -> None:
        for _ in range(3):
            ticks.append(time.perf_counter())
            await asyncio.sleep(0)

    async def main() -> None:
        t = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)  # ticker records its first tick
        t0 = time.perf_counter()
        await svc.aserve(50_000)
        # the ticker could not run while the spin held the loop
        assert len(ticks) == 1 and ticks[0] <= t0
        await t

    asyncio.run(main())
