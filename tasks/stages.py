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

logger = logging.getLogger(__name__)

VALIDATION_BATCH = 32
BENCHMARK_DISTINCT_BATCHES = 16
REFERENCE_FILE = "reference_outputs.npz"
CHAMPION_MIN_GAIN = 0.05
"""A new version takes `champion` only when it is at least this much faster (the benchmark's own
stability tolerance), so two measurements of the same model do not swap the alias."""


def _published(uri: str, stage: str, variant: str = "") -> StageResult | None:
    manifest = storage.read_manifest(uri)
    if manifest is None or "result" not in manifest.metadata:
        return None
    logger.info(
        "%s%s already published at %s; reusing it", stage, f" {variant}" if variant else "", uri
    )
    return StageResult.from_dict(manifest.metadata["result"])


def _publish(local_dir: Path, uri: str, result: StageResult) -> StageResult:
    storage.publish_tree(local_dir, uri, metadata={"result": result.to_dict()})
    return result


def _fetch_export(export: StageResult, ctx: RunContext) -> tuple[Path, Signature]:
    local = Path(storage.fetch_tree(export.uris["export"], ctx.local("fetched", "export")))
    return local / "saved_model", Signature.read(local)


# --- export -----------------------------------------------------------------------------------


def export_stage(config: PipelineConfig, ctx: RunContext) -> StageResult:
    """Export the source model to a serving SavedModel + signature manifest in S3."""
    from tasks.export import export_model

    uri = ctx.uri("export")
    if done := _published(uri, "export"):
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
    return _publish(out_dir, uri, result)


# --- data + reference outputs -----------------------------------------------------------------


def prepare_data_stage(config: PipelineConfig, ctx: RunContext, export: StageResult) -> StageResult:
    """Check eval and calibration data against the signature; compute the reference outputs.

    The baseline (the exported SavedModel) runs once over the eval data here; every variant is
    later compared with these reference outputs.
    """
    from tasks.backends import get_backend
    from tasks.datasets import iter_batches, open_dataset

    uri = ctx.uri("data")
    if done := _published(uri, "data"):
        return done
    set_tf_threads(config.num_threads)
    saved_model, signature = _fetch_export(export, ctx)
    eval_data = open_dataset(
        config.eval_data_uri, ctx.local("eval"), signature, require_labels=True
    )
    calibration = open_dataset(
        config.calibration_data_uri, ctx.local("calibration"), signature, require_labels=False
    )
    runner = get_backend("tf").load(saved_model, signature, config.num_threads)
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in signature.output_names}
    labels: list[np.ndarray] = []
    for feeds, batch_labels in iter_batches(eval_data, VALIDATION_BATCH):
        for name, value in runner(feeds).items():
            outputs[name].append(value)
        labels.append(batch_labels)
    out_dir = ctx.local("data-out")
    np.savez(
        out_dir / REFERENCE_FILE,
        labels=np.concatenate(labels),
        **{name: np.concatenate(parts) for name, parts in outputs.items()},
    )
    result = StageResult(
        stage="data",
        status=Status.OK,
        uris={
            "data": uri,
            "eval": config.eval_data_uri,
            "calibration": config.calibration_data_uri,
        },
        metrics={
            "eval_samples": eval_data.num_samples,
            "eval_digest": eval_data.digest,
            "calibration_samples": calibration.num_samples,
            "calibration_digest": calibration.digest,
        },
    )
    return _publish(out_dir, uri, result)


# --- per variant: convert, validate, benchmark -------------------------------------------------


def convert_stage(
    config: PipelineConfig, ctx: RunContext, variant: str, export: StageResult
) -> StageResult:
    """Convert the export into one variant; SKIPPED where its runtime cannot run here."""
    from tasks.backends import get_backend
    from tasks.backends.base import BackendUnavailableError, ConversionRequest
    from tasks.datasets import iter_batches, open_dataset

    spec = VariantSpec.parse(variant)
    uri = ctx.uri("variants", spec.slug, "model")
    if done := _published(uri, "convert", variant):
        return done
    backend = get_backend(spec.backend)
    reason = backend.available()
    if reason:
        logger.warning("%s SKIPPED: %s", variant, reason)
        return StageResult("convert", Status.SKIPPED, reason=reason, variant=variant)
    set_tf_threads(config.num_threads)
    saved_model, signature = _fetch_export(export, ctx)
    calibration = open_dataset(
        config.calibration_data_uri, ctx.local("calibration"), signature, require_labels=False
    )

    def calibration_data():
        for feeds, _ in iter_batches(calibration, 1):
            yield feeds

    out_dir = ctx.local("variants", spec.slug)
    shutil.rmtree(out_dir)
    started = time.perf_counter()
    try:
        conversion = backend.convert(
            ConversionRequest(
                saved_model_dir=saved_model,
                signature=signature,
                precision=spec.precision,
                output_dir=out_dir,
                calibration_data=calibration_data,
                batch_sizes=config.batch_sizes,
            )
        )
    except UserInputError:
        raise
    except BackendUnavailableError as exc:
        return StageResult("convert", Status.SKIPPED, reason=exc.reason, variant=variant)
    except Exception as exc:  # noqa: BLE001 - a failed conversion fails this variant only
        logger.exception("conversion of %s failed", variant)
        return StageResult(
            "convert", Status.FAILED, reason=f"conversion failed: {exc}", variant=variant
        )
    result = StageResult(
        stage="convert",
        status=Status.OK,
        variant=variant,
        uris={"model": uri},
        metrics={
            "conversion_s": round(time.perf_counter() - started, 3),
            "size_bytes": directory_size(conversion.artifact_dir),
            "calibration_digest": calibration.digest if spec.precision == "int8" else None,
            "summary": conversion.summary,
        },
    )
    return _publish(conversion.artifact_dir, uri, result)


def _load_variant(
    config: PipelineConfig, ctx: RunContext, conversion: StageResult, export: StageResult
):
    from tasks.backends import get_backend

    spec = VariantSpec.parse(conversion.variant)
    local = storage.fetch_tree(conversion.uris["model"], ctx.local("fetched", spec.slug))
    _, signature = _fetch_export(export, ctx)
    return get_backend(spec.backend).load(Path(local), signature, config.num_threads), signature


def _eval_data(config: PipelineConfig, ctx: RunContext, data: StageResult, signature: Signature):
    """The eval data as the data stage checked it (digest compared, shards not re-read)."""
    from tasks.datasets import open_dataset

    checked = (data.metrics["eval_digest"], data.metrics["eval_samples"])
    return open_dataset(
        config.eval_data_uri, ctx.local("eval"), signature, require_labels=True, checked=checked
    )


def _not_ok(stage: str, upstream: StageResult) -> StageResult:
    return StageResult(stage, upstream.status, reason=upstream.reason, variant=upstream.variant)


@dataclass(frozen=True)
class _VariantWork:
    """What validate and benchmark start from: the loaded variant and the checked eval data."""

    spec: VariantSpec
    uri: str
    runner: Any
    signature: Signature
    eval_data: Any


def _start_variant_stage(
    stage: str,
    folder: str,
    config: PipelineConfig,
    ctx: RunContext,
    conversion: StageResult,
    export: StageResult,
    data: StageResult,
) -> StageResult | _VariantWork:
    """The stage's result when there is nothing to do (conversion not OK, already published),
    else the variant loaded with its runtime and the eval data."""
    if not conversion:
        return _not_ok(stage, conversion)
    spec = VariantSpec.parse(conversion.variant)
    uri = ctx.uri("variants", spec.slug, folder)
    if done := _published(uri, stage, spec.name):
        return done
    runner, signature = _load_variant(config, ctx, conversion, export)
    return _VariantWork(spec, uri, runner, signature, _eval_data(config, ctx, data, signature))


def validate_stage(
    config: PipelineConfig,
    ctx: RunContext,
    conversion: StageResult,
    export: StageResult,
    data: StageResult,
) -> StageResult:
    """Compare one variant's outputs on the eval data with the baseline's reference outputs."""
    from tasks.datasets import iter_batches
    from tasks.validate import ValidationAccumulator

    work = _start_variant_stage("validate", "validation", config, ctx, conversion, export, data)
    if isinstance(work, StageResult):
        return work
    spec, uri, runner, signature = work.spec, work.uri, work.runner, work.signature
    reference_dir = Path(storage.fetch_tree(data.uris["data"], ctx.local("reference")))
    with np.load(reference_dir / REFERENCE_FILE, allow_pickle=False) as ref:
        reference = {name: ref[name] for name in ref.files}
    accumulator = ValidationAccumulator(spec.name, signature.output_names, None)
    offset = 0
    for feeds, labels in iter_batches(work.eval_data, VALIDATION_BATCH):
        n = len(labels)
        baseline = {name: reference[name][offset : offset + n] for name in signature.output_names}
        accumulator.update(baseline, runner(feeds), labels)
        offset += n
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
    return _publish(out_dir, uri, result)


def benchmark_stage(
    config: PipelineConfig,
    ctx: RunContext,
    conversion: StageResult,
    export: StageResult,
    data: StageResult,
) -> StageResult:
    """Measure one variant's latency and throughput per batch size on real eval inputs."""
    from tasks.benchmark import BenchmarkSettings, benchmark_variant
    from tasks.datasets import sample_feeds
    from tasks.hardware import describe_hardware, hardware_class

    work = _start_variant_stage("benchmark", "benchmark", config, ctx, conversion, export, data)
    if isinstance(work, StageResult):
        return work
    spec, uri = work.spec, work.uri
    feeds_by_batch = {
        size: sample_feeds(work.eval_data, size, BENCHMARK_DISTINCT_BATCHES)
        for size in config.batch_sizes
    }
    reports = benchmark_variant(work.runner, feeds_by_batch, BenchmarkSettings())
    hardware = describe_hardware()
    out_dir = ctx.local("benchmark", spec.slug)
    payload = {
        "variant": spec.name,
        "hardware": hardware,
        "num_threads": config.num_threads,
        "batches": {str(size): report.to_dict() for size, report in reports.items()},
    }
    (out_dir / "benchmark.json").write_text(json.dumps(payload, indent=2))
    metrics: dict[str, Any] = {"hardware_class": hardware_class(hardware)}
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
    return _publish(out_dir, uri, result)


# --- select, register, report ----------------------------------------------------------------


def collect_rows(
    conversions: list[StageResult],
    validations: list[StageResult],
    benchmarks: list[StageResult],
) -> list[dict[str, Any]]:
    """Merge the per-variant stage results (matched by variant) into summary rows.

    A variant whose conversion was not OK may have no validation or benchmark result (Airflow
    skips those tasks); its row then carries the conversion's status and reason.
    """
    from tasks.summary import add_speedups, variant_row

    by_variant = {c.variant: c for c in conversions}
    vals = {v.variant: v for v in validations}
    benches = {b.variant: b for b in benchmarks}
    rows = [
        variant_row(
            c,
            vals.get(name) or _not_ok("validate", c),  # not run: the conversion was not OK
            benches.get(name) or _not_ok("benchmark", c),
        )
        for name, c in by_variant.items()
    ]
    return add_speedups(rows)


def select_stage(config: PipelineConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply the selection policy to the rows; returns the Selection as a dict."""
    from tasks.select import Candidate, select

    candidates = [Candidate.from_dict(row) for row in rows]
    selection = select(
        candidates,
        objective=config.objective,
        gate=config.accuracy_gate,
        slo=config.latency_slo,
    )
    logger.info("selected %s: %s", selection.chosen, selection.reason)
    for variant, reason in selection.rejections.items():
        logger.info("rejected %s: %s", variant, reason)
    return selection.to_dict()


def _example_input(
    config: PipelineConfig, ctx: RunContext, data: StageResult, signature: Signature
) -> dict:
    from tasks.datasets import sample_feeds

    return sample_feeds(_eval_data(config, ctx, data, signature), 1, 1)[0]


def _version_tags(
    config: PipelineConfig,
    ctx: RunContext,
    row: dict,
    export: StageResult,
    data: StageResult,
    selection: dict[str, Any],
) -> dict[str, str]:
    spec = VariantSpec.parse(row["variant"])
    delta = row.get("metric_delta")
    tags = {
        "tfopt.run_id": ctx.run_id,
        "variant": spec.name,
        "backend": spec.backend,
        "precision": spec.precision,
        "speedup_vs_baseline": f"{row.get('speedup') or 0:.2f}",
        "accuracy_delta_points": f"{(delta or 0) * 100:.2f}",
        "top1": f"{row.get('metric') or 0:.4f}",
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

    tags = champion.tags or {}
    recorded = {
        "version": champion.version,
        "hardware_class": tags.get("hardware_class"),
        "p50_ms": float(tags.get("p50_ms_batch_1") or "inf"),
        "throughput": float(tags.get("throughput") or 0),
    }
    try:
        spec = VariantSpec.parse(tags["variant"])
        local = storage.fetch_tree(tags["variant_uri"], ctx.local("champion", champion.version))
        _, signature = _fetch_export(export, ctx)
        runner = get_backend(spec.backend).load(Path(local), signature, config.num_threads)
        eval_data = _eval_data(config, ctx, data, signature)
        feeds = {1: sample_feeds(eval_data, 1, BENCHMARK_DISTINCT_BATCHES)}
        report = benchmark_variant(runner, feeds, BenchmarkSettings())[1]
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


def register_stage(
    config: PipelineConfig,
    ctx: RunContext,
    export: StageResult,
    data: StageResult,
    rows: list[dict[str, Any]],
    selection: dict[str, Any],
) -> StageResult:
    """Log the runs, register the chosen variant as a new model version, set the aliases."""
    import mlflow

    from tasks import registry
    from tasks.select import beats_champion

    name = config.registered_model_name
    parent = registry.parent_run(config, ctx)
    variant_runs = registry.log_variant_runs(config, ctx, parent, rows)
    row = next(r for r in rows if r["variant"] == selection["chosen"])
    champion = registry.current_champion(name)
    version = registry.find_version(name, ctx.run_id)
    if version is None:
        variant_dir = Path(storage.fetch_tree(row["model_uri"], ctx.local("fetched", "chosen")))
        export_dir = Path(storage.fetch_tree(export.uris["export"], ctx.local("fetched", "export")))
        with mlflow.start_run(run_id=variant_runs[row["variant"]]):
            model_uri = registry.log_pyfunc(
                variant_dir,
                export_dir,
                row,
                _example_input(config, ctx, data, Signature.read(export_dir)),
                config.num_threads,
            )
        version = registry.register_version(
            name, model_uri, _version_tags(config, ctx, row, export, data, selection)
        )
    if champion is not None and champion.version == version.version:
        promote, why = True, f"v{version.version} is already the champion"
    else:
        previous = (
            _champion_now(config, ctx, champion, export, data, row["hardware_class"])
            if champion
            else None
        )
        promote, why = beats_champion(row, previous, config.objective, min_gain=CHAMPION_MIN_GAIN)
    registry.set_aliases(name, version.version, promote)
    logger.info("registered %s v%s (%s); champion: %s", name, version.version, row["variant"], why)
    experiment_id, parent_id = parent
    return StageResult(
        stage="register",
        status=Status.OK,
        variant=row["variant"],
        uris={
            "model": f"models:/{name}/{version.version}",
            "mlflow_run_url": registry.run_url(experiment_id, parent_id),
            "model_version_url": registry.model_version_url(name, version.version),
        },
        metrics={
            "registered_model_name": name,
            "model_version": str(version.version),
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


def report_stage(
    config: PipelineConfig,
    ctx: RunContext,
    rows: list[dict[str, Any]],
    selection: dict[str, Any],
    registration: StageResult,
) -> StageResult:
    """Write the comparison table and plots, publish them to S3 and to the MLflow run."""
    from mlflow.tracking import MlflowClient

    from tasks.report import write_report

    uri = ctx.uri("reports")
    if done := _published(uri, "report"):
        return done
    for row in rows:
        if row.get("benchmark_uri") and row["status"] == Status.OK.value:
            bench = storage.get_json(row["benchmark_uri"])
            row["latencies_ms"] = bench["batches"]["1"].get("latencies_ms", [])
            row["hardware"] = bench.get("hardware")
    hardware = next((r["hardware"] for r in rows if r.get("hardware")), {})
    info = {
        "model": config.registered_model_name,
        "run_id": ctx.run_id,
        "hardware": _hardware_line(hardware),
        "objective": config.objective,
        "accuracy_tolerance": config.accuracy_gate.tolerance,
        "latency_slo_ms": config.latency_slo.p99_ms,
        "selection_reason": selection["reason"],
        "rejections": selection["rejections"],
        "registration": {**registration.metrics, **registration.uris},
    }
    out_dir = ctx.local("report")
    paths = write_report(rows, selection["chosen"], info, out_dir)
    client = MlflowClient()
    parent_run_id = registration.metrics["mlflow_run_id"]
    for path in paths.values():
        client.log_artifact(parent_run_id, str(path), "report")
    client.set_terminated(parent_run_id, "FINISHED")
    result = StageResult(
        stage="report",
        status=Status.OK,
        variant=selection["chosen"],
        uris={"report_uri": uri, **{k: f"{uri}/{Path(p).name}" for k, p in paths.items()}},
        metrics={"variants": len(rows)},
    )
    return _publish(out_dir, uri, result)
