"""MLflow: one parent run per pipeline run, a nested run per variant, the chosen model version."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tasks import storage
from tasks.config import PipelineConfig, RunContext, VariantSpec
from tasks.errors import TransientError

logger = logging.getLogger(__name__)

RUN_ID_TAG = "tfopt.run_id"
VARIANT_TAG = "tfopt.variant"
CHAMPION = "champion"
CHALLENGER = "challenger"
TASKS_PACKAGE = Path(__file__).resolve().parent


def experiment_name(config: PipelineConfig) -> str:
    return f"tfopt/{config.registered_model_name}"


def ui_base_url() -> str:
    """The MLflow UI address users click (TFOPT_MLFLOW_UI_URL, else the tracking URI)."""
    return (os.environ.get("TFOPT_MLFLOW_UI_URL") or mlflow.get_tracking_uri()).rstrip("/")


def run_url(experiment_id: str, run_id: str) -> str:
    return f"{ui_base_url()}/#/experiments/{experiment_id}/runs/{run_id}"


def model_version_url(name: str, version: str) -> str:
    return f"{ui_base_url()}/#/models/{name}/versions/{version}"


def _find_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> str | None:
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    runs = client.search_runs([experiment_id], filter_string=query, max_results=1)
    return runs[0].info.run_id if runs else None


def parent_run(config: PipelineConfig, ctx: RunContext) -> tuple[str, str]:
    """The pipeline run's MLflow run (experiment id, run id); created once, found on retry."""
    client = MlflowClient()
    experiment = mlflow.set_experiment(experiment_name(config))
    found = _find_run(client, experiment.experiment_id, {RUN_ID_TAG: ctx.run_id})
    if found:
        return experiment.experiment_id, found
    run = client.create_run(
        experiment.experiment_id,
        run_name=f"optimize {ctx.run_id}",
        tags={RUN_ID_TAG: ctx.run_id, "tfopt.model": config.registered_model_name},
    )
    params = {k: json.dumps(v) if isinstance(v, list) else v for k, v in config.to_params().items()}
    for key, value in params.items():
        client.log_param(run.info.run_id, key, "" if value is None else value)
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
    """One nested run per variant with its params, metrics and evidence; returns variant->run."""
    client = MlflowClient()
    experiment_id, parent_id = parent
    runs: dict[str, str] = {}
    for row in rows:
        spec = VariantSpec.parse(row["variant"])
        tags = {RUN_ID_TAG: ctx.run_id, VARIANT_TAG: spec.name}
        found = _find_run(client, experiment_id, tags)
        if found:
            runs[spec.name] = found
            continue
        run = client.create_run(
            experiment_id,
            run_name=spec.name,
            tags={**tags, "mlflow.parentRunId": parent_id, "tfopt.status": row["status"]},
        )
        run_id = run.info.run_id
        for key, value in (
            ("backend", spec.backend),
            ("precision", spec.precision),
            ("status", row["status"]),
            ("reason", row["reason"][:500]),
        ):
            client.log_param(run_id, key, value)
        for key, value in _numeric_metrics(row).items():
            client.log_metric(run_id, key, value)
        client.log_dict(run_id, row, "variant.json")
        for key in ("validation_uri", "benchmark_uri"):
            if row.get(key):
                name = key.removesuffix("_uri") + ".json"
                client.log_dict(run_id, storage.get_json(row[key]), name)
        client.set_terminated(run_id, "FINISHED")
        runs[spec.name] = run_id
    return runs


def find_version(name: str, run_id: str) -> Any | None:
    """The model version this pipeline run already registered, if any (retry safety)."""
    client = MlflowClient()
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    matching = [v for v in versions if (v.tags or {}).get(RUN_ID_TAG) == run_id]
    return matching[0] if matching else None


def current_champion(name: str) -> Any | None:
    try:
        return MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


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
    variant_dir: Path,
    signature_dir: Path,
    row: dict[str, Any],
    example: dict[str, np.ndarray],
    num_threads: int,
) -> str:
    """Log the chosen variant as a pyfunc model in the active run; returns its model URI."""
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
    try:
        return mlflow.register_model(model_uri, name, tags=tags)
    except MlflowException as exc:
        raise TransientError(f"registering {name} in MLflow failed: {exc}") from exc


def set_aliases(name: str, version: str, promote: bool) -> None:
    client = MlflowClient()
    client.set_registered_model_alias(name, CHALLENGER, version)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
