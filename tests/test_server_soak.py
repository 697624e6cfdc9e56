"""A few seconds of ``skq bench soak``: the memcached server under load with abuse mixed in.

The recorded run is ten minutes on a quiet machine (``skq bench soak``, docs/benchmarks.md);
this short one checks, on every CI run, that well-behaved clients see no error while
connections are reset, garbage and the binary magic arrive, values are left half-sent and
slow readers stall, and that the server survives it all.
"""

from __future__ import annotations

import shutil

import pytest

from skqueue.bench.soak import Abuser, SoakConfig, run_soak

pytestmark = pytest.mark.timeout(180)


def test_short_soak_well_behaved_clients_see_no_errors() -> None:
    cfg = SoakConfig(policy="best2_ws", threads=2, duration_s=3.0, window_s=1.0, saturation_s=1.0,
                     connections=4, abuse_rate=30.0, big_keys=6, mc_keys=1000)
    res = run_soak(cfg)
    assert res.server_alive
    assert res.errors == 0, res.to_dict()
    assert len(res.windows) == 3 and all(w.achieved_qps > 0 for w in res.windows)
    assert set(res.abuse) == set(Abuser.ACTS) and all(n > 0 for n in res.abuse.values())


def test_short_soak_against_real_memcached() -> None:
    # The same harness drives the real memcached (the baseline of the recorded run).
    if shutil.which("memcached") is None:
        pytest.skip("memcached is not installed (make deps installs it)")
    cfg = SoakConfig(policy="memcached", threads=2, duration_s=2.0, window_s=1.0,
                     saturation_s=1.0, connections=4, abuse_rate=30.0, big_keys=2,
                     mc_keys=1000)
    res = run_soak(cfg)
    assert res.server_alive and res.errors == 0, res.to_dict()
