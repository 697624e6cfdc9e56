"""Simulator workloads: service-time models in integer nanoseconds.

The distributions themselves live in :mod:`skqueue.load.dist` (shared with the real load
generator); this module only adapts them to the simulator's needs: integer ns instead of
seconds or whole µs, a per-connection fast path when the service time depends only on the
connection id, and the mean used to turn a "load fraction" into a request rate.

Named workloads (``SimConfig.workload``):

===============  ============================================================================
``echo-mix``     docs/semantics.md §6.3: by connection id mod 100, 1 % at 200 µs, 4 % at 50 µs,
                 95 % at 10 µs (``dist.EchoMix(unit_us=1)``; the real generator defaults to 10x that
                 because a Python server is slower, the simulator uses the paper's values).
                 ``echo-mix:UNIT`` scales it.
``uniform10``    every request 10 µs (``dist.FixedService(10)``; the "Uniform 10 µs" workload).
``exp``          exponential, mean 10 µs, drawn per request at ns resolution
                 (``dist.Exponential`` used as a service-time law); ``exp:MEAN_US``.
``bimodal``      per request 5 µs with p = 0.9, else 55 µs (``dist.BimodalService``), i.e. the
                 same 10 µs mean as ``uniform10`` and ``exp`` with more dispersion.  The
                 parameters are **our choice** (the paper's bimodal workload, if any, is
                 unknown); ``bimodal:P:A:B`` overrides them.
``rocksdb``      semantics §6.4: ``dist.MixGraph`` operation stream per connection (its own
                 generator seeded 1000 + connection id, as the authors') priced by
                 ``dist.KVServiceModel`` (its defaults are a model, not a measurement).
                 ``rocksdb:NAME=VALUE,...`` sets the prices and the stream: ``get``,
                 ``put`` (µs per GET / PUT), ``byte`` (µs per PUT value byte), ``seek``
                 (µs per SEEK), ``item`` (µs per scanned item), ``cap`` (scan length
                 modulo, 0 = none), ``keys`` (key space), e.g. the costs that
                 ``skq sim validate-kv`` measures on the real store
                 (:func:`rocksdb_spec` writes the string).
===============  ============================================================================

Any other string is handed to ``dist.parse_service`` (``fixed:US``, ``zero``, ...).
"""

from __future__ import annotations

import bisect
import random

from skqueue import rpcwire
from skqueue.load import dist

__all__ = ["SimWorkload", "make_workload", "rocksdb_spec", "WORKLOADS"]

#: Workload names the simulator documents (``parse_service`` specs are accepted too).
WORKLOADS = ("echo-mix", "uniform10", "exp", "bimodal", "rocksdb")

_NS_PER_US = 1000


class SimWorkload:
    """Service-time source of a simulation, in integer ns.

    ``fixed_ns(conn_id)`` is the connection's constant service time, or -1 when service
    times are drawn per request with ``draw_ns(conn_id, rng)``.  ``mean_ns(nconn)`` is the
    expected service time of a request when all ``nconn`` connections send at the same rate.
    """

    __slots__ = ("name", "_model", "_per_conn", "_law", "_mix", "_kv", "_mix_state", "_mean")

    def __init__(self, name: str) -> None:
        self.name = name
        self._model: dist.ServiceModel | None = None
        self._law: dist.Distribution | None = None
        self._mix: dist.MixGraph | None = None
        self._kv: dist.KVServiceModel | None = None
        self._mix_state: dict[int, dist.MixGraphConn] = {}
        self._per_conn = False
        self._mean = 0.0
        base, _, arg = name.partition(":")
        base = base.lower()
        if base in ("echo-mix", "echomix", "echo_mix"):
            self._model = dist.EchoMix(float(arg) if arg else 1.0)
        elif base == "uniform10" and not arg:
            self._model = dist.FixedService(10)
        elif base == "exp":
            mean_us = float(arg) if arg else 10.0
            self._law = dist.Exponential(1e6 / mean_us)
            self._mean = mean_us * _NS_PER_US
        elif base == "bimodal" and not arg:
            self._model = dist.BimodalService(0.9, 5, 55)
        elif base == "rocksdb":
            self._mix, self._kv = _rocksdb_params(arg)
            self._mean = _mixgraph_mean_ns(self._mix, self._kv)
        else:
            self._model = dist.parse_service(name)
        if self._model is not None:
            self._per_conn = bool(self._model.per_connection)
            self._mean = float(self._model.mean_us) * _NS_PER_US

    def fixed_ns(self, conn_id: int) -> int:
        """Constant service time of ``conn_id`` in ns, or -1 if drawn per request."""
        if self._per_conn and self._model is not None:
            return int(self._model.service_us(conn_id)) * _NS_PER_US
        return -1

    def probe_ns(self) -> int:
        """Service time of a probe request (ns): a GET of the ``rocksdb`` workload, the
        short request the mixgraph bench's probe connections send."""
        if self._kv is None:
            raise ValueError(f"probe connections need the rocksdb workload, not {self.name!r}")
        return int(self._kv.expected_us(rpcwire.OP_GET, 0) * _NS_PER_US + 0.5)

    def draw_ns(self, conn_id: int, rng: random.Random) -> int:
        """Service time of the next request of ``conn_id`` in ns."""
        if self._law is not None:
            return int(self._law.sample(rng) * 1e9 + 0.5)
        if self._mix is not None and self._kv is not None:
            st = self._mix_state.get(conn_id)
            if st is None:
                st = self._mix_state[conn_id] = self._mix.connection(conn_id)
            op, key, size = self._mix.next_op_spec(st)
            if op == rpcwire.OP_SEEK:
                size = self._mix.scan_items(key, size)
            return int(self._kv.expected_us(op, size) * _NS_PER_US + 0.5)
        assert self._model is not None
        return int(self._model.service_us(conn_id, rng)) * _NS_PER_US

    def mean_ns(self, nconn: int) -> float:
        """Mean service time (ns) of a request, every connection sending at one rate."""
        if self._per_conn and self._model is not None and nconn > 0:
            return sum(self.fixed_ns(c) for c in range(nconn)) / nconn
        return self._mean

    def __repr__(self) -> str:
        return f"SimWorkload({self.name!r})"


#: ``rocksdb:`` parameter -> ``dist.KVServiceModel`` field
_KV_COSTS = {"get": "get_us", "put": "put_us", "byte": "put_per_byte_us", "seek": "seek_base_us",
             "item": "per_item_us"}


def _rocksdb_params(arg: str) -> tuple[dist.MixGraph, dist.KVServiceModel]:
    costs: dict[str, float] = {}
    mix: dict[str, int | None] = {}
    for part in filter(None, arg.split(",")):
        name, eq, value = part.partition("=")
        try:
            if not eq:
                raise ValueError("expected NAME=VALUE")
            if name in _KV_COSTS:
                costs[_KV_COSTS[name]] = float(value)
            elif name == "cap":
                mix["scan_cap"] = int(value) or None
            elif name == "keys":
                mix["keyspace"] = int(value)
            else:
                raise ValueError(f"unknown parameter {name!r}")
        except ValueError as exc:
            raise ValueError(f"bad rocksdb workload {arg!r}: {exc} (names: "
                             f"{', '.join([*_KV_COSTS, 'cap', 'keys'])})") from None
    return dist.MixGraph(**mix), dist.KVServiceModel(**costs)  # type: ignore[arg-type]


def rocksdb_spec(kv: dist.KVServiceModel, scan_cap: int | None = 10_000,
                 keyspace: int | None = None) -> str:
    """The ``rocksdb:...`` workload string for these costs and this stream."""
    inv = {field: name for name, field in _KV_COSTS.items()}
    parts = [f"{inv[f]}={getattr(kv, f):.4g}" for f in _KV_COSTS.values()]
    parts.append(f"cap={scan_cap or 0}")
    if keyspace is not None:
        parts.append(f"keys={keyspace}")
    return "rocksdb:" + ",".join(parts)


def _mixgraph_mean_ns(mix: dist.MixGraph, kv: dist.KVServiceModel, steps: int = 100_000) -> float:
    """Mean KV service time of the mixgraph stream (ns), by midpoint integration over the
    quantile ``u`` that sets PUT sizes and SEEK lengths, and over the start key of a SEEK,
    which bounds what it reads (deterministic, no random draws)."""
    get_p = mix.get_share / 1000.0
    put_p = mix.put_share / 1000.0
    seek_p = 1.0 - get_p - put_p
    put_sum = 0.0
    lengths: list[int] = []
    for i in range(steps):
        u = (i + 0.5) / steps
        put_sum += kv.expected_us(rpcwire.OP_PUT, mix.value_size(u))
        lengths.append(mix.scan_length(u))
    seek_us = kv.expected_us(rpcwire.OP_SEEK, _mean_scan_items(mix, lengths))
    mean_us = (get_p * kv.expected_us(rpcwire.OP_GET, 0) + put_p * put_sum / steps
               + seek_p * seek_us)
    return mean_us * _NS_PER_US


def _mean_scan_items(mix: dist.MixGraph, lengths: list[int]) -> float:
    """The mean of ``mix.scan_items(key, n)``: ``n`` over ``lengths`` (equally likely), the
    start key drawn as :meth:`dist.MixGraph.key_id_of` draws it (a range by its weight, then a
    uniform offset in it).

    A key ``k`` leaves ``R = keyspace - 1 - k`` keys after it, so one range's keys give ``R``
    uniform on the integers ``a..b``.  For one ``n``, the mean of ``min(n, R)`` is ``n`` when
    ``n <= a``, ``(a + b) / 2`` when ``n >= b``, and ``(-n^2/2 + (b + 1/2) n - (a - 1) a / 2)
    / (b - a + 1)`` between; with the lengths sorted, prefix sums of ``n`` and ``n^2`` give
    each range's mean in two bisections instead of a pass over every length and key."""
    ls = sorted(lengths)
    s1 = [0]
    s2 = [0]
    for n in ls:
        s1.append(s1[-1] + n)
        s2.append(s2[-1] + n * n)
    count = len(ls)
    size = mix.range_size
    weights = mix.range_weights
    acc = 0.0
    for idx, w in enumerate(weights):
        b = mix.keyspace - 1 - size * idx
        a = b - (size - 1)
        if w == 0 or b < 0:  # a key space under one key per range: nothing after it
            continue
        i = bisect.bisect_right(ls, a)
        j = bisect.bisect_left(ls, b, lo=i)
        mid = (-(s2[j] - s2[i]) / 2 + (b + 0.5) * (s1[j] - s1[i])
               - (j - i) * (a - 1) * a / 2) / (b - a + 1)
        acc += w * (s1[i] + mid + (count - j) * (a + b) / 2) / count
    return acc / sum(weights)


def make_workload(name: str) -> SimWorkload:
    """Build the named workload (see the module docstring); ``ValueError`` if unknown."""
    return SimWorkload(name)
