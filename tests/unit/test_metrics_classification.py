"""Unit tests of tasks.metrics top-1 / top-5: values, labels, output choice, label checks."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.errors import UserInputError
from tasks.metrics import OutputChoice, get_metric
from tasks.signature import TensorInfo

pytestmark = pytest.mark.unit

SCORES = np.array(
    [
        [0.1, 0.7, 0.2, 0.0, 0.0, 0.0],  # best 1, then 2, 0
        [0.5, 0.1, 0.2, 0.1, 0.05, 0.05],  # best 0
        [0.0, 0.1, 0.2, 0.3, 0.15, 0.25],  # ranks 3, 5, 2, 4, 1, 0
        [0.3, 0.3, 0.1, 0.1, 0.1, 0.1],  # tie between 0 and 1
    ]
)


def score(name, outputs, labels, batches=1):
    """The metric over `outputs["probabilities"]` fed in `batches` slices."""
    accumulator = get_metric(name).accumulator(OutputChoice({"class": "probabilities"}))
    for part, truth in zip(
        np.array_split(outputs, batches), np.array_split(labels, batches), strict=True
    ):
        accumulator.update({"probabilities": part}, {"labels": truth}, {})
    return accumulator.value()


def test_top1_counts_argmax_hits_and_ties_take_the_lower_class():
    value = score("top1", SCORES, np.array([1, 2, 3, 0]))
    assert value.value == pytest.approx(3 / 4)
    assert value.details == {"correct": 3.0, "samples": 4.0}
    assert score("top1", SCORES, np.array([1, 0, 3, 1])).value == pytest.approx(3 / 4)


def test_top5_misses_only_the_sixth_class_and_ties_rank_lower_classes_first():
    assert score("top5", SCORES, np.array([0, 5, 1, 1])).value == pytest.approx(3 / 4)
    assert score("top5", SCORES, np.array([1, 0, 4, 4])).value == 1.0
    assert score("top5", SCORES, np.array([1, 0, 4, 5])).value == pytest.approx(3 / 4)


def test_one_hot_labels_equal_class_ids():
    ids = np.array([1, 2, 3, 0])
    one_hot = np.eye(6, dtype=np.float32)[ids]
    assert score("top1", SCORES, one_hot).value == score("top1", SCORES, ids).value == 0.75


def test_streaming_equals_one_shot():
    rng = np.random.default_rng(0)
    outputs = rng.random((37, 10))
    labels = rng.integers(0, 10, 37)
    for name in ("top1", "top5"):
        assert score(name, outputs, labels, batches=5) == score(name, outputs, labels)
    assert score("top1", outputs, labels).value == np.mean(outputs.argmax(1) == labels)


def test_single_column_output_is_a_binary_sigmoid():
    outputs = np.array([[0.9], [0.5], [0.49], [0.1]])
    assert score("top1", outputs, np.array([1, 1, 1, 1])).value == 0.5
    assert score("top1", outputs, np.array([1, 1, 0, 0])).value == 1.0
    assert score("top5", outputs, np.array([0, 1, 0, 1])).value == 1.0


def test_an_integer_output_is_the_predicted_class_id():
    """A model returning argmax ids (int64 [N]) of 3 classes is not a binary sigmoid."""
    ids = np.array([0, 2, 1, 2, 2])
    labels = np.array([0, 2, 2, 1, 2])
    assert score("top1", ids, labels).value == pytest.approx(3 / 5)
    assert score("top1", ids[:, None].astype(np.int32), labels, batches=2).value == 0.6
    assert score("top5", ids, labels).value == pytest.approx(3 / 5)  # nothing to rank


def test_labels_outside_the_classes_are_refused():
    with pytest.raises(UserInputError, match=r"class ids in \[0, 5\]"):
        score("top1", SCORES, np.array([1, 2, 6, 0]))
    with pytest.raises(UserInputError, match="3 labels for 4 samples"):
        score("top1", SCORES, np.array([1, 2, 3]))


def tensor(name, dtype="float32", shape=(None, 10)):
    return TensorInfo(name, dtype, shape)


def resolve(outputs, flag=None):
    return get_metric("top1").resolve_output(outputs, flag).roles["class"]


def test_resolve_takes_the_only_output_or_the_one_with_a_class_axis():
    assert resolve([tensor("scores", shape=(None, 1))]) == "scores"
    assert resolve([tensor("embedding", shape=(None,)), tensor("head")]) == "head"
    assert resolve([tensor("a", shape=(None,)), tensor("b", shape=(None, 1))]) == "b"


def test_resolve_prefers_class_names_and_the_flag_wins():
    outputs = [tensor("features"), tensor("logits"), tensor("probabilities")]
    assert resolve(outputs) == "probabilities"
    assert resolve(outputs[:2]) == "logits"
    assert resolve(outputs, "features") == "features"


def test_resolve_errors_list_the_outputs_and_the_flag():
    with pytest.raises(UserInputError, match="metric_output.*features .*embedding"):
        resolve([tensor("features"), tensor("embedding")])
    with pytest.raises(UserInputError, match="no output has a class axis"):
        resolve([tensor("a", shape=(None,)), tensor("b", shape=(None,))])
    with pytest.raises(UserInputError, match="'missing' is not an output"):
        resolve([tensor("logits")], "missing")
    with pytest.raises(UserInputError, match="holds strings"):
        resolve([tensor("names", "string", (None,))])


def check(labels, num_samples=3):
    get_metric("top1").check_ground_truth({"labels": labels}, num_samples, "part-0.npz")


def test_check_ground_truth_accepts_ids_and_one_hot():
    check(np.array([0, 4, 2]))
    check(np.array([[0], [1], [1]], dtype=np.uint8))
    check(np.eye(3, dtype=np.float32))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([0.0, 1.5, 2.0]), "float64; top-k needs integer class ids.*'mae' or 'rmse'"),
        (np.array([0, 1]), r"shape \(2,\) but the shard has 3 samples"),
        (np.array([0, -1, 2]), "negative class ids"),
        (np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]]), "exactly one 1"),
        (np.array([[2, 0], [0, 1], [0, 1]]), "other than 0 and 1"),
        (np.zeros((3, 2, 2), dtype=np.int64), "class ids \\[N\\] or one-hot"),
    ],
)
def test_check_ground_truth_names_the_shard_and_the_fix(labels, message):
    with pytest.raises(UserInputError, match=f"part-0.npz.*{message}"):
        check(labels)


def test_check_ground_truth_needs_labels():
    with pytest.raises(UserInputError, match="no 'labels' array.*fidelity needs no ground truth"):
        get_metric("top5").check_ground_truth({"gt_boxes": np.zeros((3, 1, 4))}, 3, "a.npz")


def test_top_k_matches_a_stable_sort_even_with_many_ties():
    rng = np.random.default_rng(4)
    outputs = rng.integers(0, 4, (200, 12)).astype(np.float32)
    labels = rng.integers(0, 12, 200)
    ranked = np.argsort(-outputs, axis=1, kind="stable")
    for k, name in ((1, "top1"), (5, "top5")):
        expected = np.mean(np.any(ranked[:, :k] == labels[:, None], axis=1))
        assert score(name, outputs, labels, batches=3).value == pytest.approx(expected)
