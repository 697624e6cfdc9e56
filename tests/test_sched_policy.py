"""Placement, batching and stealing decisions (docs/semantics.md §3.12-§3.14; D2, D3, D6, D7,
D15)."""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skqueue.constants import KQ_SCHED_BEST, KQ_SCHED_CPU, KQ_SCHED_FEAT_WS, KQ_SCHED_QUEUE
from skqueue.sched import (
    Domain,
    Estimator,
    Placement,
    Rng,
    ScanOrder,
    SchedWord,
    Topology,
    batch_limits,
    choose,
    exp_lat,
    insert_head,
    parse_sched,
    pick_victim,
    steal_slice,
    take_batch,
)

NOW = 1_000_000
PEN = 476


@dataclass(eq=False)
class FakeKevq:
    name: str
    est: Estimator = field(default_factory=Estimator)
    total_queued: int = 0
    closing: bool = False
    leaf: Domain | None = None

    def __repr__(self) -> str:
        return self.name


@dataclass
class FakeKnote:
    dom: Domain | None = None


def set_lat(q: FakeKevq, lat: int) -> None:
    """Make exp_lat(q, NOW) == NOW + lat: an in-kernel thread, 1 ns/event, lat queued."""
    q.est = Estimator()
    q.est.avg_lat = 1
    q.total_queued = lat


class SpyRng(Rng):
    """Records every sample_distinct call and its result."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.samples: list[tuple[int, int, int | None, list[int]]] = []

    def sample_distinct(self, n_items: int, k: int, exclude_index: int | None) -> list[int]:
        out = super().sample_distinct(n_items, k, exclude_index)
        self.samples.append((n_items, k, exclude_index, out))
        return out


class FixedRng(Rng):
    """randrange always returns a preset value (mod n)."""

    def __init__(self, value: int) -> None:
        super().__init__(0)
        self.value = value

    def randrange(self, n: int) -> int:
        return self.value % n


def chi2(counts: Counter[str], keys: list[str], total: int) -> float:
    exp = total / len(keys)
    return sum((counts[k] - exp) ** 2 / exp for k in keys)


@pytest.fixture
def machine() -> tuple[Topology, list[FakeKevq]]:
    """8 CPUs, 2 sockets x 2 cores x 2 SMT; one kevq per CPU, inserted in its leaf."""
    topo = Topology.synthetic(2, 2, smt=2)
    qs = []
    for cpu in range(8):
        q = FakeKevq(f"q{cpu}", leaf=topo.leaf_of(cpu))
        topo.insert(q, topo.leaf_of(cpu))
        qs.append(q)
    return topo, qs


def W(sched: int, sargs: int = 0, ws: bool = False) -> SchedWord:
    return SchedWord(sched, sargs, KQ_SCHED_FEAT_WS if ws else 0, 1 if ws else 0)


# -- CPU / QUEUE ---------------------------------------------------------------------------


def test_cpu_policy_follows_activating_cpu(machine: tuple[Topology, list[FakeKevq]]) -> None:
    topo, qs = machine
    rng = Rng(1)
    kn = FakeKnote()
    for _rep in range(50):
        for cpu in range(8):
            p = choose(W(KQ_SCHED_CPU), kn, cpu, qs, topo, rng, NOW, PEN)
            assert p.kevq is not None and p.kevq in topo.leaf_of(cpu).kevqs
            assert p == Placement(p.kevq, False, False)
    assert kn.dom is None  # CPU never remembers a domain
    # both kevqs of a leaf get used
    got = {choose(W(KQ_SCHED_CPU), kn, 2, qs, topo, rng, NOW, PEN).kevq for _ in range(100)}
    assert got == {qs[2], qs[3]}


def test_queue_policy_remembers_domain_and_counts_mismatch(
        machine: tuple[Topology, list[FakeKevq]]) -> None:
    topo, qs = machine
    rng = Rng(2)
    kn = FakeKnote()
    p = choose(W(KQ_SCHED_QUEUE), kn, 5, qs, topo, rng, NOW, PEN)
    assert kn.dom is topo.leaf_of(5)
    assert p.kevq in (qs[4], qs[5]) and not p.mismatch and not p.fallback
    for cpu in range(8):
        p = choose(W(KQ_SCHED_QUEUE), kn, cpu, qs, topo, rng, NOW, PEN)
        assert p.kevq in (qs[4], qs[5]), cpu  # stays in the remembered domain
        assert p.mismatch == (cpu not in (4, 5))
        assert not p.fallback
    assert kn.dom is topo.leaf_of(5)


def test_local_pick_skips_closing_and_inactive(machine: tuple[Topology, list[FakeKevq]]) -> None:
    topo, qs = machine
    rng = Rng(3)
    qs[0].closing = True
    for _ in range(50):
        p = choose(W(KQ_SCHED_CPU), FakeKnote(), 0, qs, topo, rng, NOW, PEN)
        assert p.kevq is qs[1] and not p.fallback
    # q1 is not in the active vector (e.g. mid-drain): local candidate is gone -> fallback
    active = [q for q in qs if q is not qs[1]]
    for _ in range(50):
        p = choose(W(KQ_SCHED_CPU), FakeKnote(), 0, active, topo, rng, NOW, PEN)
        assert p.fallback and p.kevq is not None and not p.kevq.closing
        assert p.kevq not in (qs[0], qs[1])


def test_queue_mismatch_not_reported_on_fallback(
        machine: tuple[Topology, list[FakeKevq]]) -> None:
    topo, qs = machine
    kn = FakeKnote(dom=topo.leaf_of(6))
    qs[6].closing = qs[7].closing = True
    p = choose(W(KQ_SCHED_QUEUE), kn, 0, qs, topo, Rng(4), NOW, PEN)
    assert p.fallback and not p.mismatch and p.kevq not in (qs[6], qs[7])


def test_local_pick_uniform_with_equal_but_distinct_kevqs() -> None:
    # dataclass equality must not confuse membership: identity only
    topo = Topology.flat(2)

    @dataclass
    class EqKevq:  # eq=True on purpose
        est: Estimator = field(default_factory=Estimator)
        total_queued: int = 0
        closing: bool = False
        leaf: Domain | None = None

    est = Estimator()
    a, b = EqKevq(est), EqKevq(est)
    assert a == b and a is not b
    topo.insert(b, topo.leaves[1])
    for _ in range(20):
        p = choose(W(KQ_SCHED_CPU), FakeKnote(), 1, [a, b], topo, Rng(5), NOW, PEN)
        assert p.kevq is b and not p.fallback


def test_cpu_queue_need_topology(machine: tuple[Topology, list[FakeKevq]]) -> None:
    _, qs = machine
    for s in (KQ_SCHED_CPU, KQ_SCHED_QUEUE):
        with pytest.raises(ValueError, match="topology"):
            choose(W(s), FakeKnote(), 0, qs, None, Rng(0), NOW, PEN)
    # QUEUE with a remembered domain works without a topology
    topo = Topology.flat(2)
    q = FakeKevq("q")
    topo.insert(q, topo.leaves[0])
    p = choose(W(KQ_SCHED_QUEUE), FakeKnote(dom=topo.leaves[0]), 1, [q], None, Rng(0), NOW, PEN)
    assert p.kevq is q and p.mismatch


# -- hybrid (D2, D6) -----------------------------------------------------------------------


def hybrid_pair(local_lat: int, remote_lat: int, sched: int) -> Placement[FakeKevq]:
    topo = Topology.flat(2)
    local, remote = FakeKevq("local"), FakeKevq("remote")
    topo.insert(local, topo.leaves[0])
    topo.insert(remote, topo.leaves[1])
    set_lat(local, local_lat)
    set_lat(remote, remote_lat)
    kn = FakeKnote()
    return choose(W(sched, 1), kn, 0, [local, remote], topo, Rng(6), NOW, PEN)


@pytest.mark.parametrize("sched", [KQ_SCHED_CPU, KQ_SCHED_QUEUE])
def test_hybrid_penalty_boundary(sched: int) -> None:
    L = 10_000
    # remote better by more than the penalty: remote wins
    assert hybrid_pair(L, L - PEN - 1, sched).kevq.name == "remote"  # type: ignore[union-attr]
    # exactly the penalty: local kept (strict)
    assert hybrid_pair(L, L - PEN, sched).kevq.name == "local"  # type: ignore[union-attr]
    # better, but by less than the penalty: local kept (the original picked remote, D2)
    assert hybrid_pair(L, L - 1, sched).kevq.name == "local"  # type: ignore[union-attr]
    # worse within the penalty: the original picked remote here too
    assert hybrid_pair(L, L + PEN - 1, sched).kevq.name == "local"  # type: ignore[union-attr]
    assert hybrid_pair(L, L + 10 * PEN, sched).kevq.name == "local"  # type: ignore[union-attr]
    p = hybrid_pair(L, 0, sched)
    assert p.kevq.name == "remote" and not p.fallback  # type: ignore[union-attr]


def test_hybrid_without_local_takes_remote() -> None:
    topo = Topology.flat(4)
    far = [FakeKevq(f"far{i}") for i in range(3)]
    for i, q in enumerate(far):
        topo.insert(q, topo.leaves[i + 1])
        set_lat(q, 1_000 * (i + 1))
    rng = SpyRng(7)
    # leaf of cpu 0 is empty: the remote best-of-2 is taken even though nothing compares
    p = choose(W(KQ_SCHED_CPU, 2), FakeKnote(), 0, far, topo, rng, NOW, PEN)
    assert not p.fallback and p.kevq is not None
    n, k, ex, drawn = rng.samples[-1]
    assert (n, k, ex) == (3, 2, None)
    assert p.kevq is min((far[i] for i in drawn), key=lambda q: exp_lat(q, NOW))


def test_hybrid_never_redraws_local(machine: tuple[Topology, list[FakeKevq]]) -> None:
    topo, qs = machine
    for i, q in enumerate(qs):
        set_lat(q, 100_000 + i)
    rng = SpyRng(8)
    for rep in range(300):
        kn = FakeKnote()
        cpu = rep % 8
        p = choose(W(KQ_SCHED_QUEUE, 3), kn, cpu, qs, topo, rng, NOW, PEN)
        n, k, ex, drawn = rng.samples[-1]
        assert ex is not None and qs[ex] in topo.leaf_of(cpu).kevqs
        assert ex not in drawn and len(set(drawn)) == len(drawn) == 3
        # all latencies are within the penalty of each other: locality always wins
        assert p.kevq is qs[ex]


def test_hybrid_remote_closing_never_wins() -> None:
    topo = Topology.flat(2)
    local, remote = FakeKevq("local"), FakeKevq("remote", closing=True)
    topo.insert(local, topo.leaves[0])
    topo.insert(remote, topo.leaves[1])
    set_lat(local, 1_000_000)
    set_lat(remote, 0)
    p = choose(W(KQ_SCHED_CPU, 1), FakeKnote(), 0, [local, remote], topo, Rng(9), NOW, PEN)
    assert p.kevq is local and not p.fallback


# -- best-of-N -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_best_of_n_picks_lowest_drawn(n: int) -> None:
    qs = [FakeKevq(f"q{i}") for i in range(8)]
    lats = [70, 10, 50, 30, 80, 20, 60, 40]
    for q, lat in zip(qs, lats, strict=True):
        set_lat(q, lat * 1000)
    rng = SpyRng(100 + n)
    wins: Counter[str] = Counter()
    for _ in range(400):
        p = choose(W(KQ_SCHED_BEST, n), FakeKnote(), 0, qs, None, rng, NOW, PEN)
        _, k, ex, drawn = rng.samples[-1]
        assert k == n and ex is None
        assert len(drawn) == len(set(drawn)) == n  # never re-drawn
        assert p.kevq is min((qs[i] for i in drawn), key=lambda q: exp_lat(q, NOW))
        assert not p.fallback and not p.mismatch
        assert p.kevq is not None
        wins[p.kevq.name] += 1
    if n == 1:
        assert len(wins) == 8
    else:  # the worst kevq can never win a draw of >= 2 distinct kevqs
        assert wins["q4"] == 0
        assert wins["q1"] == max(wins.values())  # the best kevq wins most often


def test_best_of_n_capped_at_active() -> None:
    qs = [FakeKevq(f"q{i}") for i in range(3)]
    for q, lat in zip(qs, [30, 10, 20], strict=True):
        set_lat(q, lat)
    for seed in range(30):
        p = choose(W(KQ_SCHED_BEST, 255), FakeKnote(), 0, qs, None, Rng(seed), NOW, PEN)
        assert p.kevq is qs[1]


def test_best_of_n_tie_goes_to_first_draw() -> None:
    qs = [FakeKevq(f"q{i}") for i in range(5)]
    rng = SpyRng(11)
    for _ in range(50):
        p = choose(W(KQ_SCHED_BEST, 3), FakeKnote(), 0, qs, None, rng, NOW, PEN)
        assert p.kevq is qs[rng.samples[-1][3][0]]


def test_best_of_n_all_closing_falls_back_to_none() -> None:
    qs = [FakeKevq(f"q{i}", closing=True) for i in range(3)]
    p = choose(W(KQ_SCHED_BEST, 2), FakeKnote(), 0, qs, None, Rng(0), NOW, PEN)
    assert p == Placement(None, False, False)


def test_best_uses_estimator_clamp_and_queue() -> None:
    # q_a returned 4 events long ago (clamped, finishes now), q_b is in-kernel but has backlog
    q_a, q_b = FakeKevq("a"), FakeKevq("b")
    q_a.est.leave(0, 4)
    q_a.est.avg_lat = 100
    q_b.est.avg_lat = 100
    q_b.total_queued = 3
    p = choose(W(KQ_SCHED_BEST, 2), FakeKnote(), 0, [q_a, q_b], None, Rng(0), NOW, PEN)
    assert p.kevq is q_a  # NOW vs NOW + 300
    q_a.total_queued = 4
    p = choose(W(KQ_SCHED_BEST, 2), FakeKnote(), 0, [q_a, q_b], None, Rng(0), NOW, PEN)
    assert p.kevq is q_b  # NOW + 400 vs NOW + 300


# -- random / fallback ------------------------------------------------------------------------


def test_random_is_always_fallback_and_probes_linearly() -> None:
    a, b, c, d = (FakeKevq(n) for n in "abcd")
    a.closing = c.closing = True
    active = [a, b, c, d]
    expect = {0: b, 1: b, 2: d, 3: d}
    for start, want in expect.items():
        p = choose(W(0), FakeKnote(), 0, active, None, FixedRng(start), NOW, PEN)
        assert p == Placement(want, True, False)
    b.closing = d.closing = True
    assert choose(W(0), FakeKnote(), 0, active, None, Rng(0), NOW, PEN) == (None, False, False)
    assert choose(W(0), FakeKnote(), 0, [], None, Rng(0), NOW, PEN) == (None, False, False)
    for s in (KQ_SCHED_BEST, KQ_SCHED_CPU):
        assert choose(W(s, 1), FakeKnote(), 0, [], Topology.flat(1), Rng(0), NOW,
                      PEN).kevq is None


def test_random_ignores_sargs_and_ws(machine: tuple[Topology, list[FakeKevq]]) -> None:
    topo, qs = machine
    rng = Rng(12)
    for _ in range(100):
        p = choose(SchedWord(0, 2, KQ_SCHED_FEAT_WS, 1), FakeKnote(), 0, qs, topo, rng, NOW, PEN)
        assert p.fallback and p.kevq is not None


@pytest.mark.parametrize("word", [W(0), W(KQ_SCHED_BEST, 1), W(KQ_SCHED_BEST, 3)])
def test_fairness_random_and_best_of_one(word: SchedWord) -> None:
    # equal estimates: random, best-of-1 and best-of-N (ties -> first draw) are uniform
    qs = [FakeKevq(f"q{i}") for i in range(8)]
    rng = Rng(2021)
    draws = 16_000
    c: Counter[str] = Counter()
    for _ in range(draws):
        p = choose(word, FakeKnote(), 0, qs, None, rng, NOW, PEN)
        c[p.kevq.name] += 1  # type: ignore[union-attr]
    assert chi2(c, [q.name for q in qs], draws) < 40  # df = 7; p(>40) ~ 1e-6


def test_same_seed_same_decisions(machine: tuple[Topology, list[FakeKevq]]) -> None:
    topo, qs = machine
    for i, q in enumerate(qs):
        set_lat(q, (i * 7919) % 5000)

    def run(seed: int) -> list[str]:
        rng = Rng(seed)
        out = []
        for w in (W(0), W(KQ_SCHED_CPU, 2), W(KQ_SCHED_QUEUE, 1), W(KQ_SCHED_BEST, 2)):
            for i in range(40):
                p = choose(w, FakeKnote(), i % 8, qs, topo, rng, NOW, PEN)
                out.append(p.kevq.name)  # type: ignore[union-attr]
        return out

    assert run(5) == run(5)
    assert run(5) != run(6)


# -- batch limits (§3.14, D5, D7) ----------------------------------------------------------


def test_batch_limits_share() -> None:
    assert batch_limits(4, False, 0, 0, 0) == (4, 0)  # share 0: no reserved slots
    for share in range(1, 101):
        maxev, rtlimit = batch_limits(4, True, 0, share, 1000)
        assert maxev == 4 and rtlimit == math.ceil(4 * share / 100)
    assert batch_limits(4, False, 0, 100, 0) == (4, 4)
    assert batch_limits(7, False, 0, 50, 0) == (7, 4)
    assert batch_limits(0, True, 10, 50, 10) == (0, 0)


def test_batch_limits_tfreq_cap() -> None:
    # 1 us/event at 10 kHz -> 100 events per call
    assert batch_limits(4096, True, 10_000, 100, 1_000) == (100, 100)
    assert batch_limits(50, True, 10_000, 100, 1_000) == (50, 50)  # min()
    assert batch_limits(4096, True, 10_000, 10, 1_000) == (100, 10)  # rtlimit after the cap
    assert batch_limits(4096, True, 3, 100, 1_000_000_000) == (1, 1)  # max(1, 0)
    assert batch_limits(4096, True, 7, 100, 1_000) == (4096, 4096)  # 142857 > 4096
    assert batch_limits(4096, True, 7_000, 100, 1_000) == (142, 142)  # floor
    # only in multi mode, only with tfreq > 0 and avg_lat > 0
    assert batch_limits(4096, False, 10_000, 100, 1_000) == (4096, 4096)
    assert batch_limits(4096, True, 0, 100, 1_000) == (4096, 4096)
    assert batch_limits(4096, True, 10_000, 100, 0) == (4096, 4096)


# -- take_batch / BatchCursor (§3.9, D7) --------------------------------------------------


def always(entry: object, is_rt: bool) -> bool:
    return True


def test_take_batch_rt_first_then_normal() -> None:
    rt, nq = deque(f"r{i}" for i in range(6)), deque(f"n{i}" for i in range(3))
    out = take_batch(rt, nq, 4, 2, always)
    assert out == [("r0", True), ("r1", True), ("n0", False), ("n1", False)]
    assert list(rt) == ["r2", "r3", "r4", "r5"] and list(nq) == ["n2"]


def test_take_batch_work_conserving() -> None:
    # realtime backlog larger than rtlimit and an empty normal queue (the original stopped at 1)
    rt, nq = deque(range(6)), deque[int]()
    out = take_batch(rt, nq, 4, 1, always)
    assert [e for e, _ in out] == [0, 1, 2, 3] and all(r for _, r in out)
    # share 0: no spin, realtime still delivered after the normal queue
    rts, nqs = deque(["r0", "r1"]), deque(["n0"])
    assert take_batch(rts, nqs, 8, 0, always) == [("n0", False), ("r0", True), ("r1", True)]
    # rt-only with share 0
    assert take_batch(deque([1, 2, 3]), deque[int](), 2, 0, always) == [(1, True), (2, True)]
    assert take_batch(deque[int](), deque[int](), 4, 4, always) == []


@pytest.mark.parametrize("share", range(1, 101))
def test_take_batch_authors_share_test(share: int) -> None:
    # 4 realtime + 4 normal, 4 slots: first ceil(4*share/100) realtime, the rest normal
    maxev, rtlimit = batch_limits(4, False, 0, share, 0)
    out = take_batch(deque(f"r{i}" for i in range(4)), deque(f"n{i}" for i in range(4)),
                     maxev, rtlimit, always)
    k = math.ceil(4 * share / 100)
    assert [r for _, r in out] == [True] * k + [False] * (4 - k)


def test_take_batch_stale_entries_do_not_count() -> None:
    rt, nq = deque(["r0", "xr1", "r2", "r3"]), deque(["xn0", "n1", "n2"])
    out = take_batch(rt, nq, 4, 2, lambda e, _: not e.startswith("x"))
    assert out == [("r0", True), ("r2", True), ("n1", False), ("n2", False)]
    assert list(rt) == ["r3"] and not nq  # stale ones were popped (discarded)


def test_take_batch_moved_to_tail_is_not_rescanned() -> None:
    # PROCESSING entries are moved behind the marker: appended to the tail, not counted
    rt: deque[str] = deque(["p0", "r1"])
    nq: deque[str] = deque(["p2", "n3", "p4"])
    seen: list[str] = []

    def accept(e: str, is_rt: bool) -> bool:
        seen.append(e)
        if e.startswith("p"):
            (rt if is_rt else nq).append(e)
            return False
        return True

    out = take_batch(rt, nq, 10, 10, accept)
    assert [e for e, _ in out] == ["r1", "n3"]
    assert seen == ["p0", "r1", "p2", "n3", "p4"]  # each examined once
    assert list(rt) == ["p0"] and list(nq) == ["p2", "p4"]


def test_take_batch_all_moving_never_spins() -> None:
    rt, nq = deque(range(100)), deque(range(100, 200))
    calls = 0

    def accept(e: int, is_rt: bool) -> bool:
        nonlocal calls
        calls += 1
        (rt if is_rt else nq).append(e)
        return False

    assert take_batch(rt, nq, 4, 0, accept) == []
    assert calls == 200 and len(rt) == 100 and len(nq) == 100


def test_take_batch_exception_puts_entry_back() -> None:
    rt, nq = deque(["a", "b"]), deque(["c"])

    def boom(e: str, is_rt: bool) -> bool:
        if e == "b":
            raise RuntimeError("x")
        return True

    with pytest.raises(RuntimeError):
        take_batch(rt, nq, 4, 4, boom)
    assert list(rt) == ["b"] and list(nq) == ["c"]


def test_scan_order_runs() -> None:
    # 3 realtime, 5 normal, 6 slots, realtime share 2: runs never overshoot a limit
    order = ScanOrder(3, 5, 6, 2)
    assert order.next_run() == (True, 2)
    order.took(True, 2, 2, 1)  # one of the two was stale
    assert order.next_run() == (True, 1)  # one more realtime is owed
    order.took(True, 1, 1, 1)
    assert order.next_run() == (False, 4)  # share reached: normal, up to the room left
    order.took(False, 4, 2, 2)  # only two were there: the normal budget ends
    assert order.next_run()[1] == 0  # both budgets spent
    assert (order.taken, order.taken_rt) == (4, 2)


def test_scan_order_realtime_again_when_normal_runs_dry() -> None:
    order = ScanOrder(5, 1, 4, 1)
    assert order.next_run() == (True, 1)
    order.took(True, 1, 1, 1)
    assert order.next_run() == (False, 1)
    order.took(False, 1, 1, 1)
    assert order.next_run() == (True, 2)  # work-conserving: the rest from realtime
    order.took(True, 2, 2, 2)
    assert order.next_run()[1] == 0 and order.taken == 4



def test_scan_order_survives_a_shrinking_fifo() -> None:
    # the budget said 3, the FIFO holds 1 by the time it is popped: the budget ends
    order = ScanOrder(3, 0, 10, 10)
    assert order.next_run() == (True, 3)
    order.took(True, 3, 1, 1)
    assert order.next_run()[1] == 0 and order.taken == 1


@settings(max_examples=300, deadline=None)
@given(
    rt=st.lists(st.booleans(), max_size=12),
    nq=st.lists(st.booleans(), max_size=12),
    maxev=st.integers(0, 30),
    rtlimit=st.integers(0, 30),
)
def test_take_batch_matches_model(rt: list[bool], nq: list[bool], maxev: int,
                                  rtlimit: int) -> None:
    # entries are (class, index, deliverable)
    rtq = deque(("r", i, ok) for i, ok in enumerate(rt))
    nqq = deque(("n", i, ok) for i, ok in enumerate(nq))
    out = take_batch(rtq, nqq, maxev, rtlimit, lambda e, _: e[2])
    acc_rt = [("r", i, True) for i, ok in enumerate(rt) if ok]
    acc_n = [("n", i, True) for i, ok in enumerate(nq) if ok]
    model = (acc_rt[:rtlimit] + acc_n + acc_rt[rtlimit:])[:maxev]
    assert [e for e, _ in out] == model
    assert all((e[0] == "r") == is_rt for e, is_rt in out)
    # work conservation: never fewer than available (up to maxev)
    assert len(out) == min(maxev, len(acc_rt) + len(acc_n))


# -- stealing (§3.13, D15) -----------------------------------------------------------------


def test_pick_victim() -> None:
    qs = [FakeKevq(f"q{i}") for i in range(5)]
    rng = Rng(13)
    draws = 8_000
    c: Counter[str] = Counter()
    for _ in range(draws):
        v = pick_victim(qs, qs[2], rng)
        assert v is not None and v is not qs[2]
        c[v.name] += 1
    assert chi2(c, ["q0", "q1", "q3", "q4"], draws) < 35  # df = 3
    assert pick_victim([qs[0]], qs[0], rng) is None
    assert pick_victim([], qs[0], rng) is None
    assert pick_victim([qs[1]], qs[0], rng) is qs[1]  # thief not active yet


def test_steal_preserves_order_and_limits_scan() -> None:
    normal = deque(range(10))
    taken, scanned = steal_slice(deque[int](), normal, 2, 2, lambda e: e % 2 == 1)
    assert taken == [1, 3] and scanned == 4
    assert list(normal) == [0, 2, 4, 5, 6, 7, 8, 9]
    # nothing eligible: scan stops at k*factor, the deque is untouched
    normal = deque(range(10))
    taken, scanned = steal_slice(deque[int](), normal, 3, 2, lambda e: False)
    assert taken == [] and scanned == 6 and list(normal) == list(range(10))
    # all eligible: stops as soon as k are taken
    normal = deque(range(10))
    taken, scanned = steal_slice(deque[int](), normal, 3, 2, lambda e: True)
    assert taken == [0, 1, 2] and scanned == 3 and list(normal) == list(range(3, 10))
    # short queue
    taken, scanned = steal_slice(deque[int](), deque([7]), 4, 2, lambda e: True)
    assert taken == [7] and scanned == 1


def test_steal_scans_one_list_only() -> None:
    rt, normal = deque(["r0", "r1", "r2"]), deque(["n0"])
    taken, scanned = steal_slice(rt, normal, 1, 2, lambda e: e.startswith("n"))
    assert taken == [] and scanned == 2 and list(normal) == ["n0"] and len(rt) == 3
    taken, scanned = steal_slice(rt, normal, 2, 8, lambda e: e != "r1")
    assert taken == ["r0", "r2"] and scanned == 3 and list(rt) == ["r1"]


def test_steal_then_insert_head_keeps_order() -> None:
    victim = deque([10, 11, 12, 13])
    mine = deque([1, 2])
    taken, _ = steal_slice(deque[int](), victim, 3, 2, lambda e: e != 11)
    insert_head(mine, taken)
    assert list(mine) == [10, 12, 13, 1, 2]


def test_steal_eligible_raising_restores_queue() -> None:
    victim = deque([1, 2, 3, 4])

    def elig(e: int) -> bool:
        if e == 3:
            raise RuntimeError
        return e == 2

    with pytest.raises(RuntimeError):
        steal_slice(deque[int](), victim, 4, 2, elig)
    assert list(victim) == [1, 3, 4]  # 2 was taken before the failure; order kept


# -- realtime idle-first placement (skqueue extension) -------------------------------


@dataclass
class FakeRtKnote:
    rt: bool = True
    dom: Domain | None = None


def _busy(q: FakeKevq, now: int) -> None:
    """A thread in user space, 1 event taken, estimated to finish about now."""
    q.est = Estimator()
    q.est.avg_lat = 1000
    q.est.leave(now - 100, 1)


@pytest.mark.parametrize("label", ["rand", "best2", "best2_ws"])
def test_rt_idle_first_picks_the_idle_kevq(label: str) -> None:
    now = 10_000_000
    qs = [FakeKevq(f"q{i}") for i in range(6)]
    for q in qs:
        _busy(q, now)
    idle = qs[4]
    idle.est = Estimator()  # waiting in the kernel, nothing queued
    sw = SchedWord.from_word(parse_sched(label))
    for seed in range(50):
        p = choose(sw, FakeRtKnote(), 0, qs, None, Rng(seed), now, 476, rt_idle_first=True)
        assert p.kevq is idle and not p.fallback


def test_rt_idle_first_only_for_realtime_and_when_enabled() -> None:
    now = 10_000_000
    qs = [FakeKevq(f"q{i}") for i in range(6)]
    for q in qs:
        _busy(q, now)
    qs[2].est = Estimator()
    sw = SchedWord.from_word(parse_sched("rand"))
    normal = {choose(sw, FakeRtKnote(rt=False), 0, qs, None, Rng(s), now, 476, True).kevq
              for s in range(60)}
    off = {choose(sw, FakeRtKnote(), 0, qs, None, Rng(s), now, 476, False).kevq
           for s in range(60)}
    assert len(normal) > 1 and len(off) > 1  # the policy (random) decides


@pytest.mark.parametrize("rt,flags", [(True, {"rt_idle_first": True}),
                                      (False, {"idle_first": True})])
def test_idle_first_falls_back_to_policy_when_nobody_is_idle(
        rt: bool, flags: dict[str, bool]) -> None:
    now = 10_000_000
    qs = [FakeKevq(f"q{i}") for i in range(4)]
    for q in qs:
        _busy(q, now)
    qs[1].est = Estimator()
    qs[1].total_queued = 3  # waiting, but has work queued: not idle
    sw = SchedWord.from_word(parse_sched("rand"))
    picks = {choose(sw, FakeRtKnote(rt=rt), 0, qs, None, Rng(s), now, 476, **flags)
             for s in range(60)}
    assert len({p.kevq for p in picks}) > 1 and all(p.fallback for p in picks)


@pytest.mark.parametrize("label", ["rand", "best2", "best2_ws", "cpu2"])
def test_idle_first_sends_every_event_to_an_idle_kevq(label: str) -> None:
    now = 10_000_000
    qs = [FakeKevq(f"q{i}") for i in range(6)]
    for q in qs:
        _busy(q, now)
    idle = [qs[1], qs[4]]
    for q in idle:
        q.est = Estimator()  # waiting in the kernel, nothing queued
    topo = Topology.synthetic(1, 6, 1) if label.startswith("cpu") else None
    if topo is not None:
        for i, q in enumerate(qs):
            q.leaf = topo.leaf_of(i)
            topo.insert(q, q.leaf)
    sw = SchedWord.from_word(parse_sched(label))
    picks = Counter(
        choose(sw, FakeRtKnote(rt=False), 0, qs, topo, Rng(s), now, 476, idle_first=True).kevq
        for s in range(400)
    )
    assert set(picks) == set(idle)  # never a busy one, and both idle ones
    assert min(picks.values()) > 140  # uniform among the idle: 200 each expected
    # off (the default), a normal event is the policy's: busy kevqs get some
    off = {choose(sw, FakeRtKnote(rt=False), 0, qs, topo, Rng(s), now, 476).kevq
           for s in range(60)}
    assert off - set(idle)
