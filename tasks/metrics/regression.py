"""Regression error (MAE, RMSE) of a float output against float labels, streamed."""

from __future__ import annotations

import math
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
    is_float_dtype,
    is_string_dtype,
    named_output,
    require_array,
    require_samples,
)

LABELS = "labels"
VALUE_ROLE = "value"
ERRORS = ("mae", "rmse")


def _per_sample_size(shape: Sequence[int | None]) -> int | None:
    dims = list(shape)
    if any(dim is None or dim < 0 for dim in dims):
        return None
    return int(np.prod(dims, dtype=np.int64))


class ErrorAccumulator:
    """Sums absolute and squared errors over every element, batch by batch.

    Labels are reshaped to the output's shape, so `[N]` labels fit an `[N, 1]` output.
    """

    def __init__(self, name: str, output: str) -> None:
        self.name = name
        self.output = output
        self._abs = 0.0
        self._squares = 0.0
        self._count = 0

    def update(
        self,
        outputs: Mapping[str, np.ndarray],
        truth: Mapping[str, np.ndarray],
        baseline_outputs: Mapping[str, np.ndarray],
    ) -> None:
        """Adds one batch; `baseline_outputs` is not read."""
        predicted = batch_output(outputs, self.output).astype(np.float64)
        if LABELS not in truth:
            raise UserInputError(f"metric {self.name!r} needs 'labels' in every eval batch")
        labels = np.asarray(truth[LABELS], dtype=np.float64)
        if labels.size != predicted.size:
            raise UserInputError(
                f"labels of shape {labels.shape} do not fit output {self.output!r} of shape "
                f"{predicted.shape}; give each sample as many label values as the output has"
            )
        error = predicted - labels.reshape(predicted.shape)
        self._abs += float(np.sum(np.abs(error)))
        self._squares += float(np.sum(np.square(error)))
        self._count += error.size

    def value(self) -> MetricValue:
        """The chosen error, with both MAE and RMSE in the details (None before any sample)."""
        if not self._count:
            return MetricValue(self.name, None, {"elements": 0.0})
        details = {
            "mae": self._abs / self._count,
            "rmse": math.sqrt(self._squares / self._count),
            "elements": float(self._count),
        }
        return MetricValue(self.name, details[self.name], details)


@dataclass(frozen=True)
class ErrorSpec(MetricSpec):
    """Mean absolute error or root mean squared error over all elements of the output."""

    def check_ground_truth(
        self, arrays: Mapping[str, np.ndarray], num_samples: int, shard: str
    ) -> None:
        labels = require_array(arrays, LABELS, shard, self.name)
        require_samples(labels, LABELS, num_samples, shard)
        if labels.dtype.kind not in "fiu":
            raise UserInputError(
                f"{shard}: 'labels' are {labels.dtype}; {self.name} needs numeric targets "
                "(float32 or float64)"
            )
        if not np.all(np.isfinite(labels)):
            raise UserInputError(f"{shard}: 'labels' holds NaN or Inf; targets must be finite")

    def resolve_output(
        self,
        outputs: Sequence[TensorInfoLike],
        metric_output: str | None,
        *,
        label_shape: Sequence[int] | None = None,
    ) -> OutputChoice:
        """As MetricSpec.resolve_output; `label_shape` (labels' per-sample shape) breaks ties.

        Without `metric_output` the only output is read, else the one float output, else the
        float output with as many values per sample as `label_shape`.
        """
        if metric_output:
            chosen = named_output(outputs, metric_output, self.name)
        elif len(outputs) == 1:
            chosen = outputs[0]
        else:
            chosen = self._default_output(outputs, label_shape)
        if is_string_dtype(chosen.dtype):
            raise ambiguous(outputs, self.name, f"output {chosen.name!r} holds strings")
        return OutputChoice({VALUE_ROLE: chosen.name})

    def _default_output(
        self, outputs: Sequence[TensorInfoLike], label_shape: Sequence[int] | None
    ) -> TensorInfoLike:
        floats = [t for t in outputs if is_float_dtype(t.dtype)]
        if len(floats) == 1:
            return floats[0]
        if floats and label_shape is not None:
            size = _per_sample_size(label_shape)
            fits = [t for t in floats if _per_sample_size(t.shape[1:]) == size]
            if len(fits) == 1:
                return fits[0]
        raise ambiguous(
            outputs, self.name, f"{len(floats)} float outputs could hold the regression values"
        )

    def accumulator(self, choice: OutputChoice) -> ErrorAccumulator:
        return ErrorAccumulator(self.name, choice.roles[VALUE_ROLE])
