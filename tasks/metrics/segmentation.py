"""Mean IoU of a dense class output (segmentation, per-token tags) against per-element labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tasks.errors import UserInputError
from tasks.metrics.base import (
    MetricSpec,
    MetricValue,
    OutputChoice,
    TensorInfoLike,
    batch_output,
    choose_output,
    require_array,
    require_samples,
)

LABELS = "labels"
CLASS_ROLE = "class"
IGNORE_LABEL = 255
"""Label value left out of the score (the VOC / Cityscapes convention for 'void' pixels)."""
CLASS_IOU_PREFIX = "iou/"
"""Details key prefix of one class's IoU (`iou/<class id>`), for the report's per-class table
and the registry's metrics."""


def check_dense_labels(labels: np.ndarray, num_samples: int, shard: str) -> None:
    """UserInputError unless `labels` are integer class ids per element, [N, ...] (rank >= 2)."""
    require_samples(labels, LABELS, num_samples, shard)
    if labels.ndim < 2:
        raise UserInputError(
            f"{shard}: 'labels' has shape {labels.shape}; miou needs a class id per element "
            "([N, H, W] for segmentation, [N, T] for per-token tags). For one class per sample "
            "choose metric 'top1'"
        )
    if labels.dtype.kind not in "iub":
        raise UserInputError(
            f"{shard}: 'labels' are {labels.dtype}; miou needs integer class ids (e.g. uint8 "
            f"or int64; {IGNORE_LABEL} marks elements to leave out)"
        )
    if labels.size and labels.min() < 0:
        raise UserInputError(
            f"{shard}: 'labels' holds negative class ids (min {labels.min()}); class ids start "
            f"at 0, and {IGNORE_LABEL} marks elements to leave out"
        )


def _predicted_classes(scores: np.ndarray, labels: np.ndarray, name: str) -> np.ndarray:
    """Class ids per element: argmax over the class axis, or p >= 0.5 for a single channel."""
    if scores.shape[:-1] == labels.shape and scores.shape[-1] > 1:
        return np.argmax(scores, axis=-1)
    squeezed = scores.reshape(scores.shape[:-1]) if scores.shape[-1:] == (1,) else scores
    if squeezed.shape == labels.shape:
        return (squeezed >= 0.5).astype(np.int64)
    raise UserInputError(
        f"output {name!r} has shape {scores.shape} but the labels {labels.shape}; miou reads "
        "[N, ..., C] class scores (or one sigmoid channel) over [N, ...] labels of the same "
        "spatial shape"
    )


class MeanIoUAccumulator:
    """A confusion matrix over every labelled element, batch by batch; IoU per class from it.

    The mean runs over the classes that occur in the labels or the predictions. Elements
    labelled `IGNORE_LABEL` are left out.
    """

    def __init__(self, name: str, output: str) -> None:
        self.name = name
        self.output = output
        self._confusion = np.zeros((0, 0), dtype=np.int64)

    def update(
        self,
        outputs: Mapping[str, np.ndarray],
        truth: Mapping[str, np.ndarray],
        baseline_outputs: Mapping[str, np.ndarray],
    ) -> None:
        """Adds one batch; `baseline_outputs` is not read."""
        scores = batch_output(outputs, self.output)
        if LABELS not in truth:
            raise UserInputError(f"metric {self.name!r} needs 'labels' in every eval batch")
        labels = np.asarray(truth[LABELS]).astype(np.int64)
        if labels.ndim == scores.ndim and labels.shape[-1:] == (1,) and scores.shape[-1] > 1:
            labels = labels.reshape(labels.shape[:-1])
        predicted = _predicted_classes(scores, labels, self.output)
        classes = max(scores.shape[-1], 2)
        kept = labels != IGNORE_LABEL
        labels, predicted = labels[kept], predicted[kept]
        if labels.size and labels.max() >= classes:
            raise UserInputError(
                f"labels reach class {labels.max()} but output {self.output!r} scores {classes} "
                f"classes; labels must be class ids in [0, {classes - 1}] (or {IGNORE_LABEL})"
            )
        if self._confusion.shape[0] < classes:
            grown = np.zeros((classes, classes), dtype=np.int64)
            size = self._confusion.shape[0]
            grown[:size, :size] = self._confusion
            self._confusion = grown
        size = self._confusion.shape[0]
        counts = np.bincount(labels * size + predicted, minlength=size * size)
        self._confusion += counts.reshape(size, size)

    def value(self) -> MetricValue:
        """Mean IoU, with pixel accuracy, the number of classes and each scored class's IoU
        (`iou/<class id>`) in the details."""
        confusion = self._confusion
        elements = int(confusion.sum())
        if not elements:
            return MetricValue(self.name, None, {"elements": 0.0})
        hits = np.diag(confusion).astype(np.float64)
        union = confusion.sum(axis=0) + confusion.sum(axis=1) - hits
        present = union > 0
        iou = hits[present] / union[present]
        details = {
            "pixel_accuracy": float(hits.sum() / elements),
            "classes_scored": float(present.sum()),
            "elements": float(elements),
        }
        for class_id, value in zip(np.flatnonzero(present), iou, strict=True):
            details[f"{CLASS_IOU_PREFIX}{class_id}"] = float(value)
        return MetricValue(self.name, float(iou.mean()), details)


@dataclass(frozen=True)
class MeanIoUSpec(MetricSpec):
    """Mean intersection-over-union of the predicted class per element, over the classes."""

    def check_ground_truth(
        self, arrays: Mapping[str, np.ndarray], num_samples: int, shard: str
    ) -> None:
        check_dense_labels(require_array(arrays, LABELS, shard, self.name), num_samples, shard)

    def resolve_output(
        self, outputs: Sequence[TensorInfoLike], metric_output: str | None
    ) -> OutputChoice:
        chosen = choose_output(
            outputs,
            metric_output,
            self.name,
            lambda t: len(t.shape) >= 3,
            "per-element class scores [N, ..., C]",
        )
        return OutputChoice({CLASS_ROLE: chosen.name})

    def accumulator(self, choice: OutputChoice) -> MeanIoUAccumulator:
        return MeanIoUAccumulator(self.name, choice.roles[CLASS_ROLE])
