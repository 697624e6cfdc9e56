"""skqueue.sim: a deterministic discrete-event simulator of many-core SKQ servers.

It imports the real scheduling code (:mod:`skqueue.sched`) and the real workload
distributions (:mod:`skqueue.load.dist`), never copies of them, so what it predicts is
what the library's policies do on a machine larger than the one in hand.

* :mod:`.engine` -- the event engine (integer-ns virtual clock, heap of callbacks);
* :mod:`.config` -- :class:`SimConfig`, every parameter with its provenance;
* :mod:`.workload` -- service-time models in ns;
* :mod:`.model` -- cores, worker threads, kevqs, connections, the load generator;
* :mod:`.run` -- :func:`simulate`, :func:`sweep`, :func:`low_latency_throughput`;
* :mod:`.cli` -- ``skq sim`` (``sweep``, ``validate``);
* :mod:`.validate` -- calibration and validation against the real runtime (loopback).

A run is a pure function of its config (seed included).
"""

from __future__ import annotations

from .config import BASELINES, ZERO_COSTS, SimConfig
from .engine import Engine, Timer
from .run import SimResult, low_latency_throughput, percentile, simulate, sweep

__all__ = [
    "BASELINES",
    "Engine",
    "SimConfig",
    "SimResult",
    "Timer",
    "ZERO_COSTS",
    "low_latency_throughput",
    "percentile",
    "simulate",
    "sweep",
]
