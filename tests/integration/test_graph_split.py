"""Graph splitting and LiteRT on models that decode strings in-graph, with real TF and LiteRT."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.backends import ConversionRequest, get_backend, tflite
from tasks.backends.base import ConverterError, UnsplittableGraphError
from tasks.backends.graph_split import (
    SplitRunner,
    core_calibration,
    find_split,
    read_split,
    write_split,
)
from tasks.errors import UserInputError
from tasks.signature import Signature, TensorInfo

pytestmark = pytest.mark.integration

SIZE = 16
CLASSES = 4
PROBS = TensorInfo("probs", "float32", (None, CLASSES))


def _images(count: int, seed: int) -> np.ndarray:
    """Smooth random images (JPEG keeps them close), uint8."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(count, 4, 4, 3))
    return np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2).astype(np.uint8)


def _jpegs(images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    return np.array([tf.io.encode_jpeg(image, quality=95).numpy() for image in images], dtype=bytes)


def _base64(images: np.ndarray) -> np.ndarray:
    return np.array([base64.urlsafe_b64encode(image.tobytes()) for image in images], dtype=bytes)


def _classifier(tf, seed: int):
    """A small conv classifier on [N, 16, 16, 3] floats in [0, 1], with spread-out logits."""
    rng = np.random.default_rng(seed)
    kernel = tf.constant(rng.normal(0, 0.5, (3, 3, 3, 8)).astype(np.float32))
    dense = tf.constant(rng.normal(0, 2.0, (8, CLASSES)).astype(np.float32))

    def classify(images):
        hidden = tf.nn.relu(tf.nn.conv2d(images, kernel, 1, "SAME"))
        return tf.nn.softmax(tf.reduce_mean(hidden, axis=[1, 2]) @ dense)

    return classify


def _save(tf, function, signature_spec, directory: Path) -> Path:
    module = tf.Module()
    module.serve = tf.function(function, input_signature=[signature_spec])
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return directory


def _jpeg_model(tf, directory: Path, *, nms: bool = False) -> Path:
    classify = _classifier(tf, seed=0)

    def decode(image):
        return tf.cast(tf.io.decode_jpeg(image, channels=3), tf.float32) / 255.0

    def serve(image_bytes):
        images = tf.map_fn(
            decode, image_bytes, fn_output_signature=tf.TensorSpec([SIZE, SIZE, 3], tf.float32)
        )
        if not nms:
            return {"probs": classify(images)}
        boxes = tf.reshape(tf.nn.conv2d(images, tf.ones([3, 3, 3, 4]), 1, "SAME"), [-1, 4])
        selected, scores = tf.image.non_max_suppression_with_scores(
            boxes, tf.reduce_sum(boxes, axis=1), max_output_size=5
        )
        return {"boxes": tf.gather(boxes, selected), "scores": scores}

    return _save(tf, serve, tf.TensorSpec([None], tf.string, name="image_bytes"), directory)


def _base64_model(tf, directory: Path) -> Path:
    classify = _classifier(tf, seed=1)

    def serve(image_b64):
        raw = tf.io.decode_raw(tf.io.decode_base64(image_b64), tf.uint8)
        images = tf.cast(tf.reshape(raw, [-1, SIZE, SIZE, 3]), tf.float32) / 255.0
        return {"probs": classify(images)}

    return _save(tf, serve, tf.TensorSpec([None], tf.string, name="image_b64"), directory)


def _string_signature(name: str) -> Signature:
    return Signature(inputs=(TensorInfo(name, "string", (None,)),), outputs=(PROBS,))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import tensorflow as tf

    root = tmp_path_factory.mktemp("models")
    images = _images(24, seed=5)
    calibration = _images(16, seed=6)
    jpeg = {
        "dir": _jpeg_model(tf, root / "jpeg"),
        "signature": _string_signature("image_bytes"),
        "test": {"image_bytes": _jpegs(images)},
        "calibration": {"image_bytes": _jpegs(calibration)},
    }
    b64 = {
        "dir": _base64_model(tf, root / "b64"),
        "signature": _string_signature("image_b64"),
        "test": {"image_b64": _base64(images)},
        "calibration": {"image_b64": _base64(calibration)},
    }
    for model in (jpeg, b64):
        function = tf.saved_model.load(str(model["dir"])).signatures["serving_default"]
        (name,) = model["test"]
        model["expected"] = function(**{name: tf.constant(model["test"][name])})["probs"].numpy()
        model["feeds"] = lambda m=model: (
            {k: v[i : i + 1] for k, v in m["calibration"].items()} for i in range(16)
        )
    return {"jpeg": jpeg, "b64": b64, "images": images}


def _request(model, tmp_path, precision: str) -> ConversionRequest:
    return ConversionRequest(
        saved_model_dir=model["dir"],
        signature=model["signature"],
        precision=precision,
        output_dir=tmp_path / f"tflite-{precision}",
        calibration_data=model["feeds"],
        batch_sizes=(1, 4),
    )


@pytest.mark.parametrize("kind", ["jpeg", "b64"])
def test_find_split_cuts_after_the_decoding(models, tmp_path, kind):
    model = models[kind]
    split = find_split(model["dir"], model["signature"], work_dir=tmp_path)
    assert split is not None
    decoder = "DecodeJpeg" if kind == "jpeg" else "DecodeBase64"
    assert decoder in split.tf_ops
    assert list(split.tf_ops) == sorted(set(split.tf_ops))
    assert "Conv2D" not in split.tf_ops
    (core_input,) = split.core_signature.inputs
    assert core_input.shape == (None, SIZE, SIZE, 3)
    assert core_input.dtype == "float32"
    assert split.core_signature.outputs == (PROBS,)
    assert len(split.boundary) == 1

    written = tmp_path / "variant"
    write_split(split, written)
    back = read_split(written)
    assert back.boundary == split.boundary
    assert back.tf_ops == split.tf_ops
    assert back.core_signature == split.core_signature
    assert (back.prefix_dir / "saved_model.pb").is_file()

    from tasks.backends.graph_split import PrefixRunner
    from tasks.backends.tf import TfRunner

    runner = SplitRunner(
        PrefixRunner(back.prefix_dir), TfRunner(split.core_dir, back.core_signature)
    )
    got = runner(model["test"])["probs"]
    np.testing.assert_allclose(got, model["expected"], atol=1e-5)
    decoded = runner.prefix_runner(model["test"])[core_input.name]
    (name,) = model["test"]
    assert decoded.shape == (24, SIZE, SIZE, 3)
    if kind == "jpeg":  # cut after the division: JPEG-decoded images in [0, 1]
        import tensorflow as tf

        expected = [tf.io.decode_jpeg(b, channels=3).numpy() / 255.0 for b in model["test"][name]]
        np.testing.assert_allclose(decoded, np.stack(expected), atol=1e-6)
    else:  # cut at the first float tensor, the cast before the division
        np.testing.assert_array_equal(decoded, models["images"].astype(np.float32))

    batches = list(core_calibration(back, model["feeds"])())
    assert len(batches) == 16
    assert all(b[core_input.name].shape == (1, SIZE, SIZE, 3) for b in batches)


def test_a_numeric_model_needs_no_split(models, tmp_path):
    import tensorflow as tf

    classify = _classifier(tf, seed=2)
    spec = tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="image")
    directory = _save(tf, lambda image: {"probs": classify(image)}, spec, tmp_path / "numeric")
    signature = Signature(
        inputs=(TensorInfo("image", "float32", (None, SIZE, SIZE, 3)),), outputs=(PROBS,)
    )
    assert find_split(directory, signature, work_dir=tmp_path / "w") is None


def test_nms_after_the_model_is_unsplittable(models, tmp_path):
    import tensorflow as tf

    directory = _jpeg_model(tf, tmp_path / "nms", nms=True)
    signature = Signature(
        inputs=(TensorInfo("image_bytes", "string", (None,)),),
        outputs=(
            TensorInfo("boxes", "float32", (None, 4)),
            TensorInfo("scores", "float32", (None,)),
        ),
    )
    with pytest.raises(UnsplittableGraphError, match="NonMaxSuppressionV5") as raised:
        find_split(directory, signature, work_dir=tmp_path / "w")
    assert "after Conv2D" in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("kind", "precision"), [("jpeg", "fp32"), ("jpeg", "int8"), ("b64", "fp32"), ("b64", "int8")]
)
def test_tflite_converts_the_core_and_runs_behind_the_prefix(models, tmp_path, kind, precision):
    model = models[kind]
    backend = get_backend("tflite")
    conversion = backend.convert(_request(model, tmp_path, precision))
    split_summary = conversion.summary["split"]
    assert ("DecodeJpeg" if kind == "jpeg" else "DecodeBase64") in split_summary["tf_ops"]
    assert len(split_summary["boundary"]) == 1
    assert (conversion.artifact_dir / "split.json").is_file()
    assert "CONV_2D" in conversion.summary["op_counts"]
    runner = backend.load(conversion.artifact_dir, model["signature"], num_threads=2)
    assert isinstance(runner, SplitRunner)
    assert runner.input_names == model["signature"].input_names
    assert runner.output_names == ("probs",)
    (name,) = model["test"]
    for batch in (1, 4):
        got = np.concatenate(
            [
                runner({name: model["test"][name][i : i + batch]})["probs"]
                for i in range(0, 24, batch)
            ]
        )
        if precision == "fp32":
            np.testing.assert_allclose(got, model["expected"], atol=1e-5)
        else:
            assert np.abs(got - model["expected"]).max() < 0.1
            agreement = np.mean(got.argmax(1) == model["expected"].argmax(1))
            assert agreement >= 0.8, agreement


def test_split_reproduce_script_rebuilds_the_core(models, tmp_path):
    model = models["jpeg"]
    conversion = get_backend("tflite").convert(_request(model, tmp_path, "fp32"))
    rebuilt = tmp_path / "rebuilt.tflite"
    result = subprocess.run(
        [
            sys.executable,
            str(conversion.artifact_dir / tflite.REPRODUCE_FILE),
            str(model["dir"]),
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
    original = (conversion.artifact_dir / tflite.MODEL_FILE).read_bytes()
    assert tflite.op_counts(rebuilt.read_bytes()) == tflite.op_counts(original)


def test_dynamic_spatial_inputs_convert_with_concrete_shapes(tmp_path):
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, None, 3), name="image")
    hidden = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(hidden))
    directory = tmp_path / "dynamic"
    model.export(str(directory), verbose=False)
    images = _images(8, seed=7).astype(np.float32) / 255.0
    outputs = (TensorInfo("output_0", "float32", (None, CLASSES)),)
    for shape in [(None, SIZE, SIZE, 3), (None, None, None, 3)]:
        # concrete as the data stage fixes it, and left unknown: the calibration data fixes it
        signature = Signature(inputs=(TensorInfo("image", "float32", shape),), outputs=outputs)
        request = ConversionRequest(
            saved_model_dir=directory,
            signature=signature,
            precision="fp32",
            output_dir=tmp_path / f"tflite-{len([d for d in shape if d])}",
            calibration_data=lambda: ({"image": images[i : i + 1]} for i in range(8)),
        )
        backend = get_backend("tflite")
        conversion = backend.convert(request)
        assert "split" not in conversion.summary
        runner = backend.load(conversion.artifact_dir, signature, num_threads=2)
        for batch in (1, 4):
            got = runner({"image": images[:batch]})["output_0"]
            np.testing.assert_allclose(got, model.predict(images[:batch], verbose=0), atol=1e-5)


def test_converter_error_names_the_unsupported_op(tmp_path):
    import tensorflow as tf

    classify = _classifier(tf, seed=4)
    spec = tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="image")
    directory = _save(
        tf,
        lambda image: {"probs": tf.math.erfinv(classify(image) * 0.5)},
        spec,
        tmp_path / "erfinv",
    )
    signature = Signature(
        inputs=(TensorInfo("image", "float32", (None, SIZE, SIZE, 3)),), outputs=(PROBS,)
    )
    request = ConversionRequest(
        saved_model_dir=directory,
        signature=signature,
        precision="fp32",
        output_dir=tmp_path / "out",
        calibration_data=lambda: iter(()),
    )
    with pytest.raises(ConverterError, match="Erfinv") as raised:
        get_backend("tflite").convert(request)
    message = str(raised.value)
    assert "\n" not in message
    assert "does not support the ops Erfinv" in message
    assert raised.value.ops == ("Erfinv",)


def test_an_unsupported_op_in_front_is_kept_in_tensorflow(tmp_path):
    import tensorflow as tf

    classify = _classifier(tf, seed=4)
    spec = tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="image")
    directory = _save(
        tf,
        lambda image: {"probs": classify(tf.math.erfinv(image * 0.5))},
        spec,
        tmp_path / "erfinv-first",
    )
    signature = Signature(
        inputs=(TensorInfo("image", "float32", (None, SIZE, SIZE, 3)),), outputs=(PROBS,)
    )
    images = _images(4, seed=8).astype(np.float32) / 255.0
    request = ConversionRequest(
        saved_model_dir=directory,
        signature=signature,
        precision="fp32",
        output_dir=tmp_path / "out",
        calibration_data=lambda: iter([{"image": images[:1]}]),
    )
    backend = get_backend("tflite")
    conversion = backend.convert(request)
    assert "Erfinv" in conversion.summary["split"]["tf_ops"]
    runner = backend.load(conversion.artifact_dir, signature, num_threads=2)
    expected = tf.saved_model.load(str(directory)).signatures["serving_default"](
        image=tf.constant(images)
    )["probs"]
    np.testing.assert_allclose(runner({"image": images})["probs"], expected.numpy(), atol=1e-5)


def test_a_numeric_input_passes_the_prefix_and_unknown_sizes_come_from_the_data(tmp_path):
    """PNG bytes decoded at any size plus a float input that only the core reads."""
    import tensorflow as tf

    kernel = tf.constant(np.random.default_rng(0).normal(size=(3, 3, 3, 4)).astype(np.float32))

    def serve(image_png, weights):
        images = tf.map_fn(
            lambda png: tf.cast(tf.io.decode_png(png, channels=3), tf.float32) / 255.0,
            image_png,
            fn_output_signature=tf.float32,
        )
        hidden = tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(images, kernel, 1, "SAME")), axis=[1, 2])
        return {"scores": hidden * weights}

    module = tf.Module()
    module.serve = tf.function(
        serve,
        input_signature=[
            tf.TensorSpec([None], tf.string, name="image_png"),
            tf.TensorSpec([None, 4], tf.float32, name="weights"),
        ],
    )
    directory = tmp_path / "png"
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    signature = Signature(
        inputs=(
            TensorInfo("image_png", "string", (None,)),
            TensorInfo("weights", "float32", (None, 4)),
        ),
        outputs=(TensorInfo("scores", "float32", (None, 4)),),
    )
    pngs = np.array([tf.io.encode_png(image).numpy() for image in _images(4, seed=9)], dtype=bytes)
    weights = np.random.default_rng(1).random((4, 4)).astype(np.float32)

    with pytest.raises(UserInputError, match="unknown non-batch dimensions"):
        find_split(directory, signature, work_dir=tmp_path / "no-sample")

    request = ConversionRequest(
        saved_model_dir=directory,
        signature=signature,
        precision="fp32",
        output_dir=tmp_path / "out",
        calibration_data=lambda: (
            {"image_png": pngs[i : i + 1], "weights": weights[i : i + 1]} for i in range(4)
        ),
    )
    backend = get_backend("tflite")
    conversion = backend.convert(request)
    assert conversion.summary["split"]["boundary"][-1] == "weights:0"
    runner = backend.load(conversion.artifact_dir, signature, num_threads=2)
    got = runner({"image_png": pngs, "weights": weights})["scores"]
    expected = module.serve(tf.constant(pngs), tf.constant(weights))["scores"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
