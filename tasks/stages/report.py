"""The report stage: table, plots and results.json to S3 and the MLflow run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tasks import storage
from tasks.config import PipelineConfig, RunContext
from tasks.results import StageResult, Status
from tasks.stages.common import (
    _publish,
    _published,
)
from tasks.summary import VariantSummary

logger = logging.getLogger(__name__)


def _hardware_line(hardware: dict[str, Any]) -> str:
    from tasks.hardware import hardware_class

    if not hardware:
        return "unknown"
    return f"{hardware.get('cpu_model', '?')} ({hardware_class(hardware)})"


def _run_block(
    config: PipelineConfig, ctx: RunContext, data: StageResult, hardware: dict[str, Any]
) -> dict[str, Any]:
    """The `run` block of results.json (see tasks.summary)."""
    return {
        "model": config.registered_model_name,
        "run_id": ctx.run_id,
        "hardware": _hardware_line(hardware),
        "objective": config.objective,
        "latency_slo_ms": config.latency_slo.p99_ms,
        "metric": data.metrics["metric"],
        "calibration": data.metrics["calibration"],
        "validation_samples": data.metrics.get("validation_samples"),
    }


def report_stage(
    config: PipelineConfig,
    ctx: RunContext,
    summaries: list[VariantSummary],
    selection: dict[str, Any],
    registration: StageResult,
    data: StageResult,
) -> StageResult:
    """Write the comparison table and plots, publish them to S3 and to the MLflow run."""
    from tasks import registry
    from tasks.report import write_report

    uri = ctx.uri("reports")
    if done := _published(uri, "report", config=config, ctx=ctx):
        return done
    latencies: dict[str, list[float]] = {}
    hardware: dict[str, Any] = {}
    for summary in summaries:
        if summary.benchmark_uri and summary.is_ok:
            bench = storage.get_json(summary.benchmark_uri)
            latencies[summary.variant] = bench["batches"]["1"].get("latencies_ms", [])
            hardware = hardware or bench.get("hardware") or {}
    out_dir = ctx.local("report")
    paths = write_report(
        summaries,
        _run_block(config, ctx, data, hardware),
        selection,
        {**registration.metrics, **registration.uris},
        latencies,
        out_dir,
    )
    registry.attach_report(registration.metrics["mlflow_run_id"], list(paths.values()))
    result = StageResult(
        stage="report",
        status=Status.OK,
        variant=selection["chosen"],
        uris={"report_uri": uri, **{k: f"{uri}/{Path(p).name}" for k, p in paths.items()}},
        metrics={"variants": len(summaries)},
    )
    return _publish(out_dir, uri, result, config)
