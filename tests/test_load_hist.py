"""Tests of skqueue.load.hist.LatencyHistogram (HDR and exact back ends)."""

from __future__ import annotations

import json
import math
import pickle
import random

import pytest

from skqueue.load.hist import LatencyHistogram, hdr_available

BACKENDS = ["exact", pytest.param("hdr", marks=pytest.mark.skipif(
    not hdr_available(), reason="hdrhistogram not installed"))]  # fmt: skip


def _latencies(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    # log-normal around 200 µs with a heavy tail, in ns
    return [int(rng.lognormvariate(math.log(200_000), 1.0)) + 1 for _ in range(n)]


def _nearest_rank(sorted_vals: list[int], p: float) -> int:
    target = max(int(p * len(sorted_vals) / 100.0 + 0.5), 1)
    return sorted_vals[min(target, len(sorted_vals)) - 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_percentiles_match_sorted_reference(backend: str) -> None:
    vals = _latencies(20_000, 1)
    h = LatencyHistogram(backend)
    for v in vals:
        h.record(v)
    ref = sorted(vals)
    for p in (0.0, 1.0, 50.0, 90.0, 95.0, 99.0, 99.9, 100.0):
        got = h.percentile(p)
        want = _nearest_rank(ref, p) if p > 0 else ref[0]
        if backend == "exact":
            assert got == want, p
        else:  # 3 significant digits: within 0.1 % (HDR reports the bucket's top)
            assert want * 0.999 - 1 <= got <= want * 1.001 + 1, (p, got, want)
    assert h.count == len(vals)
    assert h.min == ref[0] and h.max == ref[-1]
    assert h.mean == pytest.approx(sum(vals) / len(vals))
    assert h.stddev == pytest.approx(float(__import__("statistics").pstdev(vals)), rel=0.01)
    ps = h.percentiles([50.0, 99.0])
    assert ps[50.0] == h.percentile(50.0) and ps[99.0] == h.percentile(99.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_merge_equals_recording_the_union(backend: str) -> None:
    a_vals, b_vals = _latencies(3000, 2), _latencies(5000, 3)
    a, b, u = LatencyHistogram(backend), LatencyHistogram(backend), LatencyHistogram(backend)
    for v in a_vals:
        a.record(v)
        u.record(v)
    for v in b_vals:
        b.record(v)
        u.record(v)
    a.merge(b)
    assert a.count == u.count == 8000
    assert (a.min, a.max, a.mean) == (u.min, u.max, u.mean)
    for p in (50.0, 90.0, 99.0, 99.9):
        assert a.percentile(p) == u.percentile(p)
    merged = LatencyHistogram.merged([LatencyHistogram(backend), b], backend)
    assert merged.count == 5000 and merged.percentile(50) == b.percentile(50)


@pytest.mark.skipif(not hdr_available(), reason="hdrhistogram not installed")
def test_merge_across_backends() -> None:
    vals = _latencies(2000, 4)
    exact, hdr = LatencyHistogram("exact"), LatencyHistogram("hdr")
    for v in vals:
        exact.record(v)
    hdr.merge(exact)
    assert hdr.count == 2000 and hdr.max == max(vals)
    ref = sorted(vals)
    want = _nearest_rank(ref, 99.0)
    assert want * 0.999 <= hdr.percentile(99.0) <= want * 1.001 + 1
    back = LatencyHistogram("exact").merge(hdr)
    assert back.count == 2000
    assert back.percentile(50) == pytest.approx(_nearest_rank(ref, 50.0), rel=0.002)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pickle_and_json_round_trip(backend: str) -> None:
    h = LatencyHistogram(backend)
    for v in _latencies(1000, 5):
        h.record(v)
    for h2 in (
        pickle.loads(pickle.dumps(h)),
        LatencyHistogram.decode(json.loads(json.dumps(h.encode()))),
    ):
        assert h2.backend == backend
        assert h2.count == h.count and h2.mean == h.mean and h2.max == h.max
        assert h2.to_dict() == h.to_dict()
        h2.record(5)  # still usable
        assert h2.count == h.count + 1
    empty = pickle.loads(pickle.dumps(LatencyHistogram(backend)))
    assert empty.count == 0 and empty.percentile(99) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_to_dict_units_and_empty(backend: str) -> None:
    h = LatencyHistogram(backend)
    d = h.to_dict()
    assert d["count"] == 0 and d["p99"] == 0 and d["mean"] == 0
    h.record(1_000_000)  # 1 ms
    h.record(3_000_000, count=3)
    d = h.to_dict()
    assert set(d) >= {"count", "mean", "max", "min", "p50", "p90", "p95", "p99", "p999", "std"}
    assert d["count"] == 4
    assert d["mean"] == pytest.approx(2500.0)  # µs
    assert d["min"] == pytest.approx(1000.0) and d["max"] == pytest.approx(3000.0)
    assert d["p50"] == pytest.approx(3000.0, rel=0.001)
    assert h.count_above(2_000_000) == 3 and h.count_above(3_500_000) == 0
    with pytest.raises(ValueError):
        h.percentile(101)


@pytest.mark.skipif(not hdr_available(), reason="hdrhistogram not installed")
def test_hdr_clips_values_above_range() -> None:
    h = LatencyHistogram("hdr", highest_ns=1_000_000)
    h.record(10)
    h.record(5_000_000)
    assert h.clipped == 1 and h.count == 2
    assert h.max == 5_000_000  # exact max is kept
    assert h.percentile(100) <= 5_000_000
    with pytest.raises(ValueError):
        LatencyHistogram("bogus")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bins_trim_above_p99(backend: str) -> None:
    h = LatencyHistogram(backend)
    for v in range(1, 1001):
        h.record(v * 1000)  # 1 µs .. 1 ms, uniform
    bins = h.bins(10, 99.0)
    assert len(bins) == 10
    total = sum(c for _, c in bins)
    assert 985 <= total <= 995  # ~1 % above p99 trimmed
    assert all(80 <= c <= 120 for _, c in bins)  # flat
    assert bins[-1][0] == pytest.approx(h.percentile(99.0), rel=0.01)
    assert LatencyHistogram(backend).bins() == []
