"""The accuracy gate: does a variant's metric stay within tolerance of the baseline's?"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tasks.metrics.base import MetricSpec

SLACK = 1e-9
"""Float slack so that a change of exactly the tolerance passes (0.92 - 0.91 > 0.01 in floats)."""
ZERO_ERROR = 1e-12
"""When the baseline's error is 0, the variant's must be within this."""


@dataclass(frozen=True)
class Verdict:
    """The gate's decision; truthy when passed. `delta` is variant - baseline, in metric units."""

    passed: bool
    delta: float | None
    reason: str

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "delta": self.delta, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        return cls(bool(data["passed"]), data.get("delta"), str(data["reason"]))


def _number(value: float) -> str:
    """Four decimals for everyday magnitudes, four significant digits otherwise."""
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4f}"
    return f"{value:.4g}"


def _moved(delta: float, down: str, amount: str) -> str:
    """`rose <amount>`, `<down> <amount>` or `is unchanged`."""
    if delta == 0:
        return "is unchanged"
    return f"{'rose' if delta > 0 else down} {amount}"


def _higher_is_better(spec: MetricSpec, value: float, baseline: float, tolerance: float) -> Verdict:
    delta = value - baseline
    passed = -delta <= tolerance + SLACK
    moved = _moved(delta, "dropped", f"{abs(delta) * 100:.2f} points")
    reason = (
        f"{spec.title} {moved} ({baseline * 100:.2f}% -> {value * 100:.2f}%), "
        f"tolerance {tolerance * 100:.2f}"
    )
    return Verdict(passed, delta, reason)


def _error(spec: MetricSpec, value: float, baseline: float, tolerance: float) -> Verdict:
    delta = value - baseline
    if baseline == 0:
        passed = value <= ZERO_ERROR
        reason = (
            f"{spec.title} is {_number(value)} where the baseline's is 0, so it must stay within "
            f"{ZERO_ERROR:g}"
        )
        return Verdict(passed, delta, reason)
    passed = value <= baseline * (1 + tolerance) + SLACK * max(1.0, abs(baseline))
    moved = _moved(delta, "fell", f"{abs(delta) / baseline * 100:.1f}%")
    reason = (
        f"{spec.title} {moved} ({_number(baseline)} -> {_number(value)}), "
        f"tolerance {tolerance * 100:.1f}%"
    )
    return Verdict(passed, delta, reason)


def judge(
    spec: MetricSpec, value: float | None, baseline: float | None, tolerance: float
) -> Verdict:
    """Judges a variant's metric value against the baseline's under `tolerance`.

    Higher-is-better metrics (top1, top5, map50, map) pass on an absolute drop <= tolerance.
    Error metrics (mae, rmse) pass when the error is <= baseline's * (1 + tolerance); a baseline
    error of 0 leaves room for 1e-12 only. Fidelity's value is the agreement (the baseline's
    is 1), and passes when 1 - agreement <= tolerance.

    Args:
        spec: The metric.
        value: The variant's value; None or NaN fails.
        baseline: The baseline's value; not read for a metric without ground truth (fidelity
            measures agreement with the baseline, which is 1 by definition).
        tolerance: The metric's tolerance (see `spec.tolerance_meaning`), >= 0.

    Returns:
        The verdict, with a one-line reason in the metric's units.
    """
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance}")
    if value is None or not math.isfinite(value):
        return Verdict(False, None, f"{spec.title} of the variant could not be computed ({value})")
    if not spec.ground_truth:
        baseline = 1.0
    if baseline is None or not math.isfinite(baseline):
        return Verdict(
            False, None, f"{spec.title} of the baseline could not be computed ({baseline})"
        )
    if spec.higher_is_better:
        return _higher_is_better(spec, value, baseline, tolerance)
    return _error(spec, value, baseline, tolerance)
