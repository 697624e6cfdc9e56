"""skqueue.load: open-loop load generation, distributions and latency histograms.

* :mod:`skqueue.load.dist` -- inter-arrival and service-time distributions, the RocksDB
  mixgraph workload;
* :mod:`skqueue.load.hist` -- :class:`LatencyHistogram` (HdrHistogram when installed);
* :mod:`skqueue.load.generator` -- :func:`run_load`, the multi-process open-loop generator;
* :mod:`skqueue.load.cli` -- the ``skq load`` sub-command.
"""

from __future__ import annotations

from skqueue.load.dist import (
    EchoMix,
    MixGraph,
    parse_interarrival,
    parse_service,
)
from skqueue.load.generator import LoadConfig, LoadResult, run_load
from skqueue.load.hist import LatencyHistogram

__all__ = [
    "EchoMix",
    "LatencyHistogram",
    "LoadConfig",
    "LoadResult",
    "MixGraph",
    "parse_interarrival",
    "parse_service",
    "run_load",
]
