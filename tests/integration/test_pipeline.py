"""The whole chain on a tiny model against the real S3 (SeaweedFS) and MLflow servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks import cli, storage

pytestmark = pytest.mark.integration

VARIANTS = "tf:fp32,tflite:fp32,tflite:fp16,tflite:int8,tftrt:fp16"


def _optimize(bundle, name, capsys, *extra: str, model=None, eval_data=None, calibration=None):
    argv = [
        "optimize",
        "--model-uri",
        str(model or bundle["model"]),
        "--eval-data-uri",
        str(eval_data or bundle["eval"]),
        "--calibration-data-uri",
        str(calibration or bundle["calibration"]),
        "--registered-model-name",
        name,
        "--batch-sizes",
        "1,4",
        "--json",
        *extra,
    ]
    if "--variants" not in extra:
        argv += ["--variants", VARIANTS]
    capsys.readouterr()
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def _versions(name: str) -> list:
    from mlflow.tracking import MlflowClient

    return MlflowClient().search_model_versions(f"name = '{name}'")


def _published_manifests(name: str) -> list[str]:
    root = storage.join_uri(storage.default_run_root(), name)
    return [key for key in storage.list_keys(root) if key.endswith(storage.MANIFEST_NAME)]


def _variant_predictions(results: dict, variant: str, images: np.ndarray, tmp: Path):
    from tasks.backends import get_backend
    from tasks.signature import Signature

    row = next(r for r in results["variants"] if r["variant"] == variant)
    export = storage.fetch_tree(f"{results['root_uri']}/export", tmp / "export")
    model = storage.fetch_tree(row["model_uri"], tmp / "variant")
    runner = get_backend(variant.split(":")[0]).load(Path(model), Signature.read(export), 2)
    return next(iter(runner({"image": images}).values())).argmax(axis=1)


def test_optimize_registers_a_champion_that_predicts_like_its_variant(
    local_stack, tiny_bundle, model_name, work_dir, capsys, tmp_path
):
    from mlflow.tracking import MlflowClient

    code, results, err = _optimize(tiny_bundle, model_name, capsys)

    assert code == 0, err
    statuses = {row["variant"]: row["status"] for row in results["variants"]}
    assert statuses == {
        "tf:fp32": "OK",
        "tflite:fp32": "OK",
        "tflite:fp16": "OK",
        "tflite:int8": "OK",
        "tftrt:fp16": "SKIPPED",
    }
    skipped = next(r for r in results["variants"] if r["variant"] == "tftrt:fp16")
    assert "TensorRT" in skipped["reason"]
    assert "[ 1/" in err and "export" in err, "progress lines are shown on stderr"

    chosen = results["selection"]["chosen"]
    version = results["registration"]["metrics"]["model_version"]
    champion = MlflowClient().get_model_version_by_alias(model_name, "champion")
    assert champion.version == version
    assert champion.tags["variant"] == chosen
    for tag in ("speedup_vs_baseline", "source_model_digest", "eval_data_digest", "hardware_class"):
        assert champion.tags[tag] not in ("", "None")
    assert storage.read_manifest(results["report"]["uris"]["report_uri"]) is not None
    capsys.readouterr()
    assert cli.main(["show", "--registered-model-name", model_name, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["format_version"] == 2
    assert shown["selection"]["chosen"] == chosen and shown["run"]["run_id"] == results["run_id"]
    verdicts = {row["variant"]: row["verdict"] for row in shown["variants"]}
    assert verdicts[chosen] == "chosen" and verdicts["tftrt:fp16"] == "skipped"
    assert all(row["verdict_reason"] for row in shown["variants"])

    images = np.load(tiny_bundle["eval"] / "shard-00000.npz")["image"]
    expected = _variant_predictions(results, chosen, images, tmp_path)
    script = (
        "import json, sys, numpy as np, mlflow\n"
        f"model = mlflow.pyfunc.load_model('models:/{model_name}@champion')\n"
        f"images = np.load({str(tiny_bundle['eval'] / 'shard-00000.npz')!r})['image']\n"
        "print(json.dumps(model.predict({'image': images}).argmax(axis=1).tolist()))\n"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=300,
        check=False,
    )
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert json.loads(fresh.stdout.strip().splitlines()[-1]) == expected.tolist()

    # `make bench` times a published variant with tfopt's harness, outside the pipeline
    from bench.harness import measure_variant

    row = next(r for r in results["variants"] if r["variant"] == "tflite:fp32")
    measured = measure_variant(
        "tflite",
        Path(storage.fetch_tree(row["model_uri"], tmp_path / "bench-variant")),
        Path(storage.fetch_tree(f"{results['root_uri']}/export", tmp_path / "bench-export")),
        str(tiny_bundle["eval"]),
        1,
    )
    assert measured["p50_ms"] > 0 and measured["iterations"] >= 300, measured


def test_second_run_adds_a_version_and_a_retry_adds_none(
    local_stack, tiny_bundle, model_name, work_dir, capsys
):
    from mlflow.tracking import MlflowClient

    variants = ("--variants", "tf:fp32,tflite:fp32")
    code1, first, err1 = _optimize(tiny_bundle, model_name, capsys, *variants)
    code2, second, err2 = _optimize(tiny_bundle, model_name, capsys, *variants)
    assert (code1, code2) == (0, 0), err1 + err2

    v1 = first["registration"]["metrics"]["model_version"]
    v2 = second["registration"]["metrics"]["model_version"]
    assert (v1, v2) == ("1", "2")
    client = MlflowClient()
    assert client.get_model_version_by_alias(model_name, "challenger").version == "2"
    promoted = second["registration"]["metrics"]["champion"]
    expected_champion = "2" if promoted else "1"
    assert client.get_model_version_by_alias(model_name, "champion").version == expected_champion
    assert second["registration"]["metrics"]["champion_reason"]
    assert all(row["champion_in_rounds"] is None for row in first["variants"])
    for row in second["variants"]:  # v1, the champion, ran in the same interleaved rounds
        assert row["champion_in_rounds"]["version"] == "1", row
        assert row["champion_in_rounds"]["measured"] == "in the same rounds"
        assert row["champion_in_rounds"]["p50_ms"] > 0

    code3, retried, err3 = _optimize(
        tiny_bundle, model_name, capsys, *variants, "--run-id", second["run_id"]
    )
    assert code3 == 0, err3
    assert retried["registration"]["metrics"]["model_version"] == "2"
    assert sorted(v.version for v in _versions(model_name)) == ["1", "2"]


def _shards(tmp: Path, name: str, **arrays) -> Path:
    folder = tmp / name
    folder.mkdir()
    np.savez(folder / "shard-00000.npz", **arrays)
    return folder


def _bad_inputs(bundle, tmp: Path) -> dict[str, tuple[dict, tuple, str]]:
    shard = np.load(bundle["eval"] / "shard-00000.npz")
    images, labels = shard["image"], shard["labels"]
    corrupt_sm = tmp / "corrupt_saved_model"
    corrupt_sm.mkdir()
    (corrupt_sm / "saved_model.pb").write_bytes(b"\x08\x01garbage" * 10)
    corrupt_keras = tmp / "corrupt.keras"
    corrupt_keras.write_bytes(b"PK\x03\x04 not really a zip")
    with_nan = images.copy()
    with_nan[0, 0, 0, 0] = np.nan
    return {
        "missing s3 uri": ({"model": "s3://tfopt/no/such/model.keras"}, (), "does not exist"),
        "missing local path": ({"model": tmp / "nowhere"}, (), "does not exist"),
        "corrupt SavedModel": ({"model": corrupt_sm}, (), "cannot load the SavedModel"),
        "corrupt keras file": ({"model": corrupt_keras}, (), "cannot load the Keras model"),
        "wrong input name": (
            {"eval_data": _shards(tmp, "names", pixels=images, labels=labels)},
            (),
            "do not fit the signature",
        ),
        "wrong shape": (
            {"eval_data": _shards(tmp, "shape", image=images[:, :8, :8], labels=labels)},
            (),
            "per-sample shape",
        ),
        "wrong dtype": (
            {"calibration": _shards(tmp, "dtype", image=images.astype(np.float64))},
            (),
            "dtype float64",
        ),
        "top1 asked, eval without labels": (
            {"eval_data": _shards(tmp, "nolabels", image=images)},
            ("--metric", "top1"),
            "labels",
        ),
        "NaN in eval data": (
            {"eval_data": _shards(tmp, "nan", image=with_nan, labels=labels)},
            (),
            "NaN",
        ),
        "unknown variant": ({}, ("--variants", "tflite:int4"), "unknown variant"),
        "negative tolerance": ({}, ("--accuracy-tolerance", "-0.1"), "accuracy_tolerance"),
    }


def test_bad_input_exits_2_with_its_message_and_registers_nothing(
    local_stack, tiny_bundle, work_dir, capsys, tmp_path
):
    failures = []
    for label, (inputs, flags, message) in _bad_inputs(tiny_bundle, tmp_path).items():
        name = f"bad-{abs(hash(label)) % 10**8}"
        code, _, err = _optimize(tiny_bundle, name, capsys, *flags, **inputs)
        published = [
            m for m in _published_manifests(name) if not m.endswith("export/_MANIFEST.json")
        ]
        if code != 2 or message not in err or "Traceback" in err or _versions(name) or published:
            failures.append(f"{label}: exit {code}, published {published}, stderr: {err[-400:]}")
    assert not failures, "\n".join(failures)


def test_a_variant_with_nan_or_an_accuracy_drop_is_rejected_and_the_others_go_on(
    local_stack, tiny_bundle, model_name, work_dir, monkeypatch
):
    from tasks.backends.tflite import TfliteBackend
    from tasks.config import PipelineConfig
    from tasks.pipeline import optimize

    real_load = TfliteBackend.load

    def sabotaged_load(self, artifact_dir, signature, num_threads):
        runner = real_load(self, artifact_dir, signature, num_threads)
        if "tflite-fp16" in str(artifact_dir):
            return lambda feeds: {k: np.full_like(v, np.nan) for k, v in runner(feeds).items()}
        if "tflite-int8" in str(artifact_dir):
            return lambda feeds: {k: np.roll(v, 1, axis=-1) for k, v in runner(feeds).items()}
        return runner

    monkeypatch.setattr(TfliteBackend, "load", sabotaged_load)
    config = PipelineConfig.from_params(
        {
            "model_uri": str(tiny_bundle["model"]),
            "eval_data_uri": str(tiny_bundle["eval"]),
            "calibration_data_uri": str(tiny_bundle["calibration"]),
            "registered_model_name": model_name,
            "variants": "tf:fp32,tflite:fp32,tflite:fp16,tflite:int8",
            "batch_sizes": "1",
        }
    )
    results = optimize(config)

    rejections = results["selection"]["rejections"]
    assert "NaN" in rejections["tflite:fp16"]
    assert "dropped" in rejections["tflite:int8"] and "points" in rejections["tflite:int8"]
    assert results["selection"]["chosen"] in ("tf:fp32", "tflite:fp32")
    assert results["registration"]["metrics"]["model_version"] == "1"
