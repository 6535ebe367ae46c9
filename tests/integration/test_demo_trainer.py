"""Integration tests of the demo trainer and bundle: real TensorFlow on the tiny configuration."""

import json

import numpy as np
import pytest

from tasks.demo import bundle, shapes
from tasks.demo.trainer import INPUT_NAME, TrainConfig, train

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    summary = bundle.write_demo_bundle(out, n_eval=50, n_calibration=20, shard_size=16, tiny=True)
    return out, summary


def test_tiny_training_reports_metrics():
    model, metrics = train(TrainConfig.tiny())
    assert model.inputs[0].name == INPUT_NAME
    assert model.outputs[0].shape == (None, shapes.NUM_CLASSES)
    assert 0.0 <= metrics["held_out_top1"] <= 1.0
    assert metrics["train_s"] > 0
    assert metrics["params"] == model.count_params()
    assert len(metrics["history"]["loss"]) == TrainConfig.tiny().epochs


def test_bundle_layout_and_summary(demo_bundle):
    out, summary = demo_bundle
    assert (out / "model" / "model.keras").is_file()
    assert summary["input_name"] == INPUT_NAME
    assert summary["n_eval"] == 50 and summary["eval_shards"] == 4
    assert summary["n_calibration"] == 20 and summary["calibration_shards"] == 2
    assert json.loads((out / "bundle.json").read_text()) == summary
    with pytest.raises(FileExistsError):
        bundle.write_demo_bundle(out, tiny=True)


def _load_shards(directory):
    shards = []
    for path in sorted(directory.glob("shard-*.npz")):
        with np.load(path, allow_pickle=False) as data:
            shards.append({key: data[key] for key in data.files})
    return shards


def test_shards_match_the_exported_serving_signature(demo_bundle, tmp_path):
    import keras
    import tensorflow as tf

    out, summary = demo_bundle
    model = keras.saving.load_model(out / "model" / "model.keras")
    model.export(tmp_path / "saved_model", verbose=False)
    signature = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert set(signature.structured_input_signature[1]) == {summary["input_name"]}

    eval_shards = _load_shards(out / "eval")
    calibration_shards = _load_shards(out / "calibration")
    assert [set(s) for s in eval_shards] == [{spec.name, "labels"}] * len(eval_shards)
    assert [set(s) for s in calibration_shards] == [{spec.name}] * len(calibration_shards)
    for shard in eval_shards + calibration_shards:
        images = shard[spec.name]
        assert images.dtype == spec.dtype.as_numpy_dtype
        assert spec.shape.is_compatible_with(images.shape)
    labels = np.concatenate([s["labels"] for s in eval_shards])
    assert labels.dtype == np.int64 and len(labels) == summary["n_eval"]

    images = np.concatenate([s[spec.name] for s in eval_shards])
    served = signature(**{spec.name: tf.constant(images)})
    probabilities = next(iter(served.values())).numpy()
    np.testing.assert_allclose(probabilities, model.predict(images, verbose=0), atol=1e-5)
    top1 = float(np.mean(probabilities.argmax(axis=-1) == labels))
    assert top1 == pytest.approx(summary["held_out_top1"])


def test_eval_and_calibration_data_differ(demo_bundle):
    out, _ = demo_bundle
    eval_images = _load_shards(out / "eval")[0][INPUT_NAME]
    calibration_images = _load_shards(out / "calibration")[0][INPUT_NAME]
    assert not np.allclose(eval_images, calibration_images)
