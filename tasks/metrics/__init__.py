"""The task-metric registry: every metric by name, in display order; the one table to read."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from tasks.errors import UserInputError
from tasks.metrics.base import (
    METRIC_OUTPUT_FLAG,
    MetricAccumulator,
    MetricSpec,
    MetricValue,
    OutputChoice,
    TensorInfoLike,
)
from tasks.metrics.classification import TopKSpec
from tasks.metrics.detection import DetectionSpec
from tasks.metrics.fidelity import FidelitySpec
from tasks.metrics.gate import Verdict, judge
from tasks.metrics.multilabel import MultiLabelAPSpec
from tasks.metrics.regression import ErrorSpec
from tasks.metrics.segmentation import MeanIoUSpec

__all__ = [
    "GROUND_TRUTH_ARRAYS",
    "METRICS",
    "METRIC_OUTPUT_FLAG",
    "MetricAccumulator",
    "MetricSpec",
    "MetricValue",
    "OutputChoice",
    "TensorInfoLike",
    "Verdict",
    "auto_metric",
    "get_metric",
    "judge",
    "labels_form",
    "merge_labels_forms",
]

GROUND_TRUTH_ARRAYS = ("labels", "gt_boxes", "gt_classes")
"""Every array an eval shard may carry besides the model's inputs."""

_ABSOLUTE_DROP = "max absolute drop vs the baseline's (0.01 = 1 point)"
_RELATIVE_RISE = "max relative increase of the error vs the baseline's (0.05 = 5%)"

METRICS: Mapping[str, MetricSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            TopKSpec("top1", "top-1 accuracy", True, ("labels",), _ABSOLUTE_DROP, k=1),
            TopKSpec("top5", "top-5 accuracy", True, ("labels",), _ABSOLUTE_DROP, k=5),
            MultiLabelAPSpec(
                "multilabel_map", "multi-label mAP", True, ("labels",), _ABSOLUTE_DROP
            ),
            MeanIoUSpec("miou", "mean IoU", True, ("labels",), _ABSOLUTE_DROP),
            ErrorSpec("mae", "mean absolute error", False, ("labels",), _RELATIVE_RISE),
            ErrorSpec("rmse", "root mean squared error", False, ("labels",), _RELATIVE_RISE),
            DetectionSpec("map50", "mAP@0.5", True, ("gt_boxes", "gt_classes"), _ABSOLUTE_DROP),
            DetectionSpec("map", "mAP@[.5:.95]", True, ("gt_boxes", "gt_classes"), _ABSOLUTE_DROP),
            FidelitySpec(
                "fidelity",
                "agreement with the baseline",
                True,
                (),
                "max share of samples that may disagree with the baseline (0.01 = 1 point)",
            ),
        )
    }
)
"""Metric name -> spec, in display order."""


def get_metric(name: str) -> MetricSpec:
    """The spec of metric `name`, else UserInputError listing the choices."""
    try:
        return METRICS[name]
    except KeyError:
        raise UserInputError(
            f"unknown metric {name!r}; choose one of {', '.join(METRICS)}"
        ) from None


def labels_form(labels: np.ndarray) -> str:
    """What integer or float `labels` [N, ...] hold, as `auto_metric` reads them.

    `ids` (a class per sample, [N] or [N, 1]), `one_hot` / `multi_hot` (0/1 rows [N, C] with
    exactly one / any number of ones), `dense` (a class per element: [N, H, W], [N, T]) or
    `values` (float targets).
    """
    if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
        return "values"
    if labels.ndim == 1 or (labels.ndim == 2 and labels.shape[1] == 1):
        return "values" if labels.dtype.kind == "f" else "ids"
    if labels.ndim == 2 and np.all((labels == 0) | (labels == 1)):
        return "one_hot" if np.all(labels.sum(axis=1) == 1) else "multi_hot"
    return "values" if labels.dtype.kind == "f" else "dense"


def merge_labels_forms(forms: set[str | None]) -> str | None:
    """The form of labels over several shards: a shard of single labels fits multi-hot ones."""
    if forms == {"one_hot", "multi_hot"}:
        return "multi_hot"
    return forms.pop() if len(forms) == 1 else None


def auto_metric(
    truth_arrays: set[str], labels_dtype_kind: str | None, form: str | None = None
) -> str:
    """The metric eval data implies when none is asked for.

    Args:
        truth_arrays: The ground-truth arrays the shards carry (of GROUND_TRUTH_ARRAYS).
        labels_dtype_kind: NumPy dtype kind of `labels` (`i`, `u`, `b`, `f`), None without.
        form: What the labels hold (`labels_form`), None when unknown.

    Returns:
        `map50` with `gt_boxes`; with integer labels `multilabel_map` for multi-hot rows, `miou`
        for a class per element, else `top1`; `mae` with float labels; else `fidelity`.
    """
    if "gt_boxes" in truth_arrays:
        return "map50"
    if "labels" in truth_arrays and labels_dtype_kind in ("i", "u", "b"):
        return {"multi_hot": "multilabel_map", "dense": "miou"}.get(form or "", "top1")
    if "labels" in truth_arrays and labels_dtype_kind == "f":
        return "mae"
    return "fidelity"
