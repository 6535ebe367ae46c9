"""The register stage: MLflow runs, the model version and the champion decision."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tasks import storage
from tasks.config import PipelineConfig, RunContext, VariantSpec
from tasks.errors import UserInputError
from tasks.results import StageResult, Status
from tasks.stages.common import (
    BENCHMARK_DISTINCT_BATCHES,
    CHAMPION_MIN_GAIN,
)
from tasks.stages.data import data_plan

logger = logging.getLogger(__name__)


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
