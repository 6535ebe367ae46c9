"""Hostile input on the real stack: zip bomb, huge shard, bucket-root model, run-id collision,
a forged champion tag, URIs outside the allowed prefixes."""

from __future__ import annotations

import dataclasses
import io
import uuid
import zipfile

import numpy as np
import pytest

from tasks import registry, stages, storage
from tasks.config import RunContext
from tasks.errors import UserInputError
from tests.faults.registry_support import (
    FAST,
    SLOW,
    champion_of,
    new_model_name,
    register,
    register_inputs,
    server,
)

pytestmark = pytest.mark.faults


def _s3_data(local_stack, tmp_path, name: str, shard: bytes) -> str:
    uri = f"s3://{local_stack.bucket}/faults/{uuid.uuid4().hex[:8]}/{name}"
    path = tmp_path / f"{name}.npz"
    path.write_bytes(shard)
    storage.put_file(path, f"{uri}/shard-00000.npz")
    return uri


def _bomb() -> bytes:
    npy = io.BytesIO()
    np.lib.format.write_array(npy, np.zeros((4096, 16, 16, 3), np.float32))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("image.npy", npy.getvalue())
    return out.getvalue()


@pytest.mark.parametrize("kind", ["zip-bomb", "huge-shard"])
def test_hostile_shards_are_refused_before_loading(
    prepared, local_stack, outcome, tmp_path, monkeypatch, kind
):
    if kind == "zip-bomb":
        monkeypatch.setenv("TFOPT_MAX_SHARD_DECOMPRESSED_MB", "4")
        shard, limit = _bomb(), "TFOPT_MAX_SHARD_DECOMPRESSED_MB"
    else:
        monkeypatch.setenv("TFOPT_MAX_SHARD_MB", "1")
        buffer = io.BytesIO()
        np.savez(buffer, image=np.ones((1024, 16, 16, 3), np.float32))
        shard, limit = buffer.getvalue(), "TFOPT_MAX_SHARD_MB"
    uri = _s3_data(local_stack, tmp_path, kind, shard)
    config = dataclasses.replace(
        prepared.config, registered_model_name=new_model_name("shard"), eval_data_uri=uri
    )
    outcome.faults = 1
    with pytest.raises(UserInputError, match=limit):
        stages.prepare_data_stage(
            config, RunContext.create("r", config.registered_model_name), prepared.export
        )
    outcome.survived = 1


@pytest.mark.parametrize("where", ["bucket root", "run tree"])
def test_a_model_uri_that_is_not_a_model_is_refused(prepared, local_stack, outcome, where):
    model_uri = f"s3://{local_stack.bucket}"
    if where == "run tree":
        model_uri = prepared.ctx.root_uri
    config = dataclasses.replace(
        prepared.config, registered_model_name=new_model_name("uri"), model_uri=model_uri
    )
    ctx = RunContext.create("r", config.registered_model_name)
    outcome.faults = 1
    with pytest.raises(UserInputError, match="whole bucket|run tree"):
        stages.export_stage(config, ctx)
    outcome.survived = 1
    assert not any(ctx.local().rglob("*.pb"))  # nothing was downloaded


def test_run_id_collision(prepared, local_stack, outcome, tiny_bundle, tmp_path):
    name = prepared.config.registered_model_name
    a, b = "manual__2026-11-30T00:00:00+00:00", "manual__2026-11-30T00_00_00_00_00"
    assert RunContext.create(a, name).root_uri != RunContext.create(b, name).root_uri
    other_model = tmp_path / "other" / "model.keras"
    other_model.parent.mkdir()
    other_model.write_bytes(tiny_bundle["model"].read_bytes())
    config = dataclasses.replace(prepared.config, model_uri=str(other_model))
    outcome.faults = 2
    # The prepared run id again, with another model: refused, naming the run id.
    with pytest.raises(UserInputError, match=r"run id 'prep'.*model_uri"):
        stages.export_stage(config, prepared.ctx)
    outcome.survived = 1
    for bad in (".", ".."):
        with pytest.raises(UserInputError, match="run id"):
            RunContext.create(bad, name)


def test_a_forged_champion_tag_is_not_followed(
    prepared, local_stack, outcome, monkeypatch, tmp_path
):
    name = new_model_name("forged")
    first = register(prepared, register_inputs(prepared, name, "first", SLOW))
    champion = first.metrics["model_version"]
    forged = f"s3://{local_stack.bucket}/elsewhere/payload"
    server(local_stack).set_model_version_tag(name, champion, "variant_uri", forged)
    outcome.faults = 1
    fetched = []
    real_fetch = storage.fetch_tree

    def spy(uri, *args, **kwargs):
        fetched.append(str(uri))
        return real_fetch(uri, *args, **kwargs)

    monkeypatch.setattr(storage, "fetch_tree", spy)
    second = register(prepared, register_inputs(prepared, name, "second", FAST))
    outcome.survived = 1
    assert forged not in fetched
    # Judged on its recorded figures instead: the faster variant still wins, by the policy.
    assert second.metrics["champion"] is True
    assert champion_of(local_stack, name) == second.metrics["model_version"]
    version = server(local_stack).get_model_version(name, second.metrics["model_version"])
    assert version.tags[registry.DECISION_TAG] == "champion"


def test_uris_outside_the_allowed_prefixes_are_refused(prepared, local_stack, outcome, monkeypatch):
    monkeypatch.setenv("TFOPT_ALLOWED_URI_PREFIXES", f"s3://{local_stack.bucket}/models")
    config = dataclasses.replace(prepared.config, registered_model_name=new_model_name("allow"))
    outcome.faults = 1
    with pytest.raises(UserInputError, match="TFOPT_ALLOWED_URI_PREFIXES"):
        stages.export_stage(config, RunContext.create("r", config.registered_model_name))
    outcome.survived = 1
