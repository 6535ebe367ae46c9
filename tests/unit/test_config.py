"""Run configuration: parameter parsing and validation, and where a run keeps its artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.config import PipelineConfig, RunContext, VariantSpec
from tasks.errors import UserInputError

pytestmark = pytest.mark.unit

REQUIRED = {
    "model_uri": "s3://tfopt/m/model.keras",
    "eval_data_uri": "s3://tfopt/m/eval",
    "calibration_data_uri": "s3://tfopt/m/calibration",
    "registered_model_name": "demo",
}


def test_params_round_trip_and_the_baseline_is_always_added():
    config = PipelineConfig.from_params(
        {**REQUIRED, "variants": "tflite:int8, TFLITE:FP16", "batch_sizes": "8,4,8"}
    )
    assert [v.name for v in config.variants] == ["tf:fp32", "tflite:fp16", "tflite:int8"]
    assert config.batch_sizes == (1, 4, 8)
    assert PipelineConfig.from_params(config.to_params()) == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"variants": "tflite:int4"}, "unknown variant 'tflite:int4'"),
        ({"accuracy_tolerance": -0.1}, "accuracy_tolerance must be between 0 and 1"),
        ({"latency_slo_ms": -3}, "latency_slo_ms must be > 0"),
        ({"batch_sizes": "0,8"}, "batch_sizes must be integers in 1..1024"),
        ({"batch_sizes": "one"}, "batch_sizes must be integers"),
        ({"objective": "fastest"}, "objective must be one of latency, throughput"),
        ({"registered_model_name": "bad name!"}, "registered_model_name must be"),
        ({"model_uri": ""}, "missing required parameter(s): model_uri"),
        ({"colour": "blue"}, "unknown parameter(s): colour"),
    ],
)
def test_bad_params_say_what_to_fix(change, message):
    with pytest.raises(UserInputError) as error:
        PipelineConfig.from_params({**REQUIRED, **change})
    assert message in str(error.value)


def test_variant_names_and_slugs():
    spec = VariantSpec.parse("tftrt:int8")
    assert (spec.backend, spec.precision, spec.slug) == ("tftrt", "int8", "tftrt-int8")
    assert VariantSpec.parse("tf:fp32").is_baseline


def test_a_run_lives_under_the_run_root(monkeypatch, tmp_path):
    monkeypatch.setenv("TFOPT_BUCKET", "models")
    monkeypatch.delenv("TFOPT_RUN_ROOT", raising=False)
    monkeypatch.setenv("TFOPT_WORK_DIR", str(tmp_path))
    run = RunContext.create("manual__2026-11-26T10:00:00+00:00", "demo")
    assert run.run_id.startswith("manual__2026-11-26T10_00_00_00_00~")
    assert run.uri("export") == f"s3://models/runs/demo/{run.run_id}/export"
    monkeypatch.setenv("TFOPT_RUN_ROOT", "s3://elsewhere/tfopt-runs/")
    moved = RunContext.create("r1", "demo")
    assert moved.uri("reports") == "s3://elsewhere/tfopt-runs/demo/r1/reports"
    assert moved.local("x").is_dir() and str(moved.local("x")).startswith(str(tmp_path))


def test_each_task_has_private_scratch_it_can_remove_alone(tmp_path, monkeypatch):
    import stat

    monkeypatch.setenv("TFOPT_WORK_DIR", str(tmp_path / "work"))
    run = RunContext.create("manual__2026-11-30T10:00:00+00:00", "demo")
    convert = run.for_task("convert_cpu.0.1")
    validate = run.for_task("validate_cpu.0.1")
    (convert.local("model") / "weights").write_bytes(b"x")
    kept = validate.local("eval") / "shard.npz"
    kept.write_bytes(b"y")
    assert stat.S_IMODE(Path(convert.work_dir).stat().st_mode) == 0o700
    assert Path(convert.work_dir).parent == Path(run.work_dir)

    convert.cleanup()

    assert not Path(convert.work_dir).exists()
    assert kept.read_bytes() == b"y"  # another task's scratch is untouched
