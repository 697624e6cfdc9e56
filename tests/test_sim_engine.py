"""Tests for skqueue.sim.engine: ordering, clock, stop/until, timers, determinism."""

from __future__ import annotations

import random

import pytest

from skqueue.sim.engine import Engine, Timer


def test_events_run_in_time_order() -> None:
    eng = Engine()
    seen: list[tuple[int, str]] = []
    for t, name in [(30, "c"), (10, "a"), (20, "b"), (5, "z")]:
        eng.at(t, lambda n: seen.append((eng.now, n)), name)
    assert eng.run() == 4
    assert seen == [(5, "z"), (10, "a"), (20, "b"), (30, "c")]
    assert eng.now == 30


def test_ties_break_in_scheduling_order() -> None:
    eng = Engine()
    seen: list[int] = []
    for i in range(50):
        eng.at(7, seen.append, i)
    eng.run()
    assert seen == list(range(50))


def test_callbacks_can_schedule_more_including_now() -> None:
    eng = Engine()
    seen: list[tuple[int, str]] = []

    def first(_: object) -> None:
        seen.append((eng.now, "first"))
        eng.after(0, lambda _: seen.append((eng.now, "same-time")))
        eng.after(5, lambda _: seen.append((eng.now, "later")))

    eng.at(10, first)
    eng.at(10, lambda _: seen.append((eng.now, "sibling")))
    eng.run()
    # the sibling was scheduled before 'same-time', so it runs first
    assert seen == [(10, "first"), (10, "sibling"), (10, "same-time"), (15, "later")]


def test_past_and_negative_are_rejected() -> None:
    eng = Engine(start_ns=100)
    with pytest.raises(ValueError):
        eng.at(99, print)
    with pytest.raises(ValueError):
        eng.after(-1, print)


def test_run_until_stops_before_later_events_and_sets_clock() -> None:
    eng = Engine()
    seen: list[int] = []
    for t in (10, 20, 30):
        eng.at(t, seen.append, t)
    assert eng.run(until=25) == 2
    assert seen == [10, 20] and eng.now == 25 and eng.pending == 1
    assert eng.peek() == 30
    eng.run()
    assert seen == [10, 20, 30]
    # with nothing left, until still advances the clock
    eng.run(until=1000)
    assert eng.now == 1000


def test_max_events_and_stop() -> None:
    eng = Engine()
    seen: list[int] = []
    for t in range(10):
        eng.at(t, seen.append, t)
    assert eng.run(max_events=3) == 3
    assert seen == [0, 1, 2]
    eng.at(5, lambda _: eng.stop())  # scheduled after the existing t=5 event
    eng.run()
    assert seen == [0, 1, 2, 3, 4, 5]
    assert eng.events_run == 3 + 4  # 3 then 3,4,5 and the stopper
    eng.run()
    assert seen == list(range(10))


def test_timer_fires_once_and_can_be_cancelled_or_rearmed() -> None:
    eng = Engine()
    fired: list[int] = []
    tm = Timer(eng, lambda: fired.append(eng.now))
    tm.start(10)
    assert tm.armed and tm.deadline == 10
    eng.run()
    assert fired == [10] and not tm.armed

    tm.start(5)
    tm.cancel()
    eng.run()
    assert fired == [10]

    tm.start(7)  # a cancelled timer can be armed again
    eng.run()
    assert fired == [10, 22]  # the cancelled entry popped at 15; re-armed for 15 + 7


def test_timer_rearm_drops_earlier_deadline() -> None:
    eng = Engine()
    fired: list[int] = []
    tm = Timer(eng, lambda: fired.append(eng.now))
    tm.start(100)
    tm.start(3)
    eng.run()
    assert fired == [3]
    assert eng.now == 100  # the stale entry still pops, but does nothing


def _random_process(seed: int) -> list[tuple[int, int]]:
    eng = Engine()
    rng = random.Random(seed)
    log: list[tuple[int, int]] = []

    def step(i: int) -> None:
        log.append((eng.now, i))
        if len(log) < 2000:
            eng.after(rng.randrange(0, 50), step, rng.randrange(1000))

    for k in range(20):
        eng.at(rng.randrange(100), step, k)
    eng.run()
    return log


def test_deterministic_for_a_seed() -> None:
    a = _random_process(7)
    assert a == _random_process(7)
    assert a != _random_process(8)
    times = [t for t, _ in a]
    assert times == sorted(times)
