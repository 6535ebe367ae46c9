"""Fidelity: how closely a variant's outputs follow the baseline's, with no labels needed."""

from __future__ import annotations

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
    batch_output,
    describe_outputs,
    is_string_dtype,
    named_output,
)

RTOL = 1e-2
"""Relative tolerance of the per-sample closeness test (outputs without a class axis)."""
ATOL_OF_RANGE = 1e-3
"""Absolute tolerance of that test, as a fraction of the baseline output's dynamic range."""


def _excess(variant: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Per sample, the largest `|v - b| - RTOL * |b|`; -inf where all elements are identical."""
    same = (variant == baseline) | (np.isnan(variant) & np.isnan(baseline))
    with np.errstate(invalid="ignore"):
        excess = np.abs(variant - baseline) - RTOL * np.abs(baseline)
    excess = np.where(np.isfinite(excess), excess, np.inf)
    excess = np.where(same, -np.inf, excess)
    return excess.reshape(excess.shape[0], -1).max(axis=1, initial=-np.inf)


class _OutputAgreement:
    """One output's per-sample agreement: argmax over a class axis, else closeness."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.by_class: bool | None = None
        self._chunks: list[np.ndarray] = []
        self._low = np.inf
        self._high = -np.inf

    def update(self, variant: np.ndarray, baseline: np.ndarray) -> None:
        if self.by_class is None:
            self.by_class = baseline.ndim >= 2 and baseline.shape[-1] > 1
        if self.by_class:
            size = baseline.shape[0]
            agree = np.argmax(variant.reshape(size, -1, baseline.shape[-1]), axis=-1) == np.argmax(
                baseline.reshape(size, -1, baseline.shape[-1]), axis=-1
            )
            self._chunks.append(agree.all(axis=1))
            return
        finite = baseline[np.isfinite(baseline)]
        if finite.size:
            self._low = min(self._low, float(finite.min()))
            self._high = max(self._high, float(finite.max()))
        self._chunks.append(_excess(variant, baseline))

    def agreement(self) -> np.ndarray:
        """A boolean per sample seen."""
        if not self._chunks:
            return np.zeros(0, dtype=bool)
        values = np.concatenate(self._chunks)
        if self.by_class:
            return values
        atol = ATOL_OF_RANGE * (self._high - self._low) if self._high >= self._low else 0.0
        return values <= atol


def _cosines(variants: list[np.ndarray], baselines: list[np.ndarray]) -> np.ndarray:
    """Per-sample cosine of the flattened outputs (1 when both are zero, 0 when not finite)."""
    size = baselines[0].shape[0]
    v = np.concatenate([a.reshape(size, -1) for a in variants], axis=1)
    b = np.concatenate([a.reshape(size, -1) for a in baselines], axis=1)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        dot = np.sum(v * b, axis=1)
        norms = np.linalg.norm(v, axis=1) * np.linalg.norm(b, axis=1)
        both_zero = ~np.any(v, axis=1) & ~np.any(b, axis=1)
        cosine = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
    cosine = np.where(both_zero, 1.0, cosine)
    return np.where(np.isfinite(cosine), np.clip(cosine, -1.0, 1.0), 0.0)


class FidelityAccumulator:
    """Compares outputs with the baseline's, batch by batch.

    A sample agrees when it agrees on every output read. An output whose last dimension is > 1
    agrees when its argmax over that axis equals the baseline's; any other output agrees when
    every element is within `RTOL * |baseline| + ATOL_OF_RANGE * (baseline max - min)`, the
    range taken over the whole eval set. `cosine` is the mean per-sample cosine similarity of
    all outputs read, flattened; `max_abs_error` is over elements where both are finite.
    """

    def __init__(self, name: str, outputs: Sequence[str]) -> None:
        self.name = name
        self._outputs = {output: _OutputAgreement(output) for output in outputs}
        self._cosine_sum = 0.0
        self._samples = 0
        self._max_abs_error = 0.0

    def update(
        self,
        outputs: Mapping[str, np.ndarray],
        truth: Mapping[str, np.ndarray],
        baseline_outputs: Mapping[str, np.ndarray],
    ) -> None:
        """Adds one batch; `truth` is not read."""
        variants, baselines = [], []
        for name, agreement in self._outputs.items():
            variant = batch_output(outputs, name).astype(np.float64)
            baseline = batch_output(baseline_outputs, name).astype(np.float64)
            if variant.shape != baseline.shape:
                raise ValueError(
                    f"output {name!r} has shape {variant.shape}, the baseline's {baseline.shape}"
                )
            agreement.update(variant, baseline)
            both = np.isfinite(variant) & np.isfinite(baseline)
            if np.any(both):
                error = float(np.max(np.abs(variant[both] - baseline[both])))
                self._max_abs_error = max(self._max_abs_error, error)
            variants.append(variant)
            baselines.append(baseline)
        self._cosine_sum += float(np.sum(_cosines(variants, baselines)))
        self._samples += baselines[0].shape[0]

    def value(self) -> MetricValue:
        """Agreement in [0, 1] as the value; cosine and max_abs_error in the details."""
        if not self._samples:
            return MetricValue(self.name, None, {"samples": 0.0})
        agree = np.logical_and.reduce([a.agreement() for a in self._outputs.values()])
        agreement = float(np.count_nonzero(agree)) / self._samples
        details = {
            "agreement": agreement,
            "cosine": self._cosine_sum / self._samples,
            "max_abs_error": self._max_abs_error,
            "samples": float(self._samples),
        }
        return MetricValue(self.name, agreement, details)


@dataclass(frozen=True)
class FidelitySpec(MetricSpec):
    """Agreement with the baseline's outputs; needs no ground truth."""

    def check_ground_truth(
        self, arrays: Mapping[str, np.ndarray], num_samples: int, shard: str
    ) -> None:
        """Fidelity reads no ground truth, so every shard passes."""

    def resolve_output(
        self, outputs: Sequence[TensorInfoLike], metric_output: str | None
    ) -> OutputChoice:
        """The outputs named in `metric_output` (comma-separated), else every numeric output."""
        if metric_output:
            chosen = [named_output(outputs, n.strip(), self.name) for n in metric_output.split(",")]
            strings = [t.name for t in chosen if is_string_dtype(t.dtype)]
            if strings:
                raise UserInputError(
                    f"{METRIC_OUTPUT_FLAG} names string outputs {strings}; fidelity compares "
                    f"numeric outputs: {describe_outputs(outputs)}"
                )
        else:
            chosen = [t for t in outputs if not is_string_dtype(t.dtype)]
            if not chosen:
                raise UserInputError(
                    f"every output of the model holds strings ({describe_outputs(outputs)}); "
                    "fidelity compares numeric outputs"
                )
        return OutputChoice({t.name: t.name for t in chosen})

    def accumulator(self, choice: OutputChoice) -> FidelityAccumulator:
        return FidelityAccumulator(self.name, choice.output_names)
