"""Unit tests of the report table's content: metric units, verdicts, split and calibration lines."""

from __future__ import annotations

import pytest

from tasks.report_table import (
    MISSING,
    MetricInfo,
    batch_1_variants,
    calibration_text,
    columns,
    header_items,
    split_lines,
    table_note,
    verdict_text,
    why_line,
)
from tasks.results import Status
from tasks.summary import VariantSummary, Verdict

pytestmark = pytest.mark.unit

ABSOLUTE_DROP = "max absolute drop vs the baseline's (0.01 = 1 point)"
RELATIVE_RISE = "max relative increase of the error vs the baseline's (0.05 = 5%)"
TOP1 = MetricInfo("top1", "top-1 accuracy", True, 0.01, ABSOLUTE_DROP)
RMSE = MetricInfo("rmse", "root mean squared error", False, 0.05, RELATIVE_RISE)


def _summary(**values) -> VariantSummary:
    return VariantSummary(**{"variant": "tflite:int8", "status": Status.OK, **values})


def test_metric_info_reads_the_run_block() -> None:
    run = {
        "metric": {
            "name": "map50",
            "title": "mAP@0.5",
            "higher_is_better": True,
            "tolerance": 0.02,
            "tolerance_meaning": ABSOLUTE_DROP,
            "output": {"boxes": "det_boxes", "scores": "det_scores"},
        }
    }
    metric = MetricInfo.from_run(run)
    assert metric == MetricInfo(
        "map50",
        "mAP@0.5",
        True,
        0.02,
        ABSOLUTE_DROP,
        {"boxes": "det_boxes", "scores": "det_scores"},
    )
    with pytest.raises(ValueError, match='"metric"'):
        MetricInfo.from_run({"model": "m"})


def test_fraction_metrics_show_percent_and_points() -> None:
    row = _summary(metric_value=0.909, baseline_metric_value=0.913, metric_delta=-0.004)
    assert TOP1.value_text(0.909) == "90.90 %"
    assert TOP1.delta_text(row) == "-0.40"
    assert TOP1.delta_header == "Δ (points)"
    assert TOP1.gate(0.913) == pytest.approx(0.903)
    assert TOP1.plotted(0.903) == pytest.approx(90.3)
    assert TOP1.tolerance_text() == "1.00 points below the baseline's top-1 accuracy"
    assert TOP1.gate_legend() == "accuracy gate (−1 point)"
    assert TOP1.axis_label == "top-1 accuracy (%), higher is better"


def test_error_metrics_show_their_units_and_relative_deltas() -> None:
    row = _summary(metric_value=0.21, baseline_metric_value=0.2, metric_delta=0.01)
    assert RMSE.value_text(0.21) == "0.2100"
    assert RMSE.value_text(123456.0) == "1.235e+05"
    assert RMSE.delta_text(row) == "+5.0 %"
    assert RMSE.delta_header == "Δ (relative %)"
    assert RMSE.gate(0.2) == pytest.approx(0.21)
    assert RMSE.plotted(0.21) == 0.21
    assert RMSE.tolerance_text() == "5.0 % above the baseline's root mean squared error"
    assert RMSE.gate_legend() == "accuracy gate (+5 % error)"
    assert RMSE.axis_label == "root mean squared error, lower is better"
    zero_base = _summary(metric_value=0.001, baseline_metric_value=0.0, metric_delta=0.001)
    assert RMSE.delta_text(zero_base) == "+0.001 (absolute)"


def test_missing_and_non_finite_values_show_a_dash() -> None:
    row = _summary(metric_value=None, metric_delta=float("nan"))
    assert TOP1.value_text(None) == MISSING
    assert TOP1.value_text(float("inf")) == MISSING
    assert TOP1.delta_text(row) == MISSING
    assert TOP1.gate(None) is None
    assert MetricInfo("top1", "top-1 accuracy", True).gate(0.9) is None


def test_columns_are_headed_by_the_metric_and_show_every_verdict() -> None:
    rows = [
        _summary(verdict=Verdict.CHOSEN, verdict_reason="fastest", metric_value=0.9),
        _summary(variant="tftrt:fp16", status=Status.SKIPPED, reason="convert: no TensorRT"),
    ]
    cols = columns(RMSE, rows)
    headers = [c.header for c in cols]
    assert headers[:6] == [
        "variant",
        "verdict",
        "reason",
        "root mean squared error",
        "baseline",
        "Δ (relative %)",
    ]
    assert "in TF" not in headers  # no variant is split
    cells = {c.key: [c.cell(r) for r in rows] for c in cols}
    assert cells["verdict"] == ["chosen", "skipped"]  # no verdict set: the status
    assert cells["reason"] == ["fastest", "convert: no TensorRT"]
    assert verdict_text(_summary(status=Status.FAILED)) == "failed"


def test_split_variants_list_their_tf_ops_and_latency_share() -> None:
    ops = [f"Op{i}" for i in range(10)]
    rows = [
        _summary(
            split={
                "tf_ops": ["DecodeBase64", "DecodeJpeg"],
                "boundary": "map/Stack",
                "prefix_share": 0.31,
            }
        ),
        _summary(
            variant="openvino:int8",
            split={"tf_ops": {"DecodeJpeg": 2}, "boundary": ["map/Stack:0", "shape:0"]},
        ),
        _summary(variant="tflite:fp32", split={"tf_ops": ops, "prefix_share": 0.5}),
        _summary(variant="tf:fp32"),
    ]
    assert split_lines(rows) == [
        (
            "tflite:int8",
            "DecodeBase64, DecodeJpeg stayed in TensorFlow (boundary map/Stack); 31.0 % of the "
            "batch-1 latency",
        ),
        (
            "openvino:int8",
            "DecodeJpeg ×2 stayed in TensorFlow (boundary map/Stack:0, shape:0); its share of "
            "the latency was not measured",
        ),
        (
            "tflite:fp32",
            "Op0, Op1, Op2, Op3, Op4, Op5, Op6, Op7 and 2 more stayed in TensorFlow; 50.0 % of "
            "the batch-1 latency",
        ),
    ]
    share = next(c for c in columns(TOP1, rows) if c.header == "in TF")
    assert [share.cell(r) for r in rows] == ["31 %", MISSING, "50 %", MISSING]
    assert '"in TF"' in table_note(TOP1, split=True)
    assert "in TF" not in table_note(TOP1, split=False)


def test_the_note_names_the_variants_built_for_batch_1() -> None:
    rows = [
        _summary(variant="tf:fp32"),
        _summary(variant="tflite:fp32", conversion_summary={"static_batch": 1}),
        _summary(variant="tflite:dynamic", conversion_summary={"static_batch": 1}),
        _summary(variant="openvino:fp32", conversion_summary={"size_bytes": 10}),
    ]
    assert batch_1_variants(rows) == ["tflite:fp32", "tflite:dynamic"]
    note = table_note(TOP1, split=False, batch_1=batch_1_variants(rows))
    assert "tflite:fp32, tflite:dynamic are built for batch 1" in note
    assert "one sample per call" in note
    assert "batch 1 (" not in table_note(TOP1, split=False, batch_1=batch_1_variants(rows[:1]))


@pytest.mark.parametrize(
    ("calibration", "text"),
    [
        (
            {"source": "calibration_data_uri", "uri": "s3://b/calib", "num_samples": 128},
            "s3://b/calib (128 samples)",
        ),
        (
            {
                "source": "held-out eval slice",
                "uri": "s3://b/eval",
                "num_samples": 64,
                "holdout": {"seed": 7, "count": 64},
            },
            "held-out eval slice: 64 samples of s3://b/eval (seed 7), excluded from validation",
        ),
        ({"source": "none (no int8 variant)"}, "none (no int8 variant)"),
        (None, "not recorded"),
    ],
)
def test_calibration_source_is_stated(calibration: dict | None, text: str) -> None:
    assert calibration_text(calibration) == text


def test_header_states_metric_direction_gate_and_registration() -> None:
    run = {
        "model": "demo",
        "run_id": "r1",
        "objective": "throughput",
        "latency_slo_ms": 12.5,
        "metric": {
            "name": "rmse",
            "title": "root mean squared error",
            "higher_is_better": False,
            "tolerance": 0.05,
            "tolerance_meaning": RELATIVE_RISE,
        },
        "calibration": {"source": "none (no int8 variant)"},
    }
    registration = {
        "registered_model_name": "demo",
        "model_version": "4",
        "champion": False,
        "champion_reason": "not comparable",
        "model_version_url": "http://mlflow/#/models/demo/versions/4",
    }
    items = dict(header_items(run, registration))
    assert items["Metric"] == "root mean squared error (rmse), lower is better"
    assert items["Accuracy gate"] == (
        f"tolerance 0.05 = {RELATIVE_RISE}: a variant may fall at most 5.0 % above the "
        "baseline's root mean squared error"
    )
    assert items["Policy"] == "objective throughput, p99 budget 12.5 ms at batch 1"
    assert items["Calibration"] == "none (no int8 variant)"
    assert items["Registered"] == "demo version 4 (challenger: not comparable)"
    assert items["Model version"] == "http://mlflow/#/models/demo/versions/4"
    assert "Hardware" not in items and "MLflow run" not in items  # absent facts are left out


def test_why_line() -> None:
    assert why_line({"chosen": "tflite:int8", "reason": "lowest p50"}) == "tflite:int8: lowest p50"
    assert why_line({"chosen": "tf:fp32"}) == "tf:fp32 was chosen."
    assert why_line({}) == "No variant was chosen."
