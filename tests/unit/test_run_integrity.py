"""Run identity, private scratch, input lineage and the local lease lock."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from tasks import storage
from tasks.config import PipelineConfig, RunContext, run_key
from tasks.errors import TransientError, UserInputError

pytestmark = pytest.mark.unit


def test_run_ids_map_one_to_one_to_keys():
    a, b = "manual__2026-11-30T00:00:00+00:00", "manual__2026-11-30T00_00_00_00_00"
    assert run_key(a) != run_key(b)
    assert run_key(b) == b  # a safe id is its own key
    assert run_key("a/b") != run_key("a:b") != run_key("a_b")
    assert run_key(a) == run_key(a)  # stable across tasks and retries
    for key in (run_key(a), run_key("x/../y"), run_key("../..")):
        assert "/" not in key and key not in (".", "..") and storage.parse_s3_uri(f"s3://bkt/{key}")


@pytest.mark.parametrize("bad", ["", ".", "..", " "])
def test_dot_and_empty_run_ids_are_refused(bad):
    with pytest.raises(UserInputError, match="run id"):
        run_key(bad)


def test_scratch_is_private_and_removed(monkeypatch, tmp_path):
    monkeypatch.setenv("TFOPT_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("TFOPT_RUN_ROOT", str(tmp_path / "runs"))
    ctx = RunContext.create("r1", "demo")
    folder = ctx.local("fetched", "export")
    for level in (Path(ctx.work_dir), Path(ctx.work_dir).parent):
        assert stat.S_IMODE(level.stat().st_mode) == 0o700
    assert folder.is_relative_to(ctx.work_dir)
    ctx.cleanup()
    ctx.cleanup()  # safe to repeat, on any worker
    assert not Path(ctx.work_dir).exists()


def test_the_default_scratch_is_per_user_not_a_shared_tmp_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("TFOPT_WORK_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    ctx = RunContext.create("r1", "demo")
    assert Path(ctx.work_dir).parts[-3] == f"tfopt-{os.getuid()}"


def test_a_planted_symlink_in_scratch_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("TFOPT_WORK_DIR", str(tmp_path / "work"))
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "demo").symlink_to(target)
    with pytest.raises(UserInputError, match="symlink"):
        RunContext.create("r1", "demo").local("x")


def test_scratch_is_removed_when_a_stage_fails(monkeypatch, tmp_path):
    from tasks import pipeline, stages

    monkeypatch.setenv("TFOPT_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("TFOPT_RUN_ROOT", str(tmp_path / "runs"))
    seen = []

    def failing_export(config, ctx):
        seen.append(ctx.local("export-work"))
        raise TransientError("S3 went away")

    monkeypatch.setattr(stages, "export_stage", failing_export)
    with pytest.raises(TransientError):
        pipeline.optimize(_config(tmp_path), run_id="r1")
    assert seen and not seen[0].exists()


def _config(tmp_path: Path, model: str = "model-a") -> PipelineConfig:
    return PipelineConfig.from_params(
        {
            "model_uri": str(tmp_path / model),
            "eval_data_uri": str(tmp_path / "eval"),
            "calibration_data_uri": str(tmp_path / "cal"),
            "registered_model_name": "demo",
            "variants": "tf:fp32",
        }
    )


def test_a_run_id_reused_with_another_model_is_refused(monkeypatch, tmp_path):
    from tasks.results import StageResult, Status
    from tasks.stages import common as stages

    monkeypatch.setenv("TFOPT_RUN_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("TFOPT_WORK_DIR", str(tmp_path / "work"))
    ctx = RunContext.create("nightly", "demo")
    first = _config(tmp_path, "model-a")
    out = tmp_path / "out"
    out.mkdir()
    (out / "saved_model.pb").write_bytes(b"graph")
    result = StageResult("export", Status.OK, uris={"export": ctx.uri("export")})
    stages._publish(out, ctx.uri("export"), result, first)
    reused = stages._published(ctx.uri("export"), "export", config=first, ctx=ctx)
    assert reused == result
    # A different model under the same run id: a user error naming the run id, not a reuse.
    with pytest.raises(UserInputError, match=r"run id 'nightly'.*model_uri"):
        stages._published(ctx.uri("export"), "export", config=_config(tmp_path, "b"), ctx=ctx)


def test_a_whole_run_stage_naming_a_variant_is_reused(monkeypatch, tmp_path):
    from tasks.results import StageResult, Status
    from tasks.stages import common as stages

    monkeypatch.setenv("TFOPT_RUN_ROOT", str(tmp_path / "runs"))
    ctx = RunContext.create("r", "demo")
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("<html/>")
    result = StageResult("report", Status.OK, variant="tflite:fp32")  # the chosen variant
    stages._publish(out, ctx.uri("reports"), result, _config(tmp_path))
    assert stages._published(ctx.uri("reports"), "report", config=_config(tmp_path), ctx=ctx)


def test_a_stage_published_without_its_inputs_is_not_trusted(monkeypatch, tmp_path):
    from tasks.results import StageResult, Status
    from tasks.stages import common as stages

    monkeypatch.setenv("TFOPT_RUN_ROOT", str(tmp_path / "runs"))
    ctx = RunContext.create("old", "demo")
    out = tmp_path / "out"
    out.mkdir()
    (out / "f").write_bytes(b"x")
    storage.publish_tree(
        out, ctx.uri("export"), {"result": StageResult("export", Status.OK).to_dict()}
    )
    with pytest.raises(UserInputError, match="without a record of its inputs"):
        stages._published(ctx.uri("export"), "export", config=_config(tmp_path), ctx=ctx)


def test_a_forged_champion_variant_uri_is_not_followed(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from tasks.stages import champion as stages

    monkeypatch.setenv("TFOPT_RUN_ROOT", "s3://tfopt/runs")
    ctx = RunContext.create("r1", "demo")
    for forged in (
        "s3://attacker/payload",
        "s3://tfopt/runs/other-model/r0/variants/x/model",
        "s3://tfopt/runs/demo/../../secrets",
        "/etc",
    ):
        champion = SimpleNamespace(version="1", tags={"variant_uri": forged})
        with pytest.raises(UserInputError, match="not followed"):
            stages.variant_uri(ctx, champion)
    good = "s3://tfopt/runs/demo/r0/variants/tflite-fp32/model"
    champion = SimpleNamespace(version="1", tags={"variant_uri": good})
    assert stages.variant_uri(ctx, champion) == good


def test_local_lock_is_exclusive_and_released(tmp_path):
    from tasks.storage import lock

    uri = str(tmp_path / "m" / "_champion.lock")
    first = lock.acquire(uri, "run-a", lease_s=60, wait_s=1)
    started = time.monotonic()
    with pytest.raises(lock.LockTimeoutError, match="run-a"):
        lock.acquire(uri, "run-b", lease_s=60, wait_s=0.6)
    assert time.monotonic() - started >= 0.5
    lock.check_held(first)
    lock.release(first)
    second = lock.acquire(uri, "run-b", lease_s=60, wait_s=1)
    lock.release(second)
    assert issubclass(lock.LockTimeoutError, TransientError)


def test_an_expired_lease_is_not_held(tmp_path):
    from tasks.storage import lock

    lease = lock.acquire(str(tmp_path / "l"), "run-a", lease_s=1, wait_s=1)
    with pytest.raises(lock.LockLostError):
        lock.check_held(lease)
    lock.release(lease)


def test_killed_download_leftovers_are_cleaned_and_counted(tmp_path):
    from tasks.storage.cache import clean_leftovers

    dead = tmp_path / ".abc.tmp-999999999-1234abcd"
    live = tmp_path / f".abc.tmp-{os.getpid()}-1234abcd"
    entry = tmp_path / "abc"
    for folder in (dead, live, entry):
        folder.mkdir()
    assert clean_leftovers(tmp_path) == 1
    assert not dead.exists() and live.exists() and entry.exists()
