"""Models of the kinds users bring, through the whole chain against the real S3 and MLflow.

String (base64 JPEG) inputs decoded in-graph, unknown spatial dims, a regression head, a
per-pixel segmenter, multi-label scores, integer token ids, unlabelled data judged by fidelity;
and variants that throw at every stage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import model_zoo
import numpy as np
import pytest

from tasks import cli

pytestmark = pytest.mark.integration

VARIANTS = "tf:fp32,tflite:fp32,tflite:int8"


@pytest.fixture(scope="session")
def zoo(tmp_path_factory, tiny_bundle) -> dict[str, dict]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    root = tmp_path_factory.mktemp("zoo")
    images = np.load(tiny_bundle["eval"] / "shard-00000.npz")["image"]
    return {
        "b64_jpeg": model_zoo.base64_jpeg_classifier(root),
        "dynamic_spatial": model_zoo.dynamic_spatial(root),
        "regression": model_zoo.regression(root),
        "segmentation": model_zoo.segmentation(root),
        "multilabel": model_zoo.multilabel(root),
        "text_ids": model_zoo.text_ids(root),
        "unlabelled": model_zoo.unlabelled(root, tiny_bundle["model"], images),
    }


def _optimize(case: dict, name: str, capsys, *extra: str) -> tuple[int, dict | None, str]:
    argv = [
        "optimize",
        "--model-uri",
        str(case["model"]),
        "--eval-data-uri",
        str(case["eval"]),
        "--registered-model-name",
        name,
        "--variants",
        VARIANTS,
        "--batch-sizes",
        "1,4",
        "--json",
        *case["flags"],
        *extra,
    ]
    capsys.readouterr()
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def _by_variant(results: dict) -> dict[str, dict]:
    return {row["variant"]: row for row in results["variants"]}


@pytest.mark.parametrize(
    ("case", "metric"),
    [
        ("dynamic_spatial", "top1"),
        ("regression", "rmse"),
        ("segmentation", "miou"),
        ("multilabel", "multilabel_map"),
        ("text_ids", "top1"),
        ("unlabelled", "fidelity"),
    ],
)
def test_every_kind_of_model_completes_and_registers(
    local_stack, zoo, case, metric, model_name, work_dir, capsys
):
    from tasks import storage

    code, results, err = _optimize(zoo[case], model_name, capsys)

    assert code == 0, err[-3000:]
    rows = _by_variant(results)
    assert rows["tf:fp32"]["metric_name"] == metric
    for row in rows.values():
        assert row["verdict"] in ("chosen", "eligible", "rejected", "failed", "skipped")
        assert row["verdict_reason"], row
        if row["status"] != "OK":
            assert row["reason"].split(":")[0] in ("convert", "validate", "benchmark"), row
    for variant in ("tflite:fp32", "tflite:int8"):
        assert rows[variant]["status"] == "OK", rows[variant]["reason"]
    assert results["registration"]["metrics"]["model_version"] == "1"
    published = storage.get_json(f"{results['report']['uris']['report_uri']}/results.json")
    assert published["run"]["metric"]["name"] == metric
    assert published["run"]["calibration"]["source"] == "held-out eval slice"
    if metric in ("miou", "multilabel_map"):  # chosen from the labels' form, scored in [0, 1]
        assert 0.0 < rows["tf:fp32"]["metric_value"] <= 1.0
        assert rows["tflite:fp32"]["metric_value"] == pytest.approx(
            rows["tf:fp32"]["metric_value"], abs=1e-3
        )
    if case == "dynamic_spatial":
        signature = storage.get_json(f"{results['root_uri']}/data/signature.json")
        (tensor,) = signature["inputs"]
        assert tensor["shape"] == [None, 16, 16, 3]
        assert tensor["declared_shape"] == [None, None, None, 3]
    if case == "text_ids":
        shard = zoo[case]["eval"] / "shard-00000.npz"
        predicted = _predict_in_fresh_process(
            model_name, f"{{'token_ids': np.load({str(shard)!r})['token_ids']}}"
        )
        assert len(predicted) == len(np.load(shard)["labels"]) and set(predicted) <= {0, 1}


def _predict_in_fresh_process(name: str, feeds_expr: str) -> list:
    script = (
        "import json, numpy as np, mlflow\n"
        f"model = mlflow.pyfunc.load_model('models:/{name}@champion')\n"
        f"out = model.predict({feeds_expr})\n"
        "out = out if not isinstance(out, dict) else next(iter(out.values()))\n"
        "print(json.dumps(np.asarray(out).argmax(axis=-1).tolist()))\n"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=300,
        check=False,
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    return json.loads(fresh.stdout.strip().splitlines()[-1])


def test_string_input_model_keeps_its_decoding_in_tensorflow_and_serves_strings(
    local_stack, zoo, model_name, work_dir, capsys
):
    case = zoo["b64_jpeg"]
    code, results, err = _optimize(case, model_name, capsys)

    assert code == 0, err[-3000:]
    rows = _by_variant(results)
    for variant in ("tflite:fp32", "tflite:int8"):
        row = rows[variant]
        assert row["status"] == "OK", row["reason"]
        assert row["split"] and "DecodeJpeg" in " ".join(row["split"]["tf_ops"]), row["split"]
        assert 0 < row["split"]["prefix_share"] <= 1
    import tensorflow as tf

    shard = case["eval"] / "shard-00000.npz"
    strings = np.load(shard)["image_b64"]
    serve = tf.saved_model.load(str(case["model"])).signatures["serving_default"]
    baseline = serve(image_b64=tf.constant(strings))["probabilities"].numpy().argmax(axis=-1)
    predicted = _predict_in_fresh_process(
        model_name, f"{{'image_b64': np.load({str(shard)!r})['image_b64']}}"
    )
    assert np.mean(np.asarray(predicted) == baseline) >= 0.9


def _config(bundle, name: str, variants: str):
    from tasks.config import PipelineConfig

    return PipelineConfig.from_params(
        {
            "model_uri": str(bundle["model"]),
            "eval_data_uri": str(bundle["eval"]),
            "calibration_data_uri": str(bundle["calibration"]),
            "registered_model_name": name,
            "variants": variants,
            "batch_sizes": "1",
        }
    )


def test_variants_that_throw_in_convert_load_or_validate_are_failed_and_the_run_goes_on(
    local_stack, tiny_bundle, model_name, work_dir, monkeypatch
):
    from tasks.backends.tflite import TfliteBackend
    from tasks.pipeline import optimize

    real_convert, real_load = TfliteBackend.convert, TfliteBackend.load

    def convert(self, request):
        if request.precision == "fp32":
            raise RuntimeError("injected convert fault")
        return real_convert(self, request)

    def load(self, artifact_dir, *args):
        if "tflite-fp16" in str(artifact_dir):
            raise RuntimeError("injected load fault")
        runner = real_load(self, artifact_dir, *args)
        return _throwing(runner, "validate") if "tflite-int8" in str(artifact_dir) else runner

    monkeypatch.setattr(TfliteBackend, "convert", convert)
    monkeypatch.setattr(TfliteBackend, "load", load)
    results = optimize(
        _config(tiny_bundle, model_name, "tf:fp32,tflite:fp32,tflite:fp16,tflite:int8")
    )

    rows = _by_variant(results)
    assert {v: (r["status"], r["verdict"], r["reason"]) for v, r in rows.items()} == {
        "tf:fp32": ("OK", "chosen", ""),
        "tflite:fp32": ("FAILED", "failed", "convert: RuntimeError: injected convert fault"),
        "tflite:fp16": ("FAILED", "failed", "validate: RuntimeError: injected load fault"),
        "tflite:int8": ("FAILED", "failed", "validate: RuntimeError: injected validate fault"),
    }
    assert results["registration"]["metrics"]["model_version"] == "1"


def test_a_variant_that_throws_in_benchmark_is_failed_and_the_run_goes_on(
    local_stack, tiny_bundle, model_name, work_dir, monkeypatch
):
    from tasks import benchmark_rounds
    from tasks.pipeline import optimize

    real = benchmark_rounds._round_calls

    def round_calls(runner, *args, **kwargs):  # a runner that breaks in the timed rounds
        if "Tflite" in type(runner).__name__:
            raise RuntimeError("injected benchmark fault")
        return real(runner, *args, **kwargs)

    monkeypatch.setattr(benchmark_rounds, "_round_calls", round_calls)
    results = optimize(_config(tiny_bundle, model_name, "tf:fp32,tflite:fp32,tflite:fp16"))

    rows = _by_variant(results)
    for variant in ("tflite:fp32", "tflite:fp16"):
        assert (rows[variant]["status"], rows[variant]["verdict"]) == ("FAILED", "failed")
        assert rows[variant]["reason"] == "benchmark: RuntimeError: injected benchmark fault"
    assert rows["tf:fp32"]["status"] == "OK" and rows["tf:fp32"]["p50_ms"] > 0
    assert rows["tf:fp32"]["rounds_kept"] >= 1, "the rounds ran again without the broken ones"
    assert results["selection"]["chosen"] == "tf:fp32"
    assert results["registration"]["metrics"]["model_version"] == "1"


def _throwing(runner, stage: str):
    def run(feeds):
        raise RuntimeError(f"injected {stage} fault")

    run.input_names, run.output_names = runner.input_names, runner.output_names
    return run


@pytest.mark.slow
def test_a_detector_taking_jpeg_bytes_is_judged_by_map(
    local_stack, model_name, work_dir, capsys, tmp_path
):
    from tasks.demo.publish import publish_demo

    bundle = publish_demo(str(tmp_path / "detector"), tiny=True, seed=0, task="detection")
    case = {
        "model": bundle["model_uri"],
        "eval": bundle["eval_data_uri"],
        "flags": ["--calibration-data-uri", bundle["calibration_data_uri"], "--metric", "map50"],
    }
    code, results, err = _optimize(case, model_name, capsys)

    assert code == 0, err[-3000:]
    rows = _by_variant(results)
    for row in rows.values():
        assert row["metric_name"] == "map50" or row["status"] != "OK", row
    assert rows["tflite:int8"]["status"] == "OK", rows["tflite:int8"]["reason"]
    assert "DecodeJpeg" in rows["tflite:int8"]["split"]["tf_ops"]
    gate_passed = rows["tflite:int8"]["validation_passed"]
    assert (rows["tflite:int8"]["verdict"] != "rejected") is gate_passed
    assert results["registration"]["metrics"]["model_version"] == "1"
