"""``skq bench stall`` at a tiny scale: it starts the server, times every request of both
phases and reports them (the recorded runs are in docs/benchmarks.md)."""

from __future__ import annotations

from skqueue.bench.stall import format_table, run_policy


def test_stall_bench_times_every_request() -> None:
    r = run_policy("best2_ws", duration=0.05, sets=30, burst_conns=3, burst_sets=10,
                   slow_ms=50.0, memcslap=False, seed=3)  # fmt: skip
    assert r.errors == []
    assert r.sequences >= 1
    assert r.requests == r.sequences * (30 + 3 * 10)
    assert 0 < r.p99_ms <= r.max_ms
    table = format_table([r], 50.0)
    assert "best2_ws" in table and ">50ms" in table
