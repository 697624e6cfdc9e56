"""SKQ scheduling policy: pure decisions shared by the runtime and the simulator.

Nothing here owns threads, descriptors or a clock: the caller passes the time, the
current CPU, a seeded :class:`Rng` and its own kevq/knote objects (see
:class:`KevqView`, :class:`KnoteView`).  Modules:

* :mod:`.word` -- the scheduler word and policy labels (docs/semantics.md §3.2, D4);
* :mod:`.tunables` -- sysctl-like tunables and the ``FKQTUNE`` word (§3.3, §3.18);
* :mod:`.rng` -- the injectable random source (D6);
* :mod:`.estimator` -- the per-kevq latency estimator (§3.11, D5);
* :mod:`.topology` -- the kqdom CPU topology tree (§3.15, D12);
* :mod:`.policy` -- placement, batch limits/order, work stealing (§3.12-§3.14; D2, D3,
  D6, D7, D15).
"""

from __future__ import annotations

from .counters import KevqCounters
from .estimator import Estimator, ewma
from .policy import (
    ONE_SECOND_NS,
    KevqView,
    KnoteView,
    Placement,
    ScanOrder,
    batch_limits,
    choose,
    exp_lat,
    insert_head,
    pick_victim,
    steal_slice,
    take_batch,
)
from .rng import Rng
from .topology import LEVELS, Domain, Topology, cpu_source, parse_cpu_list
from .tunables import (
    DEFAULT_RTSHARE,
    DEFAULT_TFREQ,
    RTSHARE_MAX,
    TFREQ_MAX,
    Tunables,
    validate_tune,
)
from .word import SCHED_NAMES, SCHED_RANDOM, SchedWord, parse_sched, sched_label

__all__ = [
    "DEFAULT_RTSHARE",
    "DEFAULT_TFREQ",
    "Domain",
    "Estimator",
    "KevqCounters",
    "KevqView",
    "KnoteView",
    "LEVELS",
    "ONE_SECOND_NS",
    "Placement",
    "RTSHARE_MAX",
    "Rng",
    "SCHED_NAMES",
    "SCHED_RANDOM",
    "ScanOrder",
    "SchedWord",
    "TFREQ_MAX",
    "Topology",
    "Tunables",
    "batch_limits",
    "choose",
    "cpu_source",
    "ewma",
    "exp_lat",
    "insert_head",
    "parse_cpu_list",
    "parse_sched",
    "pick_victim",
    "sched_label",
    "steal_slice",
    "take_batch",
    "validate_tune",
]
