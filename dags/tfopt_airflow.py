"""Airflow glue shared by tfopt's DAGs: params, the asset, and user-error handling.

Imports only Airflow's SDK and the pipeline's plain configuration (`tasks.config`: dataclasses,
no TensorFlow/MLflow/boto3/numpy) at module level, so DAG parsing stays light; the stages are
imported inside the task callables.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, Param, get_current_context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tasks.config import KNOWN_VARIANTS, OBJECTIVES, AccuracyGate

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


def optimize_params() -> dict[str, Param]:
    """The trigger form: the same names as `tfopt optimize`'s flags, typed and validated."""
    return {
        "model_uri": Param(
            f"{DEMO_ROOT}/model/model.keras",
            type="string",
            minLength=1,
            title="Model URI",
            description="S3 (s3://bucket/key) or local URI of a .keras file or SavedModel folder.",
        ),
        "eval_data_uri": Param(
            f"{DEMO_ROOT}/eval",
            type="string",
            minLength=1,
            title="Eval data URI",
            description="Folder of .npz shards: one array per signature input, plus 'labels'.",
        ),
        "calibration_data_uri": Param(
            f"{DEMO_ROOT}/calibration",
            type="string",
            minLength=1,
            title="Calibration data URI",
            description="Folder of .npz shards of representative inputs (INT8 calibration).",
        ),
        "registered_model_name": Param(
            "tfopt-demo",
            type="string",
            pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
            title="Registered model name",
            description="MLflow registered model that receives the new version.",
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
            minimum=0,
            maximum=1,
            title="Accuracy tolerance",
            description="Max top-1 drop vs the baseline, absolute (0.01 = one point).",
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
            items={"type": "integer", "minimum": 1, "maximum": 1024},
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
            minimum=1,
            maximum=256,
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
