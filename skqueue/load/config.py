"""The plain data of a load run: what to do (:class:`LoadConfig`) and what came out
(:class:`ClassResult` per connection class, :class:`LoadResult`).

Everything here is picklable and JSON-able: a configuration travels to the worker processes,
per-class results travel back.  How a run uses these fields: :mod:`skqueue.load.generator`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

from skqueue.load.dist import parse_interarrival, parse_service
from skqueue.load.hist import LatencyHistogram

__all__ = [
    "NORMAL",
    "PROTOCOLS",
    "RT",
    "ClassResult",
    "LoadConfig",
    "LoadResult",
    "config_from_dict",
    "connection_class",
]

PROTOCOLS = ("rpc-echo", "rpc-kv", "memcached")
RT = "rt"
NORMAL = "normal"


@dataclass
class LoadConfig:
    """Everything a load run needs; all fields are plain data (picklable, JSON-able)."""

    host: str = "127.0.0.1"
    port: int = 0
    protocol: str = "rpc-echo"
    qps: float = 1000.0
    connections: int = 8
    processes: int = 1
    duration_s: float = 2.0
    warmup_s: float = 0.5
    interarrival: str = "fb_ia"
    service: str = "echo-mix"
    seed: int = 1
    rt_connections: int = 0
    rt_bind: str | None = "127.0.0.2"
    rt_qps: float | None = None
    rt_service: str | None = None
    bind: str | None = None
    timeout_s: float = 5.0
    conn_id_base: int = 0
    payload_size: int = 16
    kv_keyspace: int = 50_000_000
    kv_authors_quirk: bool = False
    kv_scan_cap: int | None = 10_000
    kv_seed: int | None = None
    kv_rt_get_only: bool = False
    mc_keys: int = 10_000
    mc_key_size: int = 30
    mc_value_size: int = 200
    mc_set_ratio: float = 0.03
    mc_preload: bool = False
    busy_poll: bool = False
    start_method: str = "spawn"
    histogram_backend: str = "auto"

    def validate(self) -> None:
        """Raise ``ValueError`` on an inconsistent configuration."""
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {self.protocol!r}")
        if not 0 < self.port < 65536:
            raise ValueError("port must be in 1..65535")
        if self.connections < 1:
            raise ValueError("connections must be >= 1")
        if not 0 <= self.rt_connections <= self.connections:
            raise ValueError("rt_connections must be in 0..connections")
        if self.processes < 0:
            raise ValueError("processes must be >= 0 (0 = inline)")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.timeout_s <= 0:
            raise ValueError("duration_s and timeout_s must be > 0, warmup_s >= 0")
        for addr in (self.bind, self.rt_bind if self.rt_connections else None):
            if addr is not None and not ipaddress.ip_address(addr).is_loopback:
                raise ValueError(f"local bind address {addr} is not a loopback address")
        if self.rt_qps is not None and self.qps > 0:
            if self.rt_connections == 0:
                raise ValueError("rt_qps needs rt_connections > 0")
            if self.rt_connections < self.connections and self.qps - self.rt_qps <= 0:
                raise ValueError("qps must exceed rt_qps (qps is the total)")
        if self.payload_size < 0 or self.mc_value_size < 0:
            raise ValueError("sizes must be >= 0")
        if not 1 <= self.mc_key_size <= 250:
            raise ValueError("memcached keys are 1..250 characters")
        if not 0.0 <= self.mc_set_ratio <= 1.0:
            raise ValueError("mc_set_ratio must be in [0, 1]")
        if self.mc_keys < 1:
            raise ValueError("mc_keys must be >= 1")
        parse_interarrival(self.interarrival, 1.0)
        parse_service(self.service)
        if self.rt_service is not None:
            parse_service(self.rt_service)

    @property
    def normal_connections(self) -> int:
        """Connections of class ``"normal"``."""
        return self.connections - self.rt_connections

    def class_rate(self, klass: str) -> float:
        """Per-connection target rate (requests/s) of a class; <= 0 means unpaced."""
        if self.qps <= 0:
            if klass == RT and self.rt_qps is not None and self.rt_qps > 0:
                return self.rt_qps / self.rt_connections
            return 0.0
        if self.rt_qps is None:
            return self.qps / self.connections
        if klass == RT:
            return self.rt_qps / self.rt_connections if self.rt_qps > 0 else 0.0
        return (self.qps - self.rt_qps) / max(self.normal_connections, 1)


def connection_class(cfg: LoadConfig, conn_id: int) -> str:
    """``"rt"`` for the last ``rt_connections`` ids, ``"normal"`` otherwise."""
    local = conn_id - cfg.conn_id_base
    return RT if local >= cfg.normal_connections else NORMAL


def config_from_dict(d: dict[str, Any]) -> LoadConfig:
    """A :class:`LoadConfig` from a dict (e.g. ``LoadResult.to_dict()["config"]``)."""
    return LoadConfig(**d)


# ----------------------------------------------------------------------------- results


@dataclass
class ClassResult:
    """Counts and histograms of one connection class over the measurement window."""

    klass: str
    connections: int = 0
    target_qps: float = 0.0
    intended: int = 0
    sent: int = 0
    unsent: int = 0
    completed: int = 0
    recorded: int = 0
    latency_intended: LatencyHistogram = field(default_factory=LatencyHistogram)
    latency_actual: LatencyHistogram = field(default_factory=LatencyHistogram)

    @classmethod
    def empty(cls, klass: str, backend: str) -> ClassResult:
        """A result with nothing counted yet, its histograms of ``backend``."""
        return cls(
            klass,
            latency_intended=LatencyHistogram(backend),
            latency_actual=LatencyHistogram(backend),
        )

    def merge(self, other: ClassResult) -> None:
        """Add ``other`` (same class, another worker) into this one."""
        self.connections += other.connections
        self.target_qps += other.target_qps
        self.intended += other.intended
        self.sent += other.sent
        self.unsent += other.unsent
        self.completed += other.completed
        self.recorded += other.recorded
        self.latency_intended.merge(other.latency_intended)
        self.latency_actual.merge(other.latency_actual)

    def to_dict(self, duration_s: float) -> dict[str, Any]:
        """JSON-safe summary; latencies in µs."""
        return {
            "class": self.klass,
            "connections": self.connections,
            "target_qps": self.target_qps,
            "offered_qps": self.intended / duration_s,
            "achieved_qps": self.completed / duration_s,
            "intended": self.intended,
            "sent": self.sent,
            "unsent": self.unsent,
            "completed": self.completed,
            "latency_intended_us": self.latency_intended.to_dict(),
            "latency_actual_us": self.latency_actual.to_dict(),
        }


@dataclass
class LoadResult:
    """Outcome of :func:`run_load`.  Latency histograms are in ns; ``to_dict`` reports µs."""

    config: LoadConfig
    duration_s: float
    target_qps: float
    offered_qps: float
    achieved_qps: float
    intended: int
    sent: int
    unsent: int
    completed: int
    replies: int
    not_found: int
    in_flight_at_end: int
    errors: int
    error_kinds: dict[str, int]
    connections_ok: int
    processes: int
    wall_s: float
    latency_intended: LatencyHistogram
    latency_actual: LatencyHistogram
    send_lag: LatencyHistogram
    classes: dict[str, ClassResult]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (latencies in µs, key ``latency_unit``)."""
        return {
            "config": asdict(self.config),
            "latency_unit": "us",
            "duration_s": self.duration_s,
            "target_qps": self.target_qps,
            "offered_qps": self.offered_qps,
            "achieved_qps": self.achieved_qps,
            "intended": self.intended,
            "sent": self.sent,
            "unsent": self.unsent,
            "completed": self.completed,
            "replies": self.replies,
            "not_found": self.not_found,
            "in_flight_at_end": self.in_flight_at_end,
            "errors": self.errors,
            "error_kinds": dict(self.error_kinds),
            "connections_ok": self.connections_ok,
            "processes": self.processes,
            "wall_s": self.wall_s,
            "latency_intended_us": self.latency_intended.to_dict(),
            "latency_actual_us": self.latency_actual.to_dict(),
            "send_lag_us": self.send_lag.to_dict(),
            "classes": {k: c.to_dict(self.duration_s) for k, c in self.classes.items()},
        }
