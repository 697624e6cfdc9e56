"""Inter-arrival and service-time distributions for the load generator and the simulator.

Everything here is pure and seeded: a distribution never owns a random source, the caller
passes a :class:`random.Random` to ``sample(rng)``.  The same distribution object can thus be
shared by many connections (each with its own generator) and by the simulator, and a run is a
pure function of its seed.

Inter-arrival distributions (docs/semantics.md §6.5)
-----------------------------------------------------
All values are in **seconds**.  Each class has ``mean`` (seconds) and ``sample(rng)``.
``parse_interarrival(spec, rate)`` builds one with mean ``1/rate``:

==================  ===================================================================
``fixed``           always ``1/rate``
``exponential``     ``-ln(U)/rate``
``uniform``         ``U * 2/rate`` (mean ``1/rate``)
``normal[:f]``      normal with mean ``1/rate`` and sd ``f/rate`` (default ``f = 0.25``),
                    clipped at 0 (the clipping moves the mean by < 1e-4 at ``f = 0.25``)
``fb_ia``           generalized Pareto (location 0, scale 16.0292, shape 0.154971), the
                    Facebook ETC inter-arrival model, rescaled to the rate the way mutilate
                    does it: ``scale = (1 - shape)/rate - (1 - shape)*loc`` so the mean is
                    ``loc + scale/(1 - shape) = 1/rate``
``pareto:l,s,k``    generalized Pareto with the given location/scale/shape; when used as an
                    inter-arrival distribution the scale is recomputed from the rate as for
                    ``fb_ia`` (the given ``s`` only matters for ``rate <= 0``)
``gev:l,s,k``       generalized extreme value ``l + s*(E^-k - 1)/k`` with ``E ~ Exp(1)``;
                    as an inter-arrival distribution it is rescaled *multiplicatively*
                    (location and scale times one factor) so that its mean is ``1/rate``
                    (requires ``k < 1``, where the mean is finite)
==================  ===================================================================

``rate <= 0`` means *unpaced*: every inter-arrival is 0.

Service-time models (semantics §6.3)
---------------------------------------------
A service model maps (connection id, random source) to the integer number of microseconds
the server should spend on a request (the ECHO ``arg`` of :mod:`skqueue.rpcwire`).  All have
``service_us(conn_id, rng=None) -> int``, ``mean_us`` and ``per_connection`` (True when the
value depends only on the connection, so no ``rng`` is needed):

* :class:`EchoMix` -- the paper's per-connection skew: ``conn_id % 100 == 0`` -> 200 units,
  ``1..4`` -> 50 units, otherwise 10 units.  ``unit_us`` defaults to **10 µs** per unit, i.e.
  100 µs / 500 µs / 2 ms: ten times the paper's 10/50/200 µs, because a Python server's
  per-request overhead is itself tens of µs.  ``echo-mix:1`` gives the paper's exact values.
* :class:`FixedService` (``uniform(us)``), :class:`ExpService` (``exp(mean_us)``),
  :class:`BimodalService` (``bimodal(p, a_us, b_us)``: ``a_us`` with probability ``p``,
  ``b_us`` otherwise).

``parse_service`` accepts ``echo-mix``, ``echo-mix:UNIT_US``, ``fixed:US``, ``exp:MEAN_US``,
``bimodal:P:A:B`` and ``zero``.

The RocksDB "mixgraph" workload (semantics §6.4) is :class:`MixGraph`; see its
docstring for the exact model and for the two places where we deliberately differ from the
authors (uniform within-range offset by default; scan length taken modulo ``scan_cap``).
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field
from typing import Protocol

from skqueue import rpcwire

__all__ = [
    "Distribution",
    "Fixed",
    "Exponential",
    "Uniform",
    "Normal",
    "GeneralizedPareto",
    "GEV",
    "FB_IA_LOC",
    "FB_IA_SCALE",
    "FB_IA_SHAPE",
    "fb_ia",
    "parse_interarrival",
    "ServiceModel",
    "EchoMix",
    "FixedService",
    "ExpService",
    "BimodalService",
    "uniform",
    "exp",
    "bimodal",
    "parse_service",
    "pareto_cdf_inversion",
    "MixGraph",
    "MixGraphConn",
    "KVServiceModel",
]

FB_IA_LOC = 0.0
FB_IA_SCALE = 16.0292
FB_IA_SHAPE = 0.154971


def _u01(rng: random.Random) -> float:
    """A uniform draw in (0, 1] (never 0, so logs and negative powers are finite)."""
    return 1.0 - rng.random()


class Distribution(Protocol):
    """A seeded distribution of non-negative values (seconds for inter-arrivals)."""

    @property
    def mean(self) -> float:
        """The distribution's mean (``inf`` if it has none)."""
        ...

    def sample(self, rng: random.Random) -> float:
        """One draw using ``rng``."""
        ...


class Fixed:
    """A constant ``value``."""

    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        if value < 0:
            raise ValueError("fixed value must be >= 0")
        self.value = float(value)

    @property
    def mean(self) -> float:
        return self.value

    def sample(self, rng: random.Random) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"Fixed({self.value!r})"


class Exponential:
    """Exponential with the given ``rate`` (mean ``1/rate``)."""

    __slots__ = ("rate",)

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("exponential rate must be > 0")
        self.rate = float(rate)

    @property
    def mean(self) -> float:
        return 1.0 / self.rate

    def sample(self, rng: random.Random) -> float:
        return -math.log(_u01(rng)) / self.rate

    def __repr__(self) -> str:
        return f"Exponential(rate={self.rate!r})"


class Uniform:
    """Uniform on ``[low, high)``."""

    __slots__ = ("low", "high")

    def __init__(self, low: float, high: float) -> None:
        if not 0 <= low <= high:
            raise ValueError("uniform needs 0 <= low <= high")
        self.low = float(low)
        self.high = float(high)

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2.0

    def sample(self, rng: random.Random) -> float:
        return self.low + (self.high - self.low) * rng.random()

    def __repr__(self) -> str:
        return f"Uniform({self.low!r}, {self.high!r})"


class Normal:
    """Normal(``mu``, ``sd``) clipped at 0 (``mean`` reports ``mu``, the unclipped mean)."""

    __slots__ = ("mu", "sd")

    def __init__(self, mu: float, sd: float) -> None:
        if mu < 0 or sd < 0:
            raise ValueError("normal needs mu >= 0 and sd >= 0")
        self.mu = float(mu)
        self.sd = float(sd)

    @property
    def mean(self) -> float:
        return self.mu

    def sample(self, rng: random.Random) -> float:
        v = rng.gauss(self.mu, self.sd)
        return v if v > 0.0 else 0.0

    def __repr__(self) -> str:
        return f"Normal({self.mu!r}, {self.sd!r})"


class GeneralizedPareto:
    """Generalized Pareto: ``loc + scale*(U^-shape - 1)/shape`` (``shape = 0``: exponential).

    The mean is ``loc + scale/(1 - shape)`` for ``shape < 1`` and infinite otherwise.
    """

    __slots__ = ("loc", "scale", "shape")

    def __init__(self, loc: float, scale: float, shape: float) -> None:
        if scale < 0:
            raise ValueError("pareto scale must be >= 0")
        self.loc = float(loc)
        self.scale = float(scale)
        self.shape = float(shape)

    @classmethod
    def with_rate(cls, loc: float, shape: float, rate: float) -> GeneralizedPareto:
        """The mutilate rescaling: keep ``loc`` and ``shape``, pick the scale for mean 1/rate."""
        if shape >= 1:
            raise ValueError("pareto shape must be < 1 to have a mean")
        scale = (1.0 - shape) / rate - (1.0 - shape) * loc
        if scale < 0:
            raise ValueError(f"pareto location {loc} exceeds the mean inter-arrival 1/{rate}")
        return cls(loc, scale, shape)

    @property
    def mean(self) -> float:
        if self.shape >= 1:
            return math.inf
        return self.loc + self.scale / (1.0 - self.shape)

    def sample(self, rng: random.Random) -> float:
        u = _u01(rng)
        if self.shape == 0.0:
            v = self.loc - self.scale * math.log(u)
        else:
            v = self.loc + self.scale * (u ** (-self.shape) - 1.0) / self.shape
        return v if v > 0.0 else 0.0

    def __repr__(self) -> str:
        return f"GeneralizedPareto({self.loc!r}, {self.scale!r}, {self.shape!r})"


class GEV:
    """Generalized extreme value: ``loc + scale*(E^-shape - 1)/shape`` with ``E ~ Exp(1)``.

    ``shape = 0`` is the Gumbel limit ``loc - scale*ln(E)``.  Negative draws are clipped to 0
    when sampled (``mean`` is the unclipped one: ``loc + scale*(Gamma(1-shape) - 1)/shape``).
    """

    __slots__ = ("loc", "scale", "shape")

    def __init__(self, loc: float, scale: float, shape: float) -> None:
        if scale < 0:
            raise ValueError("gev scale must be >= 0")
        self.loc = float(loc)
        self.scale = float(scale)
        self.shape = float(shape)

    @property
    def mean(self) -> float:
        k = self.shape
        if k >= 1:
            return math.inf
        if k == 0.0:
            return self.loc + self.scale * 0.5772156649015329  # Euler-Mascheroni
        return self.loc + self.scale * (math.gamma(1.0 - k) - 1.0) / k

    def rescaled(self, rate: float) -> GEV:
        """The same shape with location and scale multiplied so that the mean is ``1/rate``."""
        m = self.mean
        if not (0 < m < math.inf):
            raise ValueError("gev must have a finite positive mean to be rescaled to a rate")
        f = (1.0 / rate) / m
        return GEV(self.loc * f, self.scale * f, self.shape)

    def sample(self, rng: random.Random) -> float:
        e = -math.log(_u01(rng))
        if e <= 0.0:
            e = 5e-324
        if self.shape == 0.0:
            v = self.loc - self.scale * math.log(e)
        else:
            v = self.loc + self.scale * (e ** (-self.shape) - 1.0) / self.shape
        return v if v > 0.0 else 0.0

    def __repr__(self) -> str:
        return f"GEV({self.loc!r}, {self.scale!r}, {self.shape!r})"


def fb_ia(rate: float) -> GeneralizedPareto:
    """The Facebook ETC inter-arrival distribution rescaled to ``rate`` (mean ``1/rate``)."""
    return GeneralizedPareto.with_rate(FB_IA_LOC, FB_IA_SHAPE, rate)


def _floats(text: str, n: int, what: str) -> list[float]:
    parts = [p for p in text.replace(":", ",").split(",") if p != ""]
    if len(parts) != n:
        raise ValueError(f"{what} needs {n} comma-separated numbers, got {text!r}")
    try:
        return [float(p) for p in parts]
    except ValueError as exc:
        raise ValueError(f"{what}: bad number in {text!r}") from exc


def parse_interarrival(spec: str, rate: float) -> Distribution:
    """Build the inter-arrival distribution ``spec`` with mean ``1/rate`` seconds.

    ``rate <= 0`` means unpaced and always returns ``Fixed(0)``.  See the module docstring for
    the accepted names.
    """
    spec = spec.strip()
    name, _, params = spec.partition(":")
    name = name.lower()
    known = {"fixed", "exponential", "exp", "uniform", "normal", "fb_ia", "pareto", "gev"}
    if name not in known:
        raise ValueError(f"unknown inter-arrival distribution {spec!r}")
    if rate <= 0 or math.isinf(rate):
        return Fixed(0.0)
    mean = 1.0 / rate
    if name == "fixed":
        return Fixed(mean)
    if name in ("exponential", "exp"):
        return Exponential(rate)
    if name == "uniform":
        return Uniform(0.0, 2.0 * mean)
    if name == "normal":
        frac = float(params) if params else 0.25
        return Normal(mean, frac * mean)
    if name == "fb_ia":
        return fb_ia(rate)
    if name == "pareto":
        loc, _scale, shape = _floats(params, 3, "pareto:l,s,k")
        return GeneralizedPareto.with_rate(loc, shape, rate)
    loc, scale, shape = _floats(params, 3, "gev:l,s,k")
    return GEV(loc, scale, shape).rescaled(rate)


# ----------------------------------------------------------------------------- service times


class ServiceModel(Protocol):
    """Maps a request on a connection to the server-side service time in whole µs."""

    @property
    def per_connection(self) -> bool:
        """True when the value depends only on the connection id (no ``rng`` needed)."""
        ...

    @property
    def mean_us(self) -> float:
        """Expected service time in µs (over connection ids uniformly, for ``EchoMix``)."""
        ...

    def service_us(self, conn_id: int, rng: random.Random | None = None) -> int:
        """The service time for the next request of connection ``conn_id``."""
        ...


class EchoMix:
    """The paper's per-connection service-time skew (semantics §6.3).

    ``conn_id % 100``: 0 -> 200 units (1 % of connections), 1..4 -> 50 units (4 %),
    5..99 -> 10 units (95 %).  One unit is ``unit_us`` µs (default 10).
    """

    __slots__ = ("unit_us",)

    LONG_UNITS = 200
    MEDIUM_UNITS = 50
    SHORT_UNITS = 10

    def __init__(self, unit_us: float = 10.0) -> None:
        if unit_us < 0:
            raise ValueError("unit_us must be >= 0")
        self.unit_us = float(unit_us)

    @property
    def per_connection(self) -> bool:
        return True

    @property
    def mean_us(self) -> float:
        units = 0.01 * self.LONG_UNITS + 0.04 * self.MEDIUM_UNITS + 0.95 * self.SHORT_UNITS
        return units * self.unit_us

    def units(self, conn_id: int) -> int:
        """The number of service units of connection ``conn_id``."""
        m = conn_id % 100
        if m == 0:
            return self.LONG_UNITS
        if m <= 4:
            return self.MEDIUM_UNITS
        return self.SHORT_UNITS

    def service_us(self, conn_id: int, rng: random.Random | None = None) -> int:
        return int(round(self.units(conn_id) * self.unit_us))

    def __repr__(self) -> str:
        return f"EchoMix(unit_us={self.unit_us!r})"


class FixedService:
    """Every request takes ``us`` µs (the paper's "Uniform 10 µs" workload is ``us = 10``)."""

    __slots__ = ("us",)

    def __init__(self, us: int) -> None:
        if us < 0:
            raise ValueError("service time must be >= 0")
        self.us = int(us)

    @property
    def per_connection(self) -> bool:
        return True

    @property
    def mean_us(self) -> float:
        return float(self.us)

    def service_us(self, conn_id: int, rng: random.Random | None = None) -> int:
        return self.us

    def __repr__(self) -> str:
        return f"FixedService({self.us!r})"


class ExpService:
    """Per-request exponential service time with mean ``mean_us`` (rounded to whole µs)."""

    __slots__ = ("_mean",)

    def __init__(self, mean_us: float) -> None:
        if mean_us <= 0:
            raise ValueError("mean service time must be > 0")
        self._mean = float(mean_us)

    @property
    def per_connection(self) -> bool:
        return False

    @property
    def mean_us(self) -> float:
        return self._mean

    def service_us(self, conn_id: int, rng: random.Random | None = None) -> int:
        if rng is None:
            raise ValueError("ExpService draws per request and needs an rng")
        return int(round(-math.log(_u01(rng)) * self._mean))

    def __repr__(self) -> str:
        return f"ExpService({self._mean!r})"


class BimodalService:
    """Per request: ``a_us`` with probability ``p``, otherwise ``b_us``."""

    __slots__ = ("p", "a_us", "b_us")

    def __init__(self, p: float, a_us: int, b_us: int) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError("bimodal p must be in [0, 1]")
        if a_us < 0 or b_us < 0:
            raise ValueError("service times must be >= 0")
        self.p = float(p)
        self.a_us = int(a_us)
        self.b_us = int(b_us)

    @property
    def per_connection(self) -> bool:
        return False

    @property
    def mean_us(self) -> float:
        return self.p * self.a_us + (1.0 - self.p) * self.b_us

    def service_us(self, conn_id: int, rng: random.Random | None = None) -> int:
        if rng is None:
            raise ValueError("BimodalService draws per request and needs an rng")
        return self.a_us if rng.random() < self.p else self.b_us

    def __repr__(self) -> str:
        return f"BimodalService({self.p!r}, {self.a_us!r}, {self.b_us!r})"


def uniform(us: int) -> FixedService:
    """Every request takes ``us`` µs."""
    return FixedService(us)


def exp(mean_us: float) -> ExpService:
    """Exponential per-request service time with mean ``mean_us`` µs."""
    return ExpService(mean_us)


def bimodal(p: float, a_us: int, b_us: int) -> BimodalService:
    """``a_us`` with probability ``p``, otherwise ``b_us``."""
    return BimodalService(p, a_us, b_us)


def parse_service(spec: str) -> ServiceModel:
    """Parse ``echo-mix[:UNIT_US]``, ``fixed:US``, ``uniform:US``, ``exp:MEAN_US``,
    ``bimodal:P:A:B`` or ``zero``."""
    parts = spec.strip().split(":")
    name = parts[0].lower()
    args = parts[1:]
    try:
        if name in ("echo-mix", "echomix", "echo_mix"):
            if len(args) > 1:
                raise ValueError
            return EchoMix(float(args[0])) if args else EchoMix()
        if name == "zero" and not args:
            return FixedService(0)
        if name in ("fixed", "uniform") and len(args) == 1:
            return FixedService(int(float(args[0])))
        if name == "exp" and len(args) == 1:
            return ExpService(float(args[0]))
        if name == "bimodal" and len(args) == 3:
            return BimodalService(float(args[0]), int(float(args[1])), int(float(args[2])))
    except ValueError as exc:
        raise ValueError(f"bad service spec {spec!r}: {exc}") from exc
    raise ValueError(f"unknown service spec {spec!r}")


# ----------------------------------------------------------------------------- mixgraph


def pareto_cdf_inversion(u: float, theta: float, k: float, sigma: float) -> float:
    """Inverse CDF of the generalized Pareto used by db_bench: ``theta + sigma*(u^-k - 1)/k``."""
    if u >= 1.0:
        return theta
    if u <= 0.0:
        return math.inf
    if k == 0.0:
        return theta - sigma * math.log(u)
    return float(theta + sigma * (u ** (-k) - 1.0) / k)


_INT32_MAX = (1 << 31) - 1


class MixGraphConn:
    """Per-connection state of :class:`MixGraph`: its 64-bit generator, seeded ``1000 + id``
    as the authors' (``seed=None``), or by ``(seed, id)`` for another request stream."""

    __slots__ = ("conn_id", "rng")

    def __init__(self, conn_id: int, seed: int | None = None) -> None:
        self.conn_id = conn_id
        self.rng = random.Random(1000 + conn_id if seed is None else f"mixgraph:{seed}:{conn_id}")


@dataclass
class MixGraph:
    """The RocksDB "mixgraph" workload of semantics §6.4 (Facebook production model).

    Per operation, one 64-bit draw ``r = getrandbits(64) % draw_space`` from the connection's
    own ``random.Random(1000 + conn_id)`` (a Mersenne Twister, though not bit-identical to C++'s
    ``mt19937_64``) decides everything:

    * the operation: ``r % 1000`` < 830 GET, < 970 PUT, else SEEK (83/14/3 %);
    * the key-range: 30 ranges weighted ``a*e^(b*x) + c*e^(d*x)`` for ``x = 30..1``
      (a=14.18, b=-2.917, c=0.0164, d=-0.08082), weights < 1e-16 are 0, integer weights
      ``floor(w * (floor(1/min_w) + 1))``, ranges shuffled by ``random.Random(total)``, and the
      range found by binary search on ``r % total``;
    * the offset within the range: ``r % range_size`` (db_bench's intended default, uniform),
      or with ``authors_quirk=True`` the authors' accidental reuse of a and b:
      ``Random(ceil((r/a)^(1/b))).getrandbits(64) % range_size``, which collapses each range
      to about one key;
    * ``u = r / draw_space`` sets the PUT value size ``ceil(sigma*(u^-k - 1)/k)`` (k=0.2615,
      sigma=25.45) and the SEEK length (k=2.517, sigma=14.236).

    ``draw_space`` defaults to ``max(50_000_000, keyspace)``, the paper's key count, so the
    op mix and the size distributions keep their shape even when a benchmark uses a small
    ``keyspace``.  Keys are 48 bytes: the 8-byte big-endian key id then 40 ASCII ``'0'``.

    The SEEK length has an infinite mean; the paper sends it uncapped, db_bench takes it
    modulo ``scan_len_max`` (10,000).  We follow db_bench: ``scan_cap`` (default 10,000) is a
    **modulo**; ``scan_cap=None`` sends it uncapped (clipped only to the int32 wire range).
    """

    keyspace: int = 50_000_000
    authors_quirk: bool = False
    scan_cap: int | None = 10_000
    draw_space: int = 0
    nranges: int = 30
    a: float = 14.18
    b: float = -2.917
    c: float = 0.0164
    d: float = -0.08082
    value_k: float = 0.2615
    value_sigma: float = 25.45
    scan_k: float = 2.517
    scan_sigma: float = 14.236
    get_share: int = 830
    put_share: int = 140
    _starts: list[int] = field(default_factory=list, init=False, repr=False)
    _range_weights: list[int] = field(default_factory=list, init=False, repr=False)
    _total: int = field(default=0, init=False, repr=False)
    _range_size: int = field(default=1, init=False, repr=False)
    _quirk_cache: dict[int, int] = field(default_factory=dict, init=False, repr=False)

    KEY_SIZE = 48

    def __post_init__(self) -> None:
        if self.keyspace < 1:
            raise ValueError("keyspace must be >= 1")
        if self.draw_space <= 0:
            self.draw_space = max(50_000_000, self.keyspace)
        if self.scan_cap is not None and self.scan_cap < 1:
            raise ValueError("scan_cap must be >= 1 or None")
        self._range_size = max(1, self.keyspace // self.nranges)
        weights: list[float] = []
        for x in range(self.nranges, 0, -1):
            w = self.a * math.exp(self.b * x) + self.c * math.exp(self.d * x)
            weights.append(0.0 if w < 1e-16 else w)
        positive = [w for w in weights if w > 0]
        if not positive:
            raise ValueError("all key-range weights are zero")
        amplify = math.floor(1.0 / min(positive)) + 1
        ints = [math.floor(w * amplify) for w in weights]
        total = sum(ints)
        order = list(range(self.nranges))
        random.Random(total).shuffle(order)
        self._starts = []
        self._range_weights = [ints[i] for i in order]
        acc = 0
        for w in self._range_weights:
            self._starts.append(acc)
            acc += w
        self._total = total

    # -- introspection (tests, simulator)
    @property
    def range_weights(self) -> list[int]:
        """Integer weights of the key ranges, in key order (after the shuffle)."""
        return list(self._range_weights)

    @property
    def range_size(self) -> int:
        """Keys per range (``keyspace // nranges``)."""
        return self._range_size

    def connection(self, conn_id: int, seed: int | None = None) -> MixGraphConn:
        """Fresh per-connection state (generator seeded ``1000 + conn_id``, or by ``seed``)."""
        return MixGraphConn(conn_id, seed)

    # -- the model
    def op_of(self, r: int) -> int:
        """The rpcwire op code chosen by draw ``r``."""
        m = r % 1000
        if m < self.get_share:
            return rpcwire.OP_GET
        if m < self.get_share + self.put_share:
            return rpcwire.OP_PUT
        return rpcwire.OP_SEEK

    def key_id_of(self, r: int) -> int:
        """The key id chosen by draw ``r`` (range by hotness, then offset)."""
        idx = bisect.bisect_right(self._starts, r % self._total) - 1
        # zero-weight ranges share a start with the next one; bisect_right skips them
        size = self._range_size
        if self.authors_quirk:
            offset = self._quirk_offset(r)
        else:
            offset = r % size
        return size * idx + offset

    def _quirk_offset(self, r: int) -> int:
        if r <= 0:
            seed = 1 << 62
        else:
            try:
                seed = math.ceil((r / self.a) ** (1.0 / self.b))
            except OverflowError:
                seed = 1 << 62
        off = self._quirk_cache.get(seed)
        if off is None:
            off = random.Random(seed).getrandbits(64) % self._range_size
            if len(self._quirk_cache) < 4096:
                self._quirk_cache[seed] = off
        return off

    def u_of(self, r: int) -> float:
        """``u = r / draw_space`` (never 0: ``r = 0`` counts as 1)."""
        return max(r, 1) / self.draw_space

    def value_size(self, u: float) -> int:
        """PUT value size in bytes for quantile ``u``."""
        return int(math.ceil(pareto_cdf_inversion(u, 0.0, self.value_k, self.value_sigma)))

    def scan_length(self, u: float) -> int:
        """SEEK length for quantile ``u`` (modulo ``scan_cap``, see the class docstring)."""
        raw = pareto_cdf_inversion(u, 0.0, self.scan_k, self.scan_sigma)
        n = _INT32_MAX if raw >= _INT32_MAX else int(math.ceil(raw))
        if self.scan_cap is not None:
            n %= self.scan_cap
        return n

    def scan_items(self, key_id: int, n: int) -> int:
        """How many of the ``n`` values a SEEK from ``key_id`` asks for past its first one the
        store reads, when it holds every key of the key space (as ``skq bench mixgraph``
        preloads it): the scan stops at the last key, ``keyspace - 1``.  Uncapped lengths
        reach 2^31; the real scan never passes the end of the data."""
        left = self.keyspace - 1 - key_id
        return n if n < left else max(left, 0)

    @staticmethod
    def key_bytes(key_id: int) -> bytes:
        """The 48-byte key: 8-byte big-endian id followed by 40 ASCII zeros."""
        return key_id.to_bytes(8, "big") + b"0" * 40

    def draw(self, conn: MixGraphConn) -> int:
        """The next raw draw ``r`` of a connection."""
        return conn.rng.getrandbits(64) % self.draw_space

    def next_op_spec(self, conn: MixGraphConn) -> tuple[int, int, int]:
        """``(op, key_id, size)`` without building bytes: size is the PUT value size, the SEEK
        length, or 0 for GET.  Used by the simulator."""
        r = self.draw(conn)
        op = self.op_of(r)
        key_id = self.key_id_of(r)
        if op == rpcwire.OP_PUT:
            return op, key_id, self.value_size(self.u_of(r))
        if op == rpcwire.OP_SEEK:
            return op, key_id, self.scan_length(self.u_of(r))
        return op, key_id, 0

    def next_op(self, conn: MixGraphConn) -> tuple[int, bytes, bytes | int | None]:
        """``(op, key, value_or_scan_len)``: PUT -> random value bytes (from the connection's
        generator), SEEK -> scan length, GET -> None."""
        op, key_id, size = self.next_op_spec(conn)
        key = self.key_bytes(key_id)
        if op == rpcwire.OP_PUT:
            return op, key, conn.rng.randbytes(size)
        if op == rpcwire.OP_SEEK:
            return op, key, size
        return op, key, None


@dataclass(frozen=True)
class KVServiceModel:
    """A *model* (not a measurement) of RocksDB service time for the simulator.

    GET costs ``get_us``, PUT ``put_us + put_per_byte_us * value_size``, SEEK
    ``seek_base_us + per_item_us * scan_len``.  The defaults are round numbers of the order an
    in-memory RocksDB shows from C++ (a few µs per point op, ~0.1-0.5 µs per scanned item);
    calibrate them against the threaded server before drawing conclusions.
    """

    get_us: float = 5.0
    put_us: float = 8.0
    put_per_byte_us: float = 0.0
    seek_base_us: float = 6.0
    per_item_us: float = 0.25

    def expected_us(self, op: int, size: float) -> float:
        """Expected service time of ``op`` with ``size`` (value bytes or scan length; a mean
        size gives the mean time, the prices being linear)."""
        if op == rpcwire.OP_GET:
            return self.get_us
        if op == rpcwire.OP_PUT:
            return self.put_us + self.put_per_byte_us * size
        if op == rpcwire.OP_SEEK:
            return self.seek_base_us + self.per_item_us * size
        raise ValueError(f"not a KV op: {op}")
