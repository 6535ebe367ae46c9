"""The validate stage of one converted variant, and the benchmark stage of a lane: every
converted variant of the lane (and the current champion, when it runs there) measured in one
interleaved benchmark, so that the machine's drift hits them all alike."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tasks import storage
from tasks.config import BASELINE, PipelineConfig, RunContext, VariantSpec
from tasks.results import StageResult, Status
from tasks.stages.common import (
    BENCHMARK_DISTINCT_BATCHES,
    REFERENCE_DIR,
    VALIDATION_BATCH,
    _failure_or_raise,
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


LANE_PREFIX = "lane:"
"""The benchmark stage publishes once per lane, under the pseudo-variant `lane:<lane>`."""


def benchmark_stage(
    config: PipelineConfig,
    ctx: RunContext,
    lane: str,
    conversions: list[StageResult],
    data: StageResult,
) -> list[StageResult]:
    """Measure every converted variant of `lane` in one interleaved benchmark.

    Every variant whose conversion is OK is loaded and measured in the same rounds, beside the
    registered model's current champion when it runs on this lane (its figures go in each
    variant's `metrics["champion"]`, for the register stage). A variant that cannot be loaded or
    throws while measured is FAILED and the others are measured without it.

    Returns:
        One benchmark result per conversion, in the same order.
    """
    measurable = [c for c in conversions if c]
    results: dict[str, StageResult] = {}
    if measurable:
        uri = ctx.uri("benchmarks", lane)
        done = _published(uri, "benchmark", LANE_PREFIX + lane, config=config, ctx=ctx)
        if done is None:
            try:
                done = _benchmark_lane(config, ctx, lane, uri, measurable, data)
            except Exception as exc:  # noqa: BLE001 - every variant of the lane FAILED
                variants = [c.variant for c in measurable]
                blamed = BASELINE if BASELINE in variants else variants[0]
                failure = _failure_or_raise("benchmark", blamed, exc)
                rows = [replace(failure, variant=variant).to_dict() for variant in variants]
                done = StageResult("benchmark", Status.OK, metrics={"variants": rows})
        results = {row["variant"]: StageResult.from_dict(row) for row in done.metrics["variants"]}
    # a StageResult is falsy unless OK: look up by presence, not truth
    return [
        results[c.variant] if c.variant in results else _not_ok("benchmark", c) for c in conversions
    ]


def _benchmark_lane(
    config: PipelineConfig,
    ctx: RunContext,
    lane: str,
    uri: str,
    conversions: list[StageResult],
    data: StageResult,
) -> StageResult:
    from tasks.benchmark import BenchmarkSettings
    from tasks.datasets import sample_feeds
    from tasks.hardware import describe_hardware, hardware_class
    from tasks.stages.champion import (
        current_champion_in_lane,
        figures,
        load_champion,
        recorded_figures,
    )

    plan = data_plan(config, ctx, data)
    runners: dict[str, Any] = {}
    failed: dict[str, StageResult] = {}
    for conversion in conversions:
        try:
            runners[conversion.variant] = _load_variant(config, ctx, conversion, plan)
        except Exception as exc:  # noqa: BLE001 - FAILED unless transient or the baseline
            failed[conversion.variant] = _failure_or_raise("benchmark", conversion.variant, exc)
    champion = current_champion_in_lane(config, lane)
    champion_name = ""
    if champion is not None and (runner := load_champion(config, ctx, champion, plan)):
        champion_name = f"champion:v{champion.version}"
        runners[champion_name] = runner
    feeds_by_batch = {
        size: sample_feeds(plan.eval_data, size, BENCHMARK_DISTINCT_BATCHES)
        for size in config.batch_sizes
    }
    logger.info(
        "lane %s: %d runner(s) in interleaved rounds: %s", lane, len(runners), ", ".join(runners)
    )
    measured = _interleave(runners, feeds_by_batch, BenchmarkSettings(), failed, champion_name)
    hardware = describe_hardware()
    hw_class = hardware_class(hardware)
    out_dir = ctx.local("benchmark", lane)
    rounds = measured.summary() if measured else {}
    (out_dir / "rounds.json").write_text(json.dumps(rounds, indent=2))
    champion_figures = None
    if measured and champion_name in measured.reports:
        champion_figures = figures(
            recorded_figures(champion),
            measured.reports[champion_name],
            hw_class,
            "in the same rounds",
        )
    rows = list(failed.values())
    for conversion in conversions:
        if measured is None or conversion.variant not in measured.reports:
            continue
        variant = conversion.variant
        row = _variant_result(
            config,
            variant,
            runners[variant],
            measured.reports[variant],
            feeds_by_batch,
            out_dir,
            uri,
            payload={"hardware": hardware, "rounds": rounds},
        )
        row.metrics["hardware_class"] = hw_class
        if champion_figures:
            row.metrics["champion"] = champion_figures
        rows.append(row)
    lane_result = StageResult(
        stage="benchmark",
        status=Status.OK,
        variant=LANE_PREFIX + lane,
        uris={"rounds": f"{uri}/rounds.json"},
        metrics={"variants": [row.to_dict() for row in rows]},
    )
    return _publish(out_dir, uri, lane_result, config)


def _interleave(
    runners: dict[str, Any],
    feeds_by_batch: dict[int, Any],
    settings: Any,
    failed: dict[str, StageResult],
    champion_name: str,
) -> Any:
    """`benchmark_interleaved` over the runners; one that throws is dropped (FAILED, or for the
    champion just left out) and the rounds start again without it. None when none is left."""
    from tasks.benchmark_rounds import RunnerFailed, benchmark_interleaved

    runners = dict(runners)
    while runners:
        try:
            return benchmark_interleaved(runners, feeds_by_batch, settings)
        except RunnerFailed as exc:
            runners.pop(exc.name)
            if exc.name == champion_name:
                logger.warning("champion left out of the rounds: %s", exc)
                continue
            failed[exc.name] = _failure_or_raise("benchmark", exc.name, exc.error)
    return None


def _variant_result(
    config: PipelineConfig,
    variant: str,
    runner: Any,
    reports: dict[int, Any],
    feeds_by_batch: dict[int, Any],
    out_dir: Path,
    uri: str,
    payload: dict[str, Any],
) -> StageResult:
    """One variant's benchmark result and its `<slug>.json` (latencies per batch size)."""
    from tasks.benchmark import BenchmarkSettings, benchmark_variant

    spec = VariantSpec.parse(variant)
    metrics: dict[str, Any] = {}
    prefix = getattr(runner, "prefix_runner", None)
    if prefix is not None:  # ops kept in TensorFlow in front of the converted core
        alone = benchmark_variant(prefix, {1: feeds_by_batch[1]}, BenchmarkSettings())[1]
        metrics["prefix_p50_ms_b1"] = alone.p50_ms
        metrics["prefix_share"] = round(min(1.0, alone.p50_ms / reports[1].p50_ms), 4)
    document = {
        "variant": spec.name,
        "hardware": payload["hardware"],
        "num_threads": config.num_threads,
        "batches": {str(size): report.to_dict() for size, report in reports.items()},
        "rounds": payload["rounds"],
    }
    (out_dir / f"{spec.slug}.json").write_text(json.dumps(document, indent=2))
    for size, report in reports.items():
        metrics[f"p50_ms_b{size}"] = report.p50_ms
        metrics[f"p99_ms_b{size}"] = report.p99_ms
        metrics[f"throughput_b{size}"] = report.throughput
        metrics[f"stable_b{size}"] = report.stable
        metrics[f"round_p50_iqr_ms_b{size}"] = report.round_p50_iqr_ms
    first = reports[min(reports)]
    metrics["rounds_kept"] = first.rounds_kept
    metrics["rounds_spoiled"] = first.rounds_spoiled
    metrics["rounds_slow"] = first.rounds_slow
    metrics["machine_probe_ms"] = first.machine_probe_ms
    return StageResult(
        stage="benchmark",
        status=Status.OK,
        variant=spec.name,
        uris={"benchmark": f"{uri}/{spec.slug}.json"},
        metrics=metrics,
    )


def benchmark_lanes(
    config: PipelineConfig, ctx: RunContext, conversions: list[StageResult], data: StageResult
) -> list[StageResult]:
    """`benchmark_stage` for each lane in turn, in one process (the CLI's way; the DAG runs one
    task per lane on the lane's worker). One result per conversion, in the same order."""
    from tasks.backends import LANES, variant_lane

    results: dict[str, StageResult] = {}
    for lane in LANES:
        in_lane = [c for c in conversions if variant_lane(c.variant) == lane]
        if in_lane:
            for result in benchmark_stage(config, ctx, lane, in_lane, data):
                results[result.variant] = result
    return [results[c.variant] for c in conversions]
