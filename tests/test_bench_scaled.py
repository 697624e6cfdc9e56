"""``skq bench scaled`` (skqueue.bench.scaled): structure of a tiny run, CLI, validation."""

from __future__ import annotations

import argparse
import json
import os
import sys

import pytest

from skqueue.bench.scaled import (
    DEFAULT_MODES,
    ScaledConfig,
    add_scaled_arguments,
    format_scaled,
    run_scaled,
    scaled_main,
)

pytestmark = pytest.mark.timeout(60)


def _nfds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_default_modes_cover_baselines_and_policies() -> None:
    assert DEFAULT_MODES[:2] == ("vanilla", "legacy")
    assert {"rand", "queue0", "cpu0", "best2", "ws", "best2_ws"} <= set(DEFAULT_MODES)


def test_tiny_run_structure() -> None:
    before = _nfds()
    cfg = ScaledConfig(pipes=8, threads=2, duration=0.15,
                       modes=("vanilla", "legacy", "rand", "cpu0", "best2_ws"))
    rep = run_scaled(cfg)
    assert [r.mode for r in rep.results] == list(cfg.modes)
    for r in rep.results:
        assert r.events > 0, r
        assert r.seconds >= 0.15
        assert r.events_per_s == pytest.approx(r.events / r.seconds)
        assert len(r.per_thread) == 2
        assert sum(r.per_thread) == r.events
        assert r.ratio_to_vanilla is not None and r.ratio_to_vanilla > 0
    assert rep.results[0].ratio_to_vanilla == 1.0
    assert rep.results[0].word is None and rep.results[1].word is None
    assert rep.results[2].word == 0 and rep.results[4].word == 0x01010204
    d = rep.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["config"]["modes"] == list(cfg.modes)
    text = format_scaled(rep)
    for m in cfg.modes:
        assert m in text
    assert _nfds() == before  # pipes and kqueues closed


def test_no_vanilla_means_no_ratio() -> None:
    rep = run_scaled(ScaledConfig(pipes=4, threads=1, duration=0.05, modes=("rand",)))
    assert rep.results[0].ratio_to_vanilla is None
    assert "-" in format_scaled(rep)


@pytest.mark.parametrize("kind", ["hash", "sleep", "spin"])
def test_work_kinds(kind: str) -> None:
    rep = run_scaled(ScaledConfig(pipes=4, threads=2, duration=0.1, work_us=20,
                                  work_kind=kind, events_per_call=2,
                                  modes=("vanilla", "best2")))
    for r in rep.results:
        assert r.events > 0
        # 20 us of work per event bounds the rate: 2 threads, at most ~1e5 events/s
        assert r.events_per_s < 2 * 1e6 / 20 * 1.1


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_scaled_arguments(p)
    return p.parse_args(argv)


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["-c", "4", "-t", "2", "-n", "2", "-w", "0.05", "--modes",
                   "vanilla,legacy,ws", "--json"])
    assert scaled_main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["benchmark"] == "scaled"
    assert out["config"]["pipes"] == 4 and out["config"]["events_per_call"] == 2
    assert [r["mode"] for r in out["results"]] == ["vanilla", "legacy", "ws"]
    assert all(r["events_per_s"] > 0 for r in out["results"])


def test_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert scaled_main(_parse(["-c", "4", "-t", "1", "-w", "0.05", "--modes", "vanilla,rand"])
                       ) == 0
    out = capsys.readouterr().out
    assert "events/s" in out and "vanilla" in out and "rand" in out


@pytest.mark.parametrize(
    "argv",
    [["--modes", "vanilla,bogus"], ["-c", "0"], ["-t", "0"], ["-n", "0"], ["-w", "0"],
     ["-l", "-1"], ["--modes", ""]],
)
def test_cli_rejects_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert scaled_main(_parse(argv)) == 2
    assert "skq bench scaled:" in capsys.readouterr().out


def test_defaults() -> None:
    args = _parse([])
    assert (args.pipes, args.threads, args.events, args.work, args.duration) == (
        64, 2, 1, 0.0, 2.0)
    assert args.work_kind == "hash"
    assert tuple(args.modes.split(",")) == DEFAULT_MODES


def test_skq_main_shows_and_parses_the_bench_options(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 11 defect 7: the options come from the arguments given to skqueue.cli.main,
    # whatever sys.argv holds.
    from skqueue import cli

    monkeypatch.setattr(sys, "argv", ["python", "-m", "pytest"])
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "scaled", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--pipes" in out and "--threads" in out and "--modes" in out
    assert cli.main(["bench", "scaled", "-c", "2", "-t", "1", "-w", "0.05",
                     "--modes", "vanilla", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["pipes"] == 2
