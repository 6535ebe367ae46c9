"""The report's plots: batch-1 latency distributions and the metric against latency (matplotlib)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks.backends import backend_colour
from tasks.config import BASELINE
from tasks.report_table import STAR, MetricInfo, fmt_ms, is_plotted, num
from tasks.summary import VariantSummary

IMAGE_CAPTIONS = {
    "latency": "Latency per call at batch 1 (box: p25–p75, whiskers: p1–p99)",
    "accuracy_vs_latency": "The task metric against p50 latency at batch 1, with the Pareto "
    "front and the accuracy gate",
}
Point = tuple[float, float, str]


def pareto_front(
    points: Iterable[Sequence[Any]], *, higher_is_better: bool = True
) -> list[Sequence[Any]]:
    """The points not dominated on (lower latency, better metric), by increasing latency.

    Args:
        points: sequences whose item 0 is latency and item 1 the metric; further items (e.g. a
            name) ride along. Points with a missing or non-finite value are ignored.
        higher_is_better: the metric's direction (False for error metrics).

    Returns:
        The front, fastest first (the metric strictly improves along it). Of points with the
        same latency and metric only the first is kept.
    """
    sign = 1.0 if higher_is_better else -1.0
    valid = [p for p in points if num(p[0]) is not None and num(p[1]) is not None]
    front: list[Sequence[Any]] = []
    best = -math.inf
    for point in sorted(valid, key=lambda p: (float(p[0]), -sign * float(p[1]))):
        score = sign * float(point[1])
        if score > best:
            front.append(point)
            best = score
    return front


def _new_figure(width: float, height: float) -> Any:
    """A pyplot-free Agg figure (thread-safe, no global backend switch, nothing leaks)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=130)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path | str) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, format="png", bbox_inches="tight", facecolor="white")
    return target


def _log_x(ax: Any) -> None:
    """Log-scale x axis labelled 0.5, 1, 2, 5, 10 ... instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _empty_plot(fig: Any, message: str) -> None:
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, color="#57606a")
    ax.set_axis_off()


def colour(variant: str) -> str:
    """The variant's backend colour, from the backend registry."""
    return backend_colour(variant)


def latency_series(latencies_ms: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """Variant -> its finite latencies (ndarray), for variants that have any."""
    import numpy as np

    series = {}
    for variant, samples in latencies_ms.items():
        values = np.asarray(samples or [], dtype=float).ravel()
        values = values[np.isfinite(values)]
        if values.size:
            series[str(variant)] = values
    return series


def plot_latency_distribution(
    latencies_ms: Mapping[str, Sequence[float]], path: Path | str, chosen: str | None = None
) -> Path:
    """Writes `latency_figure` as a PNG at `path`."""
    return _save(latency_figure(latencies_ms, chosen), path)


def latency_figure(latencies_ms: Mapping[str, Sequence[float]], chosen: str | None = None) -> Any:
    """Box-and-violin plot of each variant's batch-1 latency per call (log scale if spread).

    Variants without samples are left out; with none at all the image says so.
    """
    data = latency_series(latencies_ms)
    fig = _new_figure(9, 1.3 + 0.6 * max(len(data), 1))
    if not data:
        _empty_plot(fig, "no latency measurements")
        return fig
    ax = fig.add_subplot()
    names, values = list(data), list(data.values())
    positions = list(range(1, len(data) + 1))
    violins = ax.violinplot(values, positions, orientation="horizontal", showextrema=False)
    for body, name in zip(violins["bodies"], names, strict=True):
        body.set(facecolor=colour(name), edgecolor="none", alpha=0.25)
    ax.boxplot(
        values,
        positions=positions,
        orientation="horizontal",
        whis=(1, 99),
        widths=0.28,
        flierprops={"marker": ".", "markersize": 2, "alpha": 0.4, "markeredgecolor": "#57606a"},
        medianprops={"color": "#1f2328", "linewidth": 1.6},
    )
    ax.set_yticks(positions)
    tick_names = [f"{STAR} {name}" if name == chosen else name for name in names]
    for label, name in zip(ax.set_yticklabels(tick_names), names, strict=True):
        label.set_fontweight("bold" if name == chosen else "normal")
    _annotate_percentiles(ax, values)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3, which="both")
    ax.set_xlabel("latency per call at batch 1 (ms)")
    ax.set_title("Batch-1 latency distribution (box p25–p75, whiskers p1–p99)", fontsize=11)
    return fig


def _annotate_percentiles(ax: Any, values: list[Any]) -> None:
    """p50/p99 beside each row; log x axis when p99/p1 across variants exceeds 20."""
    import numpy as np

    p1, p50, p99 = np.array([np.percentile(v, [1, 50, 99]) for v in values]).T
    if p1.min() > 0 and p99.max() / p1.min() > 20:
        _log_x(ax)
    for pos, (mid, tail) in enumerate(zip(p50, p99, strict=True), start=1):
        ax.annotate(
            f"p50 {fmt_ms(mid)} · p99 {fmt_ms(tail)} ms",
            (1.01, pos),
            xycoords=("axes fraction", "data"),
            va="center",
            fontsize=8,
            color="#57606a",
        )


def accuracy_points(summaries: Sequence[VariantSummary], metric: MetricInfo) -> list[Point]:
    """(p50 ms, metric on the report's scale, variant) of the plotted variants that have both."""
    points = []
    for summary in summaries:
        x, y = num(summary.p50_ms), num(summary.metric_value)
        if x is not None and y is not None and is_plotted(summary):
            points.append((x, metric.plotted(y), summary.variant))
    return points


def _baseline_value(summaries: Sequence[VariantSummary], baseline: str) -> float | None:
    """The baseline's metric value: its own record, else what any variant was compared with."""
    for summary in summaries:
        if summary.variant == baseline and num(summary.metric_value) is not None:
            return num(summary.metric_value)
    compared = (num(s.baseline_metric_value) for s in summaries)
    return next((value for value in compared if value is not None), None)


def gate_line(
    summaries: Sequence[VariantSummary], metric: MetricInfo, baseline: str = BASELINE
) -> float | None:
    """Where the accuracy gate lies on the plot's y axis (None without baseline or tolerance)."""
    limit = metric.gate(_baseline_value(summaries, baseline))
    return None if limit is None else metric.plotted(limit)


def plot_accuracy_vs_latency(
    summaries: Sequence[VariantSummary],
    metric: MetricInfo,
    path: Path | str,
    *,
    chosen: str | None = None,
    baseline: str = BASELINE,
) -> Path:
    """Writes `accuracy_figure` as a PNG at `path`."""
    return _save(accuracy_figure(summaries, metric, chosen=chosen, baseline=baseline), path)


def accuracy_figure(
    summaries: Sequence[VariantSummary],
    metric: MetricInfo,
    *,
    chosen: str | None = None,
    baseline: str = BASELINE,
) -> Any:
    """Scatter of the task metric against p50 at batch 1 (ms), with the Pareto front.

    The y axis is the metric (percent for fractions). The accuracy gate is drawn in the metric's
    terms (an absolute drop below the baseline for fractions, a relative rise of an error) and
    the side it rejects is shaded. FAILED and SKIPPED variants are not drawn.
    """
    points = accuracy_points(summaries, metric)
    fig = _new_figure(9, 5.6)
    if not points:
        _empty_plot(fig, "no variant has both a latency and a metric value")
        return fig
    ax = fig.add_subplot()
    front = pareto_front(points, higher_is_better=metric.higher_is_better)
    ax.plot(
        [p[0] for p in front],
        [p[1] for p in front],
        drawstyle="steps-post",
        linestyle="--",
        color="#8c959f",
        zorder=1,
        label="Pareto front",
    )
    for x, y, name in points:
        marker = "s" if name == baseline else "o"
        ax.scatter(x, y, s=60, marker=marker, color=colour(name), edgecolor="white", zorder=3)
    _mark_special(ax, points, chosen, baseline)
    _draw_gate(ax, points, metric, gate_line(summaries, metric, baseline))
    xs = [p[0] for p in points]
    if min(xs) > 0 and max(xs) / min(xs) > 10:
        _log_x(ax)
    ax.margins(x=0.12, y=0.15)
    ax.grid(alpha=0.3, which="both")
    ax.set_xlabel("p50 latency at batch 1 (ms), lower is better")
    ax.set_ylabel(metric.axis_label)
    ax.set_title(f"{metric.title} vs latency", fontsize=11)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=4, frameon=False, fontsize=9)
    fig.tight_layout()
    _place_labels(fig, ax, points, chosen)
    return fig


def _mark_special(ax: Any, points: list[Point], chosen: str | None, baseline: str) -> None:
    for x, y, name in points:
        if name == chosen:
            ax.scatter(
                x,
                y,
                s=320,
                marker="*",
                color="#bf8700",
                edgecolor="#1f2328",
                linewidth=0.8,
                zorder=4,
                label=f"chosen ({name})",
            )
        if name == baseline:
            ax.scatter(
                x,
                y,
                s=110,
                marker="s",
                facecolor="none",
                edgecolor="#1f2328",
                linewidth=1.2,
                zorder=4,
                label=f"baseline ({name})",
            )


def _draw_gate(ax: Any, points: list[Point], metric: MetricInfo, gate: float | None) -> None:
    """The gate as a dotted line; the rejected side shaded when a point lies there."""
    if gate is None:
        return
    ax.axhline(
        gate, color="#cf222e", linestyle=":", linewidth=1, zorder=0, label=metric.gate_legend()
    )
    ys = [y for _, y, _ in points]
    spread = max(max(ys) - min(ys), abs(gate) * 0.01, 1e-9)
    if metric.higher_is_better and min(ys) < gate:
        ax.axhspan(min(ys) - spread, gate, color="#cf222e", alpha=0.06, zorder=0)
    elif not metric.higher_is_better and max(ys) > gate:
        ax.axhspan(gate, max(ys) + spread, color="#cf222e", alpha=0.06, zorder=0)
    low, high = min([*ys, gate]), max([*ys, gate])
    pad = 0.15 * max(high - low, spread)
    ax.set_ylim(low - pad, high + pad)


_LABEL_OFFSETS = (
    (7, 5, "left", "bottom"),
    (7, -5, "left", "top"),
    (-7, 5, "right", "bottom"),
    (-7, -5, "right", "top"),
    (0, 14, "center", "bottom"),
    (0, -14, "center", "top"),
    (9, 18, "left", "bottom"),
    (9, -18, "left", "top"),
    (-9, 18, "right", "bottom"),
    (-9, -18, "right", "top"),
)


def _place_labels(fig: Any, ax: Any, points: list[Point], chosen: str | None) -> None:
    """Label each point, trying a few offsets so labels avoid each other and the markers."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    to_display = ax.transData.transform
    taken = [Bbox.from_bounds(*(to_display((x, y)) - 6), 12, 12) for x, y, _ in points]
    for x, y, name in sorted(points):
        text = f"{STAR} {name}" if name == chosen else name
        weight = "bold" if name == chosen else "normal"
        label = None
        for dx, dy, ha, va in _LABEL_OFFSETS:
            if label is not None:
                label.remove()
            label = ax.annotate(
                text,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                ha=ha,
                va=va,
                fontsize=9,
                fontweight=weight,
            )
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in taken):
                break
        taken.append(box)
