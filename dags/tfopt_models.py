"""The models file: which registered models get an optimise DAG, with their asset and defaults.

`dags/models.yaml` (or the file `TFOPT_MODELS_CONFIG` names) lists one entry per registered
model; `optimize_model.py` builds one DAG per entry. Every mistake is reported at parse time as a
`ModelsConfigError` naming the file, the entry and the key, so it shows among the DAG import
errors instead of failing a run later. Only the standard library, PyYAML and `tasks.config` are
imported, so parsing stays light.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.config import OPTIONAL_PARAMS, REQUIRED_PARAMS, PipelineConfig
from tasks.errors import UserInputError

DEFAULT_PATH = Path(__file__).resolve().parent / "models.yaml"
DEFAULT_S3_CONN_ID = "tfopt_s3"
DEFAULT_MLFLOW_CONN_ID = "mlflow_default"
_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}$")
_ENTRY_KEYS = {
    "registered_model_name": "MLflow registered model that receives the versions (required)",
    "dag_id": "id of the generated DAG (default: optimize_<registered_model_name>)",
    "asset": "name of the asset whose events trigger a run (default: <registered_model_name>)",
    "schedule": "a cron expression or preset, run besides the asset events (default: none)",
    "max_active_runs": "runs of this model at the same time (default 1)",
    "aws_conn_id": f"Airflow S3 connection (default {DEFAULT_S3_CONN_ID})",
    "mlflow_conn_id": f"Airflow MLflow connection (default {DEFAULT_MLFLOW_CONN_ID})",
    "tags": "extra DAG tags",
    "description": "one line shown in the DAG list",
    "defaults": "trigger-form defaults: the parameters of `tfopt optimize`",
}
PIPELINE_PARAMS = (*REQUIRED_PARAMS, *OPTIONAL_PARAMS)


class ModelsConfigError(ValueError):
    """The models file is malformed; the message names the file, the entry and the key."""


@dataclass(frozen=True)
class ModelEntry:
    """One registered model and how its optimise DAG is built."""

    registered_model_name: str
    dag_id: str
    asset: str
    schedule: str | None = None
    max_active_runs: int = 1
    aws_conn_id: str = DEFAULT_S3_CONN_ID
    mlflow_conn_id: str = DEFAULT_MLFLOW_CONN_ID
    tags: tuple[str, ...] = ()
    description: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    origin: str = ""
    """Where the entry is written (`<file>: models[<i>] (<name>)`), for error messages."""


def models_path() -> Path:
    """The models file in use: `TFOPT_MODELS_CONFIG`, else `dags/models.yaml`."""
    return Path(os.environ.get("TFOPT_MODELS_CONFIG") or DEFAULT_PATH)


def load_models(path: Path | None = None) -> list[ModelEntry]:
    """Parse and check the models file.

    Raises:
        ModelsConfigError: unreadable YAML, unknown keys, bad values, duplicate DAG ids or assets.
    """
    import yaml

    path = path or models_path()
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ModelsConfigError(f"{path}: cannot read the models file: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ModelsConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("models"), list):
        raise ModelsConfigError(f"{path}: expected a mapping with a list under 'models:'")
    if set(document) - {"models"}:
        raise ModelsConfigError(
            f"{path}: unknown top-level key(s) {sorted(set(document) - {'models'})}"
        )
    entries = [_entry(path, index, raw) for index, raw in enumerate(document["models"])]
    _check_unique(path, entries)
    return entries


def _entry(path: Path, index: int, raw: Any) -> ModelEntry:
    where = f"{path}: models[{index}]"
    if not isinstance(raw, dict):
        raise ModelsConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    name = raw.get("registered_model_name")
    if not isinstance(name, str) or not name:
        raise ModelsConfigError(f"{where}: 'registered_model_name' is required")
    where = f"{where} ({name})"
    unknown = sorted(set(raw) - set(_ENTRY_KEYS))
    if unknown:
        known = "; ".join(f"{key}: {meaning}" for key, meaning in _ENTRY_KEYS.items())
        raise ModelsConfigError(f"{where}: unknown key(s) {unknown}. Known keys: {known}")
    dag_id = raw.get("dag_id") or "optimize_" + re.sub(r"[^A-Za-z0-9_]", "_", name)
    asset = raw.get("asset") or name
    for key, value in (("dag_id", dag_id), ("asset", asset)):
        if not isinstance(value, str) or not _ID.match(value):
            raise ModelsConfigError(f"{where}: {key} {value!r} must be letters, digits, _ . -")
    entry = ModelEntry(
        registered_model_name=name,
        dag_id=dag_id,
        asset=asset,
        schedule=_optional_str(where, raw, "schedule"),
        max_active_runs=_positive_int(where, raw.get("max_active_runs", 1)),
        aws_conn_id=_optional_str(where, raw, "aws_conn_id") or DEFAULT_S3_CONN_ID,
        mlflow_conn_id=_optional_str(where, raw, "mlflow_conn_id") or DEFAULT_MLFLOW_CONN_ID,
        tags=_tags(where, raw.get("tags") or []),
        description=_optional_str(where, raw, "description") or "",
        defaults=_defaults(where, name, raw.get("defaults") or {}),
        origin=where,
    )
    return entry


def _optional_str(where: str, raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ModelsConfigError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def _positive_int(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelsConfigError(f"{where}: max_active_runs must be an integer >= 1, got {value!r}")
    return value


def _tags(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(tag, str) and tag for tag in value):
        raise ModelsConfigError(f"{where}: tags must be a list of strings, got {value!r}")
    return tuple(value)


def _defaults(where: str, name: str, value: Any) -> dict[str, Any]:
    """The entry's form defaults, checked as `tfopt optimize` would check them."""
    if not isinstance(value, dict):
        raise ModelsConfigError(f"{where}: defaults must be a mapping of parameters")
    if "registered_model_name" in value:
        raise ModelsConfigError(
            f"{where}: defaults.registered_model_name: set registered_model_name on the entry"
        )
    unknown = sorted(set(value) - set(PIPELINE_PARAMS))
    if unknown:
        raise ModelsConfigError(
            f"{where}: unknown parameter(s) in defaults: {unknown}; known: {list(PIPELINE_PARAMS)}"
        )
    params = {**value, "registered_model_name": name}
    if params.get("model_uri") and params.get("eval_data_uri"):
        try:
            PipelineConfig.from_params(params)
        except UserInputError as exc:
            raise ModelsConfigError(f"{where}: defaults: {exc}") from exc
    return dict(value)


def _check_unique(path: Path, entries: list[ModelEntry]) -> None:
    for attribute in ("dag_id", "asset", "registered_model_name"):
        seen: dict[str, int] = {}
        for index, entry in enumerate(entries):
            value = getattr(entry, attribute)
            if value in seen:
                raise ModelsConfigError(
                    f"{path}: models[{index}] and models[{seen[value]}] share {attribute} {value!r}"
                )
            seen[value] = index
