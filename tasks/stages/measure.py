"""The validate and benchmark stages of one converted variant."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from tasks import storage
from tasks.config import PipelineConfig, RunContext, VariantSpec
from tasks.results import StageResult, Status
from tasks.stages.common import (
    BENCHMARK_DISTINCT_BATCHES,
    REFERENCE_DIR,
    VALIDATION_BATCH,
    _guarded,
    _not_ok,
    _publish,
    _published,
)
from tasks.stages.data import DataPlan, data_plan

logger = logging.getLogger(__name__)


def _load_variant(config: PipelineConfig, ctx: RunContext, conversion: StageResult, plan: DataPlan):
    from tasks.backends import get_backend

    spec = VariantSpec.parse(conversion.variant)
    local = storage.fetch_tree(conversion.uris["model"], ctx.local("fetched", spec.slug))
    return get_backend(spec.backend).load(Path(local), plan.signature, config.num_threads)


def _start(
    stage: str,
    folder: str,
    config: PipelineConfig,
    ctx: RunContext,
    conversion: StageResult,
    data: StageResult,
) -> StageResult | tuple[VariantSpec, str, DataPlan, Any]:
    """The stage's published result when there is one, else what it works on: the variant,
    its output URI, the data stage's plan and the loaded runner."""
    spec = VariantSpec.parse(conversion.variant)
    uri = ctx.uri("variants", spec.slug, folder)
    if done := _published(uri, stage, spec.name, config=config, ctx=ctx):
        return done
    plan = data_plan(config, ctx, data)
    return spec, uri, plan, _load_variant(config, ctx, conversion, plan)


def _validate(
    config: PipelineConfig, ctx: RunContext, conversion: StageResult, data: StageResult
) -> StageResult:
    from tasks.datasets import iter_batches
    from tasks.validate import ValidationAccumulator

    work = _start("validate", "validation", config, ctx, conversion, data)
    if isinstance(work, StageResult):
        return work
    spec, uri, plan, runner = work
    reference_dir = Path(storage.fetch_tree(data.uris["data"], ctx.local("reference")))
    accumulator = ValidationAccumulator(
        spec.name, plan.signature.output_names, plan.metric, plan.choice
    )
    for index, (feeds, truth) in enumerate(iter_batches(plan.eval_data, VALIDATION_BATCH)):
        path = reference_dir / REFERENCE_DIR / f"batch-{index:05d}.npz"
        with np.load(path, allow_pickle=False) as ref:
            baseline = {name: ref[name] for name in ref.files}
        accumulator.update(baseline, runner(feeds), truth)
    report = accumulator.finish(config.accuracy_gate)
    out_dir = ctx.local("validation", spec.slug)
    (out_dir / "validation.json").write_text(json.dumps(report.to_dict(), indent=2))
    result = StageResult(
        stage="validate",
        status=Status.OK,  # the stage ran; whether the variant passed is `metrics["passed"]`
        reason="; ".join(report.reasons),
        variant=spec.name,
        uris={"validation": f"{uri}/validation.json"},
        metrics=report.to_dict(),
    )
    return _publish(out_dir, uri, result, config)


def validate_stage(
    config: PipelineConfig,
    ctx: RunContext,
    conversion: StageResult,
    export: StageResult,
    data: StageResult,
) -> StageResult:
    """Compare one variant's outputs on the eval data with the baseline's reference outputs."""
    if not conversion:
        return _not_ok("validate", conversion)
    return _guarded(
        "validate", conversion.variant, lambda: _validate(config, ctx, conversion, data)
    )


def _benchmark(
    config: PipelineConfig, ctx: RunContext, conversion: StageResult, data: StageResult
) -> StageResult:
    from tasks.benchmark import BenchmarkSettings, benchmark_variant
    from tasks.datasets import sample_feeds
    from tasks.hardware import describe_hardware, hardware_class

    work = _start("benchmark", "benchmark", config, ctx, conversion, data)
    if isinstance(work, StageResult):
        return work
    spec, uri, plan, runner = work
    feeds_by_batch = {
        size: sample_feeds(plan.eval_data, size, BENCHMARK_DISTINCT_BATCHES)
        for size in config.batch_sizes
    }
    reports = benchmark_variant(runner, feeds_by_batch, BenchmarkSettings())
    metrics: dict[str, Any] = {}
    prefix = getattr(runner, "prefix_runner", None)
    if prefix is not None:  # ops kept in TensorFlow in front of the converted core
        alone = benchmark_variant(prefix, {1: feeds_by_batch[1]}, BenchmarkSettings())[1]
        metrics["prefix_p50_ms_b1"] = alone.p50_ms
        metrics["prefix_share"] = round(min(1.0, alone.p50_ms / reports[1].p50_ms), 4)
    hardware = describe_hardware()
    out_dir = ctx.local("benchmark", spec.slug)
    payload = {
        "variant": spec.name,
        "hardware": hardware,
        "num_threads": config.num_threads,
        "batches": {str(size): report.to_dict() for size, report in reports.items()},
    }
    (out_dir / "benchmark.json").write_text(json.dumps(payload, indent=2))
    metrics["hardware_class"] = hardware_class(hardware)
    for size, report in reports.items():
        metrics[f"p50_ms_b{size}"] = report.p50_ms
        metrics[f"p99_ms_b{size}"] = report.p99_ms
        metrics[f"throughput_b{size}"] = report.throughput
        metrics[f"stable_b{size}"] = report.stable
    result = StageResult(
        stage="benchmark",
        status=Status.OK,
        variant=spec.name,
        uris={"benchmark": f"{uri}/benchmark.json"},
        metrics=metrics,
    )
    return _publish(out_dir, uri, result, config)


def benchmark_stage(
    config: PipelineConfig,
    ctx: RunContext,
    conversion: StageResult,
    export: StageResult,
    data: StageResult,
) -> StageResult:
    """Measure one variant's latency and throughput per batch size on real eval inputs."""
    if not conversion:
        return _not_ok("benchmark", conversion)
    return _guarded(
        "benchmark", conversion.variant, lambda: _benchmark(config, ctx, conversion, data)
    )
