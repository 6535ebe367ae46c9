"""Unit tests of tasks.validate: the metric's gate, errors, NaN/Inf, shapes, streaming, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.config import AccuracyGate
from tasks.errors import UserInputError
from tasks.metrics import OutputChoice, get_metric
from tasks.validate import OutputComparison, ValidationAccumulator, ValidationReport

pytestmark = pytest.mark.unit

NUM_CLASSES = 10


def logits_for(classes: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Logits whose argmax is `classes`."""
    out = np.zeros((len(classes), num_classes), dtype=np.float32)
    out[np.arange(len(classes)), classes] = 5.0
    return out


def predictions(labels: np.ndarray, correct: int) -> np.ndarray:
    """Class ids equal to `labels` for the first `correct` samples, wrong for the rest."""
    classes = labels.copy()
    classes[correct:] = (labels[correct:] + 1) % NUM_CLASSES
    return classes


def accumulator(variant: str, outputs, metric: str = "fidelity", **roles) -> ValidationAccumulator:
    """An accumulator judging `metric` on `outputs` (fidelity reads every output)."""
    spec = get_metric(metric)
    choice = OutputChoice(roles or {name: name for name in outputs})
    return ValidationAccumulator(variant, outputs, spec, choice)


def top1(variant: str = "tflite:int8") -> ValidationAccumulator:
    return accumulator(variant, ["logits"], "top1", **{"class": "logits"})


def one_batch(
    base_correct: int, var_correct: int, n: int = 100, tolerance: float = 0.01
) -> ValidationReport:
    labels = np.arange(n) % NUM_CLASSES
    acc = top1()
    acc.update(
        {"logits": logits_for(predictions(labels, base_correct))},
        {"logits": logits_for(predictions(labels, var_correct))},
        {"labels": labels},
    )
    return acc.finish(AccuracyGate(tolerance))


def is_plain_json(value) -> bool:
    """True when `value` holds only built-in JSON types (no numpy scalars, no NaN)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(is_plain_json(v) for v in value)
    if type(value) is float:
        return value == value and value not in (float("inf"), float("-inf"))
    return value is None or type(value) in (str, int, bool)


# --- identical outputs -------------------------------------------------------------------------


def test_identical_outputs_pass_with_zero_error():
    report = one_batch(92, 92)
    assert report
    assert report.passed and report.reasons == ()
    assert report.metric_name == "top1"
    assert report.metric == report.baseline_metric == pytest.approx(0.92)
    assert report.metric_delta == 0.0
    assert report.samples == 100
    (out,) = report.outputs
    assert out.max_abs_error == 0.0 and out.mean_abs_error == 0.0
    assert out.shape_match and not out.has_nan and not out.has_inf


def test_errors_are_absolute_max_and_mean():
    base = {"y": np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)}
    var = {"y": np.array([[1.5, 2.0], [3.0, 3.0]], dtype=np.float32)}
    acc = accumulator("tflite:fp16", ["y"])
    acc.update(base, var)
    (out,) = acc.finish(AccuracyGate(1.0)).outputs
    assert out.max_abs_error == pytest.approx(1.0)
    assert out.mean_abs_error == pytest.approx(1.5 / 4)


def test_integer_outputs_are_compared_as_floats():
    acc = accumulator("tflite:int8", ["ids"])
    acc.update({"ids": np.array([1, 2, 3], dtype=np.int64)}, {"ids": np.array([1, 2, 5])})
    report = acc.finish(AccuracyGate())
    assert report.outputs[0].max_abs_error == 2.0


# --- accuracy gate -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_correct", "var_correct", "tolerance", "passed"),
    [
        (92, 92, 0.01, True),
        (92, 91, 0.01, True),  # exactly at the tolerance (0.92 - 0.91 > 0.01 in floats)
        (92, 90, 0.01, False),
        (92, 90, 0.02, True),
        (92, 89, 0.02, False),
        (50, 50, 0.0, True),
        (50, 49, 0.0, False),
        (80, 95, 0.0, True),  # better than the baseline
        (100, 0, 1.0, True),
    ],
)
def test_tolerance_boundary(base_correct, var_correct, tolerance, passed):
    report = one_batch(base_correct, var_correct, tolerance=tolerance)
    assert report.passed is passed
    assert bool(report) is passed
    assert report.metric_delta == pytest.approx((var_correct - base_correct) / 100)
    assert (report.reasons == ()) is passed


def test_drop_reason_gives_both_numbers_in_points():
    report = one_batch(912, 888, n=1000)
    (reason,) = report.reasons
    assert "2.40 points" in reason and "91.20%" in reason and "88.80%" in reason
    assert "&" not in reason  # plain text: each surface escapes for itself


def test_error_metrics_gate_on_the_relative_rise():
    labels = np.zeros((10, 1), dtype=np.float32)
    for rise, tolerance, passed in ((0.04, 0.05, True), (0.06, 0.05, False)):
        acc = accumulator("tflite:int8", ["value"], "rmse", value="value")
        acc.update(
            {"value": np.ones((10, 1), np.float32)},
            {"value": np.full((10, 1), 1 + rise, np.float32)},
            {"labels": labels[:, 0]},
        )
        report = acc.finish(AccuracyGate(tolerance))
        assert report.metric_name == "rmse" and report.passed is passed
        assert report.metric_delta == pytest.approx(rise, rel=1e-4)


def test_fidelity_gates_on_agreement_with_the_baseline():
    classes = np.arange(100) % NUM_CLASSES
    for disagree, passed in ((1, True), (2, False)):
        acc = accumulator("tflite:int8", ["logits"])
        acc.update(
            {"logits": logits_for(classes)},
            {"logits": logits_for(predictions(classes, 100 - disagree))},
        )
        report = acc.finish(AccuracyGate(0.01))
        assert report.metric_name == "fidelity" and report.passed is passed
        assert report.metric == pytest.approx(1 - disagree / 100)
        assert report.baseline_metric == 1.0
        assert {"cosine", "max_abs_error"} <= set(report.metric_details)


# --- NaN / Inf ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nans", "infs", "expected"),
    [
        (1, 0, ["outputs contain NaN: 'logits' has 1 NaN values"]),
        (3, 0, ["outputs contain NaN: 'logits' has 3 NaN values"]),
        (0, 2, ["outputs contain Inf: 'logits' has 2 Inf values"]),
        (
            2,
            1,
            [
                "outputs contain NaN: 'logits' has 2 NaN values",
                "outputs contain Inf: 'logits' has 1 Inf values",
            ],
        ),
    ],
)
def test_nan_and_inf_fail_with_output_name_and_count(nans, infs, expected):
    classes = np.arange(10) % NUM_CLASSES
    base = logits_for(classes)
    var = base.copy()
    var[0, :nans] = np.nan
    var[1, :infs] = -np.inf
    acc = accumulator("tflite:fp16", ["logits"])
    acc.update({"logits": base}, {"logits": var})
    report = acc.finish(AccuracyGate(1.0))  # a tolerance that would forgive anything else
    assert not report.passed
    assert [r for r in report.reasons if "contain" in r] == expected
    (out,) = report.outputs
    assert (out.has_nan, out.has_inf) == (nans > 0, infs > 0)
    assert (out.nan_count, out.inf_count) == (nans, infs)
    assert report.has_nan_or_inf
    assert out.max_abs_error == 0.0  # errors are over elements where both are finite


def test_nan_in_a_secondary_output_fails():
    classes = np.arange(4) % NUM_CLASSES
    emb = np.zeros((4, 3), dtype=np.float32)
    bad = emb.copy()
    bad[2, 1] = np.nan
    acc = accumulator("v", ["logits", "emb"], "top1", **{"class": "logits"})
    acc.update(
        {"logits": logits_for(classes), "emb": emb},
        {"logits": logits_for(classes), "emb": bad},
        {"labels": classes},
    )
    report = acc.finish(AccuracyGate())
    assert report.reasons == ("outputs contain NaN: 'emb' has 1 NaN values",)


def test_all_nan_output_has_no_error_numbers():
    acc = accumulator("v", ["y"])
    acc.update({"y": np.zeros((2, 1))}, {"y": np.full((2, 1), np.nan)})
    (out,) = acc.finish(AccuracyGate()).outputs
    assert out.max_abs_error is None and out.mean_abs_error is None


# --- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_shape", "var_shape"),
    [((8, 10), (8, 11)), ((8, 1), (8,)), ((8,), (8, 1)), ((8, 10), (1, 10)), ((8, 10), (10, 8))],
)
def test_shape_mismatch_fails(base_shape, var_shape):
    acc = accumulator("tflite:int8", ["y"])
    acc.update({"y": np.zeros(base_shape)}, {"y": np.zeros(var_shape)})
    report = acc.finish(AccuracyGate(1.0))
    assert not report.passed
    (out,) = report.outputs
    assert not out.shape_match and not out.missing
    assert (out.baseline_shape, out.variant_shape) == (base_shape, var_shape)
    assert report.reasons == (f"output 'y' has shape {var_shape}, the baseline's has {base_shape}",)


def test_shape_mismatch_in_a_later_batch_is_caught():
    acc = accumulator("v", ["y"])
    acc.update({"y": np.zeros((4, 3))}, {"y": np.zeros((4, 3))})
    acc.update({"y": np.zeros((2, 3))}, {"y": np.zeros((4, 3))})
    report = acc.finish(AccuracyGate())
    assert not report.passed
    assert report.outputs[0].baseline_shape == (2, 3)


def test_missing_output_fails():
    acc = accumulator("v", ["logits", "emb"])
    acc.update({"logits": np.zeros((2, 3)), "emb": np.zeros((2, 4))}, {"logits": np.zeros((2, 3))})
    report = acc.finish(AccuracyGate())
    assert not report.passed
    assert report.outputs[1].missing
    assert report.reasons == ("output 'emb' is missing from the variant's outputs",)


def test_extra_variant_outputs_are_ignored():
    acc = accumulator("v", ["y"])
    acc.update({"y": np.zeros((2, 3))}, {"y": np.zeros((2, 3)), "debug": np.ones(5)})
    assert acc.finish(AccuracyGate())


# --- the baseline ------------------------------------------------------------------------------


def test_baseline_always_passes_against_itself():
    base = {"logits": np.array([[np.nan, 1.0]], dtype=np.float32)}
    acc = accumulator("tf:fp32", ["logits"])
    acc.update(base, base)
    report = acc.finish(AccuracyGate(0.0))
    assert report.passed and report.reasons == ()
    assert report.outputs[0].has_nan  # still reported


def test_baseline_name_is_configurable():
    acc = ValidationAccumulator(
        "onnx:fp32", ["y"], get_metric("fidelity"), OutputChoice({"y": "y"}), baseline="onnx:fp32"
    )
    acc.update({"y": np.zeros((2, 2))}, {"y": np.zeros((2, 3))})
    assert acc.finish(AccuracyGate())


# --- streaming ---------------------------------------------------------------------------------


def test_streaming_over_batches_equals_one_big_batch():
    rng = np.random.default_rng(0)
    n = 103
    labels = rng.integers(0, NUM_CLASSES, n)
    base = {"logits": rng.normal(size=(n, NUM_CLASSES)), "emb": rng.normal(size=(n, 4))}
    var = {k: v + rng.normal(scale=0.3, size=v.shape) for k, v in base.items()}
    var["emb"][7, 2] = np.inf

    def make():
        return accumulator("tflite:int8", ["logits", "emb"], "top1", **{"class": "logits"})

    whole = make()
    whole.update(base, var, {"labels": labels})
    streamed = make()
    for lo, hi in [(0, 1), (1, 40), (40, 41), (41, 103)]:
        streamed.update(
            {k: v[lo:hi] for k, v in base.items()},
            {k: v[lo:hi] for k, v in var.items()},
            {"labels": labels[lo:hi]},
        )
    a, b = whole.finish(AccuracyGate(0.05)), streamed.finish(AccuracyGate(0.05))
    assert (a.passed, a.reasons, a.samples) == (b.passed, b.reasons, b.samples)
    assert (a.metric, a.baseline_metric) == (b.metric, b.baseline_metric)
    for x, y in zip(a.outputs, b.outputs, strict=True):
        assert x.max_abs_error == y.max_abs_error
        assert x.mean_abs_error == pytest.approx(y.mean_abs_error)
        assert (x.nan_count, x.inf_count, x.shape_match) == (y.nan_count, y.inf_count, True)
    assert a.samples == n


def test_no_samples_is_a_user_error():
    with pytest.raises(UserInputError, match="no evaluation samples"):
        accumulator("v", ["y"]).finish(AccuracyGate())


def test_baseline_outputs_must_hold_every_output():
    acc = accumulator("v", ["y", "z"])
    with pytest.raises(ValueError, match="baseline outputs lack"):
        acc.update({"y": np.zeros(2)}, {"y": np.zeros(2)})


# --- JSON --------------------------------------------------------------------------------------


def test_json_round_trip_of_a_failed_report():
    classes = np.arange(20) % NUM_CLASSES
    var = logits_for(predictions(classes, 10))
    var[0, 0] = np.nan
    acc = accumulator("tflite:int8", ["logits", "emb"], "top1", **{"class": "logits"})
    acc.update(
        {"logits": logits_for(classes), "emb": np.zeros((20, 2), dtype=np.float32)},
        {"logits": var, "emb": np.full((20, 2), np.nan, dtype=np.float32)},
        {"labels": classes},
    )
    report = acc.finish(AccuracyGate(0.01))
    data = report.to_dict()
    assert is_plain_json(data)
    text = json.dumps(data, allow_nan=False)
    assert ValidationReport.from_dict(json.loads(text)) == report
    assert data["outputs"][1]["max_abs_error"] is None  # NaN -> None


def test_json_round_trip_of_a_passed_report():
    report = one_batch(92, 91)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert is_plain_json(data)
    assert ValidationReport.from_dict(data) == report


def test_output_comparison_round_trip():
    out = OutputComparison("y", 0.5, 0.1, True, False, False, 3, 0, (8, 10), (8, 11))
    assert OutputComparison.from_dict(json.loads(json.dumps(out.to_dict()))) == out
