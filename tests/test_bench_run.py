"""Tests of the benchmark harness (skqueue.bench.experiment, .run, .servers, .report).

Unit tests drive the pure parts (SLO rule, docs/semantics.md §6.6 ramp, address parsing,
CPU split, tables, files) with synthetic data.  The end-to-end tests run a very short
``skq bench run`` (two
servers, one of them a baseline, one load point, a fraction of a second each) and check the
*structure* of what it writes (JSON keys, CSV rows, PNG), never its speed.  The real-memcached
test is skipped when the binary is missing (``make deps`` installs it).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skqueue.bench import experiment, report
from skqueue.bench.experiment import (
    FreshServers,
    LoadSettings,
    Plan,
    Point,
    PolicyResult,
    Progress,
    ramp,
    run_policy,
    slo_latency_us,
    split_cpus,
)
from skqueue.bench.report import CSV_COLUMNS
from skqueue.bench.run import Setup, add_run_arguments, run_main
from skqueue.bench.servers import (
    ServerProcess,
    ServerSpec,
    ServerUnavailable,
    parse_address,
    process_cpu_s,
)
from skqueue.load.config import LoadConfig
from skqueue.load.hist import LatencyHistogram

# ----------------------------------------------------------------------------- helpers


def _point(
    label: str,
    target: float,
    achieved: float,
    p99: float | None,
    phase: str = "load",
    slo: float | None = None,
) -> Point:
    lat = {"p50": (p99 or 0.0) / 2, "p99": p99 or 0.0}
    return Point(
        label=label,
        phase=phase,
        target_qps=target,
        offered_qps=target,
        achieved_qps=achieved,
        intended=100,
        recorded=100,
        completed=100,
        unsent=0,
        errors=0,
        error_kinds={},
        latency_us=lat,
        actual_us=lat,
        slo_pct=99.0,
        slo_latency_us=p99 if slo is None else slo,
    )


def _run_args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_run_arguments(p)
    return p.parse_args(
        [
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
            "--conns",
            "8",
            "--threads",
            "2",
            "--out",
            str(tmp_path),
            "--name",
            "t",
            "--quiet",
            *extra,
        ]
    )


# ----------------------------------------------------------------------------- SLO rule


def test_slo_latency_counts_lost_requests_as_infinite() -> None:
    h = LatencyHistogram("exact")
    for us in range(1, 101):
        h.record(us * 1000)
    # all 100 answered: p99 is the 99th smallest
    assert slo_latency_us(h, 100, 100, 99.0) == pytest.approx(99.0)
    # 1 of 101 lost: rank ceil(0.99*101)=100 still within the 100 recorded
    assert slo_latency_us(h, 101, 100, 99.0) == pytest.approx(100.0)
    # 3 of 103 lost: rank 102 > 100 recorded -> infinite
    assert slo_latency_us(h, 103, 100, 99.0) is None
    # p50 with half lost is the largest recorded value
    assert slo_latency_us(h, 200, 100, 50.0) == pytest.approx(100.0)
    assert slo_latency_us(LatencyHistogram("exact"), 0, 0, 99.0) == 0.0


def test_low_latency_throughput_is_highest_achieved_meeting_slo() -> None:
    pr = PolicyResult(ServerSpec("best2_ws"))
    pr.points = [
        _point("x", 0, 9000, 100.0, phase="max"),  # unpaced: never counts
        _point("x", 1000, 1000, 500.0),
        _point("x", 2000, 1990, 900.0),
        _point("x", 3000, 2900, 5000.0),
        _point("x", 4000, 3100, 800.0, slo=None),
        _point("x", 5000, 3200, 700.0),
    ]
    pr.points[4].slo_latency_us = None  # lost too many requests
    assert pr.low_latency_throughput(1000.0) == 3200
    assert pr.low_latency_throughput(1000.0, ("ramp",)) is None
    assert pr.low_latency_throughput(600.0) == 1000
    assert pr.low_latency_throughput(10.0) is None
    assert pr.saturation_qps() == 9000
    near = pr.point_near(2100)
    assert near is not None and near.target_qps == 2000


# ----------------------------------------------------------------------------- ramp


def test_ramp_follows_spec_6_6() -> None:
    seen: list[float] = []

    def fake(qps: float, phase: str) -> Point:
        seen.append(qps)
        assert phase == "ramp"
        return _point("x", qps, min(qps, 1000.0), 100.0, phase=phase)

    pts = ramp(fake, 300, 300, 20)
    # gains: 100, 100, 100, floor(100/300*100)=33 (<=50: step x2), then 0 -> stop
    assert seen == [300, 600, 900, 1200, 1800]
    assert len(pts) == 5


def test_ramp_respects_max_points_and_latency_stop() -> None:
    def linear(qps: float, phase: str) -> Point:
        return _point("x", qps, qps, qps / 10.0, phase=phase)

    assert [p.target_qps for p in ramp(linear, 100, 100, 3)] == [100, 200, 300]
    assert [p.target_qps for p in ramp(linear, 100, 100, 10, stop_latency_us=25.0)] == [
        100,
        200,
        300,
    ]
    with pytest.raises(ValueError):
        ramp(linear, 0, 100, 3)


# ----------------------------------------------------------------------------- servers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:4123\n", ("127.0.0.1", 4123)),
        ("[::1]:8080", ("::1", 8080)),
        ("LISTENING 127.0.0.1 555", ("127.0.0.1", 555)),
        ('{"host": "127.0.0.1", "port": 9}', ("127.0.0.1", 9)),
        ("0.0.0.0 77", ("127.0.0.1", 77)),
        ("4242", ("127.0.0.1", 4242)),
        ("", None),
        ("127.0.0.1:", None),
        ("no address here", None),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int] | None) -> None:
    assert parse_address(text) == expected


def test_server_commands_and_checks() -> None:
    skq = ServerProcess(ServerSpec("best2_ws", threads=3, rt_hosts=("127.0.0.2",), tfreq=500))
    cmd = skq.build_command(Path("/tmp/ready"))
    assert cmd[1:4] == ["-m", "skqueue", "serve"]
    for flag, val in (
        ("--policy", "best2_ws"),
        ("--threads", "3"),
        ("--ready-file", "/tmp/ready"),
        ("--rt-hosts", "127.0.0.2"),
        ("--tfreq", "500"),
        ("--port", "0"),
        ("--service", "sleep"),
    ):
        assert cmd[cmd.index(flag) + 1] == val
    aio = ServerProcess(ServerSpec("uvloop", proto="memcached")).build_command(Path("r"))
    assert "skqueue.server.aio" in aio and aio[aio.index("--loop") + 1] == "uvloop"
    assert "--service" not in aio  # memcached sessions have no service time
    with pytest.raises(ServerUnavailable):
        ServerSpec("memcached", proto="rpc").check()
    with pytest.raises(ServerUnavailable):
        ServerSpec("asyncio", rt_hosts=("127.0.0.2",)).check()
    assert ServerSpec("legacy").kind == "skq" and ServerSpec("asyncio").kind == "asyncio"


def test_process_cpu_s_follows_the_process_cpu_clock() -> None:
    # /proc's figure (10 ms ticks) against the process's own clock over a busy stretch
    a0, p0 = process_cpu_s(os.getpid()), time.process_time()
    assert a0 is not None
    while time.process_time() - p0 < 0.3:
        pass
    a1, p1 = process_cpu_s(os.getpid()), time.process_time()
    assert a1 is not None
    assert abs((a1 - a0) - (p1 - p0)) < 0.05


def test_process_cpu_s_parses_any_command_name(tmp_path: Path) -> None:
    odd = tmp_path / "a) (b c"  # the kernel's comm field, parentheses and spaces in it
    odd.symlink_to(sys.executable)
    busy = (
        "import time\nt = time.process_time()\n"
        "while time.process_time() - t < 0.3: pass\n"
        "print('spent', flush=True)\ntime.sleep(60)\n"
    )
    proc = subprocess.Popen([str(odd), "-S", "-c", busy], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"spent\n"
        with open(f"/proc/{proc.pid}/comm") as f:
            assert f.read().strip() == "a) (b c"
        cpu = process_cpu_s(proc.pid)
        assert cpu is not None and 0.3 <= cpu < 1.0  # its 0.3 s loop plus start-up
    finally:
        proc.kill()
        proc.wait()
    assert process_cpu_s(proc.pid) is None  # reaped: no such process


def test_idle_suffix_runs_the_policy_with_idle_first(tmp_path: Path) -> None:
    setup = Setup.from_args(_run_args(tmp_path, "--pin", "none"), "rpc-echo")
    plain, idle = setup.specs(["best2_ws", "best2_ws+idle"], "rpc", "sleep")
    assert plain.label == "best2_ws" and plain.extra_args == ()
    assert idle.policy == "best2_ws" and idle.label == "best2_ws+idle"
    assert idle.extra_args == ("--idle-first",)
    cmd = ServerProcess(idle).build_command(Path("r"))
    assert cmd[cmd.index("--policy") + 1] == "best2_ws" and cmd[-1] == "--idle-first"
    for bad in ("vanilla+idle", "asyncio+idle", "nonsense+idle"):
        with pytest.raises(SystemExit):
            setup.specs([bad], "rpc", "sleep")


def test_split_cpus() -> None:
    assert split_cpus("none") == (None, None)
    assert split_cpus("split", 2) == ((0,), (1,))
    assert split_cpus("split", 5) == ((0, 1), (2, 3, 4))
    assert split_cpus("split", 1) == (None, None)
    with pytest.raises(ValueError):
        split_cpus("bogus")


def test_failed_server_start_is_recorded_not_raised() -> None:
    spec = ServerSpec("best2_ws", threads=1, extra_args=("--no-such-option",))
    calls: list[Any] = []
    res = run_policy(spec, lambda addr, pts: calls.append(addr), Progress(quiet=True), 15.0)
    assert res.status == "failed"
    assert res.error and "exited with code" in res.error
    assert calls == [] and res.points == []


def test_fresh_servers_start_a_server_per_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[ServerProcess] = []

    class Counted(ServerProcess):
        def start(self) -> tuple[str, int]:
            started.append(self)
            return super().start()

    monkeypatch.setattr(experiment, "ServerProcess", Counted)
    prepared: list[int] = []
    seen: list[tuple[int, int, int, bool]] = []

    def stages() -> Iterator[Plan]:
        for i in range(3):
            def stage(addr: tuple[str, int], pts: list[Point], i: int = i) -> None:
                # this stage's server is the newest, running, and prepared for
                seen.append((i, len(prepared), len(started), started[-1].alive()))
                assert all(not s.alive() for s in started[:-1])
            yield stage

    res = run_policy(ServerSpec("best2_ws", threads=1),
                     FreshServers(stages, lambda: prepared.append(1)), Progress(quiet=True), 30.0)
    assert res.status == "ok", res.error
    assert seen == [(0, 1, 1, True), (1, 2, 2, True), (2, 3, 3, True)]
    assert not any(s.alive() for s in started)

    # A failing stage ends the run: no later stage, no later server.
    started.clear()
    calls: list[int] = []

    def failing() -> Iterator[Plan]:
        def bad(addr: tuple[str, int], pts: list[Point]) -> None:
            calls.append(0)
            raise RuntimeError("stage failed")

        yield bad
        yield lambda addr, pts: calls.append(1)

    res = run_policy(ServerSpec("best2_ws", threads=1), FreshServers(failing),
                     Progress(quiet=True), 30.0)
    assert res.status == "failed" and res.error == "RuntimeError: stage failed"
    assert calls == [0] and len(started) == 1 and not started[0].alive()


# ----------------------------------------------------------------------------- report


def test_report_table_csv_json(tmp_path: Path) -> None:
    t = report.format_table(["name", "qps"], [["a", "1,000"], ["bbb", "5"]])
    lines = t.splitlines()
    assert lines[0].startswith("name") and set(lines[1]) <= {"-", " "}
    assert lines[2].endswith("1,000") and lines[3].endswith("    5")
    assert report.fmt_us(None) == "inf" and report.fmt_us(12345.0) == "12.3k"
    j = report.write_json(tmp_path / "x.json", {"a": math.inf, "b": [1.5, math.nan]})
    assert json.loads(j.read_text()) == {"a": None, "b": [1.5, None]}
    c = report.write_csv(tmp_path / "x.csv", [{"a": 1, "b": None}, {"a": 2}], ["a", "b"])
    assert list(csv.DictReader(io.StringIO(c.read_text()))) == [
        {"a": "1", "b": ""},
        {"a": "2", "b": ""},
    ]


def test_load_settings_probe_connections() -> None:
    s = LoadSettings(LoadConfig(connections=20), probe_conns=4)
    cfg = s.config(("127.0.0.1", 1234), 1000.0)
    assert cfg.connections == 24 and cfg.rt_connections == 4
    assert cfg.rt_bind is None and cfg.rt_service == "zero"
    assert s.slo_class() == "probe" and s.class_names() == {"rt": "probe"}
    cfg.validate()
    plain = LoadSettings(LoadConfig(connections=20)).config(("127.0.0.1", 1234), 0.0)
    assert plain.rt_connections == 0 and plain.qps == 0.0
    assert LoadSettings().slo_class() is None


# ----------------------------------------------------------------------------- end to end


def _check_outputs(tmp_path: Path, policies: list[str], points_each: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "t.json").read_text())
    for key in (
        "schema",
        "experiment",
        "machine",
        "service_mode",
        "latency",
        "slo",
        "load",
        "policies",
        "files",
    ):
        assert key in data, key
    assert data["experiment"] == "run"
    assert data["slo"]["percentile"] == 99.0 and data["slo"]["target_us"] > 0
    assert [p["label"] for p in data["policies"]] == policies
    for pol in data["policies"]:
        assert pol["status"] == "ok", pol["error"]
        assert pol["server_returncode"] == 0, pol["error"]
        assert len(pol["points"]) == points_each
        for pt in pol["points"]:
            assert pt["achieved_qps"] > 0
            assert pt["errors"] == 0
            for k in ("p50", "p90", "p99", "p999"):
                assert pt["latency_us"][k] > 0
                assert pt["actual_us"][k] > 0
            assert pt["latency_us"]["p50"] <= pt["latency_us"]["p99"] <= pt["latency_us"]["p999"]
            # the server's CPU over the run, per reply the generator received
            cpu, per_req = pt["server_cpu_s"], pt["server_cpu_us_per_req"]
            assert cpu is not None and cpu >= 0.0
            assert per_req == pytest.approx(cpu / pt["detail"]["replies"] * 1e6, rel=0.01)
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert len(rows) == len(policies) * points_each
    assert list(rows[0].keys()) == list(CSV_COLUMNS)
    assert [r["policy"] for r in rows] == [p for p in policies for _ in range(points_each)]
    png = tmp_path / "t.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return data


@pytest.mark.timeout(120)
def test_run_end_to_end_rpc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    args = _run_args(tmp_path, "--policies", "best2_ws,best2+idle,asyncio", "--loads", "200")
    assert run_main(args) == 0
    data = _check_outputs(tmp_path, ["best2_ws", "best2+idle", "asyncio"], 1)
    assert data["service_mode"]["name"] == "sleep"
    assert "GIL" in data["service_mode"]["meaning"]
    out = capsys.readouterr().out
    assert "service mode 'sleep'" in out and "p99" in out and "best2_ws" in out


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("memcached") is None, reason="memcached binary not installed")
def test_run_end_to_end_real_memcached(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    args = _run_args(tmp_path, "--proto", "memcached", "--policies", "memcached", "--loads", "200")
    assert run_main(args) == 0
    data = _check_outputs(tmp_path, ["memcached"], 1)
    assert data["service_mode"]["name"] is None


def test_run_rejects_memcached_baseline_on_rpc(tmp_path: Path) -> None:
    args = _run_args(tmp_path, "--policies", "memcached", "--loads", "100")
    with pytest.raises(SystemExit):
        run_main(args)
    args = _run_args(tmp_path, "--policies", "nonsense_policy", "--loads", "100")
    with pytest.raises(SystemExit):
        run_main(args)


def test_settle_gives_up_on_a_dead_server() -> None:
    from skqueue.bench.experiment import settle
    from skqueue.bench.servers import free_port

    ok, waited = settle(("127.0.0.1", free_port()), "rpc", timeout_s=0.3)
    assert ok is False and 0.3 <= waited < 5.0


def _parse(add: Any, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add(p)
    return p.parse_args(argv)


_SHORT = ["--duration", "0.4", "--warmup", "0.2", "--threads", "2", "--quiet", "--no-plot"]


@pytest.mark.timeout(120)
def test_demo_end_to_end_with_given_saturation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from skqueue.bench.run import add_demo_arguments, demo_main

    starts: list[str] = []

    class Counted(ServerProcess):
        def start(self) -> tuple[str, int]:
            starts.append(self.spec.label)
            return super().start()

    monkeypatch.setattr(experiment, "ServerProcess", Counted)
    args = _parse(
        add_demo_arguments,
        [
            *_SHORT,
            "--policies",
            "rand,asyncio",
            "--saturation",
            "600",
            "--fractions",
            "0.3,0.5",
            "--conns",
            "8",
            "--probe-conns",
            "2",
            "--out",
            str(tmp_path),
            "--name",
            "d",
        ],
    )
    assert demo_main(args) == 0
    data = json.loads((tmp_path / "d.json").read_text())
    assert data["experiment"] == "demo"
    summ = data["summary"]
    assert summ["reference"] == "rand" and summ["loads_qps"] == [180.0, 300.0]
    assert [r["policy"] for r in summ["rows"]] == ["rand", "asyncio"]
    assert summ["rows"][0]["p99_ratio_vs_reference"] == pytest.approx(1.0)
    for pol in data["policies"]:
        assert [pt["target_qps"] for pt in pol["points"]] == [180.0, 300.0]
        for pt in pol["points"]:
            assert pt["slo_class"] == "probe"
            assert pt["classes"]["probe"]["connections"] == 2
            assert pt["classes"]["normal"]["connections"] == 8
    # a server of its own for every point; the given saturation needs no calibration run
    assert starts == ["rand", "rand", "asyncio", "asyncio"]
    assert "p99 vs rand" in capsys.readouterr().out


def test_demo_reference_is_the_first_server_that_comes_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from skqueue.bench.run import add_demo_arguments, demo_main

    class NoRand(ServerProcess):
        def start(self) -> tuple[str, int]:
            if self.spec.label == "rand":
                raise ServerUnavailable("not on this machine")
            return super().start()

    monkeypatch.setattr(experiment, "ServerProcess", NoRand)
    args = _parse(
        add_demo_arguments,
        [*_SHORT, "--policies", "rand,asyncio", "--saturation", "600", "--fractions", "0.5",
         "--conns", "8", "--probe-conns", "2", "--out", str(tmp_path), "--name", "d",
         "--no-plot"],
    )
    assert demo_main(args) == 0
    data = json.loads((tmp_path / "d.json").read_text())
    assert [p["status"] for p in data["policies"]] == ["unavailable", "ok"]
    assert data["summary"]["reference"] == "asyncio"
    assert data["summary"]["rows"][1]["p99_ratio_vs_reference"] == pytest.approx(1.0)


@pytest.mark.timeout(120)
def test_priority_end_to_end(tmp_path: Path) -> None:
    from skqueue.bench.run import add_priority_arguments, priority_main

    args = _parse(
        add_priority_arguments,
        [
            *_SHORT,
            "--policy",
            "best2",
            "--no-contrast",
            "--bg-qps",
            "200",
            "--rt-conns",
            "2",
            "--rt-qps",
            "50",
            "--conns",
            "6",
            "--out",
            str(tmp_path),
            "--name",
            "p",
        ],
    )
    assert priority_main(args) == 0
    data = json.loads((tmp_path / "p.json").read_text())
    (pol,) = data["policies"]
    assert pol["status"] == "ok", pol["error"]
    assert pol["server"]["rt_hosts"] == ["127.0.0.2"]
    assert [p["phase"] for p in pol["points"]] == ["unloaded", "loaded"]
    unloaded, loaded = pol["points"]
    assert set(unloaded["classes"]) == {"rt"}
    assert set(loaded["classes"]) == {"rt", "normal"}
    assert loaded["classes"]["rt"]["latency_us"]["p99"] > 0
    (row,) = data["summary"]["rows"]
    assert row["rt_p99_loaded_us"] is not None and row["normal_p99_loaded_us"] is not None
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert rows[1]["rt_p99_us"] and rows[1]["normal_p99_us"]
