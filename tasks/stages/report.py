"""The report stage: table, plots and results.json to S3 and the MLflow run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tasks import storage
from tasks.benchmark import BenchmarkSettings
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


def measurement_text(summaries: list[VariantSummary]) -> str:
    """How the latencies were measured, for the report's header: rounds, spoiled rounds, the
    widest spread, and the champion when it ran in the same rounds."""
    measured = [s for s in summaries if s.is_ok and s.rounds_kept]
    if not measured:
        return ""
    kept = max(s.rounds_kept or 0 for s in measured)
    spoiled = max(s.rounds_spoiled or 0 for s in measured)
    spreads = [
        s.round_p50_iqr_ms / s.p50_ms
        for s in measured
        if s.round_p50_iqr_ms is not None and s.p50_ms
    ]
    text = f"one interleaved benchmark per lane, {kept} rounds kept"
    if spoiled:
        text += f", {spoiled} spoiled by CPU steal, load or the machine's slow state"
    slow = max(s.rounds_slow or 0 for s in measured)
    if slow:
        text += (
            f"; up to {slow} more left out of a variant's figures as it ran over "
            f"{BenchmarkSettings.max_round_slowdown:.0%} slower than its fastest round"
        )
    if spreads:
        text += f"; round-to-round spread (IQR of the round p50s) up to {max(spreads):.0%} of p50"
    probes = [s.machine_probe_ms for s in measured if s.machine_probe_ms]
    if probes:
        text += f"; machine-speed probe {max(probes):.3g} ms over the kept rounds"
    champion = next((s.champion_in_rounds for s in measured if s.champion_in_rounds), None)
    if champion:
        text += (
            f"; champion v{champion['version']} ({champion.get('variant')}) in the same rounds: "
            f"p50 {champion['p50_ms']:.3g} ms"
        )
    return text


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
    run_block = _run_block(config, ctx, data, hardware)
    run_block["measurement"] = measurement_text(summaries)
    out_dir = ctx.local("report")
    paths = write_report(
        summaries,
        run_block,
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
