"""COCO-style detection mAP (AP@0.5 and AP@[.5:.95]) computed by faster_coco_eval."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tasks.errors import UserInputError
from tasks.metrics.base import (
    METRIC_OUTPUT_FLAG,
    MetricSpec,
    MetricValue,
    OutputChoice,
    TensorInfoLike,
    ambiguous,
    batch_output,
    named_output,
    require_array,
    require_samples,
)

log = logging.getLogger(__name__)

GT_BOXES = "gt_boxes"
GT_CLASSES = "gt_classes"
PADDING = -1
REQUIRED_ROLES = ("boxes", "scores", "classes")
OPTIONAL_ROLES = ("num_detections",)
DEFAULT_NAMES = {
    "boxes": "detection_boxes",
    "scores": "detection_scores",
    "classes": "detection_classes",
    "num_detections": "num_detections",
}
"""The TF Object Detection API's output names, read when `metric_output` is not set."""
PIXEL_SCALE = 1000.0
"""Normalized boxes are scaled to this many pixels per side for COCO's xywh boxes."""
EXPLICIT_FORM = "boxes=<output>,scores=<output>,classes=<output>[,num_detections=<output>]"


def _check_gt_boxes(boxes: np.ndarray, real: np.ndarray, shard: str) -> None:
    if not np.all(boxes[~real] == PADDING):
        raise UserInputError(
            f"{shard}: {GT_BOXES!r} rows whose {GT_CLASSES!r} is -1 (padding) must be -1 too"
        )
    boxes = boxes[real]
    if not np.all(np.isfinite(boxes)) or boxes.size and (boxes.min() < 0 or boxes.max() > 1):
        raise UserInputError(
            f"{shard}: {GT_BOXES!r} must be normalized to [0, 1] as [ymin, xmin, ymax, xmax] "
            "(divide pixel coordinates by the image height and width)"
        )
    if np.any(boxes[:, 0] > boxes[:, 2]) or np.any(boxes[:, 1] > boxes[:, 3]):
        raise UserInputError(
            f"{shard}: some {GT_BOXES!r} have ymin > ymax or xmin > xmax; the order is "
            "[ymin, xmin, ymax, xmax]"
        )


def check_detection_truth(
    boxes: np.ndarray, classes: np.ndarray, num_samples: int, shard: str
) -> None:
    """UserInputError unless boxes [N, M, 4] and classes [N, M] are valid, -1-padded truth."""
    require_samples(boxes, GT_BOXES, num_samples, shard)
    require_samples(classes, GT_CLASSES, num_samples, shard)
    if boxes.ndim != 3 or boxes.shape[2] != 4 or boxes.dtype.kind != "f":
        raise UserInputError(
            f"{shard}: {GT_BOXES!r} is {boxes.dtype} {boxes.shape}; it must be float [N, M, 4] "
            "(M boxes per image, padded with -1 rows)"
        )
    if classes.shape != boxes.shape[:2]:
        raise UserInputError(
            f"{shard}: {GT_CLASSES!r} has shape {classes.shape}; it must be [N, M] = "
            f"{list(boxes.shape[:2])}, one class per box of {GT_BOXES!r}"
        )
    if classes.dtype.kind not in "iu" and not (
        classes.dtype.kind == "f" and np.all(classes == np.round(classes))
    ):
        raise UserInputError(f"{shard}: {GT_CLASSES!r} must hold integer class ids (int32/int64)")
    if classes.size and classes.min() < PADDING:
        raise UserInputError(
            f"{shard}: {GT_CLASSES!r} holds {classes.min()}; class ids are >= 0, -1 marks padding"
        )
    _check_gt_boxes(boxes.reshape(-1, 4), classes.reshape(-1) != PADDING, shard)


def _coco_boxes(boxes: np.ndarray) -> np.ndarray:
    """[ymin, xmin, ymax, xmax] normalized -> COCO [x, y, w, h] in PIXEL_SCALE pixels."""
    ymin, xmin, ymax, xmax = (boxes[:, i] * PIXEL_SCALE for i in range(4))
    return np.stack([xmin, ymin, np.maximum(xmax - xmin, 0), np.maximum(ymax - ymin, 0)], 1)


class DetectionAccumulator:
    """Collects each image's detections and ground truth; COCO evaluation runs in value().

    Detections beyond `num_detections` (when the model outputs it) are dropped; COCO keeps the
    100 best-scored per image, as its standard AP does.
    """

    def __init__(self, name: str, choice: OutputChoice) -> None:
        self.name = name
        self.roles = dict(choice.roles)
        self._images: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def update(
        self,
        outputs: Mapping[str, np.ndarray],
        truth: Mapping[str, np.ndarray],
        baseline_outputs: Mapping[str, np.ndarray],
    ) -> None:
        """Adds one batch of images; `baseline_outputs` is not read."""
        read = {role: batch_output(outputs, name) for role, name in self.roles.items()}
        boxes = read["boxes"].astype(np.float64)
        if boxes.ndim != 3 or boxes.shape[2] != 4:
            raise UserInputError(
                f"output {self.roles['boxes']!r} has shape {boxes.shape}; detection boxes must "
                f"be [N, K, 4]. Name the outputs with {METRIC_OUTPUT_FLAG}={EXPLICIT_FORM}"
            )
        for role in ("scores", "classes"):
            if read[role].size != boxes.shape[0] * boxes.shape[1]:
                raise UserInputError(
                    f"output {self.roles[role]!r} has shape {read[role].shape}; detection {role} "
                    f"must be [N, K] = {list(boxes.shape[:2])}, one per box"
                )
        scores = read["scores"].reshape(boxes.shape[:2]).astype(np.float64)
        classes = np.rint(read["classes"].reshape(boxes.shape[:2])).astype(np.int64)
        counts = read.get("num_detections")
        missing = [name for name in (GT_BOXES, GT_CLASSES) if name not in truth]
        if missing:
            raise UserInputError(f"metric {self.name!r} needs {missing} in every eval batch")
        gt_boxes = np.asarray(truth[GT_BOXES], dtype=np.float64)
        gt_classes = np.rint(np.asarray(truth[GT_CLASSES])).astype(np.int64)
        if gt_boxes.shape[0] != boxes.shape[0]:
            raise UserInputError(
                f"a batch has ground truth for {gt_boxes.shape[0]} images and detections for "
                f"{boxes.shape[0]}"
            )
        for i in range(boxes.shape[0]):
            kept = boxes.shape[1] if counts is None else int(np.reshape(counts, -1)[i])
            real = gt_classes[i] != PADDING
            detected = (boxes[i, :kept], scores[i, :kept], classes[i, :kept])
            self._images.append((*detected, gt_boxes[i][real], gt_classes[i][real]))

    def _coco_json(self) -> tuple[dict, list[dict]]:
        annotations: list[dict] = []
        detections: list[dict] = []
        for image_id, (boxes, scores, classes, gt_boxes, gt_classes) in enumerate(self._images):
            for box, cls in zip(_coco_boxes(gt_boxes), gt_classes, strict=True):
                area = float(box[2] * box[3])
                annotation = {"image_id": image_id, "category_id": int(cls), "bbox": box.tolist()}
                annotations.append(
                    {"id": len(annotations) + 1, "area": area, "iscrowd": 0, **annotation}
                )
            for box, score, cls in zip(_coco_boxes(boxes), scores, classes, strict=True):
                detection = {"image_id": image_id, "category_id": int(cls), "bbox": box.tolist()}
                detections.append({"score": float(score), **detection})
        categories = {row["category_id"] for row in annotations + detections}
        ground_truth = {
            "images": [{"id": i} for i in range(len(self._images))],
            "categories": [{"id": c} for c in sorted(categories)],
            "annotations": annotations,
        }
        return ground_truth, detections

    def value(self) -> MetricValue:
        """AP@0.5 (`map50`) and AP@[.5:.95] (`map`) over every image added."""
        from faster_coco_eval import COCO, COCOeval_faster  # 0.3 s to import; only mAP needs it

        ground_truth, detections = self._coco_json()
        if not ground_truth["annotations"]:
            raise UserInputError(
                f"metric {self.name!r}: the eval data holds no ground-truth box (every "
                f"{GT_CLASSES!r} is -1); add boxes or choose metric 'fidelity'"
            )
        coco_gt = COCO(print_function=log.debug)
        coco_gt.dataset = ground_truth
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        evaluation = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=log.debug)
        evaluation.run()
        details = {
            "map": float(evaluation.stats[0]),
            "map50": float(evaluation.stats[1]),
            "images": float(len(self._images)),
            "gt_boxes": float(len(ground_truth["annotations"])),
            "detections": float(len(detections)),
        }
        return MetricValue(self.name, details[self.name], details)


def _parse_explicit(
    outputs: Sequence[TensorInfoLike], metric_output: str, metric: str
) -> OutputChoice:
    roles: dict[str, str] = {}
    for part in metric_output.split(","):
        role, sep, name = (piece.strip() for piece in part.partition("="))
        if not sep or role not in REQUIRED_ROLES + OPTIONAL_ROLES or not name:
            raise UserInputError(
                f"{METRIC_OUTPUT_FLAG}={metric_output!r}: metric {metric!r} reads several "
                f"outputs; write {EXPLICIT_FORM}"
            )
        roles[role] = named_output(outputs, name, metric).name
    missing = [role for role in REQUIRED_ROLES if role not in roles]
    if missing:
        raise UserInputError(
            f"{METRIC_OUTPUT_FLAG}={metric_output!r} does not name {missing}; write {EXPLICIT_FORM}"
        )
    return OutputChoice(
        {role: roles[role] for role in REQUIRED_ROLES + OPTIONAL_ROLES if role in roles}
    )


def _default_roles(outputs: Sequence[TensorInfoLike], metric: str) -> OutputChoice:
    names = [t.name for t in outputs]
    roles: dict[str, str] = {}
    for role in REQUIRED_ROLES + OPTIONAL_ROLES:
        if DEFAULT_NAMES[role] in names:
            roles[role] = DEFAULT_NAMES[role]
            continue
        matches = [name for name in names if role in name.lower()]
        if len(matches) == 1:
            roles[role] = matches[0]
        elif role in REQUIRED_ROLES:
            raise ambiguous(
                outputs,
                metric,
                f"no single output holds the detection {role} (expected {DEFAULT_NAMES[role]!r}); "
                f"write {EXPLICIT_FORM}",
            )
    return OutputChoice(roles)


@dataclass(frozen=True)
class DetectionSpec(MetricSpec):
    """COCO bbox AP over normalized [ymin, xmin, ymax, xmax] boxes, via faster_coco_eval."""

    def check_ground_truth(
        self, arrays: Mapping[str, np.ndarray], num_samples: int, shard: str
    ) -> None:
        boxes = require_array(arrays, GT_BOXES, shard, self.name)
        classes = require_array(arrays, GT_CLASSES, shard, self.name)
        check_detection_truth(boxes, classes, num_samples, shard)

    def resolve_output(
        self, outputs: Sequence[TensorInfoLike], metric_output: str | None
    ) -> OutputChoice:
        if metric_output:
            return _parse_explicit(outputs, metric_output, self.name)
        return _default_roles(outputs, self.name)

    def accumulator(self, choice: OutputChoice) -> DetectionAccumulator:
        return DetectionAccumulator(self.name, choice)
