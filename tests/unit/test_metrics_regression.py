"""Unit tests of tasks.metrics mae / rmse: values, streaming, output choice, label checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.errors import UserInputError
from tasks.metrics import OutputChoice, get_metric
from tasks.signature import TensorInfo

pytestmark = pytest.mark.unit


def score(name, outputs, labels, batches=1):
    accumulator = get_metric(name).accumulator(OutputChoice({"value": "y"}))
    for part, truth in zip(
        np.array_split(outputs, batches), np.array_split(labels, batches), strict=True
    ):
        accumulator.update({"y": part}, {"labels": truth}, {})
    return accumulator.value()


def test_mae_and_rmse_exact_values():
    outputs = np.array([[1.0], [2.0], [3.0], [4.0]], dtype=np.float32)
    labels = np.array([1.0, 1.0, 5.0, 4.0])
    mae = score("mae", outputs, labels)
    rmse = score("rmse", outputs, labels)
    assert mae.value == pytest.approx(3 / 4)
    assert rmse.value == pytest.approx(math.sqrt(5 / 4))
    assert (
        mae.details
        == rmse.details
        == {
            "mae": pytest.approx(0.75),
            "rmse": pytest.approx(math.sqrt(1.25)),
            "elements": 4.0,
        }
    )


def test_multi_value_outputs_count_every_element():
    outputs = np.array([[0.0, 2.0], [1.0, 1.0]])
    labels = np.array([[1.0, 2.0], [1.0, 4.0]])
    assert score("mae", outputs, labels).value == pytest.approx(4 / 4)
    assert score("rmse", outputs, labels).value == pytest.approx(math.sqrt(10 / 4))


def test_streaming_equals_one_shot():
    rng = np.random.default_rng(1)
    outputs = rng.normal(size=(41, 3))
    labels = rng.normal(size=(41, 3))
    for name in ("mae", "rmse"):
        assert score(name, outputs, labels, batches=6).value == pytest.approx(
            score(name, outputs, labels).value, rel=1e-12
        )
    assert score("rmse", outputs, labels).value == pytest.approx(
        np.sqrt(np.mean((outputs - labels) ** 2))
    )


def test_labels_that_do_not_fit_the_output_are_refused():
    with pytest.raises(UserInputError, match="do not fit output 'y'"):
        score("mae", np.zeros((4, 2)), np.zeros(4))


def test_no_batches_gives_no_value():
    assert get_metric("rmse").accumulator(OutputChoice({"value": "y"})).value().value is None


def tensor(name, dtype="float32", shape=(None, 1)):
    return TensorInfo(name, dtype, shape)


def test_resolve_takes_the_only_output_then_the_only_float_one():
    spec = get_metric("mae")
    assert spec.resolve_output([tensor("price")], None).roles == {"value": "price"}
    outputs = [tensor("ids", "int64"), tensor("price")]
    assert spec.resolve_output(outputs, None).roles == {"value": "price"}
    assert spec.resolve_output(outputs, "ids").roles == {"value": "ids"}


def test_resolve_uses_the_label_shape_then_asks_for_the_flag():
    spec = get_metric("rmse")
    outputs = [tensor("box", shape=(None, 4)), tensor("depth", shape=(None, 1))]
    assert spec.resolve_output(outputs, None, label_shape=()).roles == {"value": "depth"}
    assert spec.resolve_output(outputs, None, label_shape=(2, 2)).roles == {"value": "box"}
    with pytest.raises(UserInputError, match="2 float outputs.*set metric_output"):
        spec.resolve_output(outputs, None)
    with pytest.raises(UserInputError, match="'nope' is not an output"):
        spec.resolve_output(outputs, "nope")


def check(labels, num_samples=3):
    get_metric("rmse").check_ground_truth({"labels": labels}, num_samples, "part-1.npz")


def test_check_ground_truth():
    check(np.array([0.5, 1.0, 2.0], dtype=np.float32))
    check(np.zeros((3, 2, 2)))
    with pytest.raises(UserInputError, match="part-1.npz.*shard has 3 samples"):
        check(np.zeros(4))
    with pytest.raises(UserInputError, match="part-1.npz.*NaN or Inf"):
        check(np.array([0.0, np.nan, 1.0]))
    with pytest.raises(UserInputError, match="part-1.npz.*<U1; rmse needs numeric targets"):
        check(np.array(["a", "b", "c"]))
