"""The pipeline's stages: (config, run context, upstream results) -> StageResult, S3 in and out.

The DAG runs each stage as a task and the CLI runs them in a row; both pass only the small
`StageResult` dicts between stages. Every stage publishes its output under the run's S3 prefix
with a manifest written last, and a retried stage that finds its manifest returns at once.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks import storage
from tasks.backends.tf import directory_size, set_tf_threads
from tasks.config import PipelineConfig, RunContext, VariantSpec
from tasks.errors import UserInputError
from tasks.results import StageResult, Status
from tasks.signature import Signature
from tasks.summary import VariantSummary

logger = logging.getLogger(__name__)

VALIDATION_BATCH = 32
BENCHMARK_DISTINCT_BATCHES = 16
ACCURACY_CONTROL_SAMPLES = 300
"""Eval samples an accuracy-aware quantizer may score its choices on (NNCF accuracy control)."""
REFERENCE_DIR = "reference"
CHAMPION_MIN_GAIN = 0.05
"""A new version takes `champion` only when it is at least this much faster (the benchmark's own
stability tolerance), so two measurements of the same model do not swap the alias."""


def _published(
    uri: str, stage: str, variant: str = "", *, config: PipelineConfig, ctx: RunContext
) -> StageResult | None:
    """The stage's published result, when it was made from this run's inputs.

    Raises:
        UserInputError: it was published under this run id from other inputs.
    """
    from tasks.lineage import check_reuse, stage_inputs

    manifest = storage.read_manifest(uri)
    if manifest is None or "result" not in manifest.metadata:
        return None
    current = stage_inputs(config, stage, variant)
    check_reuse(manifest.metadata.get("inputs"), current, run_id=ctx.run_id, uri=uri)
    logger.info(
        "%s%s already published at %s; reusing it", stage, f" {variant}" if variant else "", uri
    )
    return StageResult.from_dict(manifest.metadata["result"])


def _publish(local_dir: Path, uri: str, result: StageResult, config: PipelineConfig) -> StageResult:
    from tasks.lineage import stage_inputs

    inputs = stage_inputs(config, result.stage, result.variant or "")
    storage.publish_tree(local_dir, uri, metadata={"result": result.to_dict(), "inputs": inputs})
    return result


def _fetch_export(export: StageResult, ctx: RunContext) -> tuple[Path, Signature]:
    local = Path(storage.fetch_tree(export.uris["export"], ctx.local("fetched", "export")))
    return local / "saved_model", Signature.read(local)


# --- export -----------------------------------------------------------------------------------


def export_stage(config: PipelineConfig, ctx: RunContext) -> StageResult:
    """Export the source model to a serving SavedModel + signature manifest in S3."""
    from tasks.export import export_model

    uri = ctx.uri("export")
    if done := _published(uri, "export", config=config, ctx=ctx):
        return done
    set_tf_threads(config.num_threads)
    out_dir, signature, source_digest = export_model(config.model_uri, ctx.local("export-work"))
    result = StageResult(
        stage="export",
        status=Status.OK,
        uris={"export": uri, "source": config.model_uri},
        metrics={
            "source_digest": source_digest,
            "export_digest": storage.tree_digest(storage.digest_tree(out_dir)),
            "signature": signature.to_dict(),
            "size_bytes": directory_size(out_dir / "saved_model"),
        },
    )
    return _publish(out_dir, uri, result, config)


# --- data + reference outputs -----------------------------------------------------------------


@dataclass(frozen=True)
class DataPlan:
    """What the data stage decided, as every later stage reads it back from its result."""

    signature: Signature
    metric: Any  # tasks.metrics.MetricSpec
    choice: Any  # tasks.metrics.OutputChoice
    eval_data: Any  # tasks.datasets.ShardSet: the samples validated (held-out ones excluded)
    calibration: Any  # tasks.datasets.ShardSet | None


def _resolve_metric(config: PipelineConfig, eval_data: Any) -> Any:
    from tasks.config import AUTO_METRIC
    from tasks.metrics import auto_metric, get_metric

    name = config.metric
    if name == AUTO_METRIC:
        name = auto_metric(set(eval_data.truth), eval_data.labels_kind)
        logger.info("metric: %s (chosen from the eval data's ground truth)", name)
    return get_metric(name)


def _open_calibration(
    config: PipelineConfig, ctx: RunContext, signature: Signature, eval_data: Any
) -> tuple[Any, Any, dict[str, Any]]:
    """(eval data for validation, calibration data or None, the calibration's description)."""
    from tasks.datasets import HoldOut, open_dataset

    if config.calibration_data_uri:
        calibration = open_dataset(config.calibration_data_uri, ctx.local("calibration"), signature)
        for name, shape in calibration.sample_shapes.items():
            if eval_data.sample_shapes.get(name, shape) != shape:
                raise UserInputError(
                    f"calibration input {name!r} has per-sample shape {list(shape)} but the eval "
                    f"data has {list(eval_data.sample_shapes[name])}; give both one shape"
                )
        described = {"source": "calibration_data_uri", **calibration.to_dict()}
        return eval_data, calibration, described
    if not config.needs_calibration:
        return eval_data, None, {"source": "none (no int8 variant)"}
    holdout = HoldOut.for_samples(eval_data.num_samples)
    indices = holdout.indices(eval_data.num_samples)
    described = {
        "source": "held-out eval slice",
        "uri": config.eval_data_uri,
        "num_samples": holdout.count,
        "holdout": holdout.to_dict(),
    }
    logger.info(
        "no calibration data given: %d eval samples (seed %d) held out for INT8 calibration and "
        "excluded from validation",
        holdout.count,
        holdout.seed,
    )
    return eval_data.without(indices), eval_data.only(indices), described


def _storable(value: Any) -> np.ndarray:
    array = np.asarray(value)
    return array.astype(np.bytes_) if array.dtype.kind == "O" else array


def _write_reference(runner: Any, eval_data: Any, out_dir: Path) -> int:
    """Runs the baseline over the eval data, one reference file per batch (streamed to disk)."""
    from tasks.datasets import iter_batches

    count = 0
    for index, (feeds, _) in enumerate(iter_batches(eval_data, VALIDATION_BATCH)):
        outputs = {name: _storable(value) for name, value in runner(feeds).items()}
        np.savez(out_dir / REFERENCE_DIR / f"batch-{index:05d}.npz", **outputs)
        count += 1
    return count


def prepare_data_stage(config: PipelineConfig, ctx: RunContext, export: StageResult) -> StageResult:
    """Check the eval (and calibration) data, fix dynamic dims, pick the metric, run the baseline.

    The baseline (the exported SavedModel) runs once over the eval data here; every variant is
    later compared with these reference outputs. Unknown non-batch input dimensions are fixed
    from the data into the signature every converter gets (`declared_shape` keeps the original).
    """
    from tasks.backends import get_backend
    from tasks.datasets import check_truth, open_dataset

    uri = ctx.uri("data")
    if done := _published(uri, "data", config=config, ctx=ctx):
        return done
    set_tf_threads(config.num_threads)
    saved_model, declared = _fetch_export(export, ctx)
    eval_data = open_dataset(config.eval_data_uri, ctx.local("eval"), declared)
    metric = _resolve_metric(config, eval_data)
    check_truth(eval_data, metric)
    signature = declared.with_input_shapes(eval_data.sample_shapes)
    choice = metric.resolve_output(signature.outputs, config.metric_output)
    validation_data, calibration, calibration_info = _open_calibration(
        config, ctx, signature, eval_data
    )
    out_dir = ctx.local("data-out")
    (out_dir / REFERENCE_DIR).mkdir(exist_ok=True)
    runner = get_backend("tf").load(saved_model, signature, config.num_threads)
    batches = _write_reference(runner, validation_data, out_dir)
    signature.write(out_dir)
    result = StageResult(
        stage="data",
        status=Status.OK,
        uris={"data": uri, "eval": config.eval_data_uri},
        metrics={
            "eval": eval_data.to_dict(),
            "eval_digest": eval_data.digest,
            "eval_samples": eval_data.num_samples,
            "validation_samples": validation_data.num_samples,
            "calibration": calibration_info,
            "calibration_digest": calibration.digest if calibration else None,
            "metric": {
                "name": metric.name,
                "title": metric.title,
                "higher_is_better": metric.higher_is_better,
                "tolerance": config.accuracy_gate.tolerance,
                "tolerance_meaning": metric.tolerance_meaning,
                "output": choice.to_dict(),
            },
            "signature": signature.to_dict(),
            "reference_batches": batches,
        },
    )
    return _publish(out_dir, uri, result, config)


def data_plan(config: PipelineConfig, ctx: RunContext, data: StageResult) -> DataPlan:
    """The data stage's decisions, with its data sets re-fetched and compared by digest."""
    from tasks.datasets import HoldOut, ShardSet, open_dataset
    from tasks.metrics import OutputChoice, get_metric

    signature = Signature.from_dict(data.metrics["signature"])
    described = ShardSet.described(data.metrics["eval"])
    eval_data = open_dataset(config.eval_data_uri, ctx.local("eval"), signature, checked=described)
    info = data.metrics["calibration"]
    calibration = None
    if info.get("holdout"):
        holdout = HoldOut(**info["holdout"])
        indices = holdout.indices(eval_data.num_samples)
        eval_data, calibration = eval_data.without(indices), eval_data.only(indices)
    elif info["source"] == "calibration_data_uri":
        calibration = open_dataset(
            info["uri"], ctx.local("calibration"), signature, checked=ShardSet.described(info)
        )
    metric_info = data.metrics["metric"]
    return DataPlan(
        signature=signature,
        metric=get_metric(metric_info["name"]),
        choice=OutputChoice.from_dict(metric_info["output"]),
        eval_data=eval_data,
        calibration=calibration,
    )


# --- per variant: convert, validate, benchmark -------------------------------------------------


def _variant_failure(stage: str, variant: str, exc: BaseException) -> StageResult:
    """A non-baseline variant that threw: FAILED with one line (stage, exception type, message)."""
    message = " ".join(str(exc).split()) or "no message"
    if len(message) > 600:
        message = message[:597] + "..."
    logger.warning("%s %s FAILED: %s: %s", stage, variant, type(exc).__name__, message)
    return StageResult(
        stage, Status.FAILED, reason=f"{type(exc).__name__}: {message}", variant=variant
    )


def _guarded(stage: str, variant: str, work: Any) -> StageResult:
    """Runs `work()`; for a non-baseline variant any error but a transient one becomes FAILED.

    The baseline's errors, and transient ones (S3/MLflow, retried by the caller), propagate.
    """
    from tasks.config import BASELINE
    from tasks.errors import TransientError

    if variant == BASELINE:
        return work()
    try:
        return work()
    except TransientError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken variant never stops the run
        logger.debug("%s %s failed", stage, variant, exc_info=True)
        return _variant_failure(stage, variant, exc)


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


def _load_variant(config: PipelineConfig, ctx: RunContext, conversion: StageResult, plan: DataPlan):
    from tasks.backends import get_backend

    spec = VariantSpec.parse(conversion.variant)
    local = storage.fetch_tree(conversion.uris["model"], ctx.local("fetched", spec.slug))
    return get_backend(spec.backend).load(Path(local), plan.signature, config.num_threads)


def _not_ok(stage: str, upstream: StageResult) -> StageResult:
    return StageResult(stage, upstream.status, reason=upstream.reason, variant=upstream.variant)


def _validate(
    config: PipelineConfig, ctx: RunContext, conversion: StageResult, data: StageResult
) -> StageResult:
    from tasks.datasets import iter_batches
    from tasks.validate import ValidationAccumulator

    spec = VariantSpec.parse(conversion.variant)
    uri = ctx.uri("variants", spec.slug, "validation")
    if done := _published(uri, "validate", spec.name, config=config, ctx=ctx):
        return done
    plan = data_plan(config, ctx, data)
    runner = _load_variant(config, ctx, conversion, plan)
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

    spec = VariantSpec.parse(conversion.variant)
    uri = ctx.uri("variants", spec.slug, "benchmark")
    if done := _published(uri, "benchmark", spec.name, config=config, ctx=ctx):
        return done
    plan = data_plan(config, ctx, data)
    runner = _load_variant(config, ctx, conversion, plan)
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


# --- select, register, report ----------------------------------------------------------------


def collect_summaries(
    conversions: list[StageResult],
    validations: list[StageResult],
    benchmarks: list[StageResult],
) -> list[VariantSummary]:
    """Merge the per-variant stage results (matched by variant) into one record each.

    A variant whose conversion was not OK may have no validation or benchmark result (Airflow
    skips those tasks); its record then carries the conversion's status and reason.
    """
    from tasks.summary import summarize, with_speedups

    vals = {v.variant: v for v in validations}
    benches = {b.variant: b for b in benchmarks}
    summaries = []
    for c in conversions:  # a StageResult is falsy unless OK: look up by presence, not truth
        validation = vals[c.variant] if c.variant in vals else _not_ok("validate", c)
        benchmark = benches[c.variant] if c.variant in benches else _not_ok("benchmark", c)
        summaries.append(summarize(c, validation, benchmark))
    return with_speedups(summaries)


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


def _example_input(config: PipelineConfig, ctx: RunContext, data: StageResult) -> dict:
    from tasks.datasets import sample_feeds

    return sample_feeds(data_plan(config, ctx, data).eval_data, 1, 1)[0]


def _version_tags(
    config: PipelineConfig,
    ctx: RunContext,
    row: dict,
    export: StageResult,
    data: StageResult,
    selection: dict[str, Any],
) -> dict[str, str]:
    spec = VariantSpec.parse(row["variant"])
    metric = row.get("metric_name") or "metric"
    tags = {
        "tfopt.run_id": ctx.run_id,
        "variant": spec.name,
        "backend": spec.backend,
        "precision": spec.precision,
        "speedup_vs_baseline": f"{row.get('speedup') or 0:.2f}",
        "metric": metric,
        metric: f"{row.get('metric_value') or 0:.6g}",
        f"{metric}_baseline": f"{row.get('baseline_metric_value') or 0:.6g}",
        f"{metric}_delta": f"{row.get('metric_delta') or 0:.6g}",
        "p50_ms_batch_1": f"{row.get('p50_ms') or 0:.3f}",
        "p99_ms_batch_1": f"{row.get('p99_ms') or 0:.3f}",
        "throughput": f"{row.get('throughput') or 0:.1f}",
        "hardware_class": str(row.get("hardware_class")),
        "source_model_uri": config.model_uri,
        "source_model_digest": str(export.metrics.get("source_digest")),
        "eval_data_digest": str(data.metrics.get("eval_digest")),
        "calibration_data_digest": str(data.metrics.get("calibration_digest")),
        "variant_uri": str(row.get("model_uri")),
        "objective": config.objective,
        "selection_reason": selection["reason"][:4000],
    }
    for variant, reason in selection["rejections"].items():
        tags[f"rejected.{variant}"] = reason[:1000]
    return tags


def _tag_number(tags: dict[str, str], key: str, default: float) -> float:
    try:
        return float(tags.get(key) or default)
    except ValueError:
        return default


def _champion_variant_uri(ctx: RunContext, champion: Any) -> str:
    """The champion's `variant_uri` tag, only when it lies under this model's run root.

    Raises:
        UserInputError: the tag points elsewhere (a forged or foreign tag is never followed).
    """
    uri = str((champion.tags or {}).get("variant_uri", ""))
    model_root = ctx.root_uri.rsplit("/", 1)[0]
    if not storage.is_under(uri, model_root):
        raise UserInputError(
            f"champion v{champion.version}'s variant_uri {uri!r} lies outside {model_root}; "
            "it is not followed"
        )
    return uri


def _champion_now(
    config: PipelineConfig,
    ctx: RunContext,
    champion: Any,
    export: StageResult,
    data: StageResult,
    hardware_class: str,
) -> dict[str, Any]:
    """The current champion's figures, re-measured in this run on this worker when it can be.

    Falls back to the figures recorded in its tags (and their hardware class) when it cannot be
    loaded here, e.g. a TF-TRT champion seen from a CPU worker.
    """
    from tasks.backends import get_backend
    from tasks.benchmark import BenchmarkSettings, benchmark_variant
    from tasks.datasets import sample_feeds
    from tasks.errors import TransientError

    tags = champion.tags or {}
    recorded = {
        "version": champion.version,
        "hardware_class": tags.get("hardware_class"),
        "p50_ms": _tag_number(tags, "p50_ms_batch_1", float("inf")),
        "throughput": _tag_number(tags, "throughput", 0.0),
    }
    try:
        spec = VariantSpec.parse(tags["variant"])
        variant_uri = _champion_variant_uri(ctx, champion)
        local = storage.fetch_tree(variant_uri, ctx.local("champion", champion.version))
        plan = data_plan(config, ctx, data)
        runner = get_backend(spec.backend).load(Path(local), plan.signature, config.num_threads)
        feeds = {1: sample_feeds(plan.eval_data, 1, BENCHMARK_DISTINCT_BATCHES)}
        report = benchmark_variant(runner, feeds, BenchmarkSettings())[1]
    except TransientError:
        raise
    except Exception as exc:  # noqa: BLE001 - fall back to the champion's recorded figures
        logger.warning(
            "could not re-measure champion v%s (%s); using its tags", champion.version, exc
        )
        return recorded
    logger.info("champion v%s re-measured: p50 %.3f ms", champion.version, report.p50_ms)
    return {
        **recorded,
        "p50_ms": report.p50_ms,
        "throughput": report.throughput,
        "hardware_class": hardware_class,
    }


def _new_version(
    config: PipelineConfig,
    ctx: RunContext,
    export: StageResult,
    data: StageResult,
    row: dict[str, Any],
    selection: dict[str, Any],
    variant_run_id: str,
) -> Any:
    """Log the chosen variant as a pyfunc model in its MLflow run and register it."""
    from tasks import registry

    variant_dir = Path(storage.fetch_tree(row["model_uri"], ctx.local("fetched", "chosen")))
    data_dir = Path(storage.fetch_tree(data.uris["data"], ctx.local("reference")))
    model_uri = registry.log_pyfunc(
        variant_run_id,
        variant_dir,
        data_dir,  # signature.json with the dims the data fixed
        row,
        _example_input(config, ctx, data),
        config.num_threads,
    )
    tags = _version_tags(config, ctx, row, export, data, selection)
    return registry.register_version(config.registered_model_name, model_uri, tags)


def register_stage(
    config: PipelineConfig,
    ctx: RunContext,
    export: StageResult,
    data: StageResult,
    rows: list[dict[str, Any]],
    selection: dict[str, Any],
) -> StageResult:
    """Log the runs, register the chosen variant as a new model version, set the aliases.

    Idempotent per run: a retry finds the version this run registered; the champion decision is
    taken once, under the model's champion lock, and recorded on the version.
    """
    from tasks import registry
    from tasks.select import beats_champion

    name = config.registered_model_name
    parent = registry.parent_run(config, ctx)
    variant_runs = registry.log_variant_runs(config, ctx, parent, rows)
    row = next(r for r in rows if r["variant"] == selection["chosen"])
    version = registry.find_version(name, ctx.run_id) or _new_version(
        config, ctx, export, data, row, selection, variant_runs[row["variant"]]
    )

    def decide(champion: Any) -> tuple[bool, str]:
        if champion is not None and champion.version == version.version:
            return True, f"v{version.version} is already the champion"
        previous = (
            _champion_now(config, ctx, champion, export, data, row["hardware_class"])
            if champion
            else None
        )
        return beats_champion(row, previous, config.objective, min_gain=CHAMPION_MIN_GAIN)

    promote, why = registry.recorded_decision(version) or registry.decide_aliases(
        name, version, decide, ctx.champion_lock_uri(), ctx.owner
    )
    logger.info("registered %s v%s (%s); champion: %s", name, version.version, row["variant"], why)
    return _registration(name, row["variant"], str(version.version), parent, promote, why)


def _registration(
    name: str, variant: str, version: str, parent: tuple[str, str], promote: bool, why: str
) -> StageResult:
    from tasks import registry

    experiment_id, parent_id = parent
    return StageResult(
        stage="register",
        status=Status.OK,
        variant=variant,
        uris={
            "model": f"models:/{name}/{version}",
            "mlflow_run_url": registry.run_url(experiment_id, parent_id),
            "model_version_url": registry.model_version_url(name, version),
        },
        metrics={
            "registered_model_name": name,
            "model_version": version,
            "champion": promote,
            "champion_reason": why,
            "mlflow_experiment_id": experiment_id,
            "mlflow_run_id": parent_id,
        },
    )


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
