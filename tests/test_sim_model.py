"""Tests for the simulator model (skqueue.sim): determinism, queueing theory, policies."""

from __future__ import annotations

import json
import math

import pytest

from skqueue.sim import SimConfig, SimResult, low_latency_throughput, simulate, sweep
from skqueue.sim.cli import run_cli
from skqueue.sim.model import Server
from skqueue.sim.workload import make_workload

# ------------------------------------------------------------------ helpers


def erlang_c(c: int, a: float) -> float:
    """Probability of waiting in M/M/c with offered load ``a = lambda/mu`` erlangs."""
    head = sum(a**k / math.factorial(k) for k in range(c))
    tail = a**c / math.factorial(c) * c / (c - a)
    return tail / (head + tail)


def mmc_wait_us(c: int, rho: float, mean_service_us: float) -> float:
    """Mean waiting time in queue (µs) of M/M/c at utilisation ``rho``."""
    mu = 1.0 / mean_service_us
    return erlang_c(c, rho * c) / (c * mu * (1.0 - rho))


def queueing_cfg(policy: str, c: int, rho: float, seed: int, requests: int) -> SimConfig:
    """An ideal machine: no overheads, Poisson arrivals (many depth-1 connections),
    exponential service with mean 10 µs, one event per kevent() call."""
    return SimConfig(policy=policy, cores=c, threads=c, smt=1, workload="exp", load=rho,
                     requests=requests, connections=5000, seed=seed, maxevents=1,
                     interarrival="exponential").zero_costs()


def small(policy: str, **kw: object) -> SimConfig:
    base: dict[str, object] = dict(policy=policy, load=0.7, requests=20_000, seed=3)
    base.update(kw)
    return SimConfig(**base)  # type: ignore[arg-type]


# ------------------------------------------------------------------ determinism


@pytest.mark.parametrize("policy", ["best2_ws", "cpu2_ws", "q0_ws", "vanilla", "legacy"])
def test_same_seed_same_result_bit_for_bit(policy: str) -> None:
    a = simulate(small(policy, requests=8000))
    b = simulate(small(policy, requests=8000))
    assert a == b  # every field but wall time, including per-kevq counters
    da, db = a.to_dict(), b.to_dict()
    da.pop("wall_s")
    db.pop("wall_s")
    assert json.dumps(da, sort_keys=True) == json.dumps(db, sort_keys=True)
    c = simulate(small(policy, requests=8000, seed=4))
    assert c != a


def test_latency_list_is_identical_across_runs() -> None:
    cfg = small("best2_ws", requests=5000)
    s1, s2 = Server(cfg), Server(cfg)
    s1.run()
    s2.run()
    assert s1.latencies == s2.latencies
    assert s1.eng.now == s2.eng.now and s1.eng.events_run == s2.eng.events_run


# ------------------------------------------------------------------ queueing theory


def test_mm1_mean_wait_matches_theory() -> None:
    # Four independent seeded runs; per-run spread of the mean wait is ~1 % (measured over
    # 8 seeds), so the 2 % bound on the average is about 4 standard errors.
    rho = 0.3
    theory = mmc_wait_us(1, rho, 10.0)  # 4.29 µs
    rs = sweep([queueing_cfg("shared", 1, rho, seed, 180_000) for seed in (1, 2, 3, 4)],
               processes=2)
    sim = sum(r.mean_wait for r in rs) / len(rs)
    assert abs(sim - theory) / theory < 0.02, (sim, theory)
    # the mean service time is the workload's, so the sojourn is right too
    assert abs(sum(r.mean for r in rs) / len(rs) - (theory + 10.0)) / (theory + 10.0) < 0.01
    assert all(r.kevqs[0]["total_events"] == r.kevqs[0]["total_syscall"] for r in rs)


def test_mmc_mean_wait_matches_theory() -> None:
    # Per-run spread ~1.3 % at this size (measured over 8 seeds): the bound is ~3 s.e.
    c, rho = 2, 0.5
    theory = mmc_wait_us(c, rho, 10.0)  # 3.33 µs
    rs = sweep([queueing_cfg("shared", c, rho, seed, 200_000) for seed in (1, 2, 3, 4)],
               processes=2)
    sim = sum(r.mean_wait for r in rs) / len(rs)
    assert abs(sim - theory) / theory < 0.02, (sim, theory)
    assert all(abs(r.throughput - r.offered) / r.offered < 0.02 for r in rs)


def test_partitioned_vs_shared_gap() -> None:
    """Partitioned queues are c separate M/M/1 queues; one shared queue is M/M/c.
    At rho = 0.7 on 4 servers the mean wait differs by more than 6x."""
    c, rho = 4, 0.7
    part = simulate(queueing_cfg("vanilla", c, rho, 5, 120_000))
    shared = simulate(queueing_cfg("shared", c, rho, 5, 120_000))
    mm1 = mmc_wait_us(1, rho, 10.0)  # 23.3 µs
    mmc = mmc_wait_us(c, rho, 10.0)  # 3.6 µs
    assert abs(part.mean_wait - mm1) / mm1 < 0.10, (part.mean_wait, mm1)
    assert abs(shared.mean_wait - mmc) / mmc < 0.10, (shared.mean_wait, mmc)
    assert part.mean_wait > 5 * shared.mean_wait
    assert part.p99 > 2 * shared.p99


# ------------------------------------------------------------------ SKQ policies


def test_echo_mix_12_threads_stealing_and_best2_beat_vanilla() -> None:
    res = {p: simulate(small(p, requests=30_000, load=0.7))
           for p in ("vanilla", "best2_ws", "ws")}
    v = res["vanilla"].p99
    assert res["best2_ws"].p99 * 5 < v, {k: r.p99 for k, r in res.items()}
    assert res["ws"].p99 * 5 < v, {k: r.p99 for k, r in res.items()}
    # the load really was offered and served
    for r in res.values():
        assert abs(r.offered - 0.7 * r.capacity) < 1e-6 * r.capacity
    assert abs(res["best2_ws"].throughput - res["best2_ws"].offered) < 0.05 * res[
        "best2_ws"].offered


def test_stealing_counters() -> None:
    ws = simulate(small("ws", requests=10_000))
    rand = simulate(small("rand", requests=10_000))
    assert sum(q["total_worksteal"] for q in ws.kevqs) > 0
    assert all(q["total_worksteal_scan"] >= q["total_worksteal"] for q in ws.kevqs)
    assert sum(q["total_worksteal"] for q in rand.kevqs) == 0


def test_random_policy_counts_every_choice_as_fallback() -> None:
    r = simulate(small("rand", requests=5000))
    assert len(r.kevqs) == 12
    assert all(q["total_fallbacks"] == q["total_sched"] for q in r.kevqs)
    b = simulate(small("best2", requests=5000))
    assert sum(q["total_fallbacks"] for q in b.kevqs) == 0
    assert sum(q["total_sched"] for q in b.kevqs) > 5000


def test_cpu_affinity_keeps_connections_on_their_leaf() -> None:
    cpu = simulate(small("cpu0", requests=10_000, load=0.5))
    rand = simulate(small("rand", requests=10_000, load=0.5))
    miss_cpu = sum(q["total_cache_misses"] for q in cpu.kevqs)
    miss_rand = sum(q["total_cache_misses"] for q in rand.kevqs)
    # CPU affinity with one thread per core never moves a connection; random almost always
    assert miss_cpu == 0
    assert miss_rand > 5000


def test_queue_affinity_counts_no_mismatch_with_fixed_rss() -> None:
    r = simulate(small("queue0", requests=5000))
    assert sum(q["total_mismatches"] for q in r.kevqs) == 0
    assert sum(q["total_fallbacks"] for q in r.kevqs) == 0


def test_tfreq_caps_batches() -> None:
    free = simulate(small("cpu0", requests=10_000, load=0.9))
    capped = simulate(small("cpu0", requests=10_000, load=0.9, tfreq=50_000))
    ev_free = sum(q["total_events"] for q in free.kevqs) / sum(
        q["total_syscall"] for q in free.kevqs)
    ev_capped = sum(q["total_events"] for q in capped.kevqs) / sum(
        q["total_syscall"] for q in capped.kevqs)
    assert ev_capped < ev_free
    assert ev_capped <= 2.0  # 1e9 / (avg_lat ~ 14 µs * 50k) = 1 event per call


def test_realtime_connections_are_served_first() -> None:
    r = simulate(small("cpu0_ws", requests=20_000, load=0.9, realtime_conns=144))
    assert r.rt_measured > 1000
    assert r.rt_p99 < r.p99
    assert sum(q["total_realtime"] for q in r.kevqs) >= r.rt_measured


def test_legacy_shared_kqueue_pays_for_its_lock_and_herd() -> None:
    legacy = simulate(small("legacy", requests=10_000))
    shared = simulate(small("shared", requests=10_000))
    assert legacy.p50 > shared.p50
    # thundering herd: at low load an activation wakes every sleeping thread
    legacy = simulate(small("legacy", requests=5000, load=0.1))
    shared = simulate(small("shared", requests=5000, load=0.1))
    assert legacy.kevqs[0]["total_wakeups"] > 3 * legacy.measured
    assert shared.kevqs[0]["total_wakeups"] < 1.2 * shared.measured


def test_more_threads_than_cores_share_cores() -> None:
    r = simulate(small("best2_ws", cores=4, threads=8, requests=40_000, load=0.5))
    assert len(r.kevqs) == 8
    assert all(q["total_events"] > 0 for q in r.kevqs)
    assert abs(r.throughput - r.offered) < 0.03 * r.offered


def test_overload_shows_up_as_growing_latency() -> None:
    r = simulate(small("shared", requests=20_000, load=1.3))
    assert r.throughput < 1.05 * r.capacity
    assert r.p50 > 1000  # intended-time latency grows without bound past saturation


def test_rocksdb_workload_runs() -> None:
    r = simulate(small("best2_ws", workload="rocksdb", requests=10_000, load=0.5))
    assert r.p50 > 0 and r.throughput > 0
    assert 5.0 < r.mean_service_us < 100.0


def _harvest_server(n_threads: int = 2) -> Server:
    srv = Server(SimConfig(policy="best2", cores=n_threads, threads=n_threads, smt=1,
                           connections=4, harvest=True, requests=100))
    for w in srv.workers:
        srv._activate_kevq(w)
    return srv


def test_harvest_defers_activation_while_no_thread_sleeps() -> None:
    srv = _harvest_server()
    conn = srv.conns[0]
    srv._arrive_skq(conn)  # both threads busy (none sleeps): it waits in epoll
    assert srv.epoll == [conn] and conn.queued_on is None
    assert srv.summary()["deferred_activations"] == 1
    srv._harvest()  # a thread came back to kevent(): the policy places it now
    assert srv.epoll == [] and conn.queued_on in srv.kevqs
    srv.n_sleeping = 1  # a sleeping thread is the leader in epoll: placed at arrival
    srv._arrive_skq(srv.conns[1])
    assert srv.conns[1].queued_on in srv.kevqs and srv.epoll == []


def test_harvest_is_the_runtime_activation_of_skq_policies_only() -> None:
    base = dict(load=0.9, requests=20_000, cores=2, threads=2, smt=1, connections=40,
                workload="rocksdb")
    on = simulate(small("best2_ws", harvest=True, **base))
    off = simulate(small("best2_ws", **base))
    assert on.deferred_activations > 0 and off.deferred_activations == 0
    assert on.measured >= 20_000 and off.measured >= 20_000  # the run still completes
    assert on != off
    # the baselines have no harvesting thread: the flag changes nothing for them
    for policy in ("vanilla", "shared", "legacy"):
        assert simulate(small(policy, harvest=True, **base)).p99 == simulate(
            small(policy, **base)).p99


def test_probe_connections_send_gets_and_are_reported_apart() -> None:
    kw = dict(cores=2, threads=2, smt=1, connections=40, requests=20_000, load=0.3,
              workload="rocksdb:get=100,put=110,seek=100,item=0.3,cap=0,keys=100000")
    plain = simulate(small("best2_ws", **kw))
    probed = simulate(small("best2_ws", probe_conns=4, **kw))
    assert plain.probe_measured == 0 and plain.probe_p99 == 0.0
    # 4 of 40 connections at the same rate: about a tenth of the measured requests
    assert 0.07 < probed.probe_measured / probed.measured < 0.13
    # a probe is one 100 us GET plus its wait: never less than the GET, far below a scan
    assert 100 <= probed.probe_p50 <= probed.probe_p99
    assert probed.probe_p50 < probed.p99
    # their GETs lower the mean service, so the same load fraction offers more requests
    assert probed.offered > plain.offered


def test_idle_first_keeps_best2_from_feeding_a_busy_thread() -> None:
    # Uncapped scans on 2 cores: best-of-2 alone keeps queueing behind a thread in a long
    # scan while the other idles (its estimate is never re-sampled without work); with
    # idle_first an idle thread always takes the event (docs/simulator.md section 5f).
    kw = dict(cores=2, threads=2, smt=1, connections=60, probe_conns=6, requests=20_000,
              load=0.7, interarrival="fb_ia",
              workload="rocksdb:get=107.9,put=110,seek=107.9,item=0.3158,cap=0,keys=100000")
    plain = simulate(small("best2", **kw).zero_costs())
    idle = simulate(small("best2", idle_first=True, **kw).zero_costs())
    vanilla = simulate(small("vanilla", **kw).zero_costs())
    assert idle.probe_p99 * 3 < plain.probe_p99, (idle.probe_p99, plain.probe_p99)
    assert idle.probe_p99 < 2 * vanilla.probe_p99, (idle.probe_p99, vanilla.probe_p99)
    # the baselines have no policy to put first: the flag changes nothing for them
    assert simulate(small("vanilla", idle_first=True, **kw).zero_costs()).p99 == vanilla.p99


def test_probe_connections_need_the_rocksdb_workload() -> None:
    with pytest.raises(ValueError, match="rocksdb"):
        simulate(small("vanilla", probe_conns=2, requests=100))
    with pytest.raises(ValueError, match="probe_conns"):
        SimConfig(connections=4, realtime_conns=3, probe_conns=2)


# ------------------------------------------------------------------ workloads and results


def test_workload_means() -> None:
    # 1440 ids: 15 long (200), 60 medium (50), 1365 short (10)
    assert make_workload("echo-mix").mean_ns(1440) == pytest.approx(
        (15 * 200 + 60 * 50 + 1365 * 10) / 1440 * 1000)
    assert make_workload("echo-mix").fixed_ns(100) == 200_000
    assert make_workload("echo-mix").fixed_ns(3) == 50_000
    assert make_workload("uniform10").fixed_ns(7) == 10_000
    assert make_workload("exp").mean_ns(10) == 10_000
    assert make_workload("exp").fixed_ns(0) == -1
    assert make_workload("bimodal").mean_ns(10) == pytest.approx(10_000)
    with pytest.raises(ValueError):
        make_workload("no-such-workload")


def test_low_latency_throughput() -> None:
    base = simulate(small("shared", requests=2000))

    def fake(p99: float, thr: float) -> SimResult:
        d = base.to_dict()
        d.update(p99=p99, throughput=thr)
        return SimResult(**d)

    rs = [fake(50.0, 100.0), fake(90.0, 200.0), fake(400.0, 300.0)]
    assert low_latency_throughput(rs, slo_us=100.0) == 200.0
    assert low_latency_throughput(rs, slo_us=1000.0) == 300.0
    assert low_latency_throughput(rs, slo_us=10.0) == 0.0
    with pytest.raises(ValueError):
        low_latency_throughput(rs, 100.0, pct=42)


def test_sweep_in_processes_equals_inline() -> None:
    cfgs = [small(p, requests=3000) for p in ("best2_ws", "vanilla")]
    assert sweep(cfgs, processes=2) == sweep(cfgs, processes=1)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SimConfig(threads=0)
    with pytest.raises(ValueError):
        SimConfig(rtshare=101)
    with pytest.raises(ValueError):
        SimConfig(load=0.0)
    with pytest.raises(ValueError):
        simulate(SimConfig(policy="cpu3x", requests=10))
    cfg = SimConfig(policy="best2_ws")
    assert SimConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.zero_costs().wakeup_ns == 0


# ------------------------------------------------------------------ CLI


def test_cli_single_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = run_cli(["--policy", "best2_ws", "--cores", "4", "--threads", "4", "--workload",
                  "echo-mix", "--load", "0.6", "--requests", "3000", "--seed", "2", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("p50", "p99", "p999", "throughput"):
        assert out[key] > 0
    assert out["config"]["threads"] == 4


def test_cli_sweep_table(capsys: pytest.CaptureFixture[str]) -> None:
    rc = run_cli(["sweep", "--policies", "vanilla,best2_ws", "--loads", "0.5,0.8",
                  "--requests", "2000", "--cores", "4", "--threads", "4",
                  "--set", "wakeup_ns=2000"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "vanilla" in out and "best2_ws" in out and "low-latency throughput" in out
    rc = run_cli(["sweep", "--policies", "ws", "--loads", "0.5", "--requests", "1000",
                  "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["results"]) == 1 and "ws" in data["low_latency_throughput"]
    rc = run_cli(["sweep", "--policies", "best2", "--loads", "0.5", "--requests", "2000",
                  "--cores", "2", "--threads", "2", "--workload", "rocksdb", "--probe-conns",
                  "5", "--set", "harvest=true"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "probe p99 latency (us), the 5 GET-only connections" in out


def test_cli_rejects_bad_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--policy", "bogus", "--requests", "10"]) == 2
    assert "bogus" in capsys.readouterr().err
