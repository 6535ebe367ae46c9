"""The register stage: MLflow runs, the model version and the champion decision."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tasks import storage
from tasks.config import PipelineConfig, RunContext, VariantSpec
from tasks.results import StageResult, Status
from tasks.stages.common import CHAMPION_MIN_GAIN
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


def _champion_figures(
    config: PipelineConfig,
    ctx: RunContext,
    champion: Any,
    row: dict[str, Any],
    data: StageResult,
) -> dict[str, Any]:
    """The champion's figures to compare with: measured in the chosen variant's rounds when the
    benchmark saw this same version, else re-measured alone now (or its recorded ones)."""
    from tasks.stages.champion import champion_now

    measured = row.get("champion_in_rounds") or {}
    if str(measured.get("version")) == str(champion.version):
        logger.info(
            "champion v%s measured in the same rounds: p50 %.3f ms",
            champion.version,
            measured["p50_ms"],
        )
        return measured
    plan = data_plan(config, ctx, data)
    return champion_now(config, ctx, champion, plan, row["hardware_class"])


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
        previous = _champion_figures(config, ctx, champion, row, data) if champion else None
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
