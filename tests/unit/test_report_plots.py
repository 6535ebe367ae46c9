"""Unit tests of the report's plots: Pareto front, the gate in metric terms, who is drawn."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.report_plots import (
    accuracy_figure,
    accuracy_points,
    gate_line,
    latency_figure,
    pareto_front,
    plot_accuracy_vs_latency,
    plot_latency_distribution,
)
from tasks.report_table import MetricInfo
from tasks.results import Status
from tasks.summary import VariantSummary, Verdict

pytestmark = pytest.mark.unit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOP1 = MetricInfo("top1", "top-1 accuracy", True, 0.01)
RMSE = MetricInfo("rmse", "root mean squared error", False, 0.05)


def _summary(variant: str, metric: float | None, p50: float | None, **values) -> VariantSummary:
    return VariantSummary(
        variant=variant,
        status=values.pop("status", Status.OK),
        metric_value=metric,
        p50_ms=p50,
        **values,
    )


def _classification() -> list[VariantSummary]:
    return [
        _summary("tf:fp32", 0.913, 4.86, baseline_metric_value=0.913, verdict=Verdict.ELIGIBLE),
        _summary("tflite:int8", 0.909, 0.61, baseline_metric_value=0.913, verdict=Verdict.CHOSEN),
        _summary("tflite:fp16", 0.85, 1.7, baseline_metric_value=0.913, verdict=Verdict.REJECTED),
        _summary("tftrt:fp16", None, None, status=Status.SKIPPED, verdict=Verdict.SKIPPED),
        _summary("openvino:int8", 0.5, 0.3, status=Status.FAILED, verdict=Verdict.FAILED),
    ]


def _assert_png(path: Path, min_bytes: int = 5_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes


@pytest.mark.parametrize(
    ("points", "front"),
    [
        ([], []),
        ([(1.0, 0.9)], [(1.0, 0.9)]),
        (
            [(5.0, 0.95), (1.0, 0.80), (2.0, 0.90), (3.0, 0.85), (2.5, 0.90), (6.0, 0.95)],
            [(1.0, 0.80), (2.0, 0.90), (5.0, 0.95)],
        ),
        ([(2.0, 0.9), (2.0, 0.8), (2.0, 0.9)], [(2.0, 0.9)]),
        ([(1.0, 0.9), (2.0, 0.8), (None, 1.0), (float("nan"), 1.0)], [(1.0, 0.9)]),
    ],
)
def test_pareto_front(points: list, front: list) -> None:
    assert pareto_front(points) == front


def test_pareto_front_for_an_error_metric_prefers_lower_values() -> None:
    points = [(1.0, 0.30, "a"), (2.0, 0.20, "b"), (3.0, 0.25, "c"), (4.0, 0.10, "d")]
    front = pareto_front(points, higher_is_better=False)
    assert [name for _, _, name in front] == ["a", "b", "d"]


def test_failed_and_skipped_variants_are_not_plotted() -> None:
    points = accuracy_points(_classification(), TOP1)
    assert [name for _, _, name in points] == ["tf:fp32", "tflite:int8", "tflite:fp16"]
    assert points[1][1] == pytest.approx(90.9)  # fractions are plotted in percent


def test_accuracy_plot_of_a_fraction_metric_draws_the_gate_as_an_absolute_drop() -> None:
    fig = accuracy_figure(_classification(), TOP1, chosen="tflite:int8")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "top-1 accuracy (%), higher is better"
    gate = next(line for line in ax.get_lines() if line.get_label().startswith("accuracy gate"))
    assert gate.get_ydata()[0] == pytest.approx(90.3)  # 91.3 % minus 1 point
    labels = {text.get_text() for text in ax.texts}
    assert labels == {"tf:fp32", "★ tflite:int8", "tflite:fp16"}  # the FAILED one is absent


def test_accuracy_plot_of_an_error_metric_draws_the_gate_as_a_relative_rise() -> None:
    rows = [
        _summary("tf:fp32", 0.20, 5.0, baseline_metric_value=0.20),
        _summary("tflite:int8", 0.26, 1.0, baseline_metric_value=0.20),
        _summary("tflite:fp16", 0.205, 2.0, baseline_metric_value=0.20),
    ]
    assert gate_line(rows, RMSE) == pytest.approx(0.21)
    ax = accuracy_figure(rows, RMSE, chosen="tflite:fp16").axes[0]
    assert ax.get_ylabel() == "root mean squared error, lower is better"
    gate = next(line for line in ax.get_lines() if line.get_label().startswith("accuracy gate"))
    assert gate.get_ydata()[0] == pytest.approx(0.21)
    assert gate.get_label() == "accuracy gate (+5 % error)"
    low, high = ax.get_ylim()
    assert low < 0.20 and high > 0.26  # every point and the gate are in view


def test_gate_falls_back_to_the_compared_baseline_value() -> None:
    rows = [_summary("tflite:int8", 0.9, 1.0, baseline_metric_value=0.95)]
    assert gate_line(rows, TOP1) == pytest.approx(94.0)
    assert gate_line(rows, MetricInfo("top1", "top-1 accuracy", True)) is None


def test_latency_figure_draws_only_the_given_series_and_marks_the_chosen() -> None:
    latencies = {"tf:fp32": [4.8, 4.9, 5.0] * 50, "tflite:int8": [0.6, 0.7] * 50, "x": []}
    ax = latency_figure(latencies, chosen="tflite:int8").axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["tf:fp32", "★ tflite:int8"]


def test_plots_write_pngs_also_without_data(tmp_path: Path) -> None:
    _assert_png(plot_latency_distribution({"tf:fp32": [1.0, 1.1, 1.2] * 40}, tmp_path / "l.png"))
    _assert_png(plot_accuracy_vs_latency(_classification(), TOP1, tmp_path / "a.png"))
    _assert_png(plot_latency_distribution({}, tmp_path / "l0.png"), 1_000)
    skipped = [_classification()[3]]
    _assert_png(plot_accuracy_vs_latency(skipped, TOP1, tmp_path / "a0.png"), 1_000)


def test_accuracy_plot_handles_ties_and_log_scale() -> None:
    rows = [_summary(f"tflite:v{i}", 0.9, 0.5 * 3**i) for i in range(5)]
    rows.append(_summary("tflite:same", 0.9, 0.5))
    ax = accuracy_figure(rows, TOP1, chosen="tflite:v0").axes[0]
    assert ax.get_xscale() == "log"
    assert len(ax.texts) == len(rows)
