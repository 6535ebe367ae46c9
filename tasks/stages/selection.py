"""Collect the per-variant records and apply the selection policy."""

from __future__ import annotations

import logging
from typing import Any

from tasks.config import PipelineConfig
from tasks.results import StageResult, Status
from tasks.stages.common import _not_ok
from tasks.summary import VariantSummary

logger = logging.getLogger(__name__)


def collect_summaries(
    conversions: list[StageResult],
    validations: list[StageResult],
    benchmarks: list[StageResult],
) -> list[VariantSummary]:
    """Merge the per-variant stage results (matched by variant) into one record each.

    A variant whose conversion was not OK may have no validation or benchmark result; its record
    then carries the conversion's status and reason. A converted variant without one (its task
    did not finish) is FAILED with that reason.
    """
    from tasks.summary import summarize, with_speedups

    vals = {v.variant: v for v in validations}
    benches = {b.variant: b for b in benchmarks}
    summaries = []
    for c in conversions:  # a StageResult is falsy unless OK: look up by presence, not truth
        validation = vals[c.variant] if c.variant in vals else _missing("validate", c)
        benchmark = benches[c.variant] if c.variant in benches else _missing("benchmark", c)
        summaries.append(summarize(c, validation, benchmark))
    return with_speedups(summaries)


def _missing(stage: str, conversion: StageResult) -> StageResult:
    if not conversion:
        return _not_ok(stage, conversion)
    return StageResult(
        stage,
        Status.FAILED,
        reason="no result: the task that runs this stage did not finish",
        variant=conversion.variant,
    )


def select_stage(
    config: PipelineConfig, summaries: list[VariantSummary]
) -> tuple[dict[str, Any], list[VariantSummary]]:
    """Apply the selection policy; returns the Selection as a dict and the records with verdicts."""
    from tasks.select import select, with_verdicts

    selection = select(
        summaries,
        objective=config.objective,
        gate=config.accuracy_gate,
        slo=config.latency_slo,
    )
    logger.info("selected %s: %s", selection.chosen, selection.reason)
    for variant, reason in selection.rejections.items():
        logger.info("rejected %s: %s", variant, reason)
    return selection.to_dict(), with_verdicts(summaries, selection)
