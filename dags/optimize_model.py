"""
### {dag_id}: optimise `{model}`

{description}

Makes a trained TensorFlow model fast for inference, proves it is still accurate, and publishes
the winner to the MLflow model registry as a new version of `{model}`.

    resolve_config -> export -> prepare_data -> convert[variant] -> validate[variant]
                   -> benchmark[variant] -> variant[variant] -> select -> register -> report

* **export**: the model (`.keras` or SavedModel, S3 or local) becomes a serving SavedModel plus
  a signature manifest, published to S3 with a manifest of sha256 digests written last.
* **prepare_data**: eval and calibration shards are checked against the signature; the baseline
  runs once over the eval data to give the reference outputs.
* **convert / validate / benchmark** are mapped over the variants (`backend:precision`, the grid
  names each mapped task by its variant): LiteRT and OpenVINO on CPU workers; TF-TRT on the `gpu`
  queue (skipped, with the reason, where TensorRT is absent). Benchmarks share the `tfopt_benchmark`
  pool (one slot) so they never run at the same time.
* **variant_cpu / variant_gpu**: one task per variant with its outcome: green when it was
  measured, skipped when its backend cannot run here, red when it failed, with the reason in its
  log. A failed variant does not stop the run: select, register and report go on without it.
* **select** picks the fastest variant within the accuracy tolerance (and the p99 SLO, if set);
  **register** logs every variant to MLflow and registers the choice (alias `challenger`;
  `champion` only if it beats the current champion on this hardware).
* **report**: table + plots in S3 and MLflow, also shown on the *Optimise* page of this UI.

Runs when an event on the asset `{asset}` arrives (its extra's `model_uri`, `eval_data_uri`,
`calibration_data_uri` are used){schedule}, or by hand from the trigger form. S3 and MLflow come
from the Airflow connections named by `aws_conn_id` and `mlflow_conn_id`. Bad input fails the
first task that sees it, without retries, and registers nothing. Generated from the models file
(`dags/models.yaml`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Asset, get_current_context, task
from tfopt_airflow import (
    BENCHMARK_POOL,
    CONNECTION_PARAMS,
    DEFAULT_ARGS,
    GPU_QUEUE,
    VARIANT_LABEL,
    name_the_variant,
    optimize_params,
    removes_scratch,
    skipped_stays_skipped,
    task_scratch,
    user_errors_fail_fast,
    variant_outcome,
    with_connections,
)
from tfopt_models import ModelEntry, ModelsConfigError, load_models

from tasks.backends import CPU_LANE, GPU_LANE

URI_PARAMS = ("model_uri", "eval_data_uri", "calibration_data_uri")
"""What a producer puts in its asset event's extra; these override the run's parameters."""


def _config_and_run(settings: dict[str, Any]):
    from tasks.config import PipelineConfig, RunContext

    pipeline = {k: v for k, v in settings.items() if k not in CONNECTION_PARAMS}
    config = PipelineConfig.from_params(pipeline)
    context = get_current_context()
    ti = context["ti"]
    run = RunContext.create(context["dag_run"].run_id, config.registered_model_name)
    label = f"{ti.task_id}.{ti.map_index}.{ti.try_number}"
    return config, task_scratch(run.for_task(label))


def _result(data: dict[str, Any]):
    from tasks.results import StageResult

    return StageResult.from_dict(data)


@task(retries=0)
@user_errors_fail_fast
def resolve_config() -> dict[str, Any]:
    """The run's parameters; the triggering asset event's extra supplies the model and data URIs."""
    from tasks.config import PipelineConfig

    context = get_current_context()
    params = {k: v for k, v in context["params"].items() if k not in CONNECTION_PARAMS}
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            extra = event.extra or {}
            params.update({key: extra[key] for key in URI_PARAMS if extra.get(key)})
    return PipelineConfig.from_params(params).to_params()


@task(retries=1)
@user_errors_fail_fast
@with_connections
@removes_scratch
def export(settings: dict[str, Any]) -> dict[str, Any]:
    from tasks.stages import export_stage

    return export_stage(*_config_and_run(settings)).to_dict()


@task
@user_errors_fail_fast
@with_connections
@removes_scratch
def prepare_data(settings: dict[str, Any], exported: dict[str, Any]) -> dict[str, Any]:
    from tasks.stages import prepare_data_stage

    return prepare_data_stage(*_config_and_run(settings), _result(exported)).to_dict()


@task
def lane_variants(settings: dict[str, Any], lane: str) -> list[str]:
    """The variants the backend registry puts on `lane` (its CPU or GPU worker queue)."""
    from tasks.backends import variants_in_lane

    return variants_in_lane(settings["variants"], lane)


@task(map_index_template=VARIANT_LABEL)
@skipped_stays_skipped
@user_errors_fail_fast
@with_connections
@removes_scratch
def convert(
    variant: str, settings: dict[str, Any], exported: dict[str, Any], data: dict[str, Any]
) -> dict[str, Any]:
    from tasks.stages import convert_stage

    name_the_variant(variant)
    return convert_stage(
        *_config_and_run(settings), variant, _result(exported), _result(data)
    ).to_dict()


@task(map_index_template=VARIANT_LABEL)
@user_errors_fail_fast
@with_connections
@removes_scratch
def validate(
    conversion: dict[str, Any],
    settings: dict[str, Any],
    exported: dict[str, Any],
    data: dict[str, Any],
) -> dict[str, Any]:
    from tasks.stages import validate_stage

    name_the_variant(conversion["variant"])
    config, run = _config_and_run(settings)
    return validate_stage(
        config, run, _result(conversion), _result(exported), _result(data)
    ).to_dict()


@task(pool=BENCHMARK_POOL, map_index_template=VARIANT_LABEL)
@user_errors_fail_fast
@with_connections
@removes_scratch
def benchmark(
    conversion: dict[str, Any],
    settings: dict[str, Any],
    exported: dict[str, Any],
    data: dict[str, Any],
) -> dict[str, Any]:
    from tasks.stages import benchmark_stage

    name_the_variant(conversion["variant"])
    config, run = _config_and_run(settings)
    return benchmark_stage(
        config, run, _result(conversion), _result(exported), _result(data)
    ).to_dict()


@task(retries=0, map_index_template=VARIANT_LABEL)
def outcome(stages: list[dict[str, Any]]) -> dict[str, Any]:
    """The variant's outcome: green measured, skipped, or red FAILED with the reason."""
    return variant_outcome(list(stages))


@task(trigger_rule="all_done")
@user_errors_fail_fast
@with_connections
@removes_scratch
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
@with_connections
@removes_scratch
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
@with_connections
@removes_scratch
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
    return {**result.to_dict(), "report_uri": result.uris["report_uri"]}


def _pipeline() -> None:
    """The tasks of one optimise run, wired inside the DAG being built."""
    settings = resolve_config()
    exported = export(settings)
    data = prepare_data(settings, exported)

    results, outcomes = {}, []
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
        outcomes.append(
            outcome.override(task_id=f"variant_{lane}").expand(
                stages=converted.zip(validated, measured)
            )
        )

    selected = select.override(task_id="select")(
        settings,
        results["cpu"][0].concat(results["gpu"][0]),
        results["cpu"][1].concat(results["gpu"][1]),
        results["cpu"][2].concat(results["gpu"][2]),
    )
    outcomes >> selected
    registered = register(settings, exported, data, selected)
    report(settings, data, selected, registered)


def build_dag(entry: ModelEntry) -> DAG:
    """The optimise DAG of one models-file entry."""
    asset = Asset(name=entry.asset)
    schedule: Any = [asset]
    if entry.schedule:
        from airflow.timetables.assets import AssetOrTimeSchedule
        from airflow.timetables.trigger import CronTriggerTimetable

        timetable = CronTriggerTimetable(entry.schedule, timezone="UTC")
        schedule = AssetOrTimeSchedule(timetable=timetable, assets=[asset])
    doc = __doc__.format(
        dag_id=entry.dag_id,
        model=entry.registered_model_name,
        description=entry.description,
        asset=entry.asset,
        schedule=f", on the schedule `{entry.schedule}`" if entry.schedule else "",
    )
    defaults = {"registered_model_name": entry.registered_model_name, **entry.defaults}
    try:
        with DAG(
            dag_id=entry.dag_id,
            description=entry.description or f"Optimise {entry.registered_model_name}",
            schedule=schedule,
            catchup=False,
            max_active_runs=entry.max_active_runs,
            default_args=DEFAULT_ARGS,
            params=optimize_params(
                defaults, aws_conn_id=entry.aws_conn_id, mlflow_conn_id=entry.mlflow_conn_id
            ),
            doc_md=doc,
            tags=["tfopt", *entry.tags],
            dagrun_timeout=timedelta(hours=3),
        ) as dag:
            _pipeline()
    except (ValueError, TypeError) as exc:
        raise ModelsConfigError(f"{entry.origin}: {exc}") from exc
    return dag


for _entry in load_models():
    globals()[_entry.dag_id] = build_dag(_entry)
