"""skqueue.load: open-loop load generation, distributions and latency histograms.

* :mod:`skqueue.load.dist` -- inter-arrival and service-time distributions, the RocksDB
  mixgraph workload;
* :mod:`skqueue.load.hist` -- :class:`LatencyHistogram` (HdrHistogram when installed);
* :mod:`skqueue.load.config` -- :class:`LoadConfig` and the results of a run;
* :mod:`skqueue.load.generator` -- :func:`run_load`, the multi-process open-loop generator;
* :mod:`skqueue.load.worker` -- one worker's epoll loop and its connections' schedules;
* :mod:`skqueue.load.memcache_client` -- the memcached text protocol's client side;
* :mod:`skqueue.load.cli` -- the ``skq load`` sub-command.
"""

from __future__ import annotations

from skqueue.load.config import LoadConfig, LoadResult
from skqueue.load.dist import (
    EchoMix,
    MixGraph,
    parse_interarrival,
    parse_service,
)
from skqueue.load.generator import run_load
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
