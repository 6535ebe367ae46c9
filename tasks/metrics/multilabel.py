"""Multi-label mAP: average precision per label over the samples, averaged over the labels."""

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
SCORES_ROLE = "scores"


def check_multi_hot_labels(labels: np.ndarray, num_samples: int, shard: str) -> None:
    """UserInputError unless `labels` are multi-hot rows [N, C] of 0 and 1."""
    require_samples(labels, LABELS, num_samples, shard)
    if labels.ndim != 2 or labels.shape[1] < 2:
        raise UserInputError(
            f"{shard}: 'labels' has shape {labels.shape}; multilabel_map needs one row of 0/1 "
            "per sample, a column per label ([N, C])"
        )
    if labels.dtype.kind not in "iubf" or not np.all((labels == 0) | (labels == 1)):
        raise UserInputError(
            f"{shard}: 'labels' holds values other than 0 and 1; multilabel_map needs multi-hot "
            "rows (1 where the label applies)"
        )


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the precision-recall steps of one label (scikit-learn's definition).

    Samples are ranked by score, tied scores taken as one threshold; the label must have at
    least one positive.
    """
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], positives[order].astype(np.int64)
    last_of_threshold = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
    true_pos = np.cumsum(hits)[last_of_threshold]
    precision = true_pos / (last_of_threshold + 1)
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


class MultiLabelAPAccumulator:
    """Keeps every sample's scores and labels; per-label average precision at the end.

    Ranking-based, so sigmoid probabilities and logits score alike. Labels without a positive
    sample are left out of the mean.
    """

    def __init__(self, name: str, output: str) -> None:
        self.name = name
        self.output = output
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(
        self,
        outputs: Mapping[str, np.ndarray],
        truth: Mapping[str, np.ndarray],
        baseline_outputs: Mapping[str, np.ndarray],
    ) -> None:
        """Adds one batch; `baseline_outputs` is not read."""
        scores = batch_output(outputs, self.output).astype(np.float64)
        if LABELS not in truth:
            raise UserInputError(f"metric {self.name!r} needs 'labels' in every eval batch")
        labels = np.asarray(truth[LABELS])
        scores = scores.reshape(scores.shape[0], -1)
        if labels.shape != scores.shape:
            raise UserInputError(
                f"labels of shape {labels.shape} do not fit output {self.output!r} "
                f"({scores.shape[1]} scores per sample); give one 0/1 column per label"
            )
        self._scores.append(np.where(np.isnan(scores), -np.inf, scores))
        self._labels.append(labels == 1)

    def value(self) -> MetricValue:
        """The mean of the per-label average precisions (None before any positive label)."""
        if not self._scores:
            return MetricValue(self.name, None, {"samples": 0.0})
        scores, labels = np.concatenate(self._scores), np.concatenate(self._labels)
        scored = [c for c in range(labels.shape[1]) if labels[:, c].any()]
        details = {"samples": float(labels.shape[0]), "labels_scored": float(len(scored))}
        if not scored:
            return MetricValue(self.name, None, details)
        precisions = [average_precision(scores[:, c], labels[:, c]) for c in scored]
        return MetricValue(self.name, float(np.mean(precisions)), details)


@dataclass(frozen=True)
class MultiLabelAPSpec(MetricSpec):
    """Mean over labels of the average precision of their scores across the samples."""

    def check_ground_truth(
        self, arrays: Mapping[str, np.ndarray], num_samples: int, shard: str
    ) -> None:
        labels = require_array(arrays, LABELS, shard, self.name)
        check_multi_hot_labels(labels, num_samples, shard)

    def resolve_output(
        self, outputs: Sequence[TensorInfoLike], metric_output: str | None
    ) -> OutputChoice:
        chosen = choose_output(
            outputs,
            metric_output,
            self.name,
            lambda t: len(t.shape) == 2 and (t.shape[1] or 0) > 1,
            "per-label scores [N, C]",
        )
        return OutputChoice({SCORES_ROLE: chosen.name})

    def accumulator(self, choice: OutputChoice) -> MultiLabelAPAccumulator:
        return MultiLabelAPAccumulator(self.name, choice.roles[SCORES_ROLE])
