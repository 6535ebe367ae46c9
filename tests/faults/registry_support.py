"""Helpers of the registry fault cases: per-case inputs and direct reads of the MLflow server."""

from __future__ import annotations

import copy
import dataclasses
import uuid
from typing import Any

from tasks import stages, storage
from tasks.config import RunContext, VariantSpec

FAST = "tflite:fp32"
SLOW = "tf:fp32"


@dataclasses.dataclass(frozen=True)
class RegisterInputs:
    """What register_stage takes for one run of one registered model."""

    config: Any
    ctx: Any
    rows: list[dict[str, Any]]
    selection: dict[str, Any]


def new_model_name(case: str) -> str:
    return f"faults-{case}-{uuid.uuid4().hex[:8]}"


def register_inputs(prepared, name: str, run_id: str, chosen: str) -> RegisterInputs:
    """Inputs for run `run_id` of `name` choosing `chosen`; variants copied under its run root."""
    config = dataclasses.replace(prepared.config, registered_model_name=name)
    ctx = RunContext.create(run_id, name)
    rows = copy.deepcopy(prepared.rows)
    for row in rows:
        slug = VariantSpec.parse(row["variant"]).slug
        local = storage.fetch_tree(row["model_uri"], ctx.local("copy", slug))
        uri = ctx.uri("variants", slug, "model")
        storage.publish_tree(local, uri)
        row["model_uri"] = uri
    return RegisterInputs(config, ctx, rows, {**prepared.selection, "chosen": chosen})


def register(prepared, inputs: RegisterInputs):
    return stages.register_stage(
        inputs.config, inputs.ctx, prepared.export, prepared.data, inputs.rows, inputs.selection
    )


def server(local_stack):
    """A client of the MLflow server itself (never through a fault proxy)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=local_stack.mlflow_tracking_uri)


def versions_of(local_stack, name: str, run_key: str | None = None) -> list:
    from tasks.registry import RUN_ID_TAG

    versions = server(local_stack).search_model_versions(f"name = '{name}'")
    return [v for v in versions if run_key is None or (v.tags or {}).get(RUN_ID_TAG) == run_key]


def champion_of(local_stack, name: str) -> str | None:
    aliases = server(local_stack).get_registered_model(name).aliases or {}
    return str(aliases["champion"]) if "champion" in aliases else None


def duplicated(local_stack, name: str) -> int:
    """Versions beyond one per run id: must be 0."""
    from collections import Counter

    from tasks.registry import RUN_ID_TAG

    counts = Counter((v.tags or {}).get(RUN_ID_TAG) for v in versions_of(local_stack, name))
    return sum(n - 1 for n in counts.values())
