"""
### optimize_model

Makes a trained TensorFlow model fast for inference, proves it is still accurate, and publishes
the winner to the MLflow model registry.

    resolve_config -> export -> prepare_data -> convert[variant] -> validate[variant]
                                              -> benchmark[variant] -> select -> register -> report

* **export**: the model (`.keras` or SavedModel, S3 or local) becomes a serving SavedModel plus
  a signature manifest, published to S3 with a manifest of sha256 digests written last.
* **prepare_data**: eval and calibration shards are checked against the signature; the baseline
  runs once over the eval data to give the reference outputs.
* **convert / validate / benchmark** are mapped over the variants (`backend:precision`): LiteRT
  and OpenVINO on CPU workers; TF-TRT on the `gpu` queue (SKIPPED with the reason where
  TensorRT is absent). Benchmarks share the `tfopt_benchmark` pool (one slot) so they never
  run at the same time.
* **select** picks the fastest variant within the accuracy tolerance (and the p99 SLO, if set);
  **register** logs every variant to MLflow and registers the choice (alias `challenger`;
  `champion` only if it beats the current champion on this hardware).
* **report**: table + plots in S3 and MLflow, also shown on the *Optimise* page of this UI.

Runs on a schedule when `retrain_model` publishes a new model (the triggering asset event's
URIs are used), or by hand from the trigger form. Bad input fails the first task that sees it,
without retries, and registers nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import dag, get_current_context, task
from tfopt_airflow import (
    BENCHMARK_POOL,
    DEFAULT_ARGS,
    DEMO_MODEL_ASSET,
    GPU_QUEUE,
    optimize_params,
    skipped_stays_skipped,
    user_errors_fail_fast,
)

from tasks.backends import CPU_LANE, GPU_LANE


def _config_and_run(settings: dict[str, Any]):
    from tasks.config import PipelineConfig, RunContext

    config = PipelineConfig.from_params(settings)
    run_id = get_current_context()["dag_run"].run_id
    return config, RunContext.create(run_id, config.registered_model_name)


def _result(data: dict[str, Any]):
    from tasks.results import StageResult

    return StageResult.from_dict(data)


@task(retries=0)
@user_errors_fail_fast
def resolve_config() -> dict[str, Any]:
    """The run's parameters; a retrain's asset event supplies the model and data URIs."""
    from tasks.config import PipelineConfig

    context = get_current_context()
    params = dict(context["params"])
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            extra = event.extra or {}
            for key in ("model_uri", "eval_data_uri", "calibration_data_uri"):
                if extra.get(key):
                    params[key] = extra[key]
    return PipelineConfig.from_params(params).to_params()


@task(retries=1)
@user_errors_fail_fast
def export(settings: dict[str, Any]) -> dict[str, Any]:
    from tasks.stages import export_stage

    return export_stage(*_config_and_run(settings)).to_dict()


@task
@user_errors_fail_fast
def prepare_data(settings: dict[str, Any], exported: dict[str, Any]) -> dict[str, Any]:
    from tasks.stages import prepare_data_stage

    return prepare_data_stage(*_config_and_run(settings), _result(exported)).to_dict()


@task
def lane_variants(settings: dict[str, Any], lane: str) -> list[str]:
    """The variants the backend registry puts on `lane` (its CPU or GPU worker queue)."""
    from tasks.backends import variants_in_lane

    return variants_in_lane(settings["variants"], lane)


@task
@skipped_stays_skipped
@user_errors_fail_fast
def convert(
    variant: str, settings: dict[str, Any], exported: dict[str, Any], data: dict[str, Any]
) -> dict[str, Any]:
    from tasks.stages import convert_stage

    return convert_stage(
        *_config_and_run(settings), variant, _result(exported), _result(data)
    ).to_dict()


@task
@user_errors_fail_fast
def validate(
    conversion: dict[str, Any],
    settings: dict[str, Any],
    exported: dict[str, Any],
    data: dict[str, Any],
) -> dict[str, Any]:
    from tasks.stages import validate_stage

    config, run = _config_and_run(settings)
    return validate_stage(
        config, run, _result(conversion), _result(exported), _result(data)
    ).to_dict()


@task(pool=BENCHMARK_POOL)
@user_errors_fail_fast
def benchmark(
    conversion: dict[str, Any],
    settings: dict[str, Any],
    exported: dict[str, Any],
    data: dict[str, Any],
) -> dict[str, Any]:
    from tasks.stages import benchmark_stage

    config, run = _config_and_run(settings)
    return benchmark_stage(
        config, run, _result(conversion), _result(exported), _result(data)
    ).to_dict()


@task(trigger_rule="none_failed")
@user_errors_fail_fast
def select(
    settings: dict[str, Any], conversions: list, validations: list, benchmarks: list
) -> dict[str, Any]:
    from tasks.stages import collect_summaries, select_stage

    config, _ = _config_and_run(settings)
    summaries = collect_summaries(
        [_result(c) for c in conversions],
        [_result(v) for v in validations],
        [_result(b) for b in benchmarks],
    )
    selection, summaries = select_stage(config, summaries)
    return {"variants": [s.to_dict() for s in summaries], "selection": selection}


@task
@user_errors_fail_fast
def register(
    settings: dict[str, Any], exported: dict, data: dict, selected: dict
) -> dict[str, Any]:
    from tasks.stages import register_stage

    config, run = _config_and_run(settings)
    result = register_stage(
        config, run, _result(exported), _result(data), selected["variants"], selected["selection"]
    )
    return {**result.to_dict(), **result.uris, **result.metrics}


@task
@user_errors_fail_fast
def report(
    settings: dict[str, Any], data: dict, selected: dict, registered: dict
) -> dict[str, Any]:
    from tasks.stages import report_stage
    from tasks.summary import VariantSummary

    config, run = _config_and_run(settings)
    summaries = [VariantSummary.from_dict(row) for row in selected["variants"]]
    result = report_stage(
        config, run, summaries, selected["selection"], _result(registered), _result(data)
    )
    run.cleanup()
    return {**result.to_dict(), "report_uri": result.uris["report_uri"]}


@dag(
    dag_id="optimize_model",
    schedule=[DEMO_MODEL_ASSET],
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params=optimize_params(),
    doc_md=__doc__,
    tags=["tfopt"],
    dagrun_timeout=timedelta(hours=3),
)
def optimize_model():
    settings = resolve_config()
    exported = export(settings)
    data = prepare_data(settings, exported)

    results = {}
    for lane, registry_lane, queue in (("cpu", CPU_LANE, None), ("gpu", GPU_LANE, GPU_QUEUE)):
        extra = {"queue": queue} if queue else {}
        variants = lane_variants.override(task_id=f"{lane}_variants")(settings, registry_lane)
        converted = (
            convert.override(task_id=f"convert_{lane}", **extra)
            .partial(settings=settings, exported=exported, data=data)
            .expand(variant=variants)
        )
        validated = (
            validate.override(task_id=f"validate_{lane}", **extra)
            .partial(settings=settings, exported=exported, data=data)
            .expand(conversion=converted)
        )
        measured = (
            benchmark.override(task_id=f"benchmark_{lane}", **extra)
            .partial(settings=settings, exported=exported, data=data)
            .expand(conversion=converted)
        )
        results[lane] = (converted, validated, measured)

    selected = select.override(task_id="select")(
        settings,
        results["cpu"][0].concat(results["gpu"][0]),
        results["cpu"][1].concat(results["gpu"][1]),
        results["cpu"][2].concat(results["gpu"][2]),
    )
    registered = register(settings, exported, data, selected)
    report(settings, data, selected, registered)


optimize_model()
