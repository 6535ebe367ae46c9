"""Selection policy: the best variant under the accuracy gate and latency SLO, with its reasons."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tasks.config import BASELINE, OBJECTIVES, AccuracyGate, LatencySLO
from tasks.errors import UserInputError
from tasks.results import Status
from tasks.summary import VariantSummary, Verdict

log = logging.getLogger(__name__)

Candidate = VariantSummary
"""Selection reads the per-variant record as it is."""


class BaselineUnavailableError(UserInputError):
    """The baseline did not run (FAILED/SKIPPED/absent): there is nothing safe to register.

    A user error: selection is pure, so retrying it cannot change the outcome.
    """


def _num(value: Any) -> float | None:
    """A finite float, or None (missing, NaN and Inf all count as not measured)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _ms(value: float) -> str:
    return f"{value:.1f}" if value >= 1 else f"{value:.3f}"


def _speed(value: float, latency: bool) -> str:
    return f"{_ms(value)} ms" if latency else f"{value:.1f} samples/s"


def _points(fraction: float) -> str:
    return f"{fraction * 100:.2f}"


@dataclass(frozen=True)
class Selection:
    """The chosen variant, the eligible ones best first, and why every other one was rejected."""

    chosen: str
    objective: str
    rejections: dict[str, str] = field(default_factory=dict)
    ranking: tuple[str, ...] = ()
    reason: str = ""
    baseline: str = BASELINE

    @property
    def kept_baseline(self) -> bool:
        return self.chosen == self.baseline

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "objective": self.objective,
            "rejections": dict(self.rejections),
            "ranking": list(self.ranking),
            "reason": self.reason,
            "baseline": self.baseline,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Selection:
        return cls(
            chosen=data["chosen"],
            objective=data["objective"],
            rejections=dict(data.get("rejections") or {}),
            ranking=tuple(data.get("ranking") or ()),
            reason=data.get("reason", ""),
            baseline=data.get("baseline", BASELINE),
        )


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}; got {objective!r}")


def _index(candidates: Iterable[Candidate]) -> dict[str, Candidate]:
    by_name: dict[str, Candidate] = {}
    for candidate in candidates:
        if candidate.variant in by_name:
            raise ValueError(f"variant {candidate.variant} appears twice among the candidates")
        by_name[candidate.variant] = candidate
    return by_name


def _accuracy_rejection(candidate: Candidate) -> str | None:
    """The validation's own verdict (the metric's gate was applied there, in its own terms)."""
    if candidate.has_nan_or_inf:
        nan_reasons = [r for r in candidate.validation_reasons if "NaN" in r or "Inf" in r]
        return "; ".join(nan_reasons) or "outputs contain NaN or Inf"
    if candidate.validation_passed is None:
        return "accuracy: not validated"
    if not candidate.validation_passed:
        return "accuracy: " + ("; ".join(candidate.validation_reasons) or "validation failed")
    return None


def _speed_rejection(candidate: Candidate, objective: str, slo: LatencySLO) -> str | None:
    if objective == "latency" and candidate.p50_ms is None:
        return "no latency measured"
    if objective == "throughput" and candidate.throughput is None:
        return "no throughput measured"
    if slo.p99_ms is not None:
        if candidate.p99_ms is None:
            return f"no latency measured (p99 needed for the {_ms(slo.p99_ms)} ms budget)"
        if candidate.p99_ms > slo.p99_ms:
            return f"p99 {_ms(candidate.p99_ms)} ms exceeds the {_ms(slo.p99_ms)} ms budget"
    return None


def rejection_reason(
    candidate: Candidate, *, objective: str, gate: AccuracyGate, slo: LatencySLO
) -> str | None:
    """Why `candidate` is not eligible, or None when it is (the baseline's exemptions aside)."""
    if candidate.status is not Status.OK:
        return f"{candidate.status.value}: {candidate.reason or 'no reason given'}"
    return _accuracy_rejection(candidate) or _speed_rejection(candidate, objective, slo)


def _require_baseline(by_name: Mapping[str, Candidate], baseline: str) -> Candidate:
    base = by_name.get(baseline)
    if base is None or base.status is not Status.OK:
        why = (
            "is missing"
            if base is None
            else f"is {base.status.value}: {base.reason or 'no reason'}"
        )
        raise BaselineUnavailableError(
            f"the baseline {baseline} {why}; there is nothing safe to register. Fix the model or "
            "the eval data so that the baseline runs, then rerun"
        )
    if base.has_nan_or_inf:
        log.warning("baseline %s has NaN/Inf outputs; it stays the reference", baseline)
    return base


def _rank_key(objective: str):
    def lower(value: float | None) -> float:
        return math.inf if value is None else value

    def higher(value: float | None) -> float:
        return math.inf if value is None else -value

    if objective == "latency":
        return lambda c: (lower(c.p50_ms), higher(c.throughput), c.variant)
    return lambda c: (higher(c.throughput), lower(c.p50_ms), c.variant)


def select(
    candidates: Iterable[Candidate],
    *,
    objective: str,
    gate: AccuracyGate,
    slo: LatencySLO,
    baseline: str = BASELINE,
) -> Selection:
    """Picks the best eligible variant by `objective` (DESIGN.md, "Selection and registration").

    Eligible: status OK, no NaN/Inf, validation passed, drop <= tolerance, p99 within the SLO
    when set. The baseline is always eligible when it is OK (even over the SLO), so a run never
    registers something worse than it. Latency ranks by p50 at batch 1 (ties: higher throughput,
    then name); throughput by samples/s (ties: lower p50, then name).

    Raises:
        BaselineUnavailableError: The baseline is absent or not OK.
        ValueError: Unknown objective or a variant listed twice.
    """
    _check_objective(objective)
    by_name = _index(candidates)
    base = _require_baseline(by_name, baseline)
    rejections: dict[str, str] = {}
    eligible = [base]
    for name, candidate in by_name.items():
        if name == baseline:
            continue
        why = rejection_reason(candidate, objective=objective, gate=gate, slo=slo)
        if why:
            rejections[name] = why
            log.info("rejected %s: %s", name, why)
        else:
            eligible.append(candidate)
    ranking = sorted(eligible, key=_rank_key(objective))
    reason = _explain(ranking, base, by_name, rejections, objective, gate, slo)
    log.info("selected %s (%s): %s", ranking[0].variant, objective, reason)
    return Selection(
        chosen=ranking[0].variant,
        objective=objective,
        rejections=rejections,
        ranking=tuple(c.variant for c in ranking),
        reason=reason,
        baseline=baseline,
    )


def _winner_text(chosen: Candidate, base: Candidate, objective: str) -> str:
    compare = chosen is not base
    if objective == "latency":
        if chosen.p50_ms is None:
            return "lowest p50 at batch 1 (not measured)"
        ratio = ""
        if compare and base.p50_ms is not None and chosen.p50_ms > 0:
            ratio = f", {base.p50_ms / chosen.p50_ms:.1f}x faster than {base.variant}"
        return f"lowest p50 at batch 1 ({_ms(chosen.p50_ms)} ms{ratio})"
    if chosen.throughput is None:
        return "highest throughput (not measured)"
    ratio = ""
    if compare and base.throughput:
        ratio = f", {chosen.throughput / base.throughput:.1f}x the throughput of {base.variant}"
    return f"highest throughput ({chosen.throughput:.1f} samples/s{ratio})"


def _baseline_slo_note(base: Candidate, slo: LatencySLO) -> str:
    if slo.p99_ms is None:
        return ""
    if base.p99_ms is None:
        return (
            f"; note: the baseline's own p99 was not measured for the {_ms(slo.p99_ms)} ms budget"
        )
    if base.p99_ms > slo.p99_ms:
        return (
            f"; note: the baseline's own p99 {_ms(base.p99_ms)} ms exceeds the "
            f"{_ms(slo.p99_ms)} ms budget"
        )
    return ""


def _explain(
    ranking: list[Candidate],
    base: Candidate,
    by_name: Mapping[str, Candidate],
    rejections: Mapping[str, str],
    objective: str,
    gate: AccuracyGate,
    slo: LatencySLO,
) -> str:
    """Why the first of `ranking` won, in one sentence for the report and the version's tags."""
    chosen = ranking[0]
    if len(ranking) == 1:
        if not rejections:
            reason = f"kept the baseline {base.variant}: it is the only variant in this run"
        else:
            listed = "; ".join(f"{name} ({why})" for name, why in rejections.items())
            reason = f"kept the baseline {base.variant}: no other variant qualified: {listed}"
        return reason + _baseline_slo_note(base, slo)
    names = [c.metric_name for c in by_name.values() if c.metric_name]
    metric = names[0] if names else "the task metric"
    reason = (
        f"{_winner_text(chosen, base, objective)} among {len(ranking)} eligible variants "
        f"that passed the {metric} gate (tolerance {gate.tolerance:g})"
    )
    if slo.p99_ms is not None:
        reason += f" and the {_ms(slo.p99_ms)} ms p99 budget"
    if chosen is base:
        reason += "; no variant beat the baseline" + _baseline_slo_note(base, slo)
    return reason


def with_verdicts(
    summaries: Iterable[VariantSummary], selection: Selection
) -> list[VariantSummary]:
    """The records with their verdict and its reason, as every surface shows them."""
    ranked = {name: place for place, name in enumerate(selection.ranking)}
    out = []
    for summary in summaries:
        name = summary.variant
        if name == selection.chosen:
            verdict, why = Verdict.CHOSEN, selection.reason
        elif summary.status is Status.FAILED:
            verdict, why = Verdict.FAILED, summary.reason
        elif summary.status is Status.SKIPPED:
            verdict, why = Verdict.SKIPPED, summary.reason
        elif name in selection.rejections:
            verdict, why = Verdict.REJECTED, selection.rejections[name]
        else:
            place = ranked.get(name)
            verdict = Verdict.ELIGIBLE
            why = f"eligible, ranked {place + 1} by {selection.objective}" if place else "eligible"
        out.append(replace(summary, verdict=verdict, verdict_reason=why))
    return out


def beats_champion(
    new: Mapping[str, Any],
    champion: Mapping[str, Any] | None,
    objective: str,
    *,
    min_gain: float = 0.0,
) -> tuple[bool, str]:
    """Whether the new model version should take the `champion` alias, and why.

    Both mappings hold `p50_ms`, `throughput` and `hardware_class`, measured in this run for the
    new version. Different (or unknown) hardware classes are not comparable, so the champion stays.

    Args:
        new: Metrics of the new version.
        champion: Metrics of the current champion, or None when there is none.
        objective: "latency" (lower p50 wins) or "throughput" (more samples/s wins).
        min_gain: Relative improvement required, e.g. 0.05 for 5%; 0 means strictly better.
    """
    _check_objective(objective)
    if not champion:
        return True, "no current champion: this version becomes champion"
    new_hw = str(new.get("hardware_class") or "").strip()
    old_hw = str(champion.get("hardware_class") or "").strip()
    if not new_hw or not old_hw or new_hw != old_hw:
        return False, (
            f"champion was measured on {old_hw or 'an unknown hardware class'}, this run on "
            f"{new_hw or 'an unknown hardware class'}: not comparable, keeping champion"
        )
    latency = objective == "latency"
    key, label = ("p50_ms", "p50") if latency else ("throughput", "throughput")
    new_value, old_value = _num(new.get(key)), _num(champion.get(key))
    if new_value is None:
        return False, f"this run has no {label} measured: keeping champion"
    if old_value is None or old_value <= 0:
        return False, f"champion has no {label} recorded: not comparable, keeping champion"
    gain = (old_value - new_value if latency else new_value - old_value) / old_value
    numbers = (
        f"{label} {_speed(new_value, latency)} vs champion's {_speed(old_value, latency)} "
        f"on {new_hw}"
    )
    if gain > min_gain:
        return True, f"{numbers}: {gain:.1%} better, takes champion"
    return False, f"{numbers}: not better by more than {min_gain:.1%}, keeping champion"
