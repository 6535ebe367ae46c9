"""Unit tests of tasks.metrics map50 / map (faster_coco_eval): values, truth checks, outputs."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.errors import UserInputError
from tasks.metrics import OutputChoice, get_metric
from tasks.signature import TensorInfo

pytestmark = pytest.mark.unit

ROLES = {"boxes": "b", "scores": "s", "classes": "c"}
GT_BOXES = np.array(
    [
        [[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]],
        [[0.2, 0.3, 0.7, 0.8], [-1, -1, -1, -1]],
    ]
)
GT_CLASSES = np.array([[1, 2], [1, -1]])


def evaluate(boxes, scores, classes, num=None, gt_boxes=GT_BOXES, gt_classes=GT_CLASSES, batches=1):
    """{map50, map} of detections against the ground truth, fed in `batches` slices."""
    roles = dict(ROLES, num_detections="n") if num is not None else ROLES
    results = {}
    for name in ("map50", "map"):
        accumulator = get_metric(name).accumulator(OutputChoice(roles))
        for rows in np.array_split(np.arange(len(boxes)), batches):
            outputs = {"b": boxes[rows], "s": scores[rows], "c": classes[rows]}
            if num is not None:
                outputs["n"] = num[rows]
            truth = {"gt_boxes": gt_boxes[rows], "gt_classes": gt_classes[rows]}
            accumulator.update(outputs, truth, {})
        value = accumulator.value()
        assert value.name == name and value.value == value.details[name]
        results[name] = value.value
    return results


def perfect():
    """Detections equal to the ground truth, as a TF OD model gives them (float classes)."""
    boxes = np.where(GT_BOXES < 0, 0.0, GT_BOXES).astype(np.float32)
    scores = np.array([[0.9, 0.8], [0.7, 0.0]], dtype=np.float32)
    return boxes, scores, np.where(GT_CLASSES < 0, 0, GT_CLASSES).astype(np.float32)


def test_perfect_detections_score_one():
    assert evaluate(*perfect()) == {"map50": pytest.approx(1.0), "map": pytest.approx(1.0)}


def test_a_shifted_box_lowers_map_more_than_map50():
    boxes, scores, classes = perfect()
    boxes[1, 0] = [0.25, 0.35, 0.75, 0.85]  # IoU with its truth ~0.68
    result = evaluate(boxes, scores, classes)
    assert result["map50"] == pytest.approx(1.0)
    assert result["map"] < 0.9


def test_a_missed_object_lowers_both():
    boxes, scores, classes = perfect()
    classes[0, 1] = 3  # the class-2 object is never detected
    result = evaluate(boxes, scores, classes)
    assert result["map50"] == pytest.approx(0.5)
    assert result["map"] == pytest.approx(0.5)


def test_padding_rows_are_ignored():
    boxes, scores, classes = perfect()
    gt_boxes = np.concatenate([GT_BOXES, np.full((2, 3, 4), -1.0)], axis=1)
    gt_classes = np.concatenate([GT_CLASSES, np.full((2, 3), -1)], axis=1)
    result = evaluate(boxes, scores, classes, gt_boxes=gt_boxes, gt_classes=gt_classes)
    assert result == {"map50": pytest.approx(1.0), "map": pytest.approx(1.0)}


def test_num_detections_drops_the_padding_detections():
    boxes, scores, classes = perfect()
    boxes[1, 1] = [0.0, 0.0, 0.3, 0.3]  # a confident false positive beyond num_detections
    scores[1, 1] = 0.95
    classes[1, 1] = 1
    assert evaluate(boxes, scores, classes)["map50"] < 1.0
    truncated = evaluate(boxes, scores, classes, num=np.array([2.0, 1.0]))
    assert truncated["map50"] == pytest.approx(1.0)


def test_streaming_equals_one_shot():
    rng = np.random.default_rng(2)
    corners = np.sort(rng.random((8, 3, 2, 2)), axis=2)
    gt_boxes = corners.transpose(0, 1, 3, 2).reshape(8, 3, 4)[..., [0, 2, 1, 3]]
    gt_classes = rng.integers(0, 3, (8, 3))
    boxes = np.clip(gt_boxes + rng.normal(0, 0.03, gt_boxes.shape), 0, 1)
    scores = rng.random((8, 3))
    once = evaluate(boxes, scores, gt_classes, gt_boxes=gt_boxes, gt_classes=gt_classes)
    split = evaluate(boxes, scores, gt_classes, gt_boxes=gt_boxes, gt_classes=gt_classes, batches=3)
    assert split == once
    assert 0 < once["map"] < once["map50"] <= 1


def test_outputs_of_the_wrong_shape_are_refused():
    boxes, scores, classes = perfect()
    with pytest.raises(UserInputError, match=r"detection boxes must be \[N, K, 4\]"):
        evaluate(boxes[..., :3], scores, classes)
    with pytest.raises(UserInputError, match=r"detection scores must be \[N, K\] = \[2, 2\]"):
        evaluate(boxes, scores[:, :1], classes)


def test_no_ground_truth_at_all_is_a_user_error():
    boxes, scores, classes = perfect()
    with pytest.raises(UserInputError, match="no ground-truth box"):
        evaluate(boxes, scores, classes, gt_classes=np.full((2, 2), -1))


def check(boxes, classes):
    get_metric("map").check_ground_truth({"gt_boxes": boxes, "gt_classes": classes}, 2, "d.npz")


@pytest.mark.parametrize(
    ("boxes", "classes", "message"),
    [
        (np.where(GT_BOXES < 0, -1, GT_BOXES * 100), GT_CLASSES, r"normalized to \[0, 1\]"),
        (GT_BOXES[:, :, [2, 1, 0, 3]], GT_CLASSES, "ymin > ymax"),
        (np.where(GT_BOXES < 0, 0.0, GT_BOXES), GT_CLASSES, "padding.*must be -1 too"),
        (GT_BOXES, np.array([[1, 2], [1, -2]]), "-1 marks padding"),
        (GT_BOXES, GT_CLASSES + 0.5, "integer class ids"),
        (GT_BOXES, GT_CLASSES[:, :1], r"must be \[N, M\] = \[2, 2\]"),
        (GT_BOXES[:, :, :3], GT_CLASSES, r"float \[N, M, 4\]"),
        (GT_BOXES[:1], GT_CLASSES[:1], "shard has 2 samples"),
    ],
)
def test_check_ground_truth_names_the_shard_and_the_fix(boxes, classes, message):
    with pytest.raises(UserInputError, match=f"d.npz.*{message}"):
        check(boxes, classes)


def test_check_ground_truth_accepts_padded_truth_and_needs_both_arrays():
    check(GT_BOXES.astype(np.float32), GT_CLASSES.astype(np.int32))
    with pytest.raises(UserInputError, match="no 'gt_classes' array"):
        get_metric("map50").check_ground_truth({"gt_boxes": GT_BOXES}, 2, "d.npz")


OD_OUTPUTS = [
    TensorInfo("detection_boxes", "float32", (None, 100, 4)),
    TensorInfo("detection_scores", "float32", (None, 100)),
    TensorInfo("detection_classes", "float32", (None, 100)),
    TensorInfo("num_detections", "float32", (None,)),
    TensorInfo("raw_detection_boxes", "float32", (None, 1000, 4)),
]


def test_resolve_reads_the_object_detection_api_names():
    choice = get_metric("map50").resolve_output(OD_OUTPUTS, None)
    assert choice.roles == {
        "boxes": "detection_boxes",
        "scores": "detection_scores",
        "classes": "detection_classes",
        "num_detections": "num_detections",
    }


def test_resolve_takes_explicit_roles():
    outputs = [TensorInfo(n, "float32", (None, 10)) for n in ("out_0", "out_1", "out_2")]
    flag = "boxes=out_0, scores=out_2,classes=out_1"
    choice = get_metric("map").resolve_output(outputs, flag)
    assert choice.roles == {"boxes": "out_0", "scores": "out_2", "classes": "out_1"}
    assert OutputChoice.from_dict(choice.to_dict()) == choice


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (None, "no single output holds the detection boxes"),
        ("out_0", "boxes=<output>,scores=<output>"),
        ("boxes=out_0,scores=out_1", r"does not name \['classes'\]"),
        ("boxes=out_0,scores=out_1,classes=nope", "'nope' is not an output"),
        ("boxes=out_0,masks=out_1", "boxes=<output>,scores=<output>"),
    ],
)
def test_resolve_errors_say_how_to_name_the_outputs(flag, message):
    outputs = [TensorInfo(n, "float32", (None, 10)) for n in ("out_0", "out_1", "out_2")]
    with pytest.raises(UserInputError, match=message):
        get_metric("map50").resolve_output(outputs, flag)
