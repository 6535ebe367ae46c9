"""
### {dag_id}: optimise `{model}`

{description}

Makes a trained TensorFlow model fast for inference, proves it is still accurate, and publishes
the winner to the MLflow model registry as a new version of `{model}`.

    resolve_config -> export -> prepare_data -> convert_validate[variant] -> benchmark (per lane)
                   -> variant[variant] -> select -> register -> report

* **export**: the model (`.keras` or SavedModel, S3 or local) becomes a serving SavedModel plus
  a signature manifest, published to S3 with a manifest of sha256 digests written last.
* **prepare_data**: eval and calibration shards are checked against the signature; the baseline
  runs once over the eval data to give the reference outputs.
* **convert_validate** is mapped over the variants (`backend:precision`, the grid names each
  mapped task by its variant): convert, then compare the variant's outputs with the reference
  outputs under the metric. LiteRT and OpenVINO run on CPU workers; TF-TRT on the `gpu` queue
  (skipped, with the reason, where TensorRT is absent).
* **benchmark** (one task per lane) measures the lane's variants in one interleaved benchmark,
  in rounds, beside the current champion when it runs on that lane, so the machine's drift hits
  them all alike; rounds spoiled by CPU steal or load are flagged and left out. Benchmarks share
  the `tfopt_benchmark` pool (one slot) so they never run at the same time.
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
def convert_validate(
    variant: str, settings: dict[str, Any], exported: dict[str, Any], data: dict[str, Any]
) -> dict[str, Any]:
    """Convert the export into `variant`, then check its outputs against the reference outputs.

    One task, not two: a variant's validation needs nothing but its conversion, and a second
    task would only add a process start, a TensorFlow import and a fetch of the variant.
    """
    from tasks.stages import convert_stage, validate_stage

    name_the_variant(variant)
    config, run = _config_and_run(settings)
    conversion = convert_stage(config, run, variant, _result(exported), _result(data))
    validation = validate_stage(config, run, conversion, _result(exported), _result(data))
    return {
        "variant": variant,
        "status": conversion.status.value,
        "reason": conversion.reason,
        "conversion": conversion.to_dict(),
        "validation": validation.to_dict(),
    }


@task(pool=BENCHMARK_POOL, trigger_rule="none_failed")
@user_errors_fail_fast
@with_connections
@removes_scratch
def benchmark(
    lane: str, built: list, settings: dict[str, Any], data: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every variant of the lane measured in one interleaved benchmark, beside the champion.

    Runs when some variants were skipped (`none_failed`): they are passed through as skipped.
    """
    from tasks.stages import benchmark_stage

    config, run = _config_and_run(settings)
    built = list(built or [])
    conversions = [_result(record["conversion"]) for record in built]
    measured = benchmark_stage(config, run, lane, conversions, _result(data))
    return [
        {
            "variant": record["variant"],
            "stages": [record["conversion"], record["validation"], result.to_dict()],
        }
        for record, result in zip(built, measured, strict=True)
    ]


@task(retries=0, map_index_template=VARIANT_LABEL)
def outcome(record: dict[str, Any]) -> dict[str, Any]:
    """The variant's outcome: green measured, skipped, or red FAILED with the reason."""
    return variant_outcome(list(record["stages"]))


@task(trigger_rule="all_done")
@user_errors_fail_fast
@with_connections
@removes_scratch
def select(settings: dict[str, Any], built: list, measured: list) -> dict[str, Any]:
    from tasks.stages import collect_summaries, select_stage

    config, _ = _config_and_run(settings)
    benchmarks = [record["stages"][2] for lane in measured if lane for record in lane]
    summaries = collect_summaries(
        [_result(record["conversion"]) for record in built],
        [_result(record["validation"]) for record in built],
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

    built, measured, outcomes = [], [], []
    for lane, registry_lane, queue in (("cpu", CPU_LANE, None), ("gpu", GPU_LANE, GPU_QUEUE)):
        extra = {"queue": queue} if queue else {}
        variants = lane_variants.override(task_id=f"{lane}_variants")(settings, registry_lane)
        lane_built = (
            convert_validate.override(task_id=f"convert_validate_{lane}", **extra)
            .partial(settings=settings, exported=exported, data=data)
            .expand(variant=variants)
        )
        lane_measured = benchmark.override(task_id=f"benchmark_{lane}", **extra)(
            registry_lane, lane_built, settings, data
        )
        built.append(lane_built)
        measured.append(lane_measured)
        outcomes.append(outcome.override(task_id=f"variant_{lane}").expand(record=lane_measured))

    selected = select.override(task_id="select")(settings, built[0].concat(built[1]), measured)
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
