"""Tests of skqueue.load.dist: inter-arrival distributions, service models, MixGraph."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter

import pytest

from skqueue import rpcwire
from skqueue.load import dist
from skqueue.load.dist import (
    EchoMix,
    Fixed,
    KVServiceModel,
    MixGraph,
    parse_interarrival,
    parse_service,
)

RATE = 1000.0  # mean inter-arrival 1 ms


def _samples(spec: str, n: int = 40_000, seed: int = 11) -> list[float]:
    d = parse_interarrival(spec, RATE)
    rng = random.Random(seed)
    return [d.sample(rng) for _ in range(n)]


@pytest.mark.parametrize(
    "spec",
    ["fixed", "exponential", "uniform", "normal", "fb_ia", "pareto:0,1,0.3", "gev:0.5,0.2,0.1"],
)
def test_interarrival_mean_is_one_over_rate(spec: str) -> None:
    xs = _samples(spec)
    assert min(xs) >= 0.0
    assert statistics.fmean(xs) == pytest.approx(1.0 / RATE, rel=0.04)
    assert parse_interarrival(spec, RATE).mean == pytest.approx(1.0 / RATE, rel=1e-9)


def test_exponential_shape() -> None:
    xs = _samples("exponential")
    assert statistics.pstdev(xs) == pytest.approx(1.0 / RATE, rel=0.05)
    # P(X > mean) = e^-1
    assert sum(x > 1.0 / RATE for x in xs) / len(xs) == pytest.approx(math.exp(-1), abs=0.01)


def test_uniform_and_fixed_and_normal() -> None:
    xs = _samples("uniform")
    assert max(xs) < 2.0 / RATE and min(xs) >= 0.0
    assert statistics.pstdev(xs) == pytest.approx(2.0 / RATE / math.sqrt(12), rel=0.03)
    assert set(_samples("fixed", 100)) == {1.0 / RATE}
    ns = _samples("normal")
    assert statistics.pstdev(ns) == pytest.approx(0.25 / RATE, rel=0.05)
    wide = _samples("normal:2")
    assert min(wide) == 0.0  # clipped at 0


def test_fb_ia_is_mutilates_rescaled_generalized_pareto() -> None:
    d = dist.fb_ia(1.0)
    assert d.loc == 0.0 and d.shape == pytest.approx(0.154971)
    assert d.scale == pytest.approx(1 - 0.154971)
    d2 = parse_interarrival("fb_ia", RATE)
    assert isinstance(d2, dist.GeneralizedPareto)
    xs = sorted(_samples("fb_ia"))
    k, s = d2.shape, d2.scale
    median = s * (2**k - 1) / k
    assert xs[len(xs) // 2] == pytest.approx(median, rel=0.03)
    # heavier tail than exponential with the same mean
    assert xs[int(0.999 * len(xs))] > -math.log(0.001) / RATE


def test_parse_interarrival_errors_and_unpaced() -> None:
    for bad in ("poisson", "pareto:1,2", "gev:a,b,c", "pareto:0,1,1.5"):
        with pytest.raises(ValueError):
            parse_interarrival(bad, RATE)
    z = parse_interarrival("exponential", 0.0)
    assert isinstance(z, Fixed) and z.sample(random.Random(1)) == 0.0
    with pytest.raises(ValueError):  # location beyond the mean inter-arrival
        parse_interarrival("pareto:0.5,1,0.1", RATE)


def test_samples_are_seeded() -> None:
    assert _samples("fb_ia", 50, seed=3) == _samples("fb_ia", 50, seed=3)
    assert _samples("fb_ia", 50, seed=3) != _samples("fb_ia", 50, seed=4)


# ----------------------------------------------------------------------------- service


def test_echo_mix_values_and_shares() -> None:
    m = EchoMix()
    assert [m.service_us(i) for i in (0, 1, 4, 5, 99, 100, 101)] == [
        2000, 500, 500, 100, 100, 2000, 500,
    ]  # fmt: skip
    paper = EchoMix(unit_us=1)
    assert (paper.service_us(200), paper.service_us(3), paper.service_us(7)) == (200, 50, 10)
    shares = Counter(paper.service_us(i) for i in range(10_000))
    assert shares == {200: 100, 50: 400, 10: 9500}
    assert paper.mean_us == pytest.approx(0.01 * 200 + 0.04 * 50 + 0.95 * 10)
    assert m.per_connection


def test_parse_service() -> None:
    rng = random.Random(5)
    assert parse_service("echo-mix").service_us(0) == 2000
    assert parse_service("echo-mix:1").service_us(0) == 200
    assert parse_service("fixed:10").service_us(3) == 10
    assert parse_service("zero").service_us(3) == 0
    e = parse_service("exp:50")
    xs = [e.service_us(i, rng) for i in range(20_000)]
    assert statistics.fmean(xs) == pytest.approx(50, rel=0.05)
    b = parse_service("bimodal:0.9:10:1000")
    ys = [b.service_us(0, rng) for _ in range(20_000)]
    assert set(ys) == {10, 1000}
    assert ys.count(10) / len(ys) == pytest.approx(0.9, abs=0.01)
    assert b.mean_us == pytest.approx(0.9 * 10 + 0.1 * 1000)
    with pytest.raises(ValueError):
        b.service_us(0)  # per-request models need an rng
    for bad in ("zipf", "fixed", "bimodal:2:1:1", "exp:-1", "echo-mix:1:2"):
        with pytest.raises(ValueError):
            parse_service(bad)


# ----------------------------------------------------------------------------- mixgraph


def test_mixgraph_examples_from_the_spec() -> None:
    m = MixGraph()
    assert [m.value_size(u) for u in (0.5, 0.1, 0.01)] == [20, 81, 228]
    assert [m.scan_length(u) for u in (0.5, 0.1)] == [27, 1855]
    # db_bench's modulo cap, and uncapped
    raw = dist.pareto_cdf_inversion(0.001, 0.0, 2.517, 14.236)
    assert raw > 10_000
    assert m.scan_length(0.001) == math.ceil(raw) % 10_000
    assert MixGraph(scan_cap=None).scan_length(0.001) == math.ceil(raw)


def test_mixgraph_op_mix() -> None:
    m = MixGraph()
    assert m.op_of(829) == rpcwire.OP_GET
    assert m.op_of(830) == m.op_of(969) == rpcwire.OP_PUT
    assert m.op_of(970) == m.op_of(999) == rpcwire.OP_SEEK
    for keyspace in (50_000_000, 300):
        mg = MixGraph(keyspace=keyspace)
        ops: Counter[int] = Counter()
        for cid in range(4):
            conn = mg.connection(cid)
            ops.update(mg.next_op_spec(conn)[0] for _ in range(5_000))
        n = sum(ops.values())
        assert ops[rpcwire.OP_GET] / n == pytest.approx(0.83, abs=0.015)
        assert ops[rpcwire.OP_PUT] / n == pytest.approx(0.14, abs=0.015)
        assert ops[rpcwire.OP_SEEK] / n == pytest.approx(0.03, abs=0.008)


def test_mixgraph_key_ranges() -> None:
    m = MixGraph()
    a, b, c, d = 14.18, -2.917, 0.0164, -0.08082
    w = [a * math.exp(b * x) + c * math.exp(d * x) for x in range(30, 0, -1)]
    amp = math.floor(1 / min(w)) + 1
    assert sorted(m.range_weights) == sorted(math.floor(x * amp) for x in w)
    assert m.range_size == 1_666_666
    hot = m.range_weights.index(max(m.range_weights))
    conn = m.connection(9)
    ids = [m.next_op_spec(conn)[1] for _ in range(10_000)]
    assert all(0 <= k < 50_000_000 for k in ids)
    in_hot = sum(k // m.range_size == hot for k in ids) / len(ids)
    assert in_hot == pytest.approx(max(m.range_weights) / sum(m.range_weights), abs=0.02)
    # uniform within the range: many distinct keys; the authors' quirk: about one per range
    assert len(set(ids)) > 9_000
    q = MixGraph(authors_quirk=True)
    qc = q.connection(9)
    assert len({q.next_op_spec(qc)[1] for _ in range(5_000)}) < 200


def test_mixgraph_ops_are_deterministic_and_well_formed() -> None:
    m = MixGraph(keyspace=3000)
    a, b = m.connection(1), m.connection(1)
    seq_a = [m.next_op(a) for _ in range(500)]
    assert seq_a == [m.next_op(b) for _ in range(500)]
    other = m.connection(2)
    assert seq_a != [m.next_op(other) for _ in range(500)]
    assert m.connection(1).rng.getrandbits(64) == random.Random(1001).getrandbits(64)
    for op, key, extra in seq_a:
        assert len(key) == 48 and key.endswith(b"0" * 40)
        assert int.from_bytes(key[:8], "big") < 3000
        if op == rpcwire.OP_PUT:
            assert isinstance(extra, bytes) and len(extra) >= 1
        elif op == rpcwire.OP_SEEK:
            assert isinstance(extra, int) and 0 <= extra < 10_000
        else:
            assert op == rpcwire.OP_GET and extra is None
    assert MixGraph.key_bytes(258)[:8] == b"\x00\x00\x00\x00\x00\x00\x01\x02"


def test_kv_service_model() -> None:
    s = KVServiceModel(get_us=2, put_us=3, seek_base_us=4, per_item_us=0.5)
    assert s.expected_us(rpcwire.OP_GET, 0) == 2
    assert s.expected_us(rpcwire.OP_PUT, 100) == 3
    assert s.expected_us(rpcwire.OP_SEEK, 10) == 9
    with pytest.raises(ValueError):
        s.expected_us(rpcwire.OP_ECHO, 0)
