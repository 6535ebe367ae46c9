"""A worker SIGKILLed mid-convert and mid-register: the retry reuses, nothing is duplicated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import registry, stages, storage
from tests.faults.readers import half_published_trusted
from tests.faults.registry_support import (
    FAST,
    champion_of,
    duplicated,
    new_model_name,
    register,
    register_inputs,
    server,
    versions_of,
)

pytestmark = pytest.mark.faults
WORKER = Path(__file__).with_name("killed_worker.py")


def _run_killed(spec: dict, tmp_path: Path) -> int:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec, default=str))
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": repo, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, str(WORKER), str(spec_path)], env=env, timeout=600, check=False
    )
    return done.returncode


def test_worker_killed_mid_convert(prepared, local_stack, outcome, tmp_path):
    import dataclasses

    from tasks.config import RunContext

    config = dataclasses.replace(prepared.config, registered_model_name=new_model_name("conv"))
    spec = {
        "stage": "convert",
        "die": "mid-upload",
        "config": config.to_params(),
        "run_id": "killed",
        "variant": FAST,
        "export": prepared.export.to_dict(),
        "data": prepared.data.to_dict(),
    }
    assert _run_killed(spec, tmp_path) == -9
    outcome.faults = 1
    ctx = RunContext.create("killed", config.registered_model_name)
    uri = ctx.uri("variants", "tflite-fp32", "model")
    assert storage.list_keys(uri)  # the killed worker left a partial tree
    outcome.trusted = half_published_trusted(uri, tmp_path / "reader")
    assert outcome.trusted == 0
    result = stages.convert_stage(
        config, ctx, FAST, prepared.export, prepared.data
    )  # the retried task
    outcome.survived = int(result.status.value == "OK")
    manifest = storage.read_manifest(uri)
    assert manifest is not None and result.uris["model"] == uri
    assert sorted(storage.list_keys(uri)) == sorted([*manifest.files, storage.MANIFEST_NAME])
    fetched = storage.fetch_tree(uri, tmp_path / "fetched")
    assert storage.digest_tree(fetched) == manifest.files
    # The retry finds its output: a second call publishes nothing new.
    assert stages.convert_stage(config, ctx, FAST, prepared.export, prepared.data) == result


@pytest.mark.parametrize("die", ["after-parent-run-created", "after-version-registered"])
def test_worker_killed_mid_register(prepared, local_stack, outcome, tmp_path, die):
    name = new_model_name("kill")
    inputs = register_inputs(prepared, name, "killed", FAST)
    spec = {
        "stage": "register",
        "die": die,
        "config": inputs.config.to_params(),
        "run_id": "killed",
        "export": prepared.export.to_dict(),
        "data": prepared.data.to_dict(),
        "rows": inputs.rows,
        "selection": inputs.selection,
    }
    assert _run_killed(spec, tmp_path) == -9
    outcome.faults = 1
    result = register(prepared, inputs)  # the retried task
    outcome.survived = 1
    outcome.duplicated = duplicated(local_stack, name)
    versions = versions_of(local_stack, name, inputs.ctx.run_id)
    assert outcome.duplicated == 0 and len(versions) == 1
    assert champion_of(local_stack, name) == versions[0].version == result.metrics["model_version"]
    assert versions[0].tags[registry.COMPLETE_TAG] == "true"
    parent = server(local_stack).get_run(result.metrics["mlflow_run_id"])
    # The interrupted run was resumed: its parameters are all there, and it is marked complete.
    assert set(inputs.config.to_params()) <= set(parent.data.params)
    assert parent.data.tags[registry.COMPLETE_TAG] == "true"
