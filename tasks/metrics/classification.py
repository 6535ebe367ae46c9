"""Top-k accuracy of a class output against integer class labels (or one-hot rows)."""

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
    ambiguous,
    batch_output,
    is_string_dtype,
    named_output,
    require_array,
    require_samples,
)

LABELS = "labels"
CLASS_ROLE = "class"
PREFERRED_NAMES = ("probabilities", "logits", "predictions", "output_0")
"""Name fragments that mark the class output, most telling first."""


def _check_one_hot(labels: np.ndarray, shard: str) -> None:
    if labels.dtype.kind not in "iufb" or not np.all((labels == 0) | (labels == 1)):
        raise UserInputError(
            f"{shard}: 'labels' of shape {labels.shape} is read as one-hot rows but holds values "
            "other than 0 and 1; store class ids [N] or one-hot rows [N, C]"
        )
    if not np.all(labels.sum(axis=1) == 1):
        raise UserInputError(
            f"{shard}: some one-hot 'labels' rows do not hold exactly one 1; store class ids [N] "
            "or one-hot rows [N, C]; for samples with several labels choose metric "
            "'multilabel_map'"
        )


def check_class_labels(labels: np.ndarray, num_samples: int, shard: str) -> None:
    """UserInputError unless `labels` are class ids [N] / [N, 1] or one-hot rows [N, C]."""
    require_samples(labels, LABELS, num_samples, shard)
    if labels.ndim == 2 and labels.shape[1] > 1:
        _check_one_hot(labels, shard)
        return
    if labels.ndim > 2 or (labels.ndim == 2 and labels.shape[1] != 1):
        raise UserInputError(
            f"{shard}: 'labels' has shape {labels.shape}; top-k needs class ids [N] or one-hot "
            "rows [N, C]; for a class per pixel or token choose metric 'miou'"
        )
    if labels.dtype.kind not in "iub":
        raise UserInputError(
            f"{shard}: 'labels' are {labels.dtype}; top-k needs integer class ids (e.g. int64) "
            "or one-hot rows. For regression targets choose metric 'mae' or 'rmse'"
        )
    if labels.size and labels.min() < 0:
        raise UserInputError(
            f"{shard}: 'labels' holds negative class ids (min {labels.min()}); class ids start at 0"
        )


def _class_ids(labels: np.ndarray, num_samples: int) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = np.argmax(labels, axis=1)
    labels = labels.reshape(-1)
    if labels.size != num_samples:
        raise UserInputError(
            f"a batch has {labels.size} labels for {num_samples} samples; give one label per sample"
        )
    if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
        raise UserInputError("labels must be integer class ids (or one-hot rows)")
    return labels.astype(np.int64)


def _class_scores(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim == 1:
        return array.reshape(-1, 1).astype(np.float64)
    if array.ndim > 2 and int(np.prod(array.shape[1:-1])) != 1:
        raise UserInputError(
            f"output {name!r} has shape {array.shape}; top-k reads one class axis per sample "
            "([N, C], or [N, 1] for a binary sigmoid)"
        )
    return array.reshape(array.shape[0], array.shape[-1]).astype(np.float64)


def _holds_class_ids(output: np.ndarray) -> bool:
    """An integer output of one value per sample ([N] or [N, 1]) is the predicted class id."""
    return output.dtype.kind in "iu" and (
        output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)
    )


class TopKAccumulator:
    """Counts samples whose label is among the k best-scored classes, batch by batch.

    Ties rank the lower class id first (as argmax does). A single-column float output is a
    binary sigmoid: class 1 when p >= 0.5. An integer one is the predicted class id, a hit
    when it equals the label (for any k: there is nothing to rank).
    """

    def __init__(self, name: str, k: int, output: str) -> None:
        self.name = name
        self.k = k
        self.output = output
        self._correct = 0
        self._samples = 0

    def update(
        self,
        outputs: Mapping[str, np.ndarray],
        truth: Mapping[str, np.ndarray],
        baseline_outputs: Mapping[str, np.ndarray],
    ) -> None:
        """Adds one batch; `baseline_outputs` is not read."""
        output = batch_output(outputs, self.output)
        if LABELS not in truth:
            raise UserInputError(f"metric {self.name!r} needs 'labels' in every eval batch")
        labels = _class_ids(np.asarray(truth[LABELS]), output.shape[0])
        if _holds_class_ids(output):
            hits = output.reshape(-1) == labels
        else:
            hits = self._hits(self._checked_scores(output, labels), labels)
        self._correct += int(np.count_nonzero(hits))
        self._samples += labels.size

    def _checked_scores(self, output: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The output as [N, C] scores, once the labels are known to fit its C classes."""
        scores = _class_scores(output, self.output)
        classes = max(scores.shape[1], 2)
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise UserInputError(
                f"labels range over [{labels.min()}, {labels.max()}] but output {self.output!r} "
                f"scores {classes} classes; labels must be class ids in [0, {classes - 1}]"
            )
        return scores

    def _hits(self, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if self.k >= max(scores.shape[1], 2):
            return np.ones(labels.shape, dtype=bool)
        if scores.shape[1] == 1:
            return (scores[:, 0] >= 0.5).astype(np.int64) == labels
        if self.k == 1:
            return np.argmax(scores, axis=1) == labels
        truth = scores[np.arange(labels.size), labels][:, None]
        ahead = np.count_nonzero(scores > truth, axis=1)
        ahead += np.count_nonzero(
            (scores == truth) & (np.arange(scores.shape[1]) < labels[:, None]), axis=1
        )
        return (ahead < self.k) & ~np.isnan(truth[:, 0])

    def value(self) -> MetricValue:
        """The fraction of samples scored correctly (None before any sample)."""
        value = self._correct / self._samples if self._samples else None
        details = {"correct": float(self._correct), "samples": float(self._samples)}
        return MetricValue(self.name, value, details)


def _pick_class_output(
    candidates: Sequence[TensorInfoLike], outputs: Sequence[TensorInfoLike], metric: str
) -> TensorInfoLike:
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ambiguous(outputs, metric, "no output has a class axis (last dimension > 1)")
    for word in PREFERRED_NAMES:
        matches = [t for t in candidates if word in t.name.lower()]
        if len(matches) == 1:
            return matches[0]
    names = ", ".join(t.name for t in candidates)
    raise ambiguous(outputs, metric, f"several outputs could hold the class scores ({names})")


@dataclass(frozen=True)
class TopKSpec(MetricSpec):
    """Top-k accuracy: the fraction of samples whose label is among the k highest scores."""

    k: int = 1

    def check_ground_truth(
        self, arrays: Mapping[str, np.ndarray], num_samples: int, shard: str
    ) -> None:
        check_class_labels(require_array(arrays, LABELS, shard, self.name), num_samples, shard)

    def resolve_output(
        self, outputs: Sequence[TensorInfoLike], metric_output: str | None
    ) -> OutputChoice:
        if metric_output:
            chosen = named_output(outputs, metric_output, self.name)
        else:
            numeric = [t for t in outputs if not is_string_dtype(t.dtype)]
            classes = [t for t in numeric if len(t.shape) >= 2 and (t.shape[-1] or 0) > 1]
            if len(outputs) == 1:
                chosen = outputs[0]
            elif not classes:
                binary = [t for t in numeric if len(t.shape) >= 2 and t.shape[-1] == 1]
                chosen = _pick_class_output(binary, outputs, self.name)
            else:
                chosen = _pick_class_output(classes, outputs, self.name)
        if is_string_dtype(chosen.dtype):
            raise ambiguous(outputs, self.name, f"output {chosen.name!r} holds strings")
        return OutputChoice({CLASS_ROLE: chosen.name})

    def accumulator(self, choice: OutputChoice) -> TopKAccumulator:
        return TopKAccumulator(self.name, self.k, choice.roles[CLASS_ROLE])
