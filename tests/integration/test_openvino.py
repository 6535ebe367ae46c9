"""The OpenVINO backend on the tiny Keras model, with the real OpenVINO runtime, NNCF and MLflow."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from tasks.backends import (
    AccuracyValidation,
    BackendUnavailableError,
    ConversionRequest,
    openvino,
    openvino_runner,
)
from tasks.backends import get_backend as _get_backend
from tasks.backends.base import ConverterError
from tasks.signature import Signature, TensorInfo

pytestmark = pytest.mark.integration

INPUT = "image"
THREADS = 2


def _shard(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as shard:
        return {name: shard[name] for name in shard.files}


@pytest.fixture(scope="module")
def tiny(tiny_bundle, tmp_path_factory):
    """The tiny model exported as tfopt exports it, its reference outputs and its data."""
    import tensorflow as tf

    from tasks.export import export_model

    export_dir, signature, _ = export_model(
        str(tiny_bundle["model"]), tmp_path_factory.mktemp("ov-export")
    )
    saved_model = export_dir / "saved_model"
    evaluation = _shard(tiny_bundle["eval"] / "shard-00000.npz")
    calibration = _shard(tiny_bundle["calibration"] / "shard-00000.npz")[INPUT]
    function = tf.saved_model.load(str(saved_model)).signatures[signature.key]
    (output,) = signature.output_names
    expected = function(**{INPUT: tf.constant(evaluation[INPUT])})[output].numpy()
    return {
        "saved_model": saved_model,
        "signature": signature,
        "images": evaluation[INPUT],
        "labels": evaluation["labels"],
        "expected": expected,
        "output": output,
        "calibration_dir": tiny_bundle["calibration"],
        "calibration": lambda: ({INPUT: calibration[i : i + 1]} for i in range(len(calibration))),
    }


def _request(tiny, out_dir: Path, precision: str, **extra) -> ConversionRequest:
    return ConversionRequest(
        saved_model_dir=tiny["saved_model"],
        signature=tiny["signature"],
        precision=precision,
        output_dir=out_dir,
        calibration_data=tiny["calibration"],
        **extra,
    )


def _outputs(runner, tiny, batch: int) -> np.ndarray:
    images = tiny["images"]
    chunks = [
        runner({INPUT: images[start : start + batch]})[tiny["output"]]
        for start in range(0, len(images), batch)
    ]
    return np.concatenate(chunks)


def _agreement(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.mean(got.argmax(axis=1) == expected.argmax(axis=1)))


def test_fp32_matches_tensorflow_with_f32_pinned(tiny, tmp_path):
    backend = _get_backend("openvino")
    assert backend.available() is None
    conversion = backend.convert(_request(tiny, tmp_path / "fp32", "fp32"))
    summary = conversion.summary
    assert (conversion.artifact_dir / openvino.MODEL_FILE).is_file()
    assert (conversion.artifact_dir / openvino.REPRODUCE_FILE).is_file()
    assert summary["inference_precision_hint"] == "f32" and summary["num_ops"] > 0
    assert summary["size_bytes"] > 0 and summary["conversion_seconds"] > 0
    with backend.load(conversion.artifact_dir, tiny["signature"], THREADS) as runner:
        compiled = runner.compiled_model
        assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
        assert compiled.get_property("INFERENCE_NUM_THREADS") == THREADS
        assert str(compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"
        assert compiled.get_property("NUM_STREAMS") == 1
        for batch in (1, 4, 7):  # dynamic batch, including one that does not divide the data
            np.testing.assert_allclose(_outputs(runner, tiny, batch), tiny["expected"], atol=1e-5)
        # the first shapes met were compiled static, with the same settings; the rest ran on
        # the dynamic model instead of evicting one
        static = runner.static_models
        assert len(static) == openvino_runner.MAX_STATIC_SHAPES
        assert [shapes[0][0] for shapes in static][:2] == [1, 4]
        for shapes, model in static.items():
            assert [list(p.get_partial_shape().to_shape()) for p in model.inputs] == [
                list(shape) for shape in shapes
            ]
            assert model.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
            assert model.get_property("INFERENCE_NUM_THREADS") == THREADS


def test_bf16_runs_only_where_the_cpu_has_bf16(tiny, tmp_path):
    backend = _get_backend("openvino")
    reason = openvino.bf16_unavailable_reason()
    request = _request(tiny, tmp_path / "bf16", "bf16")
    if reason is not None:
        with pytest.raises(BackendUnavailableError) as raised:
            backend.convert(request)
        assert raised.value.reason == reason and "BF16" in reason
        return
    conversion = backend.convert(request)
    with backend.load(conversion.artifact_dir, tiny["signature"], THREADS) as runner:
        hint = runner.compiled_model.get_property("INFERENCE_PRECISION_HINT")
        assert hint.get_type_name() == "bf16"
        got = _outputs(runner, tiny, 8)
    np.testing.assert_allclose(got, tiny["expected"], atol=3e-2)
    assert _agreement(got, tiny["expected"]) >= 0.95


def test_int8_is_quantized_close_and_keeps_f32_for_the_rest(tiny, tmp_path):
    backend = _get_backend("openvino")
    conversion = backend.convert(_request(tiny, tmp_path / "int8", "int8"))
    nncf = conversion.summary["nncf"]
    assert nncf["method"] == "quantize"
    assert nncf["calibration_samples"] == 100
    assert nncf["fake_quantize_ops"] > 0 and nncf["weighted_ops"] == 2
    assert nncf["kept_fp32"] == []
    with backend.load(conversion.artifact_dir, tiny["signature"], THREADS) as runner:
        hint = runner.compiled_model.get_property("INFERENCE_PRECISION_HINT")
        assert hint.get_type_name() == "f32"
        got = _outputs(runner, tiny, 4)
    assert not np.allclose(got, tiny["expected"], atol=1e-6), "int8 should differ from fp32"
    assert np.max(np.abs(got - tiny["expected"])) < 0.1
    assert _agreement(got, tiny["expected"]) >= 0.9


def test_accuracy_control_keeps_layers_in_fp32_to_meet_the_tolerance(tiny, tmp_path):
    """With tfopt's metric (here: mean absolute error vs the baseline, lower is better), NNCF
    reverts quantized layers to FP32 until INT8 meets the tolerance, at most a quarter of them:
    one of the tiny model's two."""
    samples = [{INPUT: tiny["images"][i : i + 1]} for i in range(40)]
    calls = []

    def mean_abs_error(runner, indices):
        indices = range(len(samples)) if indices is None else list(indices)
        calls.append(len(indices))
        got = np.concatenate([runner(samples[i])[tiny["output"]] for i in indices])
        return float(np.mean(np.abs(got - tiny["expected"][list(indices)])))

    def convert(name, tolerance):
        request = _request(
            tiny,
            tmp_path / name,
            "int8",
            validation=AccuracyValidation(samples, mean_abs_error, higher_is_better=False),
            accuracy_tolerance=tolerance,
        )
        conversion = _get_backend("openvino").convert(request)
        with _get_backend("openvino").load(
            conversion.artifact_dir, tiny["signature"], THREADS
        ) as runner:
            return conversion.summary["nncf"], mean_abs_error(runner, None)

    # Out of reach: the one revert allowed is spent, and the best model so far comes back.
    nncf, capped = convert("int8-capped", 1e-5)
    assert nncf["method"] == "quantize_with_accuracy_control"
    assert nncf["validation_samples"] == 40 and nncf["max_drop"] == 1e-5
    assert nncf["max_reverts"] == 1 and nncf["budget_s"] == openvino.REPAIR_BUDGET_S
    plain = nncf["metric_int8_plain"]
    assert nncf["metric_fp32"] < 1e-5 < plain
    assert len(nncf["kept_fp32"]) == 1
    assert max(calls) == 40 and 1 in calls  # full-slice scores and per-sample ranking
    assert nncf["metric_fp32"] + 1e-5 < capped < plain

    # Within reach of one revert: repaired to the tolerance.
    tolerance = (capped + plain) / 2
    nncf, repaired = convert("int8-repaired", tolerance)
    assert nncf["kept_fp32"], "accuracy control should have kept a layer in FP32"
    assert repaired <= nncf["metric_fp32"] + tolerance < plain


def test_accuracy_control_out_of_time_fails_the_variant_with_what_to_do(
    tiny, tmp_path, monkeypatch
):
    """NNCF's restorer has no time bound of its own; tfopt's budget stops it with a reason."""
    samples = [{INPUT: tiny["images"][i : i + 1]} for i in range(8)]

    def agreement(runner, indices):
        indices = range(len(samples)) if indices is None else list(indices)
        got = np.concatenate([runner(samples[i])[tiny["output"]] for i in indices])
        return _agreement(got, tiny["expected"][list(indices)])

    monkeypatch.setattr(openvino, "REPAIR_BUDGET_S", 0.0)
    request = _request(
        tiny,
        tmp_path / "int8-late",
        "int8",
        validation=AccuracyValidation(samples, agreement),
        accuracy_tolerance=0.0,
    )
    with pytest.raises(ConverterError) as raised:
        _get_backend("openvino").convert(request)
    message = str(raised.value)
    assert message.startswith("openvino:int8: NNCF's accuracy control could not bring INT8")
    assert re.search(r"tolerance in \d+ s \(0 scorings of candidate models\)\.", message)
    assert "openvino:fp32 or tflite:dynamic" in message and "accuracy_tolerance" in message


def test_accuracy_control_reverts_at_most_a_quarter_of_the_weighted_layers():
    assert openvino.max_reverted_layers(0) == 1
    assert openvino.max_reverted_layers(2) == 1
    assert openvino.max_reverted_layers(53) == 13


def test_a_relative_tolerance_scales_with_the_fp32_error(tiny, tmp_path):
    """Error metrics are gated on a relative rise: NNCF's max_drop is tolerance x FP32 error."""
    samples = [{INPUT: tiny["images"][i : i + 1]} for i in range(40)]
    truth = tiny["labels"][:40].astype(np.float32)

    def probability_error(runner, indices):
        indices = list(range(len(samples)) if indices is None else indices)
        got = np.concatenate([runner(samples[i])[tiny["output"]][:, 1] for i in indices])
        return float(np.mean(np.abs(got - truth[indices])))

    validation = AccuracyValidation(
        samples, probability_error, higher_is_better=False, relative=True
    )
    request = _request(
        tiny, tmp_path / "int8-rel", "int8", validation=validation, accuracy_tolerance=0.5
    )
    nncf = _get_backend("openvino").convert(request).summary["nncf"]
    assert nncf["method"] == "quantize_with_accuracy_control"
    assert nncf["metric_fp32"] > 0.01
    assert nncf["max_drop"] == pytest.approx(0.5 * nncf["metric_fp32"], rel=1e-6)
    assert nncf["metric_int8_plain"] <= 1.5 * nncf["metric_fp32"]
    assert nncf["kept_fp32"] == []  # within the tolerance: nothing to repair


def _check_reproduce(conversion, saved_model: Path, calibration_dir: Path, tmp_path: Path):
    """reproduce.py, run on its own, writes the same graph and weights as tfopt did."""
    rebuilt = tmp_path / "rebuilt" / openvino.MODEL_FILE
    rebuilt.parent.mkdir()
    subprocess.run(
        [
            sys.executable,
            str(conversion.artifact_dir / openvino.REPRODUCE_FILE),
            str(saved_model),
            "--calibration-dir",
            str(calibration_dir),
            "--output",
            str(rebuilt),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    weights = rebuilt.with_suffix(".bin").read_bytes()
    assert weights == (conversion.artifact_dir / openvino.WEIGHTS_FILE).read_bytes()
    assert _graph(rebuilt) == _graph(conversion.artifact_dir / openvino.MODEL_FILE)


def _graph(model_xml: Path) -> list[tuple[str, str, str]]:
    """Each op's type, element type and shape in topological order (names are auto-numbered)."""
    import openvino as ov

    model = ov.Core().read_model(str(model_xml))
    return [
        (
            op.get_type_name(),
            str(op.get_output_element_type(0)),
            str(op.get_output_partial_shape(0)),
        )
        for op in model.get_ordered_ops()
        if op.get_output_size()
    ]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_reproduce_script_rebuilds_the_same_model(tiny, tmp_path, precision):
    conversion = _get_backend("openvino").convert(_request(tiny, tmp_path / precision, precision))
    _check_reproduce(conversion, tiny["saved_model"], tiny["calibration_dir"], tmp_path)


@pytest.fixture(scope="module")
def jpeg_model(tmp_path_factory):
    """A classifier behind in-graph JPEG decoding (string input), saved as a SavedModel."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    kernel = tf.constant(rng.normal(0, 0.5, (3, 3, 3, 8)).astype(np.float32))
    dense = tf.constant(rng.normal(0, 2.0, (8, 4)).astype(np.float32))

    def decode(image):
        return tf.cast(tf.io.decode_jpeg(image, channels=3), tf.float32) / 255.0

    def serve(image_bytes):
        spec = tf.TensorSpec([16, 16, 3], tf.float32)
        images = tf.map_fn(decode, image_bytes, fn_output_signature=spec)
        hidden = tf.nn.relu(tf.nn.conv2d(images, kernel, 1, "SAME"))
        return {"probs": tf.nn.softmax(tf.reduce_mean(hidden, axis=[1, 2]) @ dense)}

    module = tf.Module()
    module.serve = tf.function(serve, input_signature=[tf.TensorSpec([None], tf.string)])
    directory = tmp_path_factory.mktemp("jpeg") / "saved_model"
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    coarse = rng.uniform(0, 255, size=(40, 4, 4, 3))
    pixels = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2).astype(np.uint8)
    jpegs = np.array([tf.io.encode_jpeg(p, quality=95).numpy() for p in pixels], dtype=bytes)
    expected = module.serve(tf.constant(jpegs[:8]))["probs"].numpy()
    calibration = tmp_path_factory.mktemp("jpeg-calibration")
    np.savez(calibration / "shard-00000.npz", image_bytes=jpegs[8:])
    return {
        "dir": directory,
        "signature": Signature(
            inputs=(TensorInfo("image_bytes", "string", (None,)),),
            outputs=(TensorInfo("probs", "float32", (None, 4)),),
        ),
        "test": jpegs[:8],
        "expected": expected,
        "calibration_dir": calibration,
        "calibration": lambda: ({"image_bytes": jpegs[i : i + 1]} for i in range(8, 40)),
    }


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_jpeg_decoding_model_runs_its_core_behind_a_tensorflow_prefix(
    jpeg_model, tmp_path, precision
):
    from tasks.backends.graph_split import SplitRunner

    backend = _get_backend("openvino")
    request = ConversionRequest(
        saved_model_dir=jpeg_model["dir"],
        signature=jpeg_model["signature"],
        precision=precision,
        output_dir=tmp_path / precision,
        calibration_data=jpeg_model["calibration"],
    )
    conversion = backend.convert(request)
    assert "DecodeJpeg" in conversion.summary["split"]["tf_ops"]
    runner = backend.load(conversion.artifact_dir, jpeg_model["signature"], THREADS)
    assert isinstance(runner, SplitRunner)
    got = runner({"image_bytes": jpeg_model["test"]})["probs"]
    atol = 1e-5 if precision == "fp32" else 0.05
    np.testing.assert_allclose(got, jpeg_model["expected"], atol=atol)
    if precision == "fp32":
        _check_reproduce(conversion, jpeg_model["dir"], jpeg_model["calibration_dir"], tmp_path)


def test_served_from_mlflow_with_the_openvino_runtime_pinned(local_stack, tiny, tmp_path):
    import mlflow

    from tasks import registry

    conversion = _get_backend("openvino").convert(_request(tiny, tmp_path / "fp32", "fp32"))
    example = {INPUT: tiny["images"][:2]}
    experiment = mlflow.set_experiment(f"tfopt/it-openvino-{tmp_path.name}")
    # The pipeline creates its run with the client and never makes it the active run;
    # log_pyfunc resumes it by id, so the test does the same.
    run = mlflow.MlflowClient().create_run(experiment.experiment_id)
    uri = registry.log_pyfunc(
        run.info.run_id,
        conversion.artifact_dir,
        conversion.artifact_dir,
        {"variant": "openvino:fp32"},
        example,
        THREADS,
    )
    requirements = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text().split()
    assert f"openvino=={metadata.version('openvino')}" in requirements
    assert not any(line.startswith(("tensorflow", "ai-edge-litert")) for line in requirements)
    served = mlflow.pyfunc.load_model(uri)
    got = served.predict({INPUT: tiny["images"][:8]})
    np.testing.assert_allclose(got, tiny["expected"][:8], atol=1e-5)


def test_the_pipeline_builds_validates_and_measures_openvino_variants(
    local_stack, tiny_bundle, model_name, work_dir, capsys
):
    import json

    from tasks import cli

    argv = [
        "optimize",
        "--model-uri",
        str(tiny_bundle["model"]),
        "--eval-data-uri",
        str(tiny_bundle["eval"]),
        "--calibration-data-uri",
        str(tiny_bundle["calibration"]),
        "--registered-model-name",
        model_name,
        "--variants",
        "openvino:fp32,openvino:bf16,openvino:int8",
        "--json",
    ]
    capsys.readouterr()
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = {row["variant"]: row for row in json.loads(out)["variants"]}
    assert set(rows) == {"tf:fp32", "openvino:fp32", "openvino:bf16", "openvino:int8"}
    bf16_expected = "SKIPPED" if openvino.bf16_unavailable_reason() else "OK"
    assert rows["openvino:bf16"]["status"] == bf16_expected, rows["openvino:bf16"]["reason"]
    for variant in ("openvino:fp32", "openvino:int8"):
        assert rows[variant]["status"] == "OK", rows[variant]["reason"]
        assert rows[variant]["p50_ms"] > 0
    assert rows["openvino:fp32"]["max_abs_error"] < 1e-4
