"""Presentation of benchmark results: plain-text tables, JSON, CSV and PNG plots.

Kept apart from the measuring code so that results can be re-rendered from a saved JSON file
and so that nothing here is needed to *run* a benchmark: matplotlib is imported only when a
plot is asked for (Agg back end, no display), and a missing matplotlib costs the plot, not
the run.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "fmt_num",
    "fmt_us",
    "format_table",
    "plot_bars",
    "plot_latency_curves",
    "write_csv",
    "write_json",
]


def fmt_num(x: float | int | None, digits: int = 0) -> str:
    """A number with thousands separators; ``-`` for None/NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:,.{digits}f}"


def fmt_us(x: float | None) -> str:
    """A latency in µs, compact: ``812``, ``12.3k``, ``1.2M``; ``inf`` for None."""
    if x is None:
        return "inf"
    if x >= 1e6:
        return f"{x / 1e6:.1f}M"
    if x >= 1e4:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None
) -> str:
    """A fixed-width text table; numeric-looking columns are right-aligned by default."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    if right is None:
        right = [i > 0 for i in range(len(headers))]

    def line(vals: Sequence[str]) -> str:
        out = []
        for i, v in enumerate(vals):
            out.append(v.rjust(widths[i]) if right[i] else v.ljust(widths[i]))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), sep, *(line(r) for r in cells)])


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, set | frozenset | tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _finite(o: Any) -> Any:
    """Replace NaN/inf floats by None so the JSON is strict."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite(v) for v in o]
    return o


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented, strict JSON (NaN/inf become null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(_finite(dict(data)), indent=2, default=_json_default, allow_nan=False) + "\n"
    )
    return path


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` (dicts) with a header of ``columns``; missing keys stay empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def _figure(path: Path) -> Iterator[Any]:
    """An 8x5 in figure's axes; on a clean exit the figure is laid out and saved to
    ``path`` (parent directories created).  The figure is closed either way."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    try:
        yield ax
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)


def plot_latency_curves(
    path: Path,
    series: Mapping[str, Sequence[tuple[float, float | None]]],
    *,
    title: str,
    ylabel: str,
    slo_us: float | None = None,
    slo_label: str = "",
    subtitle: str = "",
) -> Path:
    """p99 (or any latency) vs achieved QPS: one line per series, log y; None = off-scale."""
    with _figure(path) as ax:
        ymax = 1.0
        for pts in series.values():
            for _, y in pts:
                if y is not None:
                    ymax = max(ymax, y)
        for label, pts in series.items():
            xs = [x for x, _ in pts]
            # points whose percentile is unmeasurable (too many lost requests) go on top
            ys = [y if y is not None else ymax * 2 for _, y in pts]
            if not xs:
                continue
            ax.plot(xs, ys, marker="o", label=label)
        if slo_us is not None:
            ax.axhline(slo_us, linestyle="--", color="grey", linewidth=1, label=slo_label or "SLO")
        ax.set_yscale("log")
        ax.set_xlabel("achieved throughput (requests/s)")
        ax.set_ylabel(ylabel)
        ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return path


def plot_bars(
    path: Path,
    groups: Sequence[str],
    bars: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    ylabel: str,
) -> Path:
    """Grouped bars (log y): one group per entry of ``groups``, one bar per key of ``bars``."""
    with _figure(path) as ax:
        n = max(len(bars), 1)
        width = 0.8 / n
        for i, (label, vals) in enumerate(bars.items()):
            xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
            ax.bar(xs, [v if v is not None else 0.0 for v in vals], width=width, label=label)
        ax.set_xticks(list(range(len(groups))))
        ax.set_xticklabels(list(groups), fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return path
