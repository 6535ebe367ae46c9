"""The comparison report: Markdown and HTML tables, latency/accuracy plots and results.json."""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks.config import BASELINE

logger = logging.getLogger(__name__)

Row = Mapping[str, Any]
ROW_KEYS = (
    "variant",
    "status",
    "reason",
    "metric",
    "metric_delta",
    "agreement",
    "max_abs_error",
    "p50_ms",
    "p99_ms",
    "throughput",
    "size_bytes",
    "conversion_s",
    "speedup",
    "latencies_ms",
    "selected_reason",
    "rejections",
)
"""Keys a row may carry (any may be missing or None). Fractions (metric, metric_delta,
agreement) are in [0, 1]; p50/p99/latencies are ms per call at batch 1; throughput is
samples/s at the largest batch; speedup is baseline p50 / variant p50."""
MISSING = "—"
STAR = "★"
IMAGE_CAPTIONS = {
    "latency": "Latency per call at batch 1 (box: p25–p75, whiskers: p1–p99)",
    "accuracy_vs_latency": "Top-1 vs p50 latency at batch 1, with the Pareto front",
}
_METRIC_LABELS = {"top1": "top-1", "agreement": "agreement"}
_BACKEND_COLOURS = {"tf": "#4c72b0", "tflite": "#dd8452", "tftrt": "#55a868"}


def _num(value: Any) -> float | None:
    """The value as a finite float, else None (missing, NaN, not a number)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _fmt(value: Any, render: Callable[[float], str]) -> str:
    number = _num(value)
    return MISSING if number is None else render(number)


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


COLUMNS: tuple[tuple[str, str, Callable[[Row], str]], ...] = (
    ("top-1", "r", lambda r: _fmt(r.get("metric"), lambda v: f"{v * 100:.2f} %")),
    ("Δ (points)", "r", lambda r: _fmt(r.get("metric_delta"), lambda v: f"{v * 100:+.2f}")),
    ("agreement", "r", lambda r: _fmt(r.get("agreement"), lambda v: f"{v * 100:.2f} %")),
    ("p50 ms", "r", lambda r: _fmt(r.get("p50_ms"), _ms)),
    ("p99 ms", "r", lambda r: _fmt(r.get("p99_ms"), _ms)),
    ("speed-up", "r", lambda r: _fmt(r.get("speedup"), lambda v: f"{v:.2f}×")),
    ("throughput /s", "r", lambda r: _fmt(r.get("throughput"), _rate)),
    ("size MB", "r", lambda r: _fmt(r.get("size_bytes"), lambda v: f"{v / 1e6:.2f}")),
    ("conversion s", "r", lambda r: _fmt(r.get("conversion_s"), lambda v: f"{v:.1f}")),
)
"""Numeric columns after variant, status and reason: header, alignment, cell renderer.

The first header is replaced by the rows' metric label (see `_metric_label`)."""


def _metric_label(rows: Iterable[Row]) -> str:
    """How the task metric is called: `top-1` unless the rows name another `metric_name`."""
    name = next((str(r["metric_name"]) for r in rows if r.get("metric_name")), "top1")
    return _METRIC_LABELS.get(name, name)


def _headers(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """(header, alignment) of each numeric column for these rows."""
    label = _metric_label(rows)
    return [(label if i == 0 else name, a) for i, (name, a, _) in enumerate(COLUMNS)]


def _note(rows: Sequence[Row]) -> str:
    return (
        f"{STAR} chosen. Δ is {_metric_label(rows)} minus the baseline's, in percentage points; "
        "latencies are per call at batch 1; throughput is at the largest batch size."
    )


def _with_rejections(rows: Sequence[Row], info: Mapping[str, Any]) -> list[Row]:
    """Rows with the policy's rejections (`info["rejections"]`: variant -> reason) merged in."""
    given = info.get("rejections") or {}
    if not isinstance(given, Mapping):
        return list(rows)
    merged: list[Row] = []
    for row in rows:
        extra = given.get(row.get("variant"))
        if extra:
            extra = [extra] if isinstance(extra, str) else list(extra)
            known = _rejections(row)
            row = {**row, "rejections": known + [e for e in map(str, extra) if e not in known]}
        merged.append(row)
    return merged


def _status(row: Row) -> str:
    return str(row.get("status") or "").upper() or MISSING


def _rejections(row: Row) -> list[str]:
    value = row.get("rejections") or []
    return [value] if isinstance(value, str) else [str(item) for item in value]


def _reason(row: Row, chosen: str | None) -> str:
    if row.get("reason"):
        return str(row["reason"])
    if row.get("variant") == chosen:
        return "selected"
    return "; ".join(_rejections(row))


def _info(info: Mapping[str, Any], *keys: str) -> Any:
    """The first present value among `keys` (run info comes from several callers)."""
    for key in keys:
        if info.get(key) not in (None, ""):
            return info[key]
    return None


def _header_items(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    tolerance = _num(_info(info, "accuracy_tolerance", "tolerance"))
    slo = _num(_info(info, "latency_slo_ms", "slo_ms", "slo"))
    policy = f"objective {_info(info, 'objective') or 'latency'}"
    if tolerance is not None:
        policy += f", max metric drop {tolerance * 100:.2f} points"
    policy += f", p99 SLO {slo:g} ms" if slo is not None else ", no latency SLO"
    items = [
        ("Model", _info(info, "model_name", "registered_model_name", "model")),
        ("Run", _info(info, "run_id", "run")),
        ("Hardware", _info(info, "hardware", "hardware_class")),
        ("Policy", policy),
        ("Batch sizes", _info(info, "batch_sizes")),
        ("Created", _info(info, "created_at", "created")),
    ]
    return [(label, _text(value)) for label, value in items if value not in (None, "")]


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


def _find(rows: Iterable[Row], variant: str | None) -> Row | None:
    return next((row for row in rows if row.get("variant") == variant), None)


def why_line(rows: Sequence[Row], chosen: str | None, info: Mapping[str, Any]) -> str:
    """One sentence saying what was chosen and why (given, or derived from the row)."""
    given = _info(info, "why", "selection_reason")
    row = _find(rows, chosen)
    if chosen is None or row is None:
        return str(given or "No variant was chosen.")
    if given or row.get("selected_reason"):
        text = str(given or row["selected_reason"])
        return text if chosen in text else f"{chosen}: {text}"
    objective = _info(info, "objective") or "latency"
    parts = [f"{chosen} was selected (objective: {objective})"]
    if objective == "throughput" and _num(row.get("throughput")) is not None:
        parts.append(f"{_rate(float(row['throughput']))} samples/s")
    elif _num(row.get("p50_ms")) is not None:
        parts.append(f"p50 {_ms(float(row['p50_ms']))} ms at batch 1")
    if _num(row.get("speedup")) is not None:
        parts.append(f"{float(row['speedup']):.2f}× the baseline's speed")
    if _num(row.get("metric_delta")) is not None:
        delta = float(row["metric_delta"]) * 100
        parts.append(f"{_metric_label(rows)} {delta:+.2f} points vs the baseline")
    return "; ".join(parts) + "."


def _md(text: Any) -> str:
    """Text safe inside a Markdown table cell (no raw HTML, no pipes, one line)."""
    flat = " ".join(str(text).split())
    return html.escape(flat, quote=False).replace("|", "\\|")


def render_markdown(rows: Sequence[Row], chosen: str | None, info: Mapping[str, Any]) -> str:
    """The comparison as Markdown: header, why line, table (chosen marked), rejections."""
    title = _info(info, "model_name", "registered_model_name", "model") or "model"
    lines = [f"# tfopt report: {_md(title)}", ""]
    lines += [f"- **{label}**: {_md(value)}" for label, value in _header_items(info)]
    lines += ["", f"**Why:** {_md(why_line(rows, chosen, info))}", ""]
    rows = _with_rejections(rows, info)
    headers = ["variant", "status", "reason", *(name for name, _ in _headers(rows))]
    aligns = [":--", ":--", ":--", *("--:" if a == "r" else ":--" for _, a in _headers(rows))]
    lines += ["| " + " | ".join(headers) + " |", "| " + " | ".join(aligns) + " |"]
    for row in rows:
        name = _md(row.get("variant") or MISSING)
        if row.get("variant") == chosen:
            name = f"**{STAR} {name}**"
        cells = [name, _md(_status(row)), _md(_reason(row, chosen))]
        cells += [_md(render(row)) for _, _, render in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _note(rows)]
    rejected = [(row.get("variant"), _rejections(row)) for row in rows if _rejections(row)]
    if rejected:
        lines += ["", "## Rejections", ""]
        lines += [f"- {_md(name)}: {_md('; '.join(reasons))}" for name, reasons in rejected]
    return "\n".join(lines) + "\n"


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
margin:2rem auto;max-width:1200px;padding:0 1rem}
h1{font-size:1.5rem;margin:0 0 .5rem}h2{font-size:1.15rem;margin-top:2rem}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:0 0 1rem}
dl.meta dt{font-weight:600;color:#57606a}dl.meta dd{margin:0}
.why{background:#f6f8fa;border-left:4px solid #bf8700;padding:.6rem .9rem;margin:1rem 0}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:.4rem .55rem;border-bottom:1px solid #d0d7de;text-align:left;vertical-align:top}
th{background:#f6f8fa;position:sticky;top:0}td.r,th.r{text-align:right;white-space:nowrap}
tr.chosen td{background:#fff8c5;font-weight:600}td.reason{color:#57606a;max-width:22rem}
.status{display:inline-block;padding:0 .45rem;border-radius:1rem;color:#fff;font-size:12px;
background:#6e7781}.status-ok{background:#1a7f37}.status-failed{background:#cf222e}
.scroll{overflow-x:auto}td.v{white-space:nowrap}
.note{color:#57606a;font-size:12px}figure{margin:1.5rem 0}
figure img{max-width:100%;border:1px solid #d0d7de;border-radius:6px}
figcaption{color:#57606a;font-size:12px}
"""


def _html_table(rows: Sequence[Row], chosen: str | None) -> list[str]:
    esc = html.escape
    head = "".join(f'<th class="{a}">{esc(name)}</th>' for name, a in _headers(rows))
    fixed = "<th>variant</th><th>status</th><th>reason</th>"
    out = [f'<div class="scroll"><table><thead><tr>{fixed}{head}</tr></thead><tbody>']
    for row in rows:
        is_chosen = row.get("variant") == chosen
        status = _status(row)
        name = esc(str(row.get("variant") or MISSING))
        cells = [
            f'<td class="v">{STAR + " " if is_chosen else ""}{name}</td>',
            f'<td><span class="status status-{esc(status.lower())}">{esc(status)}</span></td>',
            f'<td class="reason">{esc(_reason(row, chosen))}</td>',
            *(f'<td class="{a}">{esc(render(row))}</td>' for _, a, render in COLUMNS),
        ]
        row_class = ' class="chosen"' if is_chosen else ""
        out.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    out.append("</tbody></table></div>")
    return out


def _image_src(path: str, inline: bool, base_dir: Path | None) -> str:
    """A data URI when inlining and the file exists, else the relative path."""
    file = (base_dir / path) if base_dir is not None else Path(path)
    if inline:
        try:
            return "data:image/png;base64," + base64.b64encode(file.read_bytes()).decode("ascii")
        except OSError:
            logger.warning("cannot inline %s; linking it by relative path", file)
    return path


def render_html(
    rows: Sequence[Row],
    chosen: str | None,
    info: Mapping[str, Any],
    images: Mapping[str, str] | None = None,
    *,
    inline_images: bool = False,
    base_dir: Path | None = None,
) -> str:
    """A self-contained HTML page (inline CSS, no external assets) with the table and plots.

    Args:
        rows: per-variant rows (see `ROW_KEYS`); any value may be missing.
        chosen: the selected variant's name, or None.
        info: run info (model_name, run_id, hardware, objective, accuracy_tolerance, ...).
        images: plot name -> PNG path relative to the page.
        inline_images: embed the PNGs as base64 data URIs (read from `base_dir`).
        base_dir: where relative image paths are resolved when inlining.
    """
    esc = html.escape
    rows = _with_rejections(rows, info)
    title = _info(info, "model_name", "registered_model_name", "model") or "model"
    meta = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in _header_items(info))
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>tfopt report: {esc(str(title))}</title><style>{_CSS}</style></head><body>",
        f'<h1>tfopt report: {esc(str(title))}</h1><dl class="meta">{meta}</dl>',
        f'<p class="why"><strong>Why:</strong> {esc(why_line(rows, chosen, info))}</p>',
        *_html_table(rows, chosen),
        f'<p class="note">{esc(_note(rows))}</p>',
    ]
    rejected = [(row.get("variant"), _rejections(row)) for row in rows if _rejections(row)]
    if rejected:
        items = "".join(f"<li><b>{esc(str(n))}</b>: {esc('; '.join(r))}</li>" for n, r in rejected)
        parts.append(f"<h2>Rejections</h2><ul>{items}</ul>")
    for name, path in (images or {}).items():
        src = _image_src(path, inline_images, base_dir)
        caption = esc(IMAGE_CAPTIONS.get(name, name))
        parts.append(
            f'<figure><img src="{esc(src)}" alt="{caption}"><figcaption>{caption}</figcaption>'
            "</figure>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def pareto_front(points: Iterable[Sequence[Any]]) -> list[Sequence[Any]]:
    """The points not dominated on (lower latency, higher accuracy), by increasing latency.

    Args:
        points: sequences whose item 0 is latency and item 1 accuracy; further items (e.g. a
            name) ride along. Points with a missing or non-finite value are ignored.

    Returns:
        The front, fastest first (accuracy strictly increases along it). Of points with the
        same latency and accuracy only the first is kept.
    """
    valid = [p for p in points if _num(p[0]) is not None and _num(p[1]) is not None]
    front: list[Sequence[Any]] = []
    best = -math.inf
    for point in sorted(valid, key=lambda p: (float(p[0]), -float(p[1]))):
        if float(point[1]) > best:
            front.append(point)
            best = float(point[1])
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


def plot_latency_distribution(
    rows: Sequence[Row], path: Path | str, chosen: str | None = None
) -> Path:
    """Box-and-violin plot of each variant's batch-1 latency per call (log scale if spread).

    Rows without `latencies_ms` are left out; with none at all the image says so.
    """
    data = _latency_series(rows)
    fig = _new_figure(9, 1.3 + 0.6 * max(len(data), 1))
    if not data:
        _empty_plot(fig, "no latency measurements")
        return _save(fig, path)
    ax = fig.add_subplot()
    names, values = list(data), list(data.values())
    positions = list(range(1, len(data) + 1))
    violins = ax.violinplot(values, positions, orientation="horizontal", showextrema=False)
    for body, name in zip(violins["bodies"], names, strict=True):
        body.set(facecolor=_colour(name), edgecolor="none", alpha=0.25)
    ax.boxplot(
        values,
        positions=positions,
        orientation="horizontal",
        whis=(1, 99),
        widths=0.28,
        flierprops={"marker": ".", "markersize": 2, "alpha": 0.4, "markeredgecolor": "#57606a"},
        medianprops={"color": "#1f2328", "linewidth": 1.6},
    )
    tick_names = [f"{STAR} {name}" if name == chosen else name for name in names]
    ax.set_yticks(positions)
    for label, name in zip(ax.set_yticklabels(tick_names), names, strict=True):
        label.set_fontweight("bold" if name == chosen else "normal")
    _annotate_percentiles(ax, values)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3, which="both")
    ax.set_xlabel("latency per call at batch 1 (ms)")
    ax.set_title("Batch-1 latency distribution (box p25–p75, whiskers p1–p99)", fontsize=11)
    return _save(fig, path)


def _latency_series(rows: Sequence[Row]) -> dict[str, Any]:
    """Variant -> finite batch-1 latencies (ndarray), for rows that have any."""
    import numpy as np

    series = {}
    for row in rows:
        values = np.asarray(row.get("latencies_ms") or [], dtype=float).ravel()
        values = values[np.isfinite(values)]
        if values.size:
            series[str(row.get("variant"))] = values
    return series


def _annotate_percentiles(ax: Any, values: list[Any]) -> None:
    """p50/p99 beside each row; log x axis when p99/p1 across variants exceeds 20."""
    import numpy as np

    p1, p50, p99 = np.array([np.percentile(v, [1, 50, 99]) for v in values]).T
    if p1.min() > 0 and p99.max() / p1.min() > 20:
        _log_x(ax)
    for pos, (mid, tail) in enumerate(zip(p50, p99, strict=True), start=1):
        ax.annotate(
            f"p50 {_ms(mid)} · p99 {_ms(tail)} ms",
            (1.01, pos),
            xycoords=("axes fraction", "data"),
            va="center",
            fontsize=8,
            color="#57606a",
        )


def _colour(variant: str) -> str:
    return _BACKEND_COLOURS.get(variant.split(":")[0], "#8172b3")


def _accuracy_points(rows: Sequence[Row]) -> list[tuple[float, float, str]]:
    points = []
    for row in rows:
        x, y = _num(row.get("p50_ms")), _num(row.get("metric"))
        if x is not None and y is not None and _status(row) in ("OK", MISSING):
            points.append((x, y * 100, str(row.get("variant"))))
    return points


def plot_accuracy_vs_latency(
    rows: Sequence[Row],
    chosen: str | None,
    path: Path | str,
    *,
    tolerance: float | None = None,
    baseline: str = BASELINE,
) -> Path:
    """Scatter of top-1 (%) against p50 at batch 1 (ms), with the Pareto front as a step line.

    The chosen variant is starred, the baseline drawn as a square; with `tolerance` (absolute
    top-1 fraction) the accuracy gate below the baseline is drawn and shaded.
    """
    points = _accuracy_points(rows)
    fig = _new_figure(9, 5.6)
    if not points:
        _empty_plot(fig, "no variant has both a latency and an accuracy")
        return _save(fig, path)
    ax = fig.add_subplot()
    front = pareto_front(points)
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
        ax.scatter(x, y, s=60, marker=marker, color=_colour(name), edgecolor="white", zorder=3)
    _mark_special(ax, points, chosen, baseline)
    _draw_gate(ax, points, baseline, tolerance)
    xs = [p[0] for p in points]
    if min(xs) > 0 and max(xs) / min(xs) > 10:
        _log_x(ax)
    ax.margins(x=0.12, y=0.15)
    ax.grid(alpha=0.3, which="both")
    ax.set_xlabel("p50 latency at batch 1 (ms), lower is better")
    ax.set_ylabel(f"{_metric_label(rows)} (%), higher is better")
    ax.set_title("Accuracy vs latency", fontsize=11)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=4, frameon=False, fontsize=9)
    fig.tight_layout()
    _place_labels(fig, ax, points, chosen)
    return _save(fig, path)


def _mark_special(ax: Any, points: list, chosen: str | None, baseline: str) -> None:
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


def _draw_gate(ax: Any, points: list, baseline: str, tolerance: float | None) -> None:
    base = next((y for _, y, name in points if name == baseline), None)
    if base is None or tolerance is None:
        return
    gate = base - tolerance * 100
    ax.axhline(
        gate,
        color="#cf222e",
        linestyle=":",
        linewidth=1,
        zorder=0,
        label=f"accuracy gate (−{tolerance * 100:g} points)",
    )
    lowest = min(y for _, y, _ in points)
    if lowest < gate:
        ax.axhspan(lowest - 1, gate, color="#cf222e", alpha=0.06, zorder=0)
        ax.set_ylim(bottom=lowest - 0.15 * (base - lowest + 0.1))


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


def _place_labels(fig: Any, ax: Any, points: list, chosen: str | None) -> None:
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


def _json_safe(value: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays to Python, NaN/Inf to None, paths to str."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, str | bool) or value is None:
        return str(value) if isinstance(value, str) else value
    if hasattr(value, "tolist"):
        return _json_safe(value.tolist())
    if isinstance(value, list | tuple | set):
        return [_json_safe(v) for v in value]
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def write_report(
    rows: Sequence[Row],
    chosen: str | None,
    info: Mapping[str, Any],
    out_dir: Path | str,
    *,
    inline_images: bool = True,
) -> dict[str, Path]:
    """Write report.md, report.html, latency.png, accuracy_vs_latency.png, results.json.

    A plot that fails is logged and left out; the tables are always written.

    Returns:
        File name -> path of each file written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tolerance = _num(_info(info, "accuracy_tolerance", "tolerance"))
    plots: dict[str, Callable[[Path], Path]] = {
        "latency": lambda p: plot_latency_distribution(rows, p, chosen=chosen),
        "accuracy_vs_latency": lambda p: plot_accuracy_vs_latency(
            rows, chosen, p, tolerance=tolerance
        ),
    }
    written: dict[str, Path] = {}
    images: dict[str, str] = {}
    for name, plot in plots.items():
        try:
            written[f"{name}.png"] = plot(out / f"{name}.png")
            images[name] = f"{name}.png"
        except Exception:
            logger.exception("could not draw the %s plot; the report goes without it", name)
    texts = {
        "report.md": render_markdown(rows, chosen, info),
        "report.html": render_html(
            rows, chosen, info, images, inline_images=inline_images, base_dir=out
        ),
        "results.json": json.dumps(
            _json_safe({"rows": list(rows), "chosen": chosen, "info": info}),
            indent=2,
            allow_nan=False,
            ensure_ascii=False,
        ),
    }
    for file_name, text in texts.items():
        written[file_name] = out / file_name
        written[file_name].write_text(text, encoding="utf-8")
    logger.info("report for %d variant(s) written to %s", len(rows), out)
    return written
