"""Every backend on a tiny real Keras model: convert, load, run at batch 1 and 4, compare."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from tasks.backends import BackendUnavailableError, ConversionRequest, get_backend, tflite
from tasks.backends.base import ConverterError
from tasks.backends.tflite import MODEL_FILE
from tasks.signature import Signature, TensorInfo

pytestmark = pytest.mark.integration

INPUT = "image"
CLASSES = 10


def _signature_of(saved_model_dir: Path) -> Signature:
    import tensorflow as tf

    function = tf.saved_model.load(str(saved_model_dir)).signatures["serving_default"]
    _, inputs = function.structured_input_signature

    def info(name, spec):
        return TensorInfo(name, spec.dtype.name, tuple(spec.shape.as_list()))

    return Signature(
        inputs=tuple(info(n, s) for n, s in sorted(inputs.items())),
        outputs=tuple(info(n, s) for n, s in sorted(function.structured_outputs.items())),
    )


def _images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random images whose class is the brightest of ten fixed 4x4 regions (learnable)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.5, size=(count, 16, 16, 3)).astype(np.float32)
    labels = rng.integers(0, CLASSES, size=count)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[i, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4, :] += 0.5
    return images, labels


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A conv + dense + softmax model fitted for a few seconds, exported as a serving SavedModel."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3), name=INPUT)
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    train_x, train_y = _images(1024, seed=1)
    model.fit(train_x, train_y, epochs=8, batch_size=64, verbose=0)
    saved_model_dir = tmp_path_factory.mktemp("export") / "saved_model"
    model.export(str(saved_model_dir), verbose=False)
    test_x, _ = _images(64, seed=2)
    calibration_x, _ = _images(32, seed=3)
    return {
        "dir": saved_model_dir,
        "signature": _signature_of(saved_model_dir),
        "test_x": test_x,
        "expected": model.predict(test_x, verbose=0),
        "calibration": lambda: ({INPUT: calibration_x[i : i + 1]} for i in range(32)),
    }


def _convert_and_load(tiny, tmp_path, variant: str):
    backend_name, precision = variant.split(":")
    backend = get_backend(backend_name)
    assert backend.available() is None
    request = ConversionRequest(
        saved_model_dir=tiny["dir"],
        signature=tiny["signature"],
        precision=precision,
        output_dir=tmp_path / variant.replace(":", "-"),
        calibration_data=tiny["calibration"],
        batch_sizes=(1, 4),
    )
    conversion = backend.convert(request)
    runner = backend.load(conversion.artifact_dir, tiny["signature"], num_threads=2)
    return conversion, runner


def _run(runner, images: np.ndarray, batch: int) -> np.ndarray:
    (name,) = runner.output_names
    chunks = []
    for start in range(0, len(images), batch):
        outputs = runner({INPUT: images[start : start + batch]})
        assert set(outputs) == set(runner.output_names)
        assert outputs[name].shape == (len(images[start : start + batch]), CLASSES)
        assert outputs[name].dtype == np.float32
        chunks.append(outputs[name])
    return np.concatenate(chunks)


def test_signature_of_the_tiny_model(tiny):
    assert tiny["signature"].input_names == (INPUT,)
    assert tiny["signature"].inputs[0].shape == (None, 16, 16, 3)
    assert tiny["signature"].output_names == ("output_0",)


def test_tf_baseline_is_the_model(tiny, tmp_path):
    conversion, runner = _convert_and_load(tiny, tmp_path, "tf:fp32")
    assert (conversion.artifact_dir / "saved_model.pb").is_file()
    assert conversion.summary["size_bytes"] > 0
    for batch in (1, 4):
        np.testing.assert_allclose(_run(runner, tiny["test_x"], batch), tiny["expected"], atol=1e-5)


@pytest.mark.parametrize(
    ("precision", "atol", "min_agreement"),
    [("fp32", 1e-5, 1.0), ("fp16", 1e-2, 0.95), ("dynamic", None, 0.9), ("int8", None, 0.85)],
)
def test_tflite_matches_the_baseline(tiny, tmp_path, precision, atol, min_agreement):
    conversion, runner = _convert_and_load(tiny, tmp_path, f"tflite:{precision}")
    assert (conversion.artifact_dir / MODEL_FILE).is_file()
    assert conversion.summary["size_bytes"] == (conversion.artifact_dir / MODEL_FILE).stat().st_size
    assert conversion.summary["num_ops"] > 0
    assert runner.output_names == tiny["signature"].output_names
    expected = tiny["expected"]
    for batch in (1, 4, 1):  # back to 1: the per-shape interpreters are reused
        got = _run(runner, tiny["test_x"], batch)
        if atol is not None:
            np.testing.assert_allclose(got, expected, atol=atol)
        agreement = np.mean(got.argmax(axis=1) == expected.argmax(axis=1))
        assert agreement >= min_agreement, f"top-1 agreement {agreement:.2f}"


@pytest.fixture(scope="module")
def recurrent(tmp_path_factory):
    """Token ids of any length through an Embedding and a GRU: a Keras RNN, whose loop LiteRT's
    converter cannot lower over a free batch dimension."""
    import keras

    keras.utils.set_random_seed(0)
    tokens = np.random.default_rng(0).integers(1, 30, size=(40, 10)).astype(np.int32)
    inputs = keras.Input((None,), dtype="int32", name="tokens")
    hidden = keras.layers.GRU(8)(keras.layers.Embedding(30, 8)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    saved_model_dir = tmp_path_factory.mktemp("export-rnn") / "saved_model"
    model.export(str(saved_model_dir), verbose=False)
    return {
        "dir": saved_model_dir,
        "signature": _signature_of(saved_model_dir),
        "tokens": tokens,
        "expected": model.predict(tokens, verbose=0),
        "calibration": lambda: ({"tokens": tokens[i : i + 1]} for i in range(16)),
    }


def test_tflite_int8_of_a_recurrent_model_fails_cleanly(recurrent, tmp_path):
    """Full-integer INT8 is not rebuilt for batch 1 (the converter crashed on it): a clear
    ConverterError fails the variant, and the run goes on with the others."""
    with pytest.raises(ConverterError, match="element_shape to be static"):
        _convert_and_load(recurrent, tmp_path, "tflite:int8")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "dynamic"])
def test_tflite_converts_a_recurrent_model_for_batch_1_and_runs_larger_batches_per_sample(
    recurrent, tmp_path, precision
):
    conversion, runner = _convert_and_load(recurrent, tmp_path, f"tflite:{precision}")
    assert recurrent["signature"].inputs[0].shape == (None, None)
    assert conversion.summary["static_batch"] == 1
    (output,) = runner.output_names
    for batch in (1, 4, 3):
        got = np.concatenate(
            [
                runner({"tokens": recurrent["tokens"][i : i + batch]})[output]
                for i in range(0, 12, batch)
            ]
        )
        assert got.shape == (12, 3)
        tolerance = 1e-5 if precision == "fp32" else 0.02
        np.testing.assert_allclose(got, recurrent["expected"][:12], atol=tolerance)


def test_tflite_int8_is_full_integer_with_float_io(tiny, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    conversion, _ = _convert_and_load(tiny, tmp_path, "tflite:int8")
    assert conversion.summary["io_dtype"] == "float32"
    assert conversion.summary["calibration_samples"] >= 32
    assert {"QUANTIZE", "DEQUANTIZE", "CONV_2D"} <= set(conversion.summary["op_counts"])
    interpreter = Interpreter(model_path=str(conversion.artifact_dir / MODEL_FILE))
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    conv_types = {d["dtype"] for d in interpreter.get_tensor_details() if "conv" in d["name"]}
    assert np.int8 in conv_types


def test_tflite_runner_quantizes_integer_io(tiny, tmp_path):
    """A model converted elsewhere with int8 I/O still takes and returns floats."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(tiny["dir"]), signature_keys=["serving_default"]
    )
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = tiny["calibration"]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    artifact_dir = tmp_path / "int8-io"
    artifact_dir.mkdir()
    (artifact_dir / MODEL_FILE).write_bytes(converter.convert())
    runner = get_backend("tflite").load(artifact_dir, tiny["signature"], num_threads=2)
    got = _run(runner, tiny["test_x"], batch=4)
    assert np.mean(got.argmax(axis=1) == tiny["expected"].argmax(axis=1)) >= 0.85
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=0.05)


def test_tftrt_reports_why_it_cannot_run_here(tiny, tmp_path):
    from tasks.backends.tftrt import probe_runtime

    backend = get_backend("tftrt")
    reason = backend.available()
    assert reason and "TensorRT" in reason
    assert "TensorRT" in (probe_runtime() or "")  # the real attempt agrees with the shortcut
    request = ConversionRequest(
        saved_model_dir=tiny["dir"],
        signature=tiny["signature"],
        precision="fp16",
        output_dir=tmp_path / "tftrt-fp16",
        calibration_data=tiny["calibration"],
    )
    with pytest.raises(BackendUnavailableError) as raised:
        backend.convert(request)
    assert raised.value.reason == reason


def test_tflite_int8_reproduce_script_rebuilds_the_same_model(tiny, tmp_path):
    conversion, _ = _convert_and_load(tiny, tmp_path, "tflite:int8")
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    np.savez(
        calibration / "shard-00000.npz",
        **{INPUT: np.concatenate([feeds[INPUT] for feeds in tiny["calibration"]()])},
    )
    rebuilt = tmp_path / "rebuilt.tflite"
    result = subprocess.run(
        [
            sys.executable,
            str(conversion.artifact_dir / "reproduce.py"),
            str(tiny["dir"]),
            "--calibration-dir",
            str(calibration),
            "--output",
            str(rebuilt),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    original = (conversion.artifact_dir / MODEL_FILE).read_bytes()
    assert tflite.op_counts(rebuilt.read_bytes()) == tflite.op_counts(original)
    assert abs(len(rebuilt.read_bytes()) - len(original)) < 0.02 * len(original)


def test_tflite_dynamic_range_has_int8_weights_float_io_and_no_calibration(tiny, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from tasks.backends import get_backend
    from tasks.backends.base import ConversionRequest

    request = ConversionRequest(
        saved_model_dir=tiny["dir"],
        signature=tiny["signature"],
        precision="dynamic",
        output_dir=tmp_path / "dynamic",
        calibration_data=tiny["calibration"],
    )
    conversion = get_backend("tflite").convert(request)
    assert "calibration_samples" not in conversion.summary, "the calibration data is not read"
    interpreter = Interpreter(model_path=str(conversion.artifact_dir / MODEL_FILE))
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert np.int8 in {d["dtype"] for d in interpreter.get_tensor_details()}, "INT8 weights"
    fp32 = get_backend("tflite").convert(
        ConversionRequest(
            saved_model_dir=tiny["dir"],
            signature=tiny["signature"],
            precision="fp32",
            output_dir=tmp_path / "fp32",
            calibration_data=tiny["calibration"],
        )
    )
    assert conversion.summary["size_bytes"] < 0.5 * fp32.summary["size_bytes"]


class GraphRunningConverter:
    """Stands in for TrtGraphConverterV2 without TensorRT: runs the real graph on every feed.

    As the real converter does, it calls the SavedModel's signature with each dict from
    `calibration_input_fn` and `build`'s `input_fn` as keyword arguments (after
    `convert_to_tensor`), so feeds that the graph cannot take fail here as they would there.
    """

    instances: list[GraphRunningConverter] = []

    def __init__(self, **kwargs):
        import tensorflow as tf

        self.kwargs = kwargs
        self._loaded = tf.saved_model.load(kwargs["input_saved_model_dir"])
        self._function = self._loaded.signatures[kwargs["input_saved_model_signature_key"]]
        self.fed: list[dict] = []
        self.outputs: list[dict] = []
        GraphRunningConverter.instances.append(self)

    def _run(self, feeds):
        import tensorflow as tf

        assert isinstance(feeds, dict), "feeds must be keyed by input name"
        self.fed.append(feeds)
        tensors = {name: tf.convert_to_tensor(value) for name, value in feeds.items()}
        self.outputs.append({k: v.numpy() for k, v in self._function(**tensors).items()})

    def convert(self, calibration_input_fn=None):
        for feeds in calibration_input_fn() if calibration_input_fn else ():
            self._run(feeds)

    def build(self, input_fn):
        for feeds in input_fn():
            self._run(feeds)

    def save(self, output_saved_model_dir):
        import shutil

        shutil.copytree(
            self.kwargs["input_saved_model_dir"], output_saved_model_dir, dirs_exist_ok=True
        )

    def summary(self, line_length=160, detailed=True, print_fn=None):
        print_fn("[*] Total number of TensorRT engines: 0")


@pytest.fixture
def jpeg_classifier(tmp_path):
    """A SavedModel taking JPEG bytes, decoding them in-graph, then a small CNN."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    kernel = tf.constant(rng.normal(0, 0.5, (3, 3, 3, 4)).astype(np.float32))

    def serve(image_bytes):
        def decode(image):
            return tf.cast(tf.io.decode_jpeg(image, channels=3), tf.float32) / 255.0

        spec = tf.TensorSpec([16, 16, 3], tf.float32)
        images = tf.map_fn(decode, image_bytes, fn_output_signature=spec)
        hidden = tf.nn.relu(tf.nn.conv2d(images, kernel, 1, "SAME"))
        return {"scores": tf.reduce_mean(hidden, axis=[1, 2])}

    module = tf.Module()
    module.serve = tf.function(
        serve, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
    )
    directory = tmp_path / "jpeg"
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    images, _ = _images(6, seed=4)
    jpegs = [tf.io.encode_jpeg((image * 255).astype(np.uint8)).numpy() for image in images]
    strings = np.array(jpegs, dtype=bytes)
    expected = module.serve(tf.constant(strings))["scores"].numpy()
    return {"dir": directory, "strings": strings, "expected": expected}


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tftrt_feeds_string_inputs_to_the_real_graph(
    jpeg_classifier, tmp_path, monkeypatch, precision
):
    import tensorflow as tf

    from tasks.backends import tftrt

    GraphRunningConverter.instances.clear()
    stand_in = types.SimpleNamespace(
        TrtGraphConverterV2=GraphRunningConverter,
        TrtPrecisionMode=types.SimpleNamespace(FP32="FP32", FP16="FP16", INT8="INT8"),
    )
    monkeypatch.setattr(tftrt, "_trt_module", lambda: stand_in)
    monkeypatch.setattr(tftrt, "probe_tensorrt", lambda: None)
    signature = Signature(
        inputs=(TensorInfo("image_bytes", "string", (None,)),),
        outputs=(TensorInfo("scores", "float32", (None, 4)),),
    )
    strings = jpeg_classifier["strings"]
    request = ConversionRequest(
        saved_model_dir=jpeg_classifier["dir"],
        signature=signature,
        precision=precision,
        output_dir=tmp_path / f"tftrt-{precision}",
        calibration_data=lambda: ({"image_bytes": strings[i : i + 1]} for i in range(len(strings))),
        batch_sizes=(1, 4),
    )
    get_backend("tftrt").convert(request)
    (converter,) = GraphRunningConverter.instances
    calibrated = len(strings) if precision == "int8" else 0
    assert len(converter.fed) == calibrated + 2
    for feeds in converter.fed:
        assert set(feeds) == {"image_bytes"}
        assert feeds["image_bytes"].dtype == tf.string
    for i in range(calibrated):  # each calibration batch decoded and scored as by the model
        np.testing.assert_allclose(
            converter.outputs[i]["scores"], jpeg_classifier["expected"][i : i + 1], rtol=1e-5
        )
    build = converter.outputs[calibrated:]
    assert [o["scores"].shape for o in build] == [(1, 4), (4, 4)]
    np.testing.assert_allclose(build[1]["scores"][0], jpeg_classifier["expected"][0], rtol=1e-5)
    source = (request.output_dir / tftrt.REPRODUCE_FILE).read_text()
    assert "INPUT_DTYPES = {'image_bytes': 'string'}" in source
    assert "ENGINE_INPUT_SHAPES = [{'image_bytes': [1]}, {'image_bytes': [4]}]" in source
