"""The whole chain in one process (what the CLI runs): the same stages the DAG wires as tasks."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tasks import stages
from tasks.config import PipelineConfig, RunContext
from tasks.results import StageResult

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str, StageResult | None, float | None], None]
"""progress(step, total_steps, label, stage result or None, seconds spent or None at start)."""


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


@dataclass
class _Steps:
    total: int
    progress: Progress | None
    done: int = 0

    def run(self, label: str, fn: Callable[..., Any], *args: Any) -> Any:
        self.done += 1
        if self.progress:
            self.progress(self.done, self.total, label, None, None)
        started = time.perf_counter()
        result = fn(*args)
        if self.progress:
            stage_result = result if isinstance(result, StageResult) else None
            self.progress(self.done, self.total, label, stage_result, time.perf_counter() - started)
        return result


def optimize(
    config: PipelineConfig, *, run_id: str | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Run export -> data -> convert + validate -> benchmark -> select -> register -> report.

    Returns:
        A JSON-safe dict: run id, S3 root, the per-variant records (`variants`, with verdicts),
        the selection, the registration and the report's URIs.
    """
    ctx = RunContext.create(run_id or new_run_id(), config.registered_model_name)
    try:
        return _optimize(config, ctx, progress)
    finally:
        ctx.cleanup()  # on failure as well: scratch never outlives the run


def _optimize(config: PipelineConfig, ctx: RunContext, progress: Progress | None) -> dict[str, Any]:
    steps = _Steps(total=6 + 2 * len(config.variants), progress=progress)
    started = time.perf_counter()
    export = steps.run("export", stages.export_stage, config, ctx)
    data = steps.run(
        "check data, reference outputs", stages.prepare_data_stage, config, ctx, export
    )
    conversions, validations = [], []
    for spec in config.variants:
        conversion = steps.run(
            f"{spec.name} convert", stages.convert_stage, config, ctx, spec.name, export, data
        )
        conversions.append(conversion)
        validations.append(
            steps.run(
                f"{spec.name} validate",
                stages.validate_stage,
                config,
                ctx,
                conversion,
                export,
                data,
            )
        )
    benchmarks = steps.run(
        "benchmark, interleaved", stages.benchmark_lanes, config, ctx, conversions, data
    )
    summaries = stages.collect_summaries(conversions, validations, benchmarks)
    selection, summaries = steps.run("select", stages.select_stage, config, summaries)
    rows = [summary.to_dict() for summary in summaries]
    registration = steps.run(
        "register", stages.register_stage, config, ctx, export, data, rows, selection
    )
    report = steps.run(
        "report", stages.report_stage, config, ctx, summaries, selection, registration, data
    )
    return {
        "run_id": ctx.run_id,
        "root_uri": ctx.root_uri,
        "config": config.to_params(),
        "variants": rows,
        "selection": selection,
        "registration": registration.to_dict(),
        "report": report.to_dict(),
        "wall_s": round(time.perf_counter() - started, 2),
    }
