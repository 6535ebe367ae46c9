"""MLflow: one parent run per pipeline run, a nested run per variant, the chosen model version."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tasks import storage
from tasks.config import PipelineConfig, RunContext, VariantSpec
from tasks.errors import TfoptError, TransientError, UserInputError

logger = logging.getLogger(__name__)

RUN_ID_TAG = "tfopt.run_id"
VARIANT_TAG = "tfopt.variant"
MODEL_TAG = "tfopt.model"
CHAMPION = "champion"
CHALLENGER = "challenger"
COMPLETE_TAG = "tfopt.complete"
"""Written last: a run or version without it was interrupted and is resumed, never trusted."""
DECISION_TAG = "tfopt.champion_decision"
DECISION_REASON_TAG = "tfopt.champion_reason"
TASKS_PACKAGE = Path(__file__).resolve().parent
CLIENT_RETRY_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}
"""MLflow's own HTTP retries, bounded to seconds (the task's retry policy does the rest); a
value already in the environment wins."""
ABSENT = "RESOURCE_DOES_NOT_EXIST"
_TRANSIENT_CODES = frozenset(
    {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}
)
_URL_CREDENTIALS = re.compile(r"//[^/@\s]+@")


def bound_client_retries() -> None:
    """Set MLflow's HTTP retry and timeout bounds before a client talks to the server."""
    for name, value in CLIENT_RETRY_BOUNDS.items():
        os.environ.setdefault(name, value)


def client() -> MlflowClient:
    """The MLflow client, with bounded HTTP retries."""
    bound_client_retries()
    return MlflowClient()


def _redact(text: str) -> str:
    return _URL_CREDENTIALS.sub("//***@", text)


def classify(exc: Exception, action: str) -> TfoptError:
    """A user error or a transient error for an MLflow failure, by its error code."""
    if isinstance(exc, MlflowException):
        code = str(exc.error_code)
        status = exc.get_http_status_code()
        message = _redact(str(exc.message))[:1000]
        if code in _TRANSIENT_CODES or status >= 500 or status in (408, 429):
            return TransientError(
                f"MLflow failed to {action} ({code}): {message}; is the tracking server "
                f"({_redact(mlflow.get_tracking_uri())}) up? retrying may help"
            )
        return UserInputError(f"MLflow refused to {action} ({code}): {message}")
    return TransientError(f"MLflow failed to {action}: {_redact(str(exc))[:1000]}; retry")


@contextlib.contextmanager
def mlflow_errors(action: str) -> Iterator[None]:
    """Raise `UserInputError` / `TransientError` instead of MLflow's and requests' exceptions."""
    import requests

    try:
        yield
    except TfoptError:
        raise
    except (MlflowException, requests.exceptions.RequestException, ConnectionError) as exc:
        raise classify(exc, action) from exc


def _absent(exc: BaseException) -> bool:
    return isinstance(exc, MlflowException) and str(exc.error_code) == ABSENT


def experiment_name(config: PipelineConfig) -> str:
    return f"tfopt/{config.registered_model_name}"


def ui_base_url() -> str:
    """The MLflow UI address users click (TFOPT_MLFLOW_UI_URL, else the tracking URI)."""
    return (os.environ.get("TFOPT_MLFLOW_UI_URL") or mlflow.get_tracking_uri()).rstrip("/")


def run_url(experiment_id: str, run_id: str) -> str:
    return f"{ui_base_url()}/#/experiments/{experiment_id}/runs/{run_id}"


def model_version_url(name: str, version: str) -> str:
    return f"{ui_base_url()}/#/models/{name}/versions/{version}"


def _find_run(client_: MlflowClient, experiment_id: str, tags: dict[str, str]) -> Any | None:
    """The run carrying `tags` (values are run keys and variant names: no quotes in them)."""
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    with mlflow_errors("search runs"):
        runs = client_.search_runs([experiment_id], filter_string=query, max_results=1)
    return runs[0] if runs else None


def _fill_run(
    client_: MlflowClient,
    run: Any,
    params: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> None:
    """Log what `run` lacks of `params` and `metrics` (a resumed run keeps what it has)."""
    logged_params = dict(run.data.params) if run is not None else {}
    logged_metrics = dict(run.data.metrics) if run is not None else {}
    run_id = run.info.run_id
    with mlflow_errors(f"log the parameters of run {run_id}"):
        for key, value in params.items():
            if key not in logged_params:
                client_.log_param(run_id, key, "" if value is None else value)
        for key, value in (metrics or {}).items():
            if key not in logged_metrics:
                client_.log_metric(run_id, key, value)


def parent_run(config: PipelineConfig, ctx: RunContext) -> tuple[str, str]:
    """The pipeline run's MLflow run (experiment id, run id); created once, resumed on retry."""
    mlflow_client = client()
    with mlflow_errors(f"open the experiment {experiment_name(config)}"):
        experiment = mlflow.set_experiment(experiment_name(config))
    tags = {RUN_ID_TAG: ctx.run_id, MODEL_TAG: config.registered_model_name}
    run = _find_run(mlflow_client, experiment.experiment_id, tags)  # variant runs lack MODEL_TAG
    if run is not None and (run.data.tags or {}).get(COMPLETE_TAG) == "true":
        return experiment.experiment_id, run.info.run_id
    if run is None:
        with mlflow_errors("create the pipeline run"):
            run = mlflow_client.create_run(
                experiment.experiment_id,
                run_name=f"optimize {ctx.run_id}",
                tags=tags,
            )
    else:
        logger.info("resuming the interrupted MLflow run %s", run.info.run_id)
    params = {k: json.dumps(v) if isinstance(v, list) else v for k, v in config.to_params().items()}
    _fill_run(mlflow_client, run, params)
    with mlflow_errors("mark the pipeline run complete"):
        mlflow_client.set_tag(run.info.run_id, COMPLETE_TAG, "true")
    return experiment.experiment_id, run.info.run_id


def _numeric_metrics(row: dict[str, Any]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if row.get("metric_name") and isinstance(row.get("metric_value"), int | float):
        metrics[row["metric_name"]] = float(row["metric_value"])
    for key, value in (row.get("metric_details") or {}).items():
        if isinstance(value, int | float) and np.isfinite(value):
            metrics[f"metric.{key}"] = float(value)
    for key in (
        "metric_delta",
        "max_abs_error",
        "p50_ms",
        "p99_ms",
        "throughput",
        "size_bytes",
        "conversion_s",
        "speedup",
    ):
        value = row.get(key)
        if isinstance(value, int | float) and np.isfinite(value):
            metrics[key] = float(value)
    for key, value in (row.get("conversion_summary") or {}).items():
        # e.g. TF-TRT's trt_engines, ops_converted, ops_not_converted; LiteRT's num_ops
        if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
            metrics[f"conversion.{key}"] = float(value)
    for batch, value in (row.get("p50_ms_by_batch") or {}).items():
        if value is not None:
            metrics[f"p50_ms_batch_{batch}"] = float(value)
    for batch, value in (row.get("throughput_by_batch") or {}).items():
        if value is not None:
            metrics[f"throughput_batch_{batch}"] = float(value)
    return metrics


def log_variant_runs(
    config: PipelineConfig, ctx: RunContext, parent: tuple[str, str], rows: list[dict[str, Any]]
) -> dict[str, str]:
    """One nested run per variant with its params, metrics and evidence; returns variant->run.

    A run found complete is reused; one without the complete tag (interrupted) is filled in.
    """
    mlflow_client = client()
    experiment_id, parent_id = parent
    runs: dict[str, str] = {}
    for row in rows:
        spec = VariantSpec.parse(row["variant"])
        tags = {RUN_ID_TAG: ctx.run_id, VARIANT_TAG: spec.name}
        run = _find_run(mlflow_client, experiment_id, tags)
        if run is not None and (run.data.tags or {}).get(COMPLETE_TAG) == "true":
            runs[spec.name] = run.info.run_id
            continue
        if run is None:
            with mlflow_errors(f"create the run of {spec.name}"):
                run = mlflow_client.create_run(
                    experiment_id,
                    run_name=spec.name,
                    tags={**tags, "mlflow.parentRunId": parent_id, "tfopt.status": row["status"]},
                )
        runs[spec.name] = run.info.run_id
        _log_variant_run(mlflow_client, run, spec, row)
    return runs


def _log_variant_run(mlflow_client: MlflowClient, run: Any, spec: VariantSpec, row: dict) -> None:
    run_id = run.info.run_id
    params = {
        "backend": spec.backend,
        "precision": spec.precision,
        "status": row["status"],
        "reason": row["reason"][:500],
    }
    _fill_run(mlflow_client, run, params, _numeric_metrics(row))
    with mlflow_errors(f"log the evidence of {spec.name}"):
        mlflow_client.log_dict(run_id, row, "variant.json")
        for key in ("validation_uri", "benchmark_uri"):
            if row.get(key):
                name = key.removesuffix("_uri") + ".json"
                mlflow_client.log_dict(run_id, storage.get_json(row[key]), name)
        mlflow_client.set_terminated(run_id, "FINISHED")
        mlflow_client.set_tag(run_id, COMPLETE_TAG, "true")


def find_version(name: str, run_id: str) -> Any | None:
    """The model version this pipeline run already registered, if any (retry safety).

    Raises:
        TransientError: MLflow could not answer (never read as "no version").
    """
    with mlflow_errors(f"search the versions of {name}"):
        versions = client().search_model_versions(f"name = '{_quoted(name)}'")
    matching = [v for v in versions if (v.tags or {}).get(RUN_ID_TAG) == run_id]
    return min(matching, key=lambda v: int(v.version)) if matching else None


def current_champion(name: str) -> Any | None:
    """The version holding `champion`, or None when the model or the alias does not exist.

    Raises:
        TransientError: MLflow could not answer (never read as "no champion").
    """
    mlflow_client = client()
    try:
        with mlflow_errors(f"read the registered model {name}"):
            model = mlflow_client.get_registered_model(name)
    except UserInputError as exc:
        if _absent(exc.__cause__):
            return None
        raise
    aliases = dict(getattr(model, "aliases", None) or {})
    if CHAMPION not in aliases:
        return None
    with mlflow_errors(f"read {name} v{aliases[CHAMPION]} ({CHAMPION})"):
        return mlflow_client.get_model_version(name, str(aliases[CHAMPION]))


def recorded_decision(version: Any) -> tuple[bool, str] | None:
    """The champion decision a complete version recorded, or None if it was never finished."""
    tags = version.tags or {}
    if tags.get(COMPLETE_TAG) != "true" or DECISION_TAG not in tags:
        return None
    return tags[DECISION_TAG] == "champion", tags.get(DECISION_REASON_TAG, "")


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _requirements(backend: str, variant_dir: Path | None = None) -> list[str]:
    """The served variant's pip requirements (from the backend registry), pinned as installed.

    A variant whose graph was split runs its decoding prefix in TensorFlow, so needs it too.
    """
    from tasks.backends import serving_requirements
    from tasks.backends.graph_split import SPLIT_FILE

    split = variant_dir is not None and (Path(variant_dir) / SPLIT_FILE).is_file()
    pins = []
    for dist in serving_requirements(backend, tensorflow_prefix=split):
        try:
            pins.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pins.append(dist)
    return pins


def _mlflow_example(example: dict[str, np.ndarray]) -> Any:
    """The input example as MLflow can carry it through JSON.

    MLflow's JSON encodes bytes as base64 and decodes them back only for columns of type
    `binary`, not for tensors: a model whose inputs are strings (one per sample) therefore gets
    a column-based signature and a DataFrame example; every other model keeps tensors.
    """
    import pandas as pd

    if any(v.dtype.kind == "S" for v in example.values()) and all(
        v.ndim == 1 for v in example.values()
    ):
        return pd.DataFrame({name: list(value) for name, value in example.items()})
    return example


def log_pyfunc(
    run_id: str,
    variant_dir: Path,
    signature_dir: Path,
    row: dict[str, Any],
    example: dict[str, np.ndarray],
    num_threads: int,
) -> str:
    """Log the chosen variant as a pyfunc model in the MLflow run `run_id`; returns its URI."""
    from mlflow.models import infer_signature

    from tasks.serving import META_ARTIFACT, SIGNATURE_ARTIFACT, VARIANT_ARTIFACT, VariantModel

    spec = VariantSpec.parse(row["variant"])
    with tempfile.TemporaryDirectory() as tmp:
        meta_path = Path(tmp, "meta.json")
        meta_path.write_text(
            json.dumps(
                {"backend": spec.backend, "precision": spec.precision, "num_threads": num_threads}
            )
        )
        model = VariantModel()
        model.load_context(
            _Context(
                {
                    VARIANT_ARTIFACT: str(variant_dir),
                    SIGNATURE_ARTIFACT: str(signature_dir / "signature.json"),
                    META_ARTIFACT: str(meta_path),
                }
            )
        )
        example = _mlflow_example(example)
        prediction = model.predict(None, example)
        bound_client_retries()
        with mlflow_errors(f"log the chosen model in run {run_id}"), mlflow.start_run(run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=VariantModel(),
                artifacts={
                    VARIANT_ARTIFACT: str(variant_dir),
                    SIGNATURE_ARTIFACT: str(signature_dir / "signature.json"),
                    META_ARTIFACT: str(meta_path),
                },
                code_paths=[str(TASKS_PACKAGE)],
                signature=infer_signature(example, prediction),
                input_example=example,
                pip_requirements=_requirements(spec.backend, variant_dir),
            )
    return info.model_uri


class _Context:
    """The `context` a PythonModel gets, for a local trial load before logging."""

    def __init__(self, artifacts: dict[str, str]) -> None:
        self.artifacts = artifacts


def register_version(name: str, model_uri: str, tags: dict[str, str]) -> Any:
    """Create the model version with its evidence as tags."""
    bound_client_retries()
    with mlflow_errors(f"register a version of {name}"):
        return mlflow.register_model(model_uri, name, tags=tags)


Decide = Callable[[Any | None], tuple[bool, str]]
"""(current champion version or None) -> (promote, why)."""


def decide_aliases(name: str, version: Any, decide: Decide, lock_uri: str, owner: str) -> tuple:
    """Compare-and-set the aliases of `version` under the model's champion lock.

    Under the lock: re-read the champion, decide, check the lease is still ours, set
    `challenger` (and `champion` when promoted), record the decision on the version, and mark
    the version complete last. A run that cannot take the lock fails transient; nothing moved.

    Returns:
        (promote, why)
    """
    with storage.lock.held(lock_uri, owner) as lease:
        champion = current_champion(name)
        promote, why = decide(champion)
        storage.lock.check_held(lease)
        mlflow_client = client()
        with mlflow_errors(f"set the aliases of {name} v{version.version}"):
            mlflow_client.set_registered_model_alias(name, CHALLENGER, version.version)
            if promote:
                mlflow_client.set_registered_model_alias(name, CHAMPION, version.version)
            for key, value in (
                (DECISION_TAG, "champion" if promote else "challenger"),
                (DECISION_REASON_TAG, why[:4000]),
                (COMPLETE_TAG, "true"),
            ):
                mlflow_client.set_model_version_tag(name, version.version, key, value)
    return promote, why


def attach_report(run_id: str, paths: list[Path]) -> None:
    """Log the report files as artifacts of the pipeline run and mark that run finished."""
    mlflow_client = client()
    with mlflow_errors(f"attach the report to run {run_id}"):
        for path in paths:
            mlflow_client.log_artifact(run_id, str(path), "report")
        mlflow_client.set_terminated(run_id, "FINISHED")
