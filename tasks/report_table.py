"""The comparison table's content, the same for every output format: columns, cells, header facts.

Cells and header facts are plain text here; each renderer (Markdown, HTML, plain text) escapes
them for its own format.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tasks.results import Status
from tasks.summary import VariantSummary, Verdict

MISSING = "—"
STAR = "★"
MAX_NAMES_LISTED = 8


def num(value: Any) -> float | None:
    """The value as a finite float, else None (missing, NaN, Inf, not a number)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _fmt(value: Any, render: Callable[[float], str]) -> str:
    number = num(value)
    return MISSING if number is None else render(number)


def fmt_ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _plain_number(value: float) -> str:
    """Four decimals for everyday magnitudes, four significant digits otherwise."""
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4f}"
    return f"{value:.4g}"


@dataclass(frozen=True)
class MetricInfo:
    """The run's task metric as the report shows it (results.json `run["metric"]`).

    Higher-is-better metrics (top1, top5, map50, map, fidelity) are fractions in [0, 1], shown
    in percent with deltas in points; error metrics (mae, rmse) are shown in their own units
    with deltas relative to the baseline's value.
    """

    name: str
    title: str
    higher_is_better: bool
    tolerance: float | None = None
    tolerance_meaning: str = ""
    output: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_run(cls, run: Mapping[str, Any]) -> MetricInfo:
        """Reads `run["metric"]`; raises ValueError naming what is missing."""
        metric = run.get("metric")
        if not isinstance(metric, Mapping) or "name" not in metric:
            raise ValueError('the run block needs "metric" with at least "name" and "title"')
        return cls(
            name=str(metric["name"]),
            title=str(metric.get("title") or metric["name"]),
            higher_is_better=bool(metric.get("higher_is_better", True)),
            tolerance=num(metric.get("tolerance")),
            tolerance_meaning=str(metric.get("tolerance_meaning") or ""),
            output=dict(metric.get("output") or {}),
        )

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    @property
    def axis_label(self) -> str:
        unit = " (%)" if self.higher_is_better else ""
        return f"{self.title}{unit}, {self.direction}"

    @property
    def delta_header(self) -> str:
        return "Δ (points)" if self.higher_is_better else "Δ (relative %)"

    def plotted(self, value: float) -> float:
        """The value on the report's scale: percent for fractions, as is for errors."""
        return value * 100 if self.higher_is_better else value

    def value_text(self, value: Any) -> str:
        if self.higher_is_better:
            return _fmt(value, lambda v: f"{v * 100:.2f} %")
        return _fmt(value, _plain_number)

    def delta_text(self, summary: VariantSummary) -> str:
        """Variant minus baseline: points for fractions, relative % for errors."""
        delta = num(summary.metric_delta)
        if delta is None:
            return MISSING
        if self.higher_is_better:
            return f"{delta * 100:+.2f}"
        base = num(summary.baseline_metric_value)
        if base:
            return f"{delta / abs(base) * 100:+.1f} %"
        return f"{delta:+.4g} (absolute)"

    def gate(self, baseline_value: float | None) -> float | None:
        """The worst value the gate lets through, in metric units; None without a tolerance."""
        if baseline_value is None or self.tolerance is None:
            return None
        if self.higher_is_better:
            return baseline_value - self.tolerance
        return baseline_value * (1 + self.tolerance)

    def tolerance_text(self) -> str:
        """The tolerance in the metric's terms, e.g. `1.00 points` or `5.0 % relative`."""
        if self.tolerance is None:
            return "none set"
        if self.higher_is_better:
            return f"{self.tolerance * 100:.2f} points below the baseline's {self.title}"
        return f"{self.tolerance * 100:.1f} % above the baseline's {self.title}"

    def gate_legend(self) -> str:
        if self.tolerance is None:
            return "accuracy gate"
        amount = f"{self.tolerance * 100:g}"
        if self.higher_is_better:
            return f"accuracy gate (−{amount} point{'' if amount == '1' else 's'})"
        return f"accuracy gate (+{amount} % error)"


@dataclass(frozen=True)
class Column:
    """One table column: its key, header, whether it holds numbers, and its cell text."""

    key: str
    header: str
    numeric: bool
    cell: Callable[[VariantSummary], str]


def verdict_text(summary: VariantSummary) -> str:
    """The verdict's name, or the status when no verdict was set."""
    if summary.verdict is not None:
        return summary.verdict.value
    return summary.status.value.lower()


def reason_text(summary: VariantSummary) -> str:
    return summary.verdict_reason or summary.reason or ""


def is_chosen(summary: VariantSummary) -> bool:
    return summary.verdict is Verdict.CHOSEN


def is_plotted(summary: VariantSummary) -> bool:
    """FAILED and SKIPPED variants stay in the tables but are left out of the plots."""
    return summary.status is Status.OK and summary.verdict not in (Verdict.FAILED, Verdict.SKIPPED)


def _tf_share(summary: VariantSummary) -> str:
    if not summary.split:
        return MISSING
    return _fmt(summary.split.get("prefix_share"), lambda v: f"{v * 100:.0f} %")


def _max_error(summary: VariantSummary) -> str:
    return _fmt(summary.max_abs_error, "{:.3g}".format)


def columns(metric: MetricInfo, summaries: Sequence[VariantSummary]) -> list[Column]:
    """The table's columns for these variants (`in TF` only when some variant is split)."""
    cols = [
        Column("variant", "variant", False, lambda s: s.variant),
        Column("verdict", "verdict", False, verdict_text),
        Column("reason", "reason", False, reason_text),
        Column("metric", metric.title, True, lambda s: metric.value_text(s.metric_value)),
        Column("baseline", "baseline", True, lambda s: metric.value_text(s.baseline_metric_value)),
        Column("delta", metric.delta_header, True, metric.delta_text),
        Column("max_abs_error", "max abs error", True, _max_error),
        Column("p50_ms", "p50 ms", True, lambda s: _fmt(s.p50_ms, fmt_ms)),
        Column("p99_ms", "p99 ms", True, lambda s: _fmt(s.p99_ms, fmt_ms)),
        Column("speedup", "speed-up", True, lambda s: _fmt(s.speedup, lambda v: f"{v:.2f}×")),
        Column("throughput", "throughput /s", True, lambda s: _fmt(s.throughput, _rate)),
        Column("size", "size MB", True, lambda s: _fmt(s.size_bytes, lambda v: f"{v / 1e6:.2f}")),
        Column(
            "conversion_s", "conversion s", True, lambda s: _fmt(s.conversion_s, "{:.1f}".format)
        ),
    ]
    if any(s.split for s in summaries):
        cols.append(Column("tf_share", "in TF", True, _tf_share))
    return cols


def batch_1_variants(summaries: Sequence[VariantSummary]) -> list[str]:
    """Variants built for batch 1 only (LiteRT on recurrent loops), in table order."""
    return [s.variant for s in summaries if s.conversion_summary.get("static_batch") == 1]


def table_note(metric: MetricInfo, *, split: bool, batch_1: Sequence[str] = ()) -> str:
    """The legend under the table."""
    if metric.higher_is_better:
        delta = f"Δ is {metric.title} minus the baseline's, in percentage points"
    else:
        delta = f"Δ is the change of {metric.title} relative to the baseline's, in %"
    note = (
        f"{STAR} chosen. {delta} ({metric.direction}); latencies are per call at batch 1; "
        "throughput is at the best batch size."
    )
    if split:
        note += ' "in TF" is the share of the batch-1 latency spent in ops kept in TensorFlow.'
    if batch_1:
        note += (
            f" {', '.join(batch_1)} {'is' if len(batch_1) == 1 else 'are'} built for batch 1 "
            "(LiteRT cannot build the model's recurrent loops for a free batch): a larger batch "
            "runs one sample per call."
        )
    return note


def _names_text(names: Any) -> str:
    """A list of op or tensor names (a mapping reads as name -> count), at most 8 of them."""
    if isinstance(names, Mapping):
        listed = [f"{name} ×{count}" for name, count in names.items()]
    elif isinstance(names, str):
        listed = [names]
    else:
        listed = [str(name) for name in names or ()]
    shown = ", ".join(listed[:MAX_NAMES_LISTED])
    more = len(listed) - MAX_NAMES_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def split_lines(summaries: Sequence[VariantSummary]) -> list[tuple[str, str]]:
    """(variant, what stayed in TensorFlow and its share of the latency) for split variants."""
    lines = []
    for summary in summaries:
        split = summary.split
        if not split:
            continue
        text = f"{_names_text(split.get('tf_ops')) or 'no ops listed'} stayed in TensorFlow"
        if split.get("boundary"):
            text += f" (boundary {_names_text(split['boundary'])})"
        share = num(split.get("prefix_share"))
        text += (
            f"; {share * 100:.1f} % of the batch-1 latency"
            if share is not None
            else "; its share of the latency was not measured"
        )
        lines.append((summary.variant, text))
    return lines


def calibration_text(calibration: Mapping[str, Any] | None) -> str:
    """Where INT8 calibration samples came from: a URI, a held-out eval slice, or none."""
    if not calibration:
        return "not recorded"
    source = str(calibration.get("source") or "unknown")
    count = calibration.get("num_samples", calibration.get("samples"))
    holdout = calibration.get("holdout")
    if isinstance(holdout, Mapping):
        text = (
            f"{source}: {holdout.get('count', count)} samples of {calibration.get('uri')} "
            f"(seed {holdout.get('seed')}), excluded from validation"
        )
        return text
    if calibration.get("uri"):
        samples = f" ({count} samples)" if count is not None else ""
        return f"{calibration['uri']}{samples}" + (
            "" if source == "calibration_data_uri" else f" ({source})"
        )
    return source


def _policy_text(run: Mapping[str, Any]) -> str:
    slo = num(run.get("latency_slo_ms"))
    text = f"objective {run.get('objective') or 'latency'}"
    return text + (f", p99 budget {slo:g} ms at batch 1" if slo is not None else ", no latency SLO")


def _metric_text(metric: MetricInfo) -> str:
    text = f"{metric.title} ({metric.name}), {metric.direction}"
    if metric.output:
        text += "; reads " + ", ".join(f"{role}={name}" for role, name in metric.output.items())
    return text


def _gate_text(metric: MetricInfo) -> str:
    if metric.tolerance is None:
        return "no tolerance set"
    text = f"tolerance {metric.tolerance:g}"
    if metric.tolerance_meaning:
        text += f" = {metric.tolerance_meaning}"
    return f"{text}: a variant may fall at most {metric.tolerance_text()}"


def _registration_text(registration: Mapping[str, Any]) -> str | None:
    version = registration.get("model_version")
    if version in (None, ""):
        return None
    name = registration.get("registered_model_name") or "model"
    alias = "champion" if registration.get("champion") else "challenger"
    reason = registration.get("champion_reason")
    return f"{name} version {version} ({alias}" + (f": {reason})" if reason else ")")


def header_items(run: Mapping[str, Any], registration: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, text) facts above the table; links are plain URLs the renderers may link."""
    metric = MetricInfo.from_run(run)
    items: list[tuple[str, Any]] = [
        ("Model", run.get("model")),
        ("Run", run.get("run_id")),
        ("Hardware", run.get("hardware")),
        ("Policy", _policy_text(run)),
        ("Metric", _metric_text(metric)),
        ("Accuracy gate", _gate_text(metric)),
        ("Calibration", calibration_text(run.get("calibration"))),
        ("Validation samples", run.get("validation_samples")),
        ("Measurement", run.get("measurement")),
        ("Registered", _registration_text(registration)),
        ("Model version", registration.get("model_version_url")),
        ("MLflow run", registration.get("mlflow_run_url")),
    ]
    return [(label, str(value)) for label, value in items if value not in (None, "")]


def why_line(selection: Mapping[str, Any]) -> str:
    """One sentence: what was chosen and why, as the selection explained it."""
    chosen = selection.get("chosen")
    if not chosen:
        return "No variant was chosen."
    reason = str(selection.get("reason") or "").strip()
    return f"{chosen}: {reason}" if reason else f"{chosen} was chosen."


PER_CLASS_ROWS = 10
"""Classes listed in the per-class table: those the chosen variant moved most."""


@dataclass(frozen=True)
class PerClassTable:
    """A per-class metric (e.g. IoU) of the chosen variant against the baseline, the classes it
    moved most first (worst first)."""

    title: str
    rows: list[tuple[str, str, str, str]]
    """(class, baseline, chosen, chosen minus baseline), as text."""
    note: str


def per_class_table(
    summaries: Sequence[VariantSummary],
    chosen: str | None,
    baseline: str,
    prefix: str,
    label: str,
) -> PerClassTable | None:
    """The table of the per-class figure `label` when the chosen variant is not the baseline
    and both carry it (`metric_details` keys `<prefix><class>`); None otherwise."""
    by_name = {summary.variant: summary for summary in summaries}
    base, pick = by_name.get(baseline), by_name.get(chosen or "")
    if base is None or pick is None or base is pick:
        return None
    classes = []
    for key, value in base.metric_details.items():
        before, after = num(value), num(pick.metric_details.get(key))
        if key.startswith(prefix) and before is not None and after is not None:
            classes.append((key.removeprefix(prefix), before, after))
    if not classes:
        return None
    classes.sort(key=lambda item: (item[2] - item[1], item[0]))
    shown = classes[:PER_CLASS_ROWS]
    note = f"The {len(shown)} of {len(classes)} scored classes"
    if len(shown) < len(classes):
        note += (
            f" whose {label} {chosen} changed most, the largest loss first; the others are in "
            "results.json (`metric_details`)."
        )
    else:
        note += f", the largest loss of {label} first."
    return PerClassTable(
        title=f"Per-class {label}: {chosen} against {baseline}",
        rows=[(c, f"{b:.3f}", f"{a:.3f}", f"{a - b:+.3f}") for c, b, a in shown],
        note=note,
    )
