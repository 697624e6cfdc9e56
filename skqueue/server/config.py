"""``ServerConfig``: every setting of a ``skqueue.server.runtime.Server``.

``Server(config, session_factory)``; ``ServerConfig(...)`` checks the values at once
(``ValueError``), ``config.replace(...)`` makes a changed copy.  ``legacy_config`` turns the
old ``Server(host, port, session_factory, **settings)`` call into a config.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from skqueue import parse_sched
from skqueue.sched import Tunables

__all__ = ["ServerConfig", "legacy_config", "mode_of"]

_RTSHARE_RANGE = range(1, 101)
_TFREQ_RANGE = range(0, 0x10000)


def mode_of(policy: str) -> tuple[str, int | None]:
    """``(mode, word)`` for a policy: ``("vanilla", None)``, ``("legacy", None)`` or
    ``("skq", scheduler word)``.  Raises ``ValueError`` for an unknown label."""
    p = policy.strip().lower()
    if p in ("vanilla", "legacy"):
        return p, None
    return "skq", parse_sched(p)


@dataclass(frozen=True)
class ServerConfig:
    """Every setting of a ``Server``.  Invalid values raise ``ValueError`` at construction.

    Listening: ``host``, ``port`` (0 picks a free one), ``backlog``, ``max_conns`` (beyond it a
    new connection is accepted and closed at once, counted as ``refused``).

    Scheduling: ``threads`` workers; ``policy``: an SKQ label (``rand``, ``best2_ws``,
    ``cpu0``...: one kqueue in multi mode), ``legacy`` (one shared kqueue, stock semantics)
    or ``vanilla`` (one kqueue per worker); ``batch`` events per ``control()``; ``pin`` worker
    *i* to CPU ``i % ncpu``; ``tunables`` for the kqueue(s).  Realtime clients: peer IP in
    ``rt_hosts`` or ``rt_predicate((ip, port))`` true; ``rtshare`` (1..100,
    ``KQTUNE_RTSHARE``) and ``tfreq`` (0..65535, ``KQTUNE_FREQ``, SKQ policies only).

    Output: replies the peer has not taken yet wait per connection.  A connection whose
    pending replies exceed ``max_conn_output`` bytes is closed (logged at WARNING); while all
    connections together hold more than ``max_total_output`` bytes, no connection is read
    (requests wait in the kernel) until the total is back under half of it; a connection
    with pending replies that accepts no byte for ``write_idle_timeout`` seconds is closed
    (logged at WARNING).  A slow reader that keeps reading is never cut off.

    Housekeeping: ``poll_interval`` (workers' ``control()`` timeout: the bound on stop latency
    should a stop event be missed), ``stop_timeout`` (join limit), ``dump_interval`` +
    ``on_dump`` (call ``on_dump(server.dump())`` every ``dump_interval`` seconds from the
    acceptor thread, as ``ppd -d``).
    """

    host: str = "127.0.0.1"
    port: int = 0
    threads: int = 4
    policy: str = "best2_ws"
    pin: bool = False
    rt_hosts: tuple[str, ...] = ()
    rt_predicate: Callable[[Any], bool] | None = None
    max_conns: int = 10000
    rtshare: int | None = None
    tfreq: int | None = None
    backlog: int = 1024
    batch: int = 64
    tunables: Tunables | None = None
    poll_interval: float = 0.2
    stop_timeout: float = 5.0
    dump_interval: float | None = None
    on_dump: Callable[[dict[str, Any]], None] | None = None
    max_conn_output: int = 64 << 20
    max_total_output: int = 256 << 20
    write_idle_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.rt_hosts, tuple):
            object.__setattr__(self, "rt_hosts", tuple(self.rt_hosts))
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.max_conns < 1:
            raise ValueError(f"max_conns must be >= 1, got {self.max_conns}")
        if self.rtshare is not None and self.rtshare not in _RTSHARE_RANGE:
            raise ValueError(f"rtshare must be 1..100, got {self.rtshare}")
        if self.tfreq is not None and self.tfreq not in _TFREQ_RANGE:
            raise ValueError(f"tfreq must be 0..65535, got {self.tfreq}")
        for name in ("poll_interval", "stop_timeout", "write_idle_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.dump_interval is not None and self.dump_interval <= 0:
            raise ValueError("dump_interval must be positive")
        if self.max_conn_output < 1 or self.max_total_output < 1:
            raise ValueError("max_conn_output and max_total_output must be positive")
        mode, _ = mode_of(self.policy)
        if self.tfreq and mode != "skq":
            raise ValueError(
                f"tfreq needs an SKQ policy (KQTUNE_FREQ is multi-mode only), not {self.policy!r}"
            )

    def replace(self, **changes: Any) -> ServerConfig:
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)


_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(ServerConfig))


def legacy_config(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[ServerConfig, Any]:
    """``Server(host, port, session_factory, threads=..., ...)``, the signature before
    ``ServerConfig``: still accepted, with a DeprecationWarning."""
    if len(args) < 3:
        raise TypeError("Server(config, session_factory) or Server(host, port, session_factory)")
    host, port, factory, *rest = args
    positional = ("threads", "policy", "pin", "rt_hosts", "rt_predicate", "max_conns",
                  "rtshare", "tfreq", "backlog", "batch", "tunables")
    if len(rest) > len(positional):
        raise TypeError("too many positional arguments")
    settings = dict(zip(positional, rest, strict=False))
    for name, value in kwargs.items():
        if name in settings:
            raise TypeError(f"Server() got multiple values for {name!r}")
        settings[name] = value
    if "send_timeout" in settings:
        # The blocking send's limit became the idle limit of a connection's pending replies.
        settings["write_idle_timeout"] = settings.pop("send_timeout")
    unknown = set(settings) - _CONFIG_FIELDS
    if unknown:
        raise TypeError(f"unknown Server settings: {sorted(unknown)}")
    warnings.warn(
        "Server(host, port, session_factory, **settings) is deprecated: use "
        "Server(ServerConfig(host=..., port=..., **settings), session_factory)",
        DeprecationWarning,
        stacklevel=3,
    )
    return ServerConfig(host=host, port=port, **settings), factory
