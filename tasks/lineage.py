"""What a published stage was made from: its inputs' digest, checked before the stage is reused."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tasks.config import PipelineConfig
from tasks.errors import UserInputError

_DATA = ("model_uri", "eval_data_uri", "calibration_data_uri")
_METRIC = ("metric", "metric_output")
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "export": ("model_uri",),
    "data": (*_DATA, *_METRIC),
    "convert": (*_DATA, "batch_sizes"),
    "validate": (*_DATA, *_METRIC, "accuracy_tolerance"),
    "benchmark": (*_DATA, "batch_sizes", "num_threads"),
}
"""The run parameters each stage's output depends on; a stage not listed depends on all."""
HOLDOUT_DEPENDENT = ("data", "convert", "validate")
PER_VARIANT = ("convert", "validate", "benchmark")
"""Stages published once per variant: the variant is one of their inputs."""
"""Stages whose inputs change when eval samples are held out for INT8 calibration."""


def stage_inputs(config: PipelineConfig, stage: str, variant: str = "") -> dict[str, Any]:
    """The parameters `stage` (of `variant`) is made from, and their sha256."""
    params = config.to_params()
    names = STAGE_INPUTS.get(stage, tuple(sorted(params)))
    used = {name: params.get(name) for name in names}
    if stage in HOLDOUT_DEPENDENT:
        used["needs_calibration"] = bool(getattr(config, "needs_calibration", False))
    if variant and stage in PER_VARIANT:
        used["variant"] = variant
    text = json.dumps(used, sort_keys=True, default=str)
    return {"params": used, "digest": hashlib.sha256(text.encode()).hexdigest()}


def check_reuse(recorded: Any, current: dict[str, Any], *, run_id: str, uri: str) -> None:
    """Refuse to reuse a published stage made from other inputs than this run's.

    Raises:
        UserInputError: the stage at `uri` records no inputs or different ones; names the run
            id and the parameters that differ.
    """
    if not isinstance(recorded, dict) or "digest" not in recorded:
        raise UserInputError(
            f"run id {run_id!r}: {uri} is published without a record of its inputs, so it "
            "cannot be checked for reuse; start a new run with another --run-id"
        )
    if recorded["digest"] == current["digest"]:
        return
    before = recorded.get("params") or {}
    changed = sorted(
        name
        for name in set(before) | set(current["params"])
        if before.get(name) != current["params"].get(name)
    )
    details = "; ".join(
        f"{name}: published {before.get(name)!r}, now {current['params'].get(name)!r}"
        for name in changed
    )
    raise UserInputError(
        f"run id {run_id!r} was already used with other inputs ({details or 'digest differs'}): "
        f"{uri} will not be reused for them. Use a new --run-id for a different model, data or "
        "configuration"
    )
