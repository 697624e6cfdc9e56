"""skq bench overhead: structure and consistency of its report (not speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from skqueue.bench.overhead import format_overhead, run_overhead
from skqueue.bench.wakeup import run_handoff, run_wakeup


def test_overhead_report_is_consistent() -> None:
    r = run_overhead(pipes=4, events=4000, rounds=2)
    assert r.pipes == 4 and r.events >= 4000
    assert r.raw_us_per_event > 0 and r.kq_us_per_event > 0
    assert abs(r.ratio - r.kq_us_per_event / r.raw_us_per_event) < 1e-9
    assert r.kq_data_us_per_event > 0
    assert abs(r.ratio_data - r.kq_data_us_per_event / r.raw_us_per_event) < 1e-9
    assert abs(r.raw_events_per_s - 1e6 / r.raw_us_per_event) < 1e-6 * r.raw_events_per_s
    assert r.syscall_floor_us > 0
    assert abs(r.ratio_floor - r.syscall_floor_us / r.raw_us_per_event) < 1e-9
    text = format_overhead(r)
    assert "ratio kqueue/raw" in text and "floor" in text and "ev.data" in text


def test_overhead_cli_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "skqueue", "bench", "overhead", "--pipes", "2",
         "--events", "2000", "--rounds", "1", "--json"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert {"raw_us_per_event", "kq_us_per_event", "ratio", "ratio_data",
            "syscall_floor_us"} <= set(d)


def test_wakeup_reports_both_designs() -> None:
    r = run_wakeup(n=50, rounds=1)
    assert set(r) == {"leader/followers", "harvester thread"}
    for rows in r.values():
        assert len(rows) == 1 and rows[0]["p50_us"] > 0 and rows[0]["p99_us"] >= rows[0]["p50_us"]


def test_handoff_reports_both_condition_variables() -> None:
    r = run_handoff(n=200, rounds=2)
    assert set(r) == {"threading.Condition", "KevqCond"}
    for rows in r.values():
        assert len(rows) == 2
        assert all(row["wall_us"] > 0 and row["cpu_us"] >= 0 for row in rows)
