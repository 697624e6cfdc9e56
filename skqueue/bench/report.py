"""Presentation of benchmark results: plain-text tables, JSON, CSV and PNG plots.

Kept apart from the measuring code (:mod:`skqueue.bench.experiment`) so that results can be
re-rendered from a saved JSON file and so that nothing here is needed to *run* a benchmark:
matplotlib is imported only when a plot is asked for (Agg back end, no display), and a missing
matplotlib costs the plot, not the run.

The first half is generic (number formats, tables, JSON/CSV writers, plots); the second half
presents an :class:`~skqueue.bench.experiment.Experiment`: a table on stdout (progress goes to
stderr), and under ``--out`` (default ``results/``) ``NAME.json`` (everything, including each
point's full generator summary), ``NAME.csv`` (one row per load point) and ``NAME.png`` (p99
vs achieved QPS, one line per policy, log y; the priority experiment draws grouped bars
instead).  ``NAME`` defaults to ``<experiment>-<timestamp>``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skqueue.bench.servers import SERVICE_MODES

if TYPE_CHECKING:  # the experiment module imports this one
    from skqueue.bench.experiment import Experiment, LoadSettings, Point

__all__ = [
    "CSV_COLUMNS",
    "SCHEMA",
    "class_text",
    "csv_rows",
    "demo_summary",
    "experiment_dict",
    "fmt_num",
    "fmt_us",
    "format_table",
    "header_lines",
    "plot_bars",
    "plot_latency_curves",
    "point_line",
    "point_row",
    "points_table",
    "priority_summary",
    "render",
    "settings_dict",
    "summary_table",
    "write_csv",
    "write_json",
    "write_outputs",
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


# ----------------------------------------------------------------------------- an experiment


SCHEMA = "skqueue.bench/1"

CLASS_NAMES = ("probe", "rt", "normal")

CSV_COLUMNS: tuple[str, ...] = (
    "experiment",
    "policy",
    "kind",
    "service",
    "phase",
    "target_qps",
    "offered_qps",
    "achieved_qps",
    "p50_us",
    "p90_us",
    "p95_us",
    "p99_us",
    "p999_us",
    "mean_us",
    "max_us",
    "actual_p50_us",
    "actual_p99_us",
    "actual_p999_us",
    "slo_class",
    "slo_latency_us",
    "meets_slo",
    "intended",
    "recorded",
    "completed",
    "unsent",
    "errors",
    "server_cpu_us_per_req",
    *(f"{k}_{m}" for k in CLASS_NAMES for m in ("achieved_qps", "p50_us", "p99_us", "p999_us")),
)


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(float(x), nd)


def _pct(p: float) -> str:
    return f"{p:g}"


def point_row(pt: Point) -> dict[str, Any]:
    """A point's flat CSV row (without the experiment-level columns)."""
    r: dict[str, Any] = {
        "policy": pt.label,
        "phase": pt.phase,
        "target_qps": round(pt.target_qps, 1),
        "offered_qps": round(pt.offered_qps, 1),
        "achieved_qps": round(pt.achieved_qps, 1),
    }
    for k in ("p50", "p90", "p95", "p99", "p999", "mean", "max"):
        r[f"{k}_us"] = _r(pt.latency_us.get(k))
    for k in ("p50", "p99", "p999"):
        r[f"actual_{k}_us"] = _r(pt.actual_us.get(k))
    r["slo_class"] = pt.slo_class or "all"
    r["slo_latency_us"] = _r(pt.slo_latency_us)
    r.update(
        intended=pt.intended,
        recorded=pt.recorded,
        completed=pt.completed,
        unsent=pt.unsent,
        errors=pt.errors,
        server_cpu_us_per_req=_r(pt.server_cpu_us_per_req),
    )
    for k in CLASS_NAMES:
        c = pt.classes.get(k)
        if c is not None and len(pt.classes) > 1:
            r[f"{k}_achieved_qps"] = round(c["achieved_qps"], 1)
            r[f"{k}_p50_us"] = _r(c["latency_us"].get("p50"))
            r[f"{k}_p99_us"] = _r(c["latency_us"].get("p99"))
            r[f"{k}_p999_us"] = _r(c["latency_us"].get("p999"))
    return r


def service_text(exp: Experiment) -> str:
    """One line naming the server's service-time mode and what it stands for."""
    if exp.service is None:
        return "service: none (no artificial service time: the requests' own work)"
    return f"service mode '{exp.service}': {SERVICE_MODES.get(exp.service, '?')}"


def slo_text(exp: Experiment) -> str:
    """One line stating the SLO used for low-latency throughput."""
    who = "of the probe requests" if exp.settings.slo_class() == "probe" else "of all requests"
    return (
        f"low-latency throughput = highest achieved QPS with p{_pct(exp.slo_pct)} {who} "
        f"(from intended send time; lost requests count as infinitely late) "
        f"<= {fmt_num(exp.slo_us)} us"
    )


def csv_rows(exp: Experiment) -> list[dict[str, Any]]:
    """One CSV row per load point."""
    out = []
    for pr in exp.policies:
        for pt in pr.points:
            r = point_row(pt)
            r.update(
                experiment=exp.kind,
                kind=pr.spec.kind,
                service=exp.service or "",
                meets_slo=int(pt.meets(exp.slo_us)),
            )
            out.append(r)
    return out


#: the generator settings the JSON's "load" block shows (``service`` under the bench's name
#: ``mix``), then the harness's own settings
_LOAD_SHOWN = (
    "protocol", "connections", "processes", "duration_s", "warmup_s", "interarrival",
    "service", "seed", "timeout_s", "mc_keys", "mc_key_size", "mc_value_size", "mc_set_ratio",
)  # fmt: skip


def settings_dict(s: LoadSettings) -> dict[str, Any]:
    """The JSON's ``load`` block: what every point of the experiment shared."""
    load = asdict(s.load)
    d = {("mix" if k == "service" else k): load[k] for k in _LOAD_SHOWN}
    d.update((k, v) for k, v in asdict(s).items() if k != "load")
    d["cpus"] = list(s.cpus) if s.cpus is not None else None
    return d


def gil_enabled() -> bool:
    """Whether this interpreter runs with the GIL (False only on a free-threaded build
    with the GIL off): recorded with every result, as it changes what a policy can show."""
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else bool(is_enabled())


def experiment_dict(exp: Experiment) -> dict[str, Any]:
    """Everything about ``exp``, JSON-safe: the document written as NAME.json."""
    return {
        "schema": SCHEMA,
        "experiment": exp.kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(exp.started)),
        "wall_s": round(exp.wall_s, 2),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "gil": gil_enabled(),
        },
        "service_mode": {
            "name": exp.service,
            "meaning": SERVICE_MODES.get(exp.service or "", None),
        },
        "latency": {
            "unit": "us",
            "latency_us": "from the intended send time (open loop; no coordinated omission)",
            "actual_us": "from the actual send time (what dismember reported)",
        },
        "slo": {
            "percentile": exp.slo_pct,
            "target_us": exp.slo_us,
            "latency": "intended",
            "rule": slo_text(exp),
        },
        "cpu_placement": exp.pin,
        "load": settings_dict(exp.settings),
        "params": exp.params,
        "notes": exp.notes,
        "summary": exp.summary,
        "policies": [pr.to_dict(exp.slo_us, exp.llt_phases) for pr in exp.policies],
    }


def point_line(pt: Point) -> str:
    """A measured point in one progress line."""
    return (
        f"{pt.label} [{pt.phase}] target {fmt_num(pt.target_qps) if pt.paced else 'MAX'}"
        f" -> achieved {fmt_num(pt.achieved_qps)} QPS, p50 "
        f"{fmt_us(pt.p('p50'))} p99 {fmt_us(pt.p('p99'))} "
        f"p99.9 {fmt_us(pt.p('p999'))} us, errors {pt.errors}"
        + (f", unsent {pt.unsent}" if pt.unsent else "")
        + (f", server CPU {fmt_us(pt.server_cpu_us_per_req)} us/req"
           if pt.server_cpu_us_per_req is not None else "")
        + (f" (server busy {pt.detail.get('settle_s')} s before)" if _late_settle(pt) else "")
    )


def _late_settle(pt: Point) -> bool:
    return not pt.detail.get("settled", True) or float(pt.detail.get("settle_s", 0.0)) > 0.5


def summary_table(exp: Experiment) -> str:
    """Per policy: saturation, low-latency throughput, status."""
    headers = [
        "policy",
        "kind",
        "points",
        "max achieved QPS",
        f"low-lat. QPS (p{_pct(exp.slo_pct)}<={fmt_num(exp.slo_us)}us)",
        "status",
    ]
    rows = []
    for pr in exp.policies:
        rows.append(
            [
                pr.label,
                pr.spec.kind,
                len(pr.points),
                fmt_num(pr.saturation_qps()),
                fmt_num(pr.low_latency_throughput(exp.slo_us, exp.llt_phases)),
                pr.status if pr.status == "ok" else f"{pr.status}: {_first_line(pr.error)}",
            ]
        )
    return format_table(headers, rows, [False, False, True, True, True, False])


def _first_line(s: str | None) -> str:
    return (s or "").strip().splitlines()[0][:70] if (s or "").strip() else ""


def points_table(exp: Experiment) -> str:
    """Every load point."""
    headers = [
        "policy",
        "phase",
        "target",
        "offered",
        "achieved",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "p99 actual",
        f"p{_pct(exp.slo_pct)}*",
        "errors",
        "unsent",
        "CPU/req",
    ]
    probes = exp.settings.slo_class() == "probe"
    if probes:
        headers[9:9] = ["probe p50", "probe p99"]
    rows = []
    for pr in exp.policies:
        for pt in pr.points:
            probe_cols = [fmt_us(pt.slo_p("p50")), fmt_us(pt.slo_p("p99"))] if probes else []
            rows.append(
                [
                    pr.label,
                    pt.phase,
                    fmt_num(pt.target_qps) if pt.paced else "MAX",
                    fmt_num(pt.offered_qps),
                    fmt_num(pt.achieved_qps),
                    fmt_us(pt.p("p50")),
                    fmt_us(pt.p("p90")),
                    fmt_us(pt.p("p99")),
                    fmt_us(pt.p("p999")),
                    *probe_cols,
                    fmt_us(pt.actual_us.get("p99")),
                    fmt_us(pt.slo_latency_us) + ("" if pt.meets(exp.slo_us) else " x"),
                    pt.errors,
                    pt.unsent,
                    _cpu_text(pt),
                ]
            )
    right = [False, False] + [True] * (len(headers) - 2)
    return format_table(headers, rows, right)


def header_lines(exp: Experiment) -> list[str]:
    """The lines stating what was measured and how."""
    s, g = exp.settings, exp.settings.load
    probes = (
        f" + {s.probe_conns} probe connections (service {s.probe_service}; like dismember's "
        "master, they measure what ordinary requests suffer)"
        if s.probe_conns
        else ""
    )
    lines = [
        f"skq bench {exp.kind}: {service_text(exp)}",
        f"load: {g.protocol}, {g.connections} connections{probes}, "
        f"{g.processes} generator process(es), "
        f"inter-arrival {g.interarrival}"
        + (f", service mix {g.service}" if g.protocol == "rpc-echo" else "")
        + f", warm-up {g.warmup_s:g} s + {g.duration_s:g} s per point, CPU placement {exp.pin}",
        "latencies in us from the intended send time (open loop); "
        "'p99 actual' from the actual send time",
        slo_text(exp),
    ]
    return lines


def write_outputs(
    exp: Experiment, out_dir: Path, name: str | None, plot: bool, progress: Callable[[str], None]
) -> dict[str, str]:
    """Write NAME.json, NAME.csv and (if ``plot``) NAME.png; returns the paths written."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(exp.started))
    base = name or f"{exp.kind}-{stamp}"
    files: dict[str, str] = {}
    csv_path = write_csv(out_dir / f"{base}.csv", csv_rows(exp), CSV_COLUMNS)
    files["csv"] = str(csv_path)
    if plot:
        try:
            png = out_dir / f"{base}.png"
            if exp.kind == "priority":
                _plot_priority(exp, png)
            else:
                _plot_curves(exp, png)
            files["png"] = str(png)
        except ImportError as exc:
            exp.notes.append(f"no plot: {exc}")
            progress(f"no plot written ({exc})")
    json_path = out_dir / f"{base}.json"
    files["json"] = str(json_path)
    data = experiment_dict(exp)
    data["files"] = files
    write_json(json_path, data)
    return files


def _plot_curves(exp: Experiment, png: Path) -> None:
    series: dict[str, list[tuple[float, float | None]]] = {}
    for pr in exp.policies:
        # one line per policy over the comparable phases; other paced points (e.g. the
        # reference's ramp in the demo) get a line of their own
        groups: dict[str, list[Point]] = {}
        for p in pr.points:
            if not p.paced:
                continue
            main = exp.llt_phases is None or p.phase in exp.llt_phases
            groups.setdefault(pr.label if main else f"{pr.label} ({p.phase})", []).append(p)
        for name, pts in groups.items():
            pts.sort(key=lambda p: p.target_qps)
            series[name] = [(p.achieved_qps, p.slo_p("p99")) for p in pts]
    who = "probe requests' " if exp.settings.slo_class() == "probe" else ""
    plot_latency_curves(
        png,
        series,
        title=f"skq bench {exp.kind}: {who}p99 latency vs achieved throughput",
        ylabel=f"{who}p99 latency, µs (from intended send time, log scale)",
        slo_us=exp.slo_us,
        slo_label=f"SLO p{_pct(exp.slo_pct)} ≤ {fmt_num(exp.slo_us)} µs",
        subtitle=service_text(exp),
    )


def _plot_priority(exp: Experiment, png: Path) -> None:
    rows = exp.summary.get("rows", [])
    groups = [r["config"] for r in rows]
    bars = {
        "rt p99 unloaded": [r.get("rt_p99_unloaded_us") for r in rows],
        "rt p99 loaded": [r.get("rt_p99_loaded_us") for r in rows],
        "normal p99 loaded": [r.get("normal_p99_loaded_us") for r in rows],
    }
    plot_bars(
        png,
        groups,
        bars,
        title="skq bench priority: realtime vs normal p99 (µs, from intended send time)",
        ylabel="p99 latency, µs (log scale)",
    )


def render(exp: Experiment, files: dict[str, str], extra_tables: Sequence[str] = ()) -> str:
    """The text printed at the end: what was measured, the tables, the files written."""
    out = header_lines(exp)
    if exp.notes:
        out += [f"note: {n}" for n in exp.notes]
    out += ["", points_table(exp)]
    out += [
        f"(* p{_pct(exp.slo_pct)} with lost requests counted as infinite; x = misses SLO; "
        "CPU/req = the server's CPU time over the run per reply, us)"
    ]
    out += ["", summary_table(exp)]
    for x in extra_tables:
        out += ["", x]
    out += ["", "written: " + ", ".join(files[k] for k in ("json", "csv", "png") if k in files)]
    return "\n".join(out)


def demo_summary(exp: Experiment, fractions: Sequence[float], state: dict[str, Any]) -> str:
    """The table at ~70 % of the reference's saturation (``fraction_stages`` experiments: demo,
    mixgraph); its rows also go into ``exp.summary``."""
    loads: list[float] = state["loads"] or []
    sat = state["saturation"]
    ref_label = state["reference"]
    probes = exp.settings.slo_class() == "probe"
    who = "probe " if probes else ""
    # the load closest to 70 % of the reference saturation
    frac = min(fractions, key=lambda f: abs(f - 0.7)) if fractions else 0.7
    q70 = loads[fractions.index(frac)] if loads else None
    ref = next((pr for pr in exp.policies if pr.label == ref_label), None)
    ref_pt = ref.point_near(q70, "load") if (ref and q70 is not None) else None
    ref_p99 = ref_pt.slo_p("p99") if ref_pt else None
    rows = []
    summary_rows = []
    for pr in exp.policies:
        pt = pr.point_near(q70, "load") if q70 is not None else None
        p99 = pt.slo_p("p99") if pt else None
        ratio = (p99 / ref_p99) if (p99 and ref_p99) else None
        llt = pr.low_latency_throughput(exp.slo_us, ("load",))
        rows.append(
            [
                pr.label,
                fmt_num(pt.achieved_qps) if pt else "-",
                fmt_us(pt.slo_p("p50")) if pt else "-",
                fmt_us(p99) if pt else "-",
                fmt_us(pt.slo_p("p999")) if pt else "-",
                f"{ratio:.2f}x" if ratio else "-",
                fmt_us(pt.p("p99")) if pt else "-",
                _cpu_text(pt),
                fmt_num(llt),
                pr.status,
            ]
        )
        summary_rows.append(
            {
                "policy": pr.label,
                "achieved_qps_at_70": pt.achieved_qps if pt else None,
                "slo_class": exp.settings.slo_class() or "all",
                "p50_us_at_70": pt.slo_p("p50") if pt else None,
                "p99_us_at_70": p99,
                "p999_us_at_70": pt.slo_p("p999") if pt else None,
                "all_p99_us_at_70": pt.p("p99") if pt else None,
                "server_cpu_us_per_req_at_70": pt.server_cpu_us_per_req if pt else None,
                "p99_ratio_vs_reference": ratio,
                "low_latency_throughput_qps": llt,
                "status": pr.status,
            }
        )
    exp.summary.update(
        reference=ref_label,
        reference_saturation_qps=sat,
        fractions=list(fractions),
        loads_qps=loads,
        load_at_70_qps=q70,
        rows=summary_rows,
    )
    title = (
        f"At ~{frac:.0%} of {ref_label}'s saturation ({fmt_num(sat)} QPS): offered "
        f"{fmt_num(q70)} QPS; {who}latency in us from the intended send time"
    )
    headers = [
        "policy",
        "achieved",
        f"{who}p50",
        f"{who}p99",
        f"{who}p99.9",
        f"p99 vs {ref_label}",
        "all p99",
        "CPU/req",
        f"low-lat. QPS ({who}p{_pct(exp.slo_pct)}<={fmt_num(exp.slo_us)}us)",
        "status",
    ]
    right = [False] + [True] * 8 + [False]
    return title + "\n" + format_table(headers, rows, right)


def _cpu_text(pt: Point | None) -> str:
    """A point's server CPU per request (µs), or "-" when unknown."""
    if pt is None or pt.server_cpu_us_per_req is None:
        return "-"
    return fmt_us(pt.server_cpu_us_per_req)


def class_text(pt: Point) -> str:
    """The rt and normal classes' p99 of a point, to append to its progress line."""
    parts = []
    for k in ("rt", "normal"):
        c = pt.classes.get(k)
        if c is not None and len(pt.classes) > 1:
            parts.append(f"{k} p99 {fmt_us(c['latency_us'].get('p99'))}")
    return (" | " + ", ".join(parts)) if parts else ""


def _cls(pt: Point | None, klass: str, key: str = "p99") -> float | None:
    if pt is None:
        return None
    c = pt.classes.get(klass)
    if c is None:
        return None
    v = c["latency_us"].get(key)
    return None if v is None else float(v)


def priority_summary(exp: Experiment, state: dict[str, Any]) -> str:
    """The realtime class alone and under background load, per server (``skq bench
    priority``); its rows also go into ``exp.summary``."""
    rows = []
    summary_rows = []
    for pr in exp.policies:
        un = next((p for p in pr.points if p.phase == "unloaded"), None)
        lo = next((p for p in pr.points if p.phase == "loaded"), None)
        r: dict[str, Any] = {
            "config": pr.label,
            "rt_p99_unloaded_us": _cls(un, "rt"),
            "rt_p50_loaded_us": _cls(lo, "rt", "p50"),
            "rt_p99_loaded_us": _cls(lo, "rt"),
            "rt_p999_loaded_us": _cls(lo, "rt", "p999"),
            "normal_p99_loaded_us": _cls(lo, "normal"),
            "normal_achieved_qps": (lo.classes.get("normal") or {}).get("achieved_qps")
            if lo
            else None,
            "status": pr.status,
        }
        summary_rows.append(r)
        rows.append(
            [
                pr.label,
                fmt_us(r["rt_p99_unloaded_us"]) if un else "-",
                fmt_us(r["rt_p50_loaded_us"]) if lo else "-",
                fmt_us(r["rt_p99_loaded_us"]) if lo else "-",
                fmt_us(r["normal_p99_loaded_us"]) if lo else "-",
                fmt_num(r["normal_achieved_qps"]),
                pr.status,
            ]
        )
    exp.summary.update(background_qps=state.get("bg_qps"), rows=summary_rows)
    headers = [
        "server",
        "rt p99 alone",
        "rt p50 loaded",
        "rt p99 loaded",
        "normal p99 loaded",
        "normal QPS",
        "status",
    ]
    title = (
        f"Realtime class (bound to {exp.params.get('rt_bind')}) alone, then with background load "
        f"{fmt_num(state.get('bg_qps'))} QPS (µs, from intended send time)"
    )
    right = [False, True, True, True, True, True, False]
    return title + "\n" + format_table(headers, rows, right)
