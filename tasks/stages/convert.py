"""The convert stage: one variant built from the export (SKIPPED / FAILED with its reason)."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from tasks import storage
from tasks.backends.tf import directory_size, set_tf_threads
from tasks.config import PipelineConfig, RunContext, VariantSpec
from tasks.results import StageResult, Status
from tasks.stages.common import (
    ACCURACY_CONTROL_SAMPLES,
    REFERENCE_DIR,
    _fetch_export,
    _guarded,
    _publish,
    _published,
)
from tasks.stages.data import DataPlan, data_plan

logger = logging.getLogger(__name__)


def convert_stage(
    config: PipelineConfig,
    ctx: RunContext,
    variant: str,
    export: StageResult,
    data: StageResult,
) -> StageResult:
    """Convert the export into one variant; SKIPPED where its runtime cannot run here."""
    return _guarded("convert", variant, lambda: _convert(config, ctx, variant, export, data))


def _convert(
    config: PipelineConfig,
    ctx: RunContext,
    variant: str,
    export: StageResult,
    data: StageResult,
) -> StageResult:
    from tasks.backends import get_backend
    from tasks.backends.base import BackendUnavailableError, ConversionRequest
    from tasks.datasets import iter_batches

    spec = VariantSpec.parse(variant)
    uri = ctx.uri("variants", spec.slug, "model")
    if done := _published(uri, "convert", variant, config=config, ctx=ctx):
        return done
    backend = get_backend(spec.backend)
    reason = backend.available()
    if reason:
        logger.warning("%s SKIPPED: %s", variant, reason)
        return StageResult("convert", Status.SKIPPED, reason=reason, variant=variant)
    set_tf_threads(config.num_threads)
    saved_model, _ = _fetch_export(export, ctx)
    plan = data_plan(config, ctx, data)

    def calibration_data():
        if plan.calibration is None:
            return
        for feeds, _ in iter_batches(plan.calibration, 1):
            yield feeds

    out_dir = ctx.local("variants", spec.slug)
    shutil.rmtree(out_dir)
    started = time.perf_counter()
    try:
        conversion = backend.convert(
            ConversionRequest(
                saved_model_dir=saved_model,
                signature=plan.signature,
                precision=spec.precision,
                output_dir=out_dir,
                calibration_data=calibration_data,
                batch_sizes=config.batch_sizes,
                validation=(
                    _accuracy_validation(ctx, plan, data) if spec.precision == "int8" else None
                ),
                accuracy_tolerance=config.accuracy_gate.tolerance,
                objective=config.objective,
            )
        )
    except BackendUnavailableError as exc:
        return StageResult("convert", Status.SKIPPED, reason=exc.reason, variant=variant)
    result = StageResult(
        stage="convert",
        status=Status.OK,
        variant=variant,
        uris={"model": uri},
        metrics={
            "conversion_s": round(time.perf_counter() - started, 3),
            "size_bytes": directory_size(conversion.artifact_dir),
            "calibration_digest": data.metrics.get("calibration_digest")
            if spec.precision == "int8"
            else None,
            "summary": conversion.summary,
        },
    )
    return _publish(conversion.artifact_dir, uri, result, config)


def _reference_samples(reference_dir: Path, count: int) -> list[dict[str, np.ndarray]]:
    """The baseline's outputs for the first `count` eval samples, one dict per sample."""
    samples: list[dict[str, np.ndarray]] = []
    for path in sorted((reference_dir / REFERENCE_DIR).glob("batch-*.npz")):
        with np.load(path, allow_pickle=False) as batch:
            arrays = {name: batch[name] for name in batch.files}
        size = len(next(iter(arrays.values())))
        samples += [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(size)]
        if len(samples) >= count:
            break
    return samples[:count]


def _accuracy_validation(ctx: RunContext, plan: DataPlan, data: StageResult) -> Any:
    """The run's metric on a slice of the eval data, for quantizers that repair accuracy.

    NNCF's accuracy control (openvino:int8) scores subsets of this slice with tfopt's own metric,
    and keeps the layers that cost accuracy in higher precision.
    """
    from tasks.backends.base import AccuracyValidation
    from tasks.datasets import iter_batches

    samples, truths = [], []
    for feeds, truth in iter_batches(plan.eval_data, 1, limit=ACCURACY_CONTROL_SAMPLES):
        samples.append(feeds)
        truths.append(truth)
    reference_dir = Path(storage.fetch_tree(data.uris["data"], ctx.local("reference")))
    baseline = _reference_samples(reference_dir, len(samples))

    def metric(runner: Any, indices: Any) -> float:
        accumulator = plan.metric.accumulator(plan.choice)
        for i in range(len(samples)) if indices is None else indices:
            accumulator.update(runner(samples[i]), truths[i], baseline[i])
        value = accumulator.value().value
        return float("nan") if value is None else float(value)

    return AccuracyValidation(
        samples=samples,
        metric=metric,
        higher_is_better=plan.metric.higher_is_better,
        relative=not plan.metric.higher_is_better,
    )
