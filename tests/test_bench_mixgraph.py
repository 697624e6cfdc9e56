"""``skq bench mixgraph``: the RocksDB mixgraph experiment end to end at a tiny scale, and the
generator options it relies on (GET-only probe connections, seeded request streams)."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest

from skqueue import rpcwire
from skqueue.bench import experiment
from skqueue.bench.mixgraph import add_mixgraph_arguments, auto_slo_us, mixgraph_main
from skqueue.load.config import LoadConfig
from skqueue.load.dist import MixGraph
from skqueue.load.worker import Worker
from skqueue.server.kv import capi_status


def test_auto_slo() -> None:
    assert auto_slo_us(1753.0) == 18_000.0
    assert auto_slo_us(1234.0) == 13_000.0
    assert auto_slo_us(20.0) == 500.0
    assert auto_slo_us(None) == 10_000.0


def test_mixgraph_stream_seed() -> None:
    mix = MixGraph(keyspace=1000)
    # without a seed: the authors' per-connection generator, seeded 1000 + id
    assert mix.connection(3).rng.getrandbits(64) == random.Random(1003).getrandbits(64)
    a, b, c = mix.connection(3, 7), mix.connection(3, 7), mix.connection(3, 8)
    sa = [mix.next_op_spec(a) for _ in range(50)]
    assert sa == [mix.next_op_spec(b) for _ in range(50)]
    assert sa != [mix.next_op_spec(c) for _ in range(50)]


def test_probe_connections_send_only_gets() -> None:
    cfg = LoadConfig(port=1, protocol="rpc-kv", connections=6, rt_connections=2,
                     kv_keyspace=500, kv_rt_get_only=True)
    w = Worker(cfg, list(range(6)))
    try:
        ops: dict[str, set[int]] = {"normal": set(), "rt": set()}
        for c in w.conns:
            for _ in range(400):
                ((op, _arg, _payload),) = rpcwire.FrameParser().feed(w._build(c))
                ops[c.klass].add(op)
    finally:
        w.close()
    assert ops["rt"] == {rpcwire.OP_GET}
    assert ops["normal"] == {rpcwire.OP_GET, rpcwire.OP_PUT, rpcwire.OP_SEEK}


@pytest.mark.timeout(180)
def test_mixgraph_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if capi_status()[0] is None:
        pytest.importorskip("rocksdict")
    starts: list[str] = []

    class Counted(experiment.ServerProcess):
        def start(self) -> tuple[str, int]:
            starts.append(self.spec.label)
            return super().start()

    monkeypatch.setattr(experiment, "ServerProcess", Counted)
    p = argparse.ArgumentParser()
    add_mixgraph_arguments(p)
    args = p.parse_args([
        "--policies", "vanilla,best2_ws,asyncio", "--saturation", "600", "--fractions", "0.7",
        "--seeds", "2", "--keys", "2000", "--conns", "8", "--probe-conns", "2",
        "--unloaded-qps", "50", "--duration", "0.4", "--warmup", "0.2", "--threads", "2",
        "--quiet", "--no-plot", "--out", str(tmp_path), "--name", "m",
    ])
    assert mixgraph_main(args) == 0
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["experiment"] == "mixgraph"
    store = data["params"]["store"]
    assert store["backend"] in ("capi", "rocksdict") and store["keys"] == 2000
    assert data["params"]["seeds"] == [1, 2]
    summ = data["summary"]
    assert summ["loads_qps"] == [420.0] and summ["slo_auto"] is True
    assert data["slo"]["target_us"] == auto_slo_us(summ["unloaded_p99_us"])
    phases = {pol["label"]: [pt["phase"] for pt in pol["points"]] for pol in data["policies"]}
    assert phases == {"vanilla": ["unloaded", "load", "seed"], "best2_ws": ["load", "seed"],
                      "asyncio": ["load", "seed"]}
    # every point on a server of its own (the reference's calibration and unloaded point
    # share one), so the order of the points cannot bias them through the store's state
    assert starts == ["vanilla"] * 3 + ["best2_ws"] * 2 + ["asyncio"] * 2
    for pol in data["policies"]:
        assert pol["status"] == "ok", pol["error"]
        for pt in pol["points"]:
            assert pt["errors"] == 0 and pt["achieved_qps"] > 0
            assert pt["detail"]["config"]["protocol"] == "rpc-kv"
            assert pt["classes"]["probe"]["connections"] == 2
    assert sorted(summ["p99_us_at_70_by_seed"]) == ["asyncio", "best2_ws", "vanilla"]
    assert all(len(v) == 2 for v in summ["p99_us_at_70_by_seed"].values())
    assert summ["verdict"]["best_policy"] == "best2_ws"
    out = capsys.readouterr().out
    assert "via " + store["backend"] in out and "Goals" in out and "over 2 seed(s)" in out


def test_quick_scale_keeps_given_options() -> None:
    from skqueue.bench.mixgraph import _apply_scale

    p = argparse.ArgumentParser()
    add_mixgraph_arguments(p)
    quick = p.parse_args(["--quick", "--keys", "100000", "--duration", "4"])
    _apply_scale(quick)
    assert (quick.keys, quick.duration, quick.warmup, quick.seeds) == (100_000, 4.0, 0.5, 1)
    full = p.parse_args([])
    _apply_scale(full)
    assert (full.keys, full.duration, full.seeds, full.fractions) == (
        100_000, 4.0, 5, [0.1, 0.3, 0.5, 0.7, 0.9, 1.1])


def test_sim_rocksdb_workload_parameters() -> None:
    from skqueue.load.dist import KVServiceModel
    from skqueue.sim.workload import make_workload, rocksdb_spec

    default = make_workload("rocksdb")
    assert default.mean_ns(1) == make_workload(rocksdb_spec(KVServiceModel())).mean_ns(1)
    cheap = make_workload("rocksdb:get=1,put=1,byte=0,seek=1,item=0.01,cap=10000,keys=1000")
    assert 0 < cheap.mean_ns(1) < default.mean_ns(1)
    assert cheap._mix is not None and cheap._mix.keyspace == 1000
    uncapped = make_workload("rocksdb:cap=0")
    assert uncapped._mix is not None and uncapped._mix.scan_cap is None
    with pytest.raises(ValueError, match="unknown parameter 'speed'"):
        make_workload("rocksdb:speed=3")
    with pytest.raises(ValueError, match="NAME=VALUE"):
        make_workload("rocksdb:get")


def test_validate_kv_picks_the_runs_points() -> None:
    from skqueue.sim.validate_kv import _server_cores, _server_cpus, bench_points

    def pol(label: str) -> dict[str, object]:
        return {"label": label, "points": [
            {"phase": ph, "target_qps": q} for ph, q in
            (("ramp", 500.0), ("load", 100.0), ("load", 500.0), ("load", 700.0), ("seed", 700.0))
        ]}

    data = {"summary": {"loads_qps": [100.0, 500.0, 700.0], "reference_saturation_qps": 1000.0},
            "policies": [pol("vanilla"), pol("best2_ws"), pol("rand")]}
    got = [(p, pt["phase"], pt["target_qps"]) for p, pt in
           bench_points(data, ["vanilla", "best2_ws"], None)]
    assert got == [("vanilla", "load", 500.0), ("vanilla", "load", 700.0),
                   ("best2_ws", "load", 500.0), ("best2_ws", "load", 700.0)]
    assert len(bench_points(data, ["rand"], [100.0])) == 1
    assert _server_cores("split: server on CPUs [0, 1, 2], load generator on CPUs [3]") == 3
    assert _server_cores("none (kernel placement)") >= 1
    assert _server_cpus("split: server on CPUs [0], load generator on CPUs [1]") == (0,)
    assert _server_cpus("none (kernel placement)") is None


def test_validate_kv_refuses_a_run_of_the_other_interpreter_kind(tmp_path: Path) -> None:
    """A run's prediction models its interpreter (GIL or not), and the in-process
    measurements use this one: they must be the same kind."""
    from skqueue.bench.report import gil_enabled
    from skqueue.sim import validate_kv

    run = tmp_path / "run.json"
    run.write_text(json.dumps({"experiment": "mixgraph", "machine": {"gil": not gil_enabled()}}))
    p = argparse.ArgumentParser()
    validate_kv.add_arguments(p)
    with pytest.raises(SystemExit, match="run validate-kv with the interpreter the run used"):
        validate_kv.main(p.parse_args(["--bench", str(run)]))


@pytest.mark.parametrize("spec", ["cap=0,keys=1000", "cap=0,keys=5000", "cap=10000,keys=20000"])
def test_sim_seek_reads_no_further_than_the_last_key(spec: str) -> None:
    """A SEEK is priced by what the store reads: never past the key space's last key, so
    uncapped lengths (up to 2^31) cost at most the whole key space.  The mean the simulator
    derives its load from agrees with the draws."""
    from skqueue.sim.workload import make_workload

    # only SEEKs cost anything: one µs per item read, so a draw in µs = the items read
    wl = make_workload(f"rocksdb:get=0,put=0,byte=0,seek=0,item=1,{spec}")
    assert wl._mix is not None
    keys = wl._mix.keyspace
    rng = random.Random(5)
    draws = [wl.draw_ns(c, rng) for _ in range(2_000) for c in range(100)]
    seeks = [d for d in draws if d > 0]
    assert len(seeks) > 4_000
    assert max(seeks) <= (keys - 1) * 1000
    mean = sum(draws) / len(draws)
    assert wl.mean_ns(100) == pytest.approx(mean, rel=0.06)
