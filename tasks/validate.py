"""Accuracy of a variant vs the baseline: the task metric, max error, NaN/Inf, output shapes."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.config import BASELINE, AccuracyGate
from tasks.errors import UserInputError

if TYPE_CHECKING:
    from tasks.metrics import MetricSpec

log = logging.getLogger(__name__)

Outputs = Mapping[str, Any]
"""One batch of a runner's outputs, `{output_name: ndarray}`."""

GATE_SLACK = 1e-9
"""Float slack so that a drop of exactly the tolerance passes (0.92 - 0.91 > 0.01 in floats)."""


def _json_float(value: Any) -> float | None:
    """A plain float, or None for None / NaN / Inf (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _json_shape(shape: Any) -> tuple[int, ...] | None:
    return None if shape is None else tuple(int(dim) for dim in shape)


@dataclass(frozen=True)
class OutputComparison:
    """How one output of the variant compares with the baseline's, over all samples.

    Errors are absolute, over the elements where both outputs are finite (None when there are
    none). Shapes are those of the first batch that mismatched, else of the first batch;
    `variant_shape` is None when the variant lacks the output.
    """

    name: str
    max_abs_error: float | None
    mean_abs_error: float | None
    has_nan: bool
    has_inf: bool
    shape_match: bool
    nan_count: int = 0
    inf_count: int = 0
    baseline_shape: tuple[int, ...] | None = None
    variant_shape: tuple[int, ...] | None = None

    @property
    def missing(self) -> bool:
        """True when the variant did not produce this output."""
        return not self.shape_match and self.variant_shape is None

    def reasons(self) -> list[str]:
        """Why this output fails the comparison (empty when it passes)."""
        reasons = []
        if self.missing:
            reasons.append(f"output {self.name!r} is missing from the variant's outputs")
        elif not self.shape_match:
            reasons.append(
                f"output {self.name!r} has shape {self.variant_shape}, "
                f"the baseline's has {self.baseline_shape}"
            )
        if self.has_nan:
            reasons.append(f"outputs contain NaN: {self.name!r} has {self.nan_count} NaN values")
        if self.has_inf:
            reasons.append(f"outputs contain Inf: {self.name!r} has {self.inf_count} Inf values")
        return reasons

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "max_abs_error": _json_float(self.max_abs_error),
            "mean_abs_error": _json_float(self.mean_abs_error),
            "has_nan": bool(self.has_nan),
            "has_inf": bool(self.has_inf),
            "shape_match": bool(self.shape_match),
            "nan_count": int(self.nan_count),
            "inf_count": int(self.inf_count),
            "baseline_shape": _list_or_none(self.baseline_shape),
            "variant_shape": _list_or_none(self.variant_shape),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OutputComparison:
        return cls(
            name=data["name"],
            max_abs_error=data.get("max_abs_error"),
            mean_abs_error=data.get("mean_abs_error"),
            has_nan=bool(data.get("has_nan", False)),
            has_inf=bool(data.get("has_inf", False)),
            shape_match=bool(data.get("shape_match", True)),
            nan_count=int(data.get("nan_count", 0)),
            inf_count=int(data.get("inf_count", 0)),
            baseline_shape=_json_shape(data.get("baseline_shape")),
            variant_shape=_json_shape(data.get("variant_shape")),
        )


def _list_or_none(shape: tuple[int, ...] | None) -> list[int] | None:
    return None if shape is None else [int(dim) for dim in shape]


@dataclass(frozen=True)
class ValidationReport:
    """Whether a variant is accurate enough vs the baseline; truthy when it passed.

    `metric` is the task metric of the variant (`metric_name`, e.g. "top1", "rmse", "map50",
    "fidelity"), `baseline_metric` the baseline's on the same samples, `metric_delta` variant
    minus baseline in the metric's own units. `metric_details` holds the metric's extra figures
    (e.g. fidelity's cosine similarity and max error).
    """

    variant: str
    passed: bool
    reasons: tuple[str, ...] = ()
    metric_name: str | None = None
    metric: float | None = None
    baseline_metric: float | None = None
    metric_delta: float | None = None
    metric_details: dict[str, float] = field(default_factory=dict)
    outputs: tuple[OutputComparison, ...] = ()
    samples: int = 0
    tolerance: float | None = None

    def __bool__(self) -> bool:
        return self.passed

    @property
    def has_nan_or_inf(self) -> bool:
        return any(out.has_nan or out.has_inf for out in self.outputs)

    @property
    def max_abs_error(self) -> float | None:
        errors = [out.max_abs_error for out in self.outputs if out.max_abs_error is not None]
        return max(errors) if errors else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "passed": bool(self.passed),
            "reasons": list(self.reasons),
            "metric_name": self.metric_name,
            "metric": _json_float(self.metric),
            "baseline_metric": _json_float(self.baseline_metric),
            "metric_delta": _json_float(self.metric_delta),
            "metric_details": {k: _json_float(v) for k, v in self.metric_details.items()},
            "outputs": [out.to_dict() for out in self.outputs],
            "samples": int(self.samples),
            "tolerance": _json_float(self.tolerance),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidationReport:
        return cls(
            variant=data["variant"],
            passed=bool(data["passed"]),
            reasons=tuple(data.get("reasons", ())),
            metric_name=data.get("metric_name"),
            metric=data.get("metric"),
            baseline_metric=data.get("baseline_metric"),
            metric_delta=data.get("metric_delta"),
            metric_details=dict(data.get("metric_details") or {}),
            outputs=tuple(OutputComparison.from_dict(out) for out in data.get("outputs", ())),
            samples=int(data.get("samples", 0)),
            tolerance=data.get("tolerance"),
        )


class _OutputStats:
    """Running error and NaN/Inf statistics of one output."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.shape_match = True
        self.baseline_shape: tuple[int, ...] | None = None
        self.variant_shape: tuple[int, ...] | None = None
        self.max_abs = -math.inf
        self.abs_sum = 0.0
        self.count = 0
        self.nan_count = 0
        self.inf_count = 0

    def update(self, baseline: np.ndarray, variant: np.ndarray | None) -> None:
        shape = None if variant is None else variant.shape
        if self.baseline_shape is None:
            self.baseline_shape, self.variant_shape = baseline.shape, shape
        if variant is None or variant.shape != baseline.shape:
            if self.shape_match:
                self.shape_match = False
                self.baseline_shape, self.variant_shape = baseline.shape, shape
            if variant is not None:
                self._count_non_finite(variant)
            return
        self._count_non_finite(variant)
        if baseline.dtype.kind in "biufc" and variant.dtype.kind in "biufc":
            self._accumulate_errors(baseline, variant)

    def _count_non_finite(self, variant: np.ndarray) -> None:
        if np.issubdtype(variant.dtype, np.inexact):
            self.nan_count += int(np.count_nonzero(np.isnan(variant)))
            self.inf_count += int(np.count_nonzero(np.isinf(variant)))

    def _accumulate_errors(self, baseline: np.ndarray, variant: np.ndarray) -> None:
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(variant.astype(np.float64) - baseline.astype(np.float64))
        diff = diff[np.isfinite(diff)]
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.abs_sum += float(diff.sum())
            self.count += int(diff.size)

    def comparison(self) -> OutputComparison:
        return OutputComparison(
            name=self.name,
            max_abs_error=self.max_abs if self.count else None,
            mean_abs_error=self.abs_sum / self.count if self.count else None,
            has_nan=self.nan_count > 0,
            has_inf=self.inf_count > 0,
            shape_match=self.shape_match,
            nan_count=self.nan_count,
            inf_count=self.inf_count,
            baseline_shape=_json_shape(self.baseline_shape),
            variant_shape=_json_shape(self.variant_shape),
        )


def _batch_size(outputs: Outputs, names: tuple[str, ...]) -> int:
    first = np.asarray(outputs[names[0]])
    return int(first.shape[0]) if first.ndim else 1


class ValidationAccumulator:
    """Compares a variant with the baseline batch by batch, so eval data need not fit in memory.

    Args:
        variant: The variant's name, e.g. `tflite:int8`.
        output_names: The baseline's outputs to compare for errors and NaN/Inf (string outputs
            are compared by equality only).
        metric: The task metric (`tasks.metrics.MetricSpec`) and `choice`, the outputs it reads
            (from `metric.resolve_output`).
        baseline: The baseline's name; the baseline always passes against itself.
    """

    def __init__(
        self,
        variant: str,
        output_names: Iterable[str],
        metric: MetricSpec,
        choice: Any,
        *,
        baseline: str = BASELINE,
    ) -> None:
        self.variant = variant
        self.output_names = tuple(output_names)
        if not self.output_names:
            raise ValueError("output_names is empty; name the outputs to compare")
        self.metric = metric
        self.baseline = baseline
        self._stats = {name: _OutputStats(name) for name in self.output_names}
        self._variant_metric = metric.accumulator(choice)
        self._baseline_metric = metric.accumulator(choice)
        self._samples = 0

    def update(
        self,
        baseline_outputs: Outputs,
        variant_outputs: Outputs,
        truth: Mapping[str, Any] | None = None,
    ) -> None:
        """Adds one batch: both runners' outputs for the same feeds, and its ground truth.

        The metric counts only batches whose outputs the variant produced in the baseline's
        shapes; the others already fail the comparison.
        """
        truth = truth or {}
        missing = [name for name in self.output_names if name not in baseline_outputs]
        if missing:
            raise ValueError(f"baseline outputs lack {missing}; got {sorted(baseline_outputs)}")
        for name, stats in self._stats.items():
            variant = variant_outputs.get(name)
            stats.update(
                np.asarray(baseline_outputs[name]), None if variant is None else np.asarray(variant)
            )
        comparable = all(
            name in variant_outputs
            and np.shape(variant_outputs[name]) == np.shape(baseline_outputs[name])
            for name in self.output_names
        )
        if comparable:
            self._variant_metric.update(variant_outputs, truth, baseline_outputs)
        self._baseline_metric.update(baseline_outputs, truth, baseline_outputs)
        self._samples += _batch_size(baseline_outputs, self.output_names)

    def finish(self, gate: AccuracyGate) -> ValidationReport:
        """The report over every batch added so far, judged by `gate` in the metric's terms.

        Raises:
            UserInputError: No batch was added (the eval data is empty).
        """
        from tasks.metrics import judge

        if self._samples == 0:
            raise UserInputError(
                f"no evaluation samples were compared for {self.variant}; check that the eval "
                "data holds .npz shards with at least one sample"
            )
        comparisons = tuple(stats.comparison() for stats in self._stats.values())
        value = self._variant_metric.value()
        base = self._baseline_metric.value()
        verdict = judge(self.metric, value.value, base.value, gate.tolerance)
        reasons = [reason for out in comparisons for reason in out.reasons()]
        if not verdict.passed and not (value.value is None and reasons):
            reasons.append(verdict.reason)  # (no value: the outputs' reasons already say why)
        if self.variant == self.baseline and reasons:
            log.warning("baseline %s vs itself: %s (kept as passed)", self.variant, reasons)
            reasons = []
        report = ValidationReport(
            variant=self.variant,
            passed=not reasons,
            reasons=tuple(reasons),
            metric_name=self.metric.name,
            metric=value.value,
            baseline_metric=base.value,
            metric_delta=verdict.delta,
            metric_details=dict(value.details),
            outputs=comparisons,
            samples=self._samples,
            tolerance=gate.tolerance,
        )
        log.info(
            "validated %s on %d samples: passed=%s %s=%s baseline=%s %s",
            self.variant,
            report.samples,
            report.passed,
            self.metric.name,
            value.value,
            base.value,
            "; ".join(reasons),
        )
        return report
