"""Unit tests of the per-element and per-label metrics: miou and multilabel_map."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tasks.errors import UserInputError
from tasks.metrics import OutputChoice, get_metric
from tasks.metrics.multilabel import average_precision
from tasks.signature import TensorInfo

pytestmark = pytest.mark.unit


def score(name, role, outputs, labels, batches=1):
    accumulator = get_metric(name).accumulator(OutputChoice({role: "y"}))
    for part, truth in zip(
        np.array_split(outputs, batches), np.array_split(labels, batches), strict=True
    ):
        accumulator.update({"y": part}, {"labels": truth}, {})
    return accumulator.value()


def one_hot_scores(classes: np.ndarray, count: int) -> np.ndarray:
    return np.eye(count, dtype=np.float32)[classes]


def test_miou_exact_value_from_a_hand_counted_confusion():
    labels = np.array([[[0, 0], [1, 2]], [[2, 2], [1, 0]]])
    predicted = np.array([[[0, 1], [1, 2]], [[2, 0], [1, 0]]])
    # per class: hits / (labelled + predicted - hits) = 2/4, 2/3, 2/3
    value = score("miou", "class", one_hot_scores(predicted, 3), labels)
    confusion = np.zeros((3, 3))
    for t, p in zip(labels.ravel(), predicted.ravel(), strict=True):
        confusion[t, p] += 1
    iou = [
        confusion[c, c] / (confusion[c].sum() + confusion[:, c].sum() - confusion[c, c])
        for c in range(3)
    ]
    assert value.value == pytest.approx(np.mean(iou))
    assert value.value == pytest.approx((2 / 4 + 2 / 3 + 2 / 3) / 3)
    assert value.details["pixel_accuracy"] == pytest.approx(6 / 8)
    assert value.details == {**value.details, "classes_scored": 3.0, "elements": 8.0}


def test_miou_streams_batches_ignores_255_and_reads_a_sigmoid_channel():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(6, 5, 5)).astype(np.uint8)
    probabilities = rng.random((6, 5, 5, 1)).astype(np.float32)
    whole = score("miou", "class", probabilities, labels)
    assert score("miou", "class", probabilities, labels, batches=3).value == pytest.approx(
        whole.value
    )
    void = labels.copy()
    void[:, 0, :] = 255
    partial = score("miou", "class", probabilities, void)
    kept = score("miou", "class", probabilities[:, 1:], labels[:, 1:])
    assert partial.value == pytest.approx(kept.value)
    assert partial.details["elements"] == 6 * 4 * 5
    perfect = score("miou", "class", one_hot_scores(labels, 2), labels[..., None])
    assert perfect.value == 1.0


def test_miou_refuses_labels_it_cannot_read():
    spec = get_metric("miou")
    with pytest.raises(UserInputError, match=r"shape \(4,\); miou needs a class id per element"):
        spec.check_ground_truth({"labels": np.zeros(4, dtype=np.int64)}, 4, "s.npz")
    with pytest.raises(UserInputError, match="miou needs integer class ids"):
        spec.check_ground_truth({"labels": np.zeros((4, 2, 2))}, 4, "s.npz")
    with pytest.raises(UserInputError, match=r"labels reach class 3 but output 'y' scores 3"):
        score("miou", "class", np.zeros((1, 2, 2, 3)), np.full((1, 2, 2), 3))
    with pytest.raises(UserInputError, match=r"output 'y' has shape \(1, 3, 3, 2\) but the lab"):
        score("miou", "class", np.zeros((1, 3, 3, 2)), np.zeros((1, 2, 2), dtype=np.int64))


def brute_force_ap(scores: np.ndarray, positives: np.ndarray) -> float:
    """Precision at each positive's rank, ties broken both ways and averaged over orders."""
    results = []
    for order in itertools.permutations(range(scores.size)):
        ranked = sorted(order, key=lambda i: -scores[i])  # stable: ties keep `order`
        hits, precisions = 0, []
        for rank, index in enumerate(ranked, start=1):
            if positives[index]:
                hits += 1
                precisions.append(hits / rank)
        results.append(np.mean(precisions))
    return float(np.mean(results))


def test_average_precision_matches_the_definition_without_ties():
    rng = np.random.default_rng(1)
    for _ in range(20):
        scores = rng.random(6)
        positives = rng.random(6) < 0.5
        positives[0] = True
        assert average_precision(scores, positives) == pytest.approx(
            brute_force_ap(scores, positives)
        )


def test_average_precision_takes_tied_scores_as_one_threshold():
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    positives = np.array([True, False, True, False])
    # thresholds 0.9 (P 1, R 0.5) then 0.5 (P 2/3, R 1): 0.5 * 1 + 0.5 * 2/3
    assert average_precision(scores, positives) == pytest.approx(0.5 + 1 / 3)


def test_multilabel_map_averages_labels_with_positives_and_ignores_the_score_scale():
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    logits = np.array([[2.0, -1, 0], [0.5, 3, 1], [-1, 1, 2], [-3, -2, 1]])
    value = score("multilabel_map", "scores", logits, labels)
    expected = np.mean([average_precision(logits[:, c], labels[:, c] == 1) for c in (0, 1)])
    assert value.value == pytest.approx(expected)
    assert value.details == {"samples": 4.0, "labels_scored": 2.0}
    sigmoid = 1 / (1 + np.exp(-logits))
    assert score("multilabel_map", "scores", sigmoid, labels, batches=2).value == pytest.approx(
        expected
    )
    assert score("multilabel_map", "scores", labels.astype(float), labels).value == 1.0


def test_multilabel_map_refuses_labels_it_cannot_read():
    spec = get_metric("multilabel_map")
    with pytest.raises(UserInputError, match=r"needs one row of 0/1 per sample"):
        spec.check_ground_truth({"labels": np.zeros(4, dtype=np.int64)}, 4, "s.npz")
    with pytest.raises(UserInputError, match="holds values other than 0 and 1"):
        spec.check_ground_truth({"labels": np.full((4, 3), 2)}, 4, "s.npz")
    with pytest.raises(UserInputError, match=r"do not fit output 'y' \(2 scores per sample\)"):
        score("multilabel_map", "scores", np.zeros((2, 2)), np.zeros((2, 3), dtype=np.int64))


def test_output_choice_of_the_dense_metrics():
    seg = [
        TensorInfo("logits", "float32", (None, 8, 8, 3)),
        TensorInfo("aux", "float32", (None, 3)),
    ]
    assert get_metric("miou").resolve_output(seg, None).roles == {"class": "logits"}
    tags = [TensorInfo("a", "float32", (None, 5)), TensorInfo("b", "float32", (None, 5, 4))]
    assert get_metric("miou").resolve_output(tags, None).roles == {"class": "b"}
    with pytest.raises(UserInputError, match="2 outputs could hold per-label scores"):
        get_metric("multilabel_map").resolve_output(
            [TensorInfo("a", "float32", (None, 5)), TensorInfo("b", "float32", (None, 4))], None
        )
    assert get_metric("multilabel_map").resolve_output(
        [TensorInfo("a", "float32", (None, 5)), TensorInfo("n", "int32", (None,))], None
    ).roles == {"scores": "a"}


def test_miou_details_carry_each_scored_class_iou():
    from tasks.metrics.segmentation import CLASS_IOU_PREFIX

    labels = np.array([[[0, 0], [2, 2]]])
    predicted = np.array([[[0, 2], [2, 2]]])
    details = score("miou", "class", one_hot_scores(predicted, 3), labels).details
    # class 0: 1 hit, union 2; class 2: 2 hits, union 3; class 1 never seen: not scored
    assert details[f"{CLASS_IOU_PREFIX}0"] == pytest.approx(0.5)
    assert details[f"{CLASS_IOU_PREFIX}2"] == pytest.approx(2 / 3)
    assert f"{CLASS_IOU_PREFIX}1" not in details
