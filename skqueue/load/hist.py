"""Latency histograms that can cross process boundaries.

:class:`LatencyHistogram` records latencies as integer **nanoseconds** and reports them in
**microseconds** (``to_dict``), the unit of the paper's load generator.  Two back ends:

* ``"hdr"`` -- :class:`hdrh.histogram.HdrHistogram` (PyPI ``hdrhistogram``) with 3 significant
  digits over 1 ns .. ``highest_ns`` (default 100 s).  Percentiles are exact to within 0.1 %
  (HDR reports the highest value equivalent to the bucket holding the percentile).  Memory is
  constant (~200 KiB) whatever the count.
* ``"exact"`` -- a plain list of values, sorted on demand; percentiles are exact (nearest rank,
  the same target-count rule as HDR).  Used when ``hdrhistogram`` is not importable, or on
  request; memory grows with the count.

``backend="auto"`` (default) picks ``"hdr"`` when available.  Count, sum (hence mean), min and
max are kept exactly by the wrapper for both back ends; standard deviation is exact for
``"exact"`` and HDR's bucket-midpoint estimate for ``"hdr"``.  Values above ``highest_ns`` are
recorded as ``highest_ns`` in the HDR back end and counted in ``clipped``.

Pickling encodes an HDR histogram with its compact ``encode()`` form, so histograms travel
through ``multiprocessing`` pipes cheaply; ``merge`` adds one histogram into another, converting
between back ends when they differ.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

__all__ = ["LatencyHistogram", "hdr_available", "SUMMARY_PERCENTILES"]

SUMMARY_PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p5", 5.0),
    ("p10", 10.0),
    ("p50", 50.0),
    ("p90", 90.0),
    ("p95", 95.0),
    ("p99", 99.0),
    ("p999", 99.9),
)

_DEFAULT_HIGHEST_NS = 100 * 1_000_000_000


def _hdr_class() -> Any:
    try:
        from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    return HdrHistogram


def hdr_available() -> bool:
    """True when the ``hdrhistogram`` package can be imported."""
    return _hdr_class() is not None


class LatencyHistogram:
    """A latency histogram in nanoseconds; see the module docstring."""

    __slots__ = (
        "backend",
        "highest_ns",
        "_hdr",
        "_values",
        "_sorted",
        "_count",
        "_sum",
        "_min",
        "_max",
        "clipped",
    )

    def __init__(self, backend: str = "auto", highest_ns: int = _DEFAULT_HIGHEST_NS) -> None:
        if backend not in ("auto", "hdr", "exact"):
            raise ValueError(f"unknown histogram backend {backend!r}")
        cls = _hdr_class()
        if backend == "auto":
            backend = "hdr" if cls is not None else "exact"
        if backend == "hdr" and cls is None:
            raise RuntimeError("the hdrhistogram package is not installed")
        if highest_ns < 2:
            raise ValueError("highest_ns must be >= 2")
        self.backend = backend
        self.highest_ns = int(highest_ns)
        self._hdr: Any = cls(1, self.highest_ns, 3) if backend == "hdr" else None
        self._values: list[int] = []
        self._sorted = True
        self._count = 0
        self._sum = 0
        self._min = 0
        self._max = 0
        self.clipped = 0

    # ------------------------------------------------------------------ recording
    def record(self, value_ns: int | float, count: int = 1) -> None:
        """Record ``count`` occurrences of a latency of ``value_ns`` nanoseconds."""
        v = int(value_ns)
        if v < 0:
            v = 0
        if count <= 0:
            return
        if self._count == 0:
            self._min = self._max = v
        elif v < self._min:
            self._min = v
        elif v > self._max:
            self._max = v
        self._count += count
        self._sum += v * count
        if self._hdr is not None:
            if v > self.highest_ns:
                self.clipped += count
                v = self.highest_ns
            self._hdr.record_value(v, count)
        else:
            if count == 1:
                self._values.append(v)
            else:
                self._values.extend([v] * count)
            self._sorted = False

    # ------------------------------------------------------------------ queries
    @property
    def count(self) -> int:
        """Number of recorded values."""
        return self._count

    @property
    def mean(self) -> float:
        """Exact mean in ns (0.0 when empty)."""
        return self._sum / self._count if self._count else 0.0

    @property
    def min(self) -> int:
        """Exact minimum in ns (0 when empty)."""
        return self._min

    @property
    def max(self) -> int:
        """Exact maximum in ns (0 when empty)."""
        return self._max

    @property
    def stddev(self) -> float:
        """Standard deviation in ns (HDR: bucket-midpoint estimate)."""
        if not self._count:
            return 0.0
        if self._hdr is not None:
            return float(self._hdr.get_stddev())
        m = self.mean
        return math.sqrt(sum((x - m) ** 2 for x in self._values) / self._count)

    def _sorted_values(self) -> list[int]:
        if not self._sorted:
            self._values.sort()
            self._sorted = True
        return self._values

    def percentile(self, p: float) -> int:
        """The value (ns) at percentile ``p`` in [0, 100]; 0 when empty.

        Nearest-rank: the smallest recorded value with at least ``round(p/100*count)`` (at
        least 1) values at or below it.  HDR returns the top of that value's bucket, capped at
        the exact maximum.
        """
        if not 0.0 <= p <= 100.0:
            raise ValueError("percentile must be within [0, 100]")
        if not self._count:
            return 0
        if self._hdr is not None:
            return min(int(self._hdr.get_value_at_percentile(p)), self._max)
        target = max(int(p * self._count / 100.0 + 0.5), 1)
        return self._sorted_values()[min(target, self._count) - 1]

    def percentiles(self, ps: list[float]) -> dict[float, int]:
        """Several percentiles at once (one pass for HDR)."""
        if not self._count:
            return {p: 0 for p in ps}
        if self._hdr is not None:
            d = self._hdr.get_percentile_to_value_dict(list(ps))
            return {p: min(int(d[p]), self._max) for p in ps}
        return {p: self.percentile(p) for p in ps}

    def count_above(self, value_ns: int) -> int:
        """How many recorded values exceed ``value_ns`` (HDR: at bucket precision)."""
        if self._hdr is not None:
            below = 0
            for item in self._hdr.get_recorded_iterator():
                if item.value_iterated_to > value_ns:
                    break
                below += item.count_added_in_this_iter_step
            return self._count - below
        vals = self._sorted_values()
        return len(vals) - bisect.bisect_right(vals, value_ns)

    def bins(self, nbins: int = 1000, upper_percentile: float = 99.0) -> list[tuple[int, int]]:
        """Equal-width bins for plotting (docs/semantics.md §6.12: 1000 bins trimmed above p99).

        Returns ``nbins`` pairs ``(bin_upper_ns, count)`` covering ``[min, p(upper)]``; values
        above the trim point are left out.  HDR values are placed at their bucket's top.
        """
        if nbins < 1:
            raise ValueError("nbins must be >= 1")
        if not self._count:
            return []
        lo = self._min
        hi = max(self.percentile(upper_percentile), lo + 1)
        width = (hi - lo) / nbins
        counts = [0] * nbins
        for v, c in self._iter_value_counts():
            if v > hi:
                break
            i = min(int((v - lo) / width), nbins - 1) if v > lo else 0
            counts[i] += c
        return [(int(lo + width * (i + 1)), counts[i]) for i in range(nbins)]

    # ------------------------------------------------------------------ combining
    def _iter_value_counts(self) -> list[tuple[int, int]]:
        if self._hdr is not None:
            return [
                (int(item.value_iterated_to), int(item.count_added_in_this_iter_step))
                for item in self._hdr.get_recorded_iterator()
            ]
        out: list[tuple[int, int]] = []
        for v in self._sorted_values():
            if out and out[-1][0] == v:
                out[-1] = (v, out[-1][1] + 1)
            else:
                out.append((v, 1))
        return out

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        """Add every value of ``other`` into this histogram; returns ``self``."""
        if other._count == 0:
            return self
        if self._count == 0:
            self._min, self._max = other._min, other._max
        else:
            self._min = min(self._min, other._min)
            self._max = max(self._max, other._max)
        self._count += other._count
        self._sum += other._sum
        self.clipped += other.clipped
        if (
            self._hdr is not None
            and other._hdr is not None
            and (self.highest_ns >= other.highest_ns)
        ):
            self._hdr.add(other._hdr)
        elif self._hdr is not None:
            for v, c in other._iter_value_counts():
                if v > self.highest_ns:
                    self.clipped += c
                    v = self.highest_ns
                self._hdr.record_value(v, c)
        else:
            for v, c in other._iter_value_counts():
                self._values.extend([v] * c)
            self._sorted = False
        return self

    @classmethod
    def merged(cls, hists: list[LatencyHistogram], backend: str = "auto") -> LatencyHistogram:
        """A new histogram holding the union of ``hists``."""
        highest = max((h.highest_ns for h in hists), default=_DEFAULT_HIGHEST_NS)
        out = cls(backend=backend, highest_ns=highest)
        for h in hists:
            out.merge(h)
        return out

    # ------------------------------------------------------------------ serialisation
    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "backend": self.backend,
            "highest_ns": self.highest_ns,
            "count": self._count,
            "sum": self._sum,
            "min": self._min,
            "max": self._max,
            "clipped": self.clipped,
        }
        if self._hdr is not None:
            state["hdr"] = self._hdr.encode() if self._count else b""
        else:
            state["values"] = list(self._values)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.backend = state["backend"]
        self.highest_ns = state["highest_ns"]
        self._count = state["count"]
        self._sum = state["sum"]
        self._min = state["min"]
        self._max = state["max"]
        self.clipped = state["clipped"]
        self._values = list(state.get("values", []))
        self._sorted = False
        self._hdr = None
        if self.backend == "hdr":
            cls = _hdr_class()
            if cls is None:  # pragma: no cover - receiver without hdrhistogram
                raise RuntimeError("cannot decode an HDR histogram: hdrhistogram missing")
            blob = state.get("hdr", b"")
            self._hdr = cls.decode(blob) if blob else cls(1, self.highest_ns, 3)

    def encode(self) -> dict[str, Any]:
        """A JSON-safe dict that :meth:`decode` turns back into an equal histogram."""
        state = self.__getstate__()
        if "hdr" in state and isinstance(state["hdr"], bytes):
            state["hdr"] = state["hdr"].decode("ascii")
        return state

    @classmethod
    def decode(cls, state: dict[str, Any]) -> LatencyHistogram:
        """Inverse of :meth:`encode`."""
        st = dict(state)
        if isinstance(st.get("hdr"), str):
            st["hdr"] = st["hdr"].encode("ascii")
        obj = cls.__new__(cls)
        obj.__setstate__(st)
        return obj

    def to_dict(self) -> dict[str, float | int]:
        """Summary in **µs**: count, mean, std, min, max, p5, p10, p50, p90, p95, p99, p999."""
        ps = self.percentiles([p for _, p in SUMMARY_PERCENTILES])
        out: dict[str, float | int] = {
            "count": self._count,
            "mean": self.mean / 1e3,
            "std": self.stddev / 1e3,
            "min": self._min / 1e3,
            "max": self._max / 1e3,
        }
        for name, p in SUMMARY_PERCENTILES:
            out[name] = ps[p] / 1e3
        return out

    def __repr__(self) -> str:
        return (
            f"LatencyHistogram(backend={self.backend!r}, count={self._count}, "
            f"p50={self.percentile(50)}ns, max={self._max}ns)"
        )
