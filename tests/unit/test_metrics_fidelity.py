"""Unit tests of tasks.metrics fidelity: agreement, cosine, max error, output choice."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.errors import UserInputError
from tasks.metrics import get_metric
from tasks.metrics.fidelity import FidelityAccumulator
from tasks.signature import TensorInfo

pytestmark = pytest.mark.unit


def fidelity(variant, baseline, batches=1):
    """The fidelity value of `variant` vs `baseline` (dicts of arrays), fed in `batches`."""
    accumulator = FidelityAccumulator("fidelity", list(baseline))
    size = len(next(iter(baseline.values())))
    for rows in np.array_split(np.arange(size), batches):
        accumulator.update(
            {k: v[rows] for k, v in variant.items()}, {}, {k: v[rows] for k, v in baseline.items()}
        )
    return accumulator.value()


def test_the_baseline_against_itself_is_perfect():
    outputs = {"logits": np.random.default_rng(3).normal(size=(5, 4)), "y": np.arange(5.0)}
    value = fidelity(outputs, outputs)
    assert value.value == 1.0
    assert value.details == {"agreement": 1.0, "cosine": 1.0, "max_abs_error": 0.0, "samples": 5}


def test_class_outputs_agree_on_the_argmax():
    baseline = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    variant = np.array([[0.9, 0.1], [0.0, 1.0], [2.0, 1.0], [3.0, 0.0]])
    value = fidelity({"p": variant}, {"p": baseline})
    assert value.value == pytest.approx(3 / 4)
    assert value.details["max_abs_error"] == pytest.approx(3.0)
    cosine_first = 0.9 / np.hypot(0.9, 0.1)
    assert value.details["cosine"] == pytest.approx((cosine_first + 1 + 1 + 0) / 4)


def test_outputs_without_a_class_axis_agree_within_rtol_and_a_share_of_the_range():
    baseline = np.array([0.0, 5.0, 5.0, 10.0])  # range 10: atol 0.01, rtol 1e-2 of |baseline|
    variant = np.array([0.009, 5.059, 5.061, 10.0])
    value = fidelity({"y": variant}, {"y": baseline})
    assert value.value == pytest.approx(3 / 4)
    assert value.details["max_abs_error"] == pytest.approx(0.061)


def test_the_range_is_that_of_the_whole_eval_set_when_streaming():
    baseline = np.array([1.0, 1.0, 1.0, 101.0])
    variant = np.array([1.05, 1.0, 1.0, 101.0])  # |d| 0.05 <= 0.01 + 0.1 (range 100)
    one_shot = fidelity({"y": variant}, {"y": baseline})
    assert one_shot.value == 1.0
    assert fidelity({"y": variant}, {"y": baseline}, batches=4) == one_shot


def test_a_sample_agrees_only_when_every_output_agrees():
    baseline = {"p": np.array([[1.0, 0.0], [1.0, 0.0]]), "y": np.array([[1.0], [2.0]])}
    variant = {"p": np.array([[1.0, 0.0], [1.0, 0.0]]), "y": np.array([[1.0], [3.0]])}
    assert fidelity(variant, baseline).value == 0.5


def test_non_finite_values_disagree_unless_identical():
    baseline = np.array([[np.nan], [np.inf], [1.0], [2.0]])
    variant = np.array([[np.nan], [np.inf], [np.nan], [2.5]])
    value = fidelity({"y": variant}, {"y": baseline})
    assert value.value == 0.5
    assert value.details["max_abs_error"] == 0.5


def test_integer_outputs_are_compared_and_strings_refused():
    ids = np.array([[3], [4]], dtype=np.int64)
    assert fidelity({"ids": ids}, {"ids": ids + np.array([[0], [1]])}).value == 0.5
    words = np.array([[b"a"], [b"b"]])
    with pytest.raises(UserInputError, match="holds strings"):
        fidelity({"w": words}, {"w": words})


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"shape \(2, 3\), the baseline's \(2, 2\)"):
        fidelity({"p": np.zeros((2, 3))}, {"p": np.zeros((2, 2))})


OUTPUTS = [
    TensorInfo("logits", "float32", (None, 10)),
    TensorInfo("label_names", "string", (None,)),
    TensorInfo("count", "int64", (None,)),
]


def test_resolve_reads_every_numeric_output_or_the_named_ones():
    spec = get_metric("fidelity")
    assert spec.resolve_output(OUTPUTS, None).output_names == ("logits", "count")
    assert spec.resolve_output(OUTPUTS, "count, logits").output_names == ("count", "logits")
    with pytest.raises(UserInputError, match=r"string outputs \['label_names'\]"):
        spec.resolve_output(OUTPUTS, "label_names")
    with pytest.raises(UserInputError, match="every output of the model holds strings"):
        spec.resolve_output(OUTPUTS[1:2], None)


def test_fidelity_needs_no_ground_truth():
    spec = get_metric("fidelity")
    assert spec.ground_truth == ()
    spec.check_ground_truth({}, 10, "x.npz")
    choice = spec.resolve_output(OUTPUTS, "logits")
    baseline = {"logits": np.eye(3, 10)}
    accumulator = spec.accumulator(choice)
    accumulator.update(baseline, {}, baseline)
    assert accumulator.value().value == 1.0
