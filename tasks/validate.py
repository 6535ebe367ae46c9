"""Accuracy of a variant vs the baseline: task metric, agreement, max error, NaN/Inf."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.config import BASELINE, AccuracyGate
from tasks.errors import UserInputError

if TYPE_CHECKING:
    from tasks.backends.base import Runner

log = logging.getLogger(__name__)

Outputs = Mapping[str, Any]
"""One batch of a runner's outputs, `{output_name: ndarray}`."""

GATE_SLACK = 1e-9
"""Float slack so that a drop of exactly the tolerance passes (0.92 - 0.91 > 0.01 in floats)."""

_MISSING = object()


def _json_float(value: Any) -> float | None:
    """A plain float, or None for None / NaN / Inf (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _json_shape(shape: Any) -> tuple[int, ...] | None:
    return None if shape is None else tuple(int(dim) for dim in shape)


def _points(fraction: float) -> str:
    return f"{fraction * 100:.2f}"


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

    `metric` is top-1 of the variant when the eval data has labels (`metric_name` "top1"), else
    None; `metric_delta` is variant minus baseline (absolute fraction). `agreement` is the fraction
    of samples whose predicted class equals the baseline's. Without labels the gate judges
    `1 - agreement` as the drop instead of the top-1 drop.
    """

    variant: str
    passed: bool
    reasons: tuple[str, ...] = ()
    metric_name: str | None = None
    metric: float | None = None
    baseline_metric: float | None = None
    metric_delta: float | None = None
    agreement: float | None = None
    outputs: tuple[OutputComparison, ...] = ()
    samples: int = 0
    tolerance: float | None = None
    class_output: str | None = None

    def __bool__(self) -> bool:
        return self.passed

    @property
    def has_nan_or_inf(self) -> bool:
        return any(out.has_nan or out.has_inf for out in self.outputs)

    @property
    def accuracy_drop(self) -> float | None:
        """The drop the gate judged: top-1 drop with labels, else `1 - agreement`."""
        if self.metric_delta is not None:
            return -self.metric_delta
        if self.agreement is not None:
            return 1.0 - self.agreement
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "passed": bool(self.passed),
            "reasons": list(self.reasons),
            "metric_name": self.metric_name,
            "metric": _json_float(self.metric),
            "baseline_metric": _json_float(self.baseline_metric),
            "metric_delta": _json_float(self.metric_delta),
            "agreement": _json_float(self.agreement),
            "outputs": [out.to_dict() for out in self.outputs],
            "samples": int(self.samples),
            "tolerance": _json_float(self.tolerance),
            "class_output": self.class_output,
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
            agreement=data.get("agreement"),
            outputs=tuple(OutputComparison.from_dict(out) for out in data.get("outputs", ())),
            samples=int(data.get("samples", 0)),
            tolerance=data.get("tolerance"),
            class_output=data.get("class_output"),
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


def _label_classes(labels: Any, size: int, num_classes: int | None) -> np.ndarray:
    """Labels as class ids of shape (size,): integer ids, or one-hot rows over `num_classes`."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1 and labels.shape[1] == num_classes:
        labels = np.argmax(labels, axis=-1)
    if labels.size != size:
        raise UserInputError(
            f"a batch has {labels.size} labels for {size} samples; eval shards need one label "
            "per sample (class ids, or one-hot rows)"
        )
    labels = labels.reshape(size)
    if np.issubdtype(labels.dtype, np.floating) and not np.all(labels == np.round(labels)):
        raise UserInputError("labels must be integer class ids (or one-hot rows)")
    return labels.astype(np.int64)


class ValidationAccumulator:
    """Compares a variant with the baseline batch by batch, so eval data need not fit in memory.

    Args:
        variant: The variant's name, e.g. `tflite:int8`.
        output_names: The baseline's outputs to compare (all of them, normally).
        class_output: The output whose argmax over the last axis is the predicted class (top-1
            and agreement); default: the first output with a last dimension > 1. Without one,
            only errors and NaN/Inf are judged.
        baseline: The baseline's name; the baseline always passes against itself.
    """

    def __init__(
        self,
        variant: str,
        output_names: Iterable[str],
        class_output: str | None = None,
        *,
        baseline: str = BASELINE,
    ) -> None:
        self.variant = variant
        self.output_names = tuple(output_names)
        if not self.output_names:
            raise ValueError("output_names is empty; name the outputs to compare")
        if class_output is not None and class_output not in self.output_names:
            raise ValueError(f"class_output {class_output!r} is not one of {self.output_names}")
        self.class_output = class_output
        self.baseline = baseline
        self._stats = {name: _OutputStats(name) for name in self.output_names}
        self._samples = 0
        self._labelled: bool | None = None
        self._class_samples = 0
        self._agree = 0
        self._baseline_correct = 0
        self._variant_correct = 0

    def update(
        self, baseline_outputs: Outputs, variant_outputs: Outputs, labels: Any = None
    ) -> None:
        """Adds one batch: both runners' outputs for the same feeds, and its labels if any."""
        missing = [name for name in self.output_names if name not in baseline_outputs]
        if missing:
            raise ValueError(f"baseline outputs lack {missing}; got {sorted(baseline_outputs)}")
        if self._labelled is None:
            self._labelled = labels is not None
            self._resolve_class_output(baseline_outputs)
        elif self._labelled != (labels is not None):
            raise UserInputError(
                "some eval batches have labels and others do not; every shard needs `labels`, "
                "or none"
            )
        for name, stats in self._stats.items():
            variant = variant_outputs.get(name)
            stats.update(
                np.asarray(baseline_outputs[name]), None if variant is None else np.asarray(variant)
            )
        self._update_classes(baseline_outputs, variant_outputs, labels)
        self._samples += _batch_size(baseline_outputs, self.output_names)

    def _resolve_class_output(self, baseline_outputs: Outputs) -> None:
        if self.class_output is None:
            for name in self.output_names:
                shape = np.shape(baseline_outputs[name])
                if len(shape) >= 2 and shape[-1] > 1:
                    self.class_output = name
                    break
        log.debug("%s: class output for top-1/agreement: %s", self.variant, self.class_output)

    def _update_classes(
        self, baseline_outputs: Outputs, variant_outputs: Outputs, labels: Any
    ) -> None:
        if self.class_output is None:
            return
        baseline = np.asarray(baseline_outputs[self.class_output])
        variant = variant_outputs.get(self.class_output)
        if variant is None or np.shape(variant) != baseline.shape:
            return  # already a shape failure; counting only comparable batches keeps top-1 fair
        baseline_class = np.argmax(baseline, axis=-1).reshape(-1)
        variant_class = np.argmax(np.asarray(variant), axis=-1).reshape(-1)
        size = baseline_class.size
        if labels is not None:
            truth = _label_classes(labels, size, baseline.shape[-1])
            self._baseline_correct += int(np.count_nonzero(baseline_class == truth))
            self._variant_correct += int(np.count_nonzero(variant_class == truth))
        self._agree += int(np.count_nonzero(baseline_class == variant_class))
        self._class_samples += size

    def finish(self, gate: AccuracyGate) -> ValidationReport:
        """The report over every batch added so far, judged by `gate`.

        Raises:
            UserInputError: No batch was added (the eval data is empty).
        """
        if self._samples == 0:
            raise UserInputError(
                f"no evaluation samples were compared for {self.variant}; check that the eval "
                "data holds .npz shards with at least one sample"
            )
        comparisons = tuple(stats.comparison() for stats in self._stats.values())
        metric, baseline_metric, agreement = self._class_metrics()
        reasons = [reason for out in comparisons for reason in out.reasons()]
        reasons += self._accuracy_reasons(gate, metric, baseline_metric, agreement)
        if self.variant == self.baseline and reasons:
            log.warning("baseline %s vs itself: %s (kept as passed)", self.variant, reasons)
            reasons = []
        report = ValidationReport(
            variant=self.variant,
            passed=not reasons,
            reasons=tuple(reasons),
            metric_name="top1" if self._labelled and self.class_output else None,
            metric=metric,
            baseline_metric=baseline_metric,
            metric_delta=None if metric is None else metric - baseline_metric,
            agreement=agreement,
            outputs=comparisons,
            samples=self._samples,
            tolerance=gate.tolerance,
            class_output=self.class_output,
        )
        log.info(
            "validated %s on %d samples: passed=%s top1=%s baseline=%s agreement=%s %s",
            self.variant,
            report.samples,
            report.passed,
            metric,
            baseline_metric,
            agreement,
            "; ".join(reasons),
        )
        return report

    def _class_metrics(self) -> tuple[float | None, float | None, float | None]:
        if not self._class_samples:
            if self.class_output is None:
                log.warning("%s: no class output, only errors and NaN/Inf judged", self.variant)
            return None, None, None
        agreement = self._agree / self._class_samples
        if not self._labelled:
            return None, None, agreement
        return (
            self._variant_correct / self._class_samples,
            self._baseline_correct / self._class_samples,
            agreement,
        )

    def _accuracy_reasons(
        self,
        gate: AccuracyGate,
        metric: float | None,
        baseline_metric: float | None,
        agreement: float | None,
    ) -> list[str]:
        if metric is not None and baseline_metric is not None:
            drop = (self._baseline_correct - self._variant_correct) / self._class_samples
            if drop > gate.tolerance + GATE_SLACK:
                return [
                    f"top-1 dropped {_points(drop)} points ({_points(baseline_metric)}% -> "
                    f"{_points(metric)}%), tolerance {_points(gate.tolerance)}"
                ]
        elif agreement is not None and 1.0 - agreement > gate.tolerance + GATE_SLACK:
            return [
                f"agreement with the baseline is {_points(agreement)}% ({_points(1.0 - agreement)}"
                f" points disagree), tolerance {_points(gate.tolerance)}"
            ]
        return []


def _reference_batches(
    baseline_runner: Runner | None,
    batches: Iterable[tuple[Outputs, Any]],
    baseline_outputs: Iterable[Outputs] | None,
) -> Iterator[tuple[Outputs, Any, Outputs]]:
    """Yields (feeds, labels, baseline outputs), running the baseline unless they are given."""
    if baseline_outputs is None:
        if baseline_runner is None:
            raise ValueError("give baseline_runner or precomputed baseline_outputs")
        for feeds, labels in batches:
            yield feeds, labels, baseline_runner(feeds)
        return
    for batch, reference in itertools.zip_longest(batches, baseline_outputs, fillvalue=_MISSING):
        if batch is _MISSING or reference is _MISSING:
            raise ValueError("baseline_outputs and batches have different numbers of batches")
        feeds, labels = batch
        yield feeds, labels, reference


def validate_variant(
    variant: str,
    baseline_runner: Runner | None,
    variant_runner: Runner,
    batches: Iterable[tuple[Outputs, Any]],
    gate: AccuracyGate,
    *,
    baseline_outputs: Iterable[Outputs] | None = None,
    class_output: str | None = None,
    baseline: str = BASELINE,
) -> ValidationReport:
    """Runs the variant (and the baseline, unless its outputs are given) over the eval batches.

    Args:
        variant: The variant's name.
        baseline_runner: The baseline's runner; may be None when `baseline_outputs` is given.
        variant_runner: The variant's runner.
        batches: `(feeds, labels or None)` per batch, in the same order as `baseline_outputs`.
        gate: The accuracy gate.
        baseline_outputs: The baseline's outputs per batch, computed once per pipeline run.
        class_output: See `ValidationAccumulator`.
        baseline: The baseline's name.

    Raises:
        UserInputError: The eval data is empty or its labels do not fit.
    """
    accumulator = None
    for feeds, labels, reference in _reference_batches(baseline_runner, batches, baseline_outputs):
        outputs = variant_runner(feeds)
        if accumulator is None:
            names = getattr(baseline_runner, "output_names", None) or tuple(reference)
            accumulator = ValidationAccumulator(variant, names, class_output, baseline=baseline)
        accumulator.update(reference, outputs, labels)
    if accumulator is None:
        raise UserInputError(
            f"no evaluation batches to validate {variant} on; check that the eval data holds "
            ".npz shards"
        )
    return accumulator.finish(gate)
