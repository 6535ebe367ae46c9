"""Airflow glue shared by tfopt's DAGs: params, the asset, connections and error handling.

Imports only Airflow's SDK, the models file's loader and the pipeline's plain configuration
(`tasks.config`: dataclasses, no TensorFlow/MLflow/boto3/numpy) at module level, so DAG parsing
stays light; the stages and the connection resolver are imported inside the task callables.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, Param, get_current_context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from tfopt_models import DEFAULT_MLFLOW_CONN_ID, DEFAULT_S3_CONN_ID

from tasks.config import AUTO_METRIC, KNOWN_VARIANTS, METRIC_NAMES, OBJECTIVES, AccuracyGate

BUCKET = os.environ.get("TFOPT_BUCKET", "tfopt")
DEMO_ROOT = f"s3://{BUCKET}/demo"
# Named, not an s3:// URI: an s3 URI makes Airflow load the amazon provider (boto3) at parse time.
DEMO_MODEL_ASSET = Asset(name="tfopt_demo_model")
BENCHMARK_POOL = os.environ.get("TFOPT_BENCHMARK_POOL", "tfopt_benchmark")
GPU_QUEUE = os.environ.get("TFOPT_GPU_QUEUE", "gpu")
VARIANT_CHOICES = list(KNOWN_VARIANTS)

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "tfopt",
    "retries": 3,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(minutes=30),
}


CONNECTION_PARAMS = ("aws_conn_id", "mlflow_conn_id")


def optimize_params(
    defaults: dict[str, Any] | None = None,
    *,
    aws_conn_id: str = DEFAULT_S3_CONN_ID,
    mlflow_conn_id: str = DEFAULT_MLFLOW_CONN_ID,
) -> dict[str, Param]:
    """The trigger form: the same names as `tfopt optimize`'s flags, typed and validated.

    Args:
        defaults: the form's defaults by parameter name (a models-file entry's `defaults`).
        aws_conn_id: the S3 connection the run uses (amazon provider conventions).
        mlflow_conn_id: the MLflow connection the run uses (http connection).

    Raises:
        ValueError: a default is not a parameter of the form, or does not fit its schema.
    """
    from airflow.sdk.exceptions import ParamValidationError

    params = {**_pipeline_params(), **_connection_params(aws_conn_id, mlflow_conn_id)}
    for name, value in (defaults or {}).items():
        if name not in params:
            raise ValueError(f"{name!r} is not a parameter of the form; known: {list(params)}")
        params[name] = Param(value, params[name].description, schema=params[name].schema)
        try:
            params[name].resolve()
        except ParamValidationError as exc:
            first_line = str(exc).strip().splitlines()[0]
            raise ValueError(f"defaults.{name}: {value!r} is refused: {first_line}") from exc
    return params


def _connection_params(aws_conn_id: str, mlflow_conn_id: str) -> dict[str, Param]:
    return {
        "aws_conn_id": Param(
            aws_conn_id,
            type="string",
            minLength=1,
            title="S3 connection",
            description="Airflow connection to S3 (amazon provider: keys, region, endpoint_url).",
            section="Connections",
        ),
        "mlflow_conn_id": Param(
            mlflow_conn_id,
            type="string",
            minLength=1,
            title="MLflow connection",
            description="Airflow http connection to the MLflow tracking server.",
            section="Connections",
        ),
    }


def _pipeline_params() -> dict[str, Param]:
    """The run's parameters (names of `tasks.config`), typed for the form and the API.

    The UI's number fields clamp a typed value into `minimum`..`maximum` (a pasted -1 became 0).
    Bounds kept under `allOf` are not read by the form, so the API's schema check refuses an
    out-of-range value with its message instead, from the form and the REST API alike.
    """
    return {
        "model_uri": Param(
            None,
            type=["null", "string"],
            minLength=1,
            title="Model URI",
            description=(
                "S3 (s3://bucket/key) or local URI of a Keras file (.keras, or .h5 from "
                "Keras 2) or a SavedModel folder (required; an asset event's extra supplies it "
                "on scheduled runs)."
            ),
        ),
        "eval_data_uri": Param(
            None,
            type=["null", "string"],
            minLength=1,
            title="Eval data URI",
            description=(
                "Folder of .npz shards: one array per signature input, plus the metric's ground "
                "truth (required; an asset event's extra supplies it on scheduled runs)."
            ),
        ),
        "calibration_data_uri": Param(
            None,
            type=["null", "string"],
            title="Calibration data URI",
            description=(
                "Folder of .npz shards of representative inputs for INT8 calibration; empty: a "
                "seeded slice of the eval data is held out for it (only when INT8 is asked for)."
            ),
        ),
        "registered_model_name": Param(
            None,
            type="string",
            pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
            title="Registered model name",
            description="MLflow registered model that receives the new version.",
        ),
        "metric": Param(
            AUTO_METRIC,
            type="string",
            enum=list(METRIC_NAMES),
            title="Metric",
            description=(
                "Task metric the accuracy gate judges: top1/top5 (integer labels), "
                "multilabel_map (multi-hot label rows), miou (a class per pixel or token), "
                "mae/rmse (float labels), map50/map (gt_boxes + gt_classes), fidelity (no "
                "labels: agreement with the baseline); auto picks by the eval data's ground "
                "truth."
            ),
        ),
        "metric_output": Param(
            None,
            type=["null", "string"],
            title="Metric output",
            description=(
                "The model output the metric reads (default: the only output, else the one that "
                "fits); detection: boxes=...,scores=...,classes=..."
            ),
        ),
        "variants": Param(
            VARIANT_CHOICES,
            type="array",
            items={"type": "string", "enum": VARIANT_CHOICES},
            minItems=1,
            title="Variants",
            description="backend:precision candidates; tf:fp32 (the baseline) is always added.",
        ),
        "accuracy_tolerance": Param(
            AccuracyGate.tolerance,
            type="number",
            allOf=[{"minimum": 0, "maximum": 1}],
            title="Accuracy tolerance",
            description=(
                "How far the metric may move vs the baseline, in the metric's own terms: an "
                "absolute drop for top1/top5/map50/map/fidelity (0.01 = one point), a relative "
                "rise of the error for mae/rmse (0.05 = 5%)."
            ),
        ),
        "latency_slo_ms": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            title="Latency SLO (ms)",
            description="Optional p99 budget at batch 1; leave empty for none.",
        ),
        "batch_sizes": Param(
            [1, 8],
            type="array",
            items={"type": "integer", "allOf": [{"minimum": 1, "maximum": 1024}]},
            minItems=1,
            title="Batch sizes",
            description="Batch sizes to benchmark; batch 1 is always measured.",
        ),
        "objective": Param(
            "latency",
            type="string",
            enum=list(OBJECTIVES),
            title="Objective",
            description="latency: lowest p50 at batch 1; throughput: most samples/s.",
        ),
        "num_threads": Param(
            2,
            type="integer",
            allOf=[{"minimum": 1, "maximum": 256}],
            title="Threads",
            description="CPU threads per runtime (match the worker's cores).",
        ),
    }


def user_errors_fail_fast(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn tfopt's UserInputError into AirflowFailException: fail at once, no retry."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from tasks.errors import UserInputError

        try:
            return fn(*args, **kwargs)
        except UserInputError as exc:
            raise AirflowFailException(str(exc)) from exc

    return wrapper


def skipped_stays_skipped(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """A stage result with status SKIPPED marks the task skipped in Airflow, with its reason.

    The result is still pushed as the task's return value, so `select` reports the variant.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> dict[str, Any]:
        result = fn(*args, **kwargs)
        if result.get("status") == "SKIPPED":
            get_current_context()["ti"].xcom_push(key="return_value", value=result)
            raise AirflowSkipException(f"{result.get('variant')} SKIPPED: {result.get('reason')}")
        return result

    return wrapper


_TASK_SCRATCH: list[Any] = []
"""The scratch spaces (RunContexts) the running task made; removed when it ends."""


def task_scratch(run: Any) -> Any:
    """Register a task's RunContext, so that `removes_scratch` cleans its scratch space."""
    _TASK_SCRATCH.append(run)
    return run


def removes_scratch(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Remove the task's private scratch space on this worker when the task ends, failed or not.

    Every task of a run has scratch of its own (`RunContext.for_task`), so removing it never
    pulls files from under another task; what is worth keeping is published to S3 or sits in
    the worker's verified cache.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            while _TASK_SCRATCH:
                _TASK_SCRATCH.pop().cleanup()

    return wrapper


def with_connections(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run the task with S3 and MLflow set up from the run's `aws_conn_id` / `mlflow_conn_id`.

    The connections are resolved inside the task's own process into `tasks.storage.S3Settings`
    and `tasks.tracking.MlflowSettings`; neither settings nor secrets reach XCom or the logs.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from tfopt_connections import mlflow_settings, s3_settings

        from tasks import storage
        from tasks.tracking import use_mlflow

        params = get_current_context()["params"]
        s3 = s3_settings(params.get("aws_conn_id"))
        with storage.using_s3(s3), use_mlflow(mlflow_settings(params.get("mlflow_conn_id"))):
            return fn(*args, **kwargs)

    return wrapper


def name_the_variant(variant: str) -> None:
    """Label this mapped task instance with its variant in the grid (`map_index_template`)."""
    get_current_context()["variant"] = variant  # type: ignore[typeddict-unknown-key]


VARIANT_LABEL = "{{ variant }}"
"""`map_index_template` of the per-variant tasks: the grid lists them by variant name."""


def variant_outcome(stages: list[dict[str, Any]]) -> dict[str, Any]:
    """A variant's task state from its stage results: OK succeeds, SKIPPED skips, FAILED fails.

    A FAILED variant is tolerated by the run (select, register and report run with trigger rule
    `all_done` and read the FAILED result), but its task is red in the grid with the reason.
    """
    status, reason, variant = "OK", "", ""
    for stage in stages:
        variant = variant or stage.get("variant", "")
        if stage.get("status") != "OK":
            status, reason = stage.get("status"), f"{stage.get('stage')}: {stage.get('reason')}"
            break
    name_the_variant(variant)
    if status == "FAILED":
        raise AirflowFailException(f"{variant} FAILED (the run goes on without it): {reason}")
    if status == "SKIPPED":
        raise AirflowSkipException(f"{variant} SKIPPED: {reason}")
    return {"variant": variant, "status": status}
