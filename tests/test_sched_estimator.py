"""Latency estimator arithmetic (docs/semantics.md §3.11, §3.9; D5) and the Rng (D6)."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from skqueue.sched import Estimator, Rng, ewma


def chi2(counts: Counter[int], keys: list[int], total: int) -> float:
    exp = total / len(keys)
    return sum((counts[k] - exp) ** 2 / exp for k in keys)


# -- ewma ---------------------------------------------------------------------------------


def test_ewma_first_sample_taken_as_is() -> None:
    assert ewma(0, 12345) == 12345
    assert ewma(0, 0) == 0


def test_ewma_integer_95_5() -> None:
    assert ewma(1000, 2000) == 1050
    assert ewma(1000, 0) == 950
    assert ewma(3, 4) == (95 * 3 + 5 * 4) // 100 == 3  # integer floor
    assert ewma(100, 101) == 100
    # converges towards a constant input
    v = 1
    for _ in range(500):
        v = ewma(v, 10_000)
    assert 9_900 <= v <= 10_000


# -- estimator ----------------------------------------------------------------------------


def test_fresh_estimator() -> None:
    e = Estimator()
    assert e.in_kernel and e.last_nkev == 0 and e.avg_lat == 0
    assert e.exp_lat(now=5_000, total_queued=10) == 5_000  # no history: start now
    e.enter(10_000)  # nothing to sample yet
    assert e.avg_lat == 0 and e.total_time == 0 and e.in_kernel


def test_sample_on_reentry() -> None:
    e = Estimator()
    e.enter(0)
    e.leave(1_000, 4)  # returned 4 events at t=1000
    assert not e.in_kernel and e.last_kev == 1_000 and e.last_nkev == 4
    assert e.avg_events == 4
    e.enter(9_000)  # 8000 ns in user space for 4 events -> 2000 ns/event (first sample)
    assert e.avg_lat == 2_000 and e.total_time == 8_000 and e.in_kernel
    e.leave(9_500, 2)
    e.enter(9_500 + 2 * 4_000)  # sample 4000 -> ewma(2000, 4000) = 2100
    assert e.avg_lat == 2_100 and e.total_time == 16_000
    assert e.avg_events == ewma(4, 2) == 3


def test_no_sample_after_zero_events() -> None:
    e = Estimator()
    e.leave(0, 3)
    e.enter(3_000)
    assert e.avg_lat == 1_000
    e.leave(3_000, 0)  # timeout: returned nothing
    e.enter(1_000_000)  # a long gap, but nothing to divide by: skipped
    assert e.avg_lat == 1_000 and e.total_time == 3_000


def test_no_sample_while_in_kernel() -> None:
    e = Estimator()
    e.leave(0, 2)
    e.enter(2_000)
    assert e.avg_lat == 1_000
    e.enter(50_000)  # re-entered without leaving (e.g. a nevents=0 call): no sample
    assert e.avg_lat == 1_000 and e.total_time == 2_000


def test_exp_lat_in_kernel_starts_now() -> None:
    e = Estimator()
    e.avg_lat, e.last_nkev, e.last_kev, e.in_kernel = 100, 5, 0, True
    # avg_lat * (queued + last_nkev) + now
    assert e.exp_lat(now=10_000, total_queued=7) == 100 * (7 + 5) + 10_000


def test_exp_lat_clamp() -> None:
    e = Estimator()
    e.leave(1_000, 4)
    e.avg_lat = 500
    # recent return: the batch started at last_kev
    assert e.start(1_200) == 1_000
    assert e.exp_lat(now=1_200, total_queued=2) == 500 * (2 + 4) + 1_000
    # long ago: start clamped to now - last_nkev*avg_lat, so the batch ends no earlier than now
    now = 100_000
    assert e.start(now) == now - 4 * 500
    assert e.exp_lat(now, total_queued=0) == now
    assert e.exp_lat(now, total_queued=3) == now + 3 * 500
    # boundary: both terms equal
    assert e.start(1_000 + 2_000) == 1_000


def test_exp_lat_orders_queues() -> None:
    busy, idle = Estimator(), Estimator()
    for est in (busy, idle):
        est.leave(0, 1)
        est.enter(1_000)
        est.leave(1_000, 1)
    now = 1_100
    assert busy.exp_lat(now, 10) > idle.exp_lat(now, 0)


def test_note_rtlimit_and_as_dict() -> None:
    e = Estimator()
    e.note_rtlimit(4)
    e.note_rtlimit(2)
    assert e.avg_rtlimit == ewma(4, 2)
    d = e.as_dict()
    assert set(d) >= {"avg_latency", "last_kev", "last_nkev", "total_time", "avg_events",
                      "avg_rtlimit"}
    json.dumps(d)
    with pytest.raises(AttributeError):
        e.foo = 1  # type: ignore[attr-defined]


def test_negative_dt_does_not_poison() -> None:
    e = Estimator()
    e.leave(10_000, 1)
    e.enter(5_000)
    assert e.avg_lat == 0 and e.total_time == 0


# -- Rng ----------------------------------------------------------------------------------


def test_rng_seeded_is_deterministic() -> None:
    a, b = Rng(42), Rng(42)
    assert [a.randrange(1000) for _ in range(50)] == [b.randrange(1000) for _ in range(50)]
    assert a.sample_distinct(100, 5, 3) == b.sample_distinct(100, 5, 3)
    assert a.spawn().random() == b.spawn().random()
    assert Rng(1).random() != Rng(2).random()


def test_rng_unseeded_records_its_seed() -> None:
    r = Rng(None)
    assert isinstance(r.seed, int)
    replay = Rng(r.seed)
    assert [r.randrange(10**9) for _ in range(5)] == [replay.randrange(10**9) for _ in range(5)]


def test_sample_distinct_properties() -> None:
    r = Rng(7)
    for n in range(0, 9):
        for k in range(0, 11):
            for ex in [None, *range(n), n + 3]:
                s = r.sample_distinct(n, k, ex)
                eligible = set(range(n)) - ({ex} if ex is not None else set())
                assert len(s) == len(set(s)) == min(k, len(eligible))
                assert set(s) <= eligible


def test_sample_distinct_excluded_neighbour_not_favoured() -> None:
    # D6: the original's "i+1 on a hit" doubled one neighbour's odds
    r = Rng(2021)
    n, ex, draws = 8, 3, 14_000
    c: Counter[int] = Counter(r.sample_distinct(n, 1, ex)[0] for _ in range(draws))
    keys = [i for i in range(n) if i != ex]
    assert c[ex] == 0
    assert chi2(c, keys, draws) < 40  # df = 6; p(>40) is about 5e-7
    # the last index stays reachable
    assert c[n - 1] > 0


def test_sample_distinct_draws_as_randrange_would() -> None:
    # The draw consumes the stream exactly as the plain randrange formulation below (one
    # call per position, randrange(1) included), so seeded simulations keep their results.
    def reference(r: Rng, n: int, k: int, ex: int | None) -> list[int]:
        if ex is not None and not 0 <= ex < n:
            ex = None
        m = n - 1 if ex is not None else n
        k = min(k, m)
        if k <= 0:
            return []
        if 2 * k <= m:
            out: list[int] = []
            while len(out) < k:
                x = r.randrange(m)
                if x not in out:
                    out.append(x)
        else:
            out = list(range(m))
            for i in range(k):
                j = i + r.randrange(m - i)
                out[i], out[j] = out[j], out[i]
            del out[k:]
        return [i + 1 if ex is not None and i >= ex else i for i in out]

    a, b = Rng(11), Rng(11)
    for n in range(0, 10):
        for k in range(0, 5):
            for ex in [None, *range(n)]:
                for _ in range(3):
                    assert a.sample_distinct(n, k, ex) == reference(b, n, k, ex)
    assert a.random() == b.random()  # and the two streams are still in step


def test_randrange_rejects_empty() -> None:
    with pytest.raises(ValueError):
        Rng(0).randrange(0)


@pytest.mark.parametrize("n,k,ex", [(2, 2, None), (3, 2, None), (3, 2, 0), (5, 2, None)])
def test_sample_distinct_uniform_order(n: int, k: int, ex: int | None) -> None:
    # choose() keeps the first of equal estimates, so the draw order must be uniform too,
    # on both paths (two of two or three: the shuffle; two of five: rejection)
    r = Rng(5)
    draws = 12_000
    seen: dict[tuple[int, ...], int] = {}
    c: Counter[int] = Counter()
    for _ in range(draws):
        c[seen.setdefault(tuple(r.sample_distinct(n, k, ex)), len(seen))] += 1
    assert len(seen) == math.perm(n - (ex is not None), k)
    assert chi2(c, list(range(len(seen))), draws) < 3 * (len(seen) - 1) + 30


@pytest.mark.parametrize("n,k,ex", [(5, 2, None), (4, 3, None), (6, 2, 1), (6, 4, 5)])
def test_sample_distinct_uniform_subsets(n: int, k: int, ex: int | None) -> None:
    # every k-subset is equally likely, on both the rejection and the random.sample path
    r = Rng(99)
    draws = 20_000
    m = n - (ex is not None)
    c: Counter[int] = Counter()
    subsets: dict[tuple[int, ...], int] = {}
    for _ in range(draws):
        key = tuple(sorted(r.sample_distinct(n, k, ex)))
        subsets.setdefault(key, len(subsets))
        c[subsets[key]] += 1
    assert len(subsets) == math.comb(m, k)
    df = len(subsets) - 1
    assert chi2(c, list(range(len(subsets))), draws) < 3 * df + 30
