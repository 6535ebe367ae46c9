"""Integration tests of the demo detector: real TensorFlow training, serving export, publishing."""

import json
import uuid

import numpy as np
import pytest

from tasks.demo import detection, detector
from tasks.demo.detector import OUTPUT_NAMES, DetectorConfig

pytestmark = pytest.mark.integration

TINY = DetectorConfig.tiny()


@pytest.fixture(scope="module")
def trained():
    return detector.train(TINY)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    model, _ = trained
    root = tmp_path_factory.mktemp("detector")
    return {
        encoding: detector.export_serving(model, TINY, root / encoding, encoding=encoding)
        for encoding in detection.ENCODINGS
    }


@pytest.fixture(scope="module")
def eval_shard(tmp_path_factory):
    """A real eval shard written by the data module and read back without pickles."""
    scenes = detection.generate(12, seed=21, image_size=TINY.image_size)
    (path,) = detection.write_eval_shards(tmp_path_factory.mktemp("eval"), scenes, shard_size=16)
    with np.load(path, allow_pickle=False) as data:
        return scenes, {key: data[key] for key in data.files}


def _signature(saved_model_dir):
    import tensorflow as tf

    return tf.saved_model.load(str(saved_model_dir)).signatures["serving_default"]


def test_tiny_training_reports_metrics(trained):
    model, metrics = trained
    assert model.outputs[0].shape == (None, TINY.grid, TINY.grid, detection.NUM_CLASSES + 4)
    assert 0.0 <= metrics["map"] <= metrics["map50"] <= 1.0
    assert len(metrics["loss"]) == TINY.epochs and np.isfinite(metrics["loss"]).all()
    assert metrics["train_s"] > 0 and metrics["params"] == model.count_params()


def test_serving_signature_takes_strings_and_returns_the_od_api_outputs(exported):
    import tensorflow as tf

    for path in exported.values():
        signature = _signature(path)
        inputs = signature.structured_input_signature[1]
        assert list(inputs) == [detection.INPUT_NAME]
        assert inputs[detection.INPUT_NAME].dtype == tf.string
        assert inputs[detection.INPUT_NAME].shape.as_list() == [None]
        outputs = signature.structured_outputs
        assert set(outputs) == set(OUTPUT_NAMES)
        k = TINY.top_k
        assert outputs["detection_boxes"].shape.as_list() == [None, k, 4]
        assert outputs["detection_scores"].shape.as_list() == [None, k]
        assert outputs["detection_classes"].shape.as_list() == [None, k]
        assert outputs["num_detections"].shape.as_list() == [None]
        assert all(spec.dtype == tf.float32 for spec in outputs.values())


def test_jpeg_bytes_survive_the_s_array_and_npz(eval_shard):
    import tensorflow as tf

    scenes, arrays = eval_shard
    images = arrays[detection.INPUT_NAME]
    assert images.dtype.kind == "S"
    assert set(arrays) == {detection.INPUT_NAME, detection.BOXES_KEY, detection.CLASSES_KEY}
    np.testing.assert_array_equal(arrays[detection.BOXES_KEY], scenes.boxes)
    np.testing.assert_array_equal(arrays[detection.CLASSES_KEY], scenes.classes)
    assert [bytes(item) for item in images] == detection.encode_images(scenes.images)
    for item, image in zip(images, scenes.images, strict=True):
        assert bytes(item).startswith(b"\xff\xd8") and bytes(item).endswith(b"\xff\xd9")
        decoded = tf.io.decode_jpeg(bytes(item), channels=3).numpy() / 255.0
        assert decoded.shape == image.shape
        assert np.abs(decoded - image).mean() < 0.08  # JPEG loses the pixel noise, not the scene


def test_export_decodes_jpeg_and_matches_the_numeric_model(trained, exported, eval_shard):
    import tensorflow as tf

    model, _ = trained
    _, arrays = eval_shard
    served = _signature(exported["jpeg"])(image_bytes=tf.constant(arrays[detection.INPUT_NAME]))
    served = {name: tensor.numpy() for name, tensor in served.items()}
    boxes, scores = served["detection_boxes"], served["detection_scores"]
    assert boxes.shape == (12, TINY.top_k, 4)
    assert boxes.min() >= 0.0 and boxes.max() <= 1.0
    assert (boxes[..., 0] <= boxes[..., 2]).all() and (boxes[..., 1] <= boxes[..., 3]).all()
    assert (np.diff(scores, axis=1) <= 0).all()
    assert set(np.unique(served["detection_classes"])) <= {1.0, 2.0, 3.0, 4.0}
    assert ((served["num_detections"] >= 0) & (served["num_detections"] <= TINY.top_k)).all()

    decoded = np.stack(
        [tf.io.decode_jpeg(bytes(item), channels=3).numpy() for item in arrays["image_bytes"]]
    )
    direct = detector.predict(model, decoded.astype(np.float32) / 255.0, TINY)
    # an untrained model's scores nearly tie, so the last of the top K may swap: compare the head
    head = TINY.top_k // 2
    for name in ("detection_scores", "detection_boxes", "detection_classes"):
        np.testing.assert_allclose(served[name][:, :head], direct[name][:, :head], atol=1e-5)


def test_base64_variant_gives_the_jpeg_variant_outputs(exported, eval_shard):
    import base64

    import tensorflow as tf

    _, arrays = eval_shard
    jpeg = arrays[detection.INPUT_NAME]
    text = detection.pack_bytes([base64.urlsafe_b64encode(bytes(item)) for item in jpeg])
    from_jpeg = _signature(exported["jpeg"])(image_bytes=tf.constant(jpeg))
    from_text = _signature(exported["base64"])(image_bytes=tf.constant(text))
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(from_text[name].numpy(), from_jpeg[name].numpy(), atol=1e-6)


def test_perfect_and_empty_detections_score_one_and_zero(eval_shard):
    scenes, _ = eval_shard
    k = detection.MAX_OBJECTS
    perfect = {
        "detection_boxes": np.clip(scenes.boxes, 0, 1),
        "detection_scores": np.where(scenes.classes > 0, 0.9, 0.0).astype(np.float32),
        "detection_classes": np.maximum(scenes.classes, 1).astype(np.float32),
        "num_detections": (scenes.classes > 0).sum(axis=1).astype(np.float32),
    }
    assert detector.coco_map(perfect, scenes.boxes, scenes.classes)["map50"] == pytest.approx(1.0)
    nothing = {**perfect, "num_detections": np.zeros(len(scenes), np.float32)}
    assert detector.coco_map(nothing, scenes.boxes, scenes.classes) == {"map50": 0.0, "map": 0.0}
    assert perfect["detection_boxes"].shape[1] == k


@pytest.mark.slow
def test_demo_data_publishes_the_detection_demo_to_s3(local_stack, capsys, tmp_path):
    from tasks import storage
    from tasks.cli import main

    root = f"s3://{local_stack.bucket}/it-{uuid.uuid4().hex[:8]}/demo/detection"
    argv = ["demo-data", "--task", "detection", "--tiny", "--output-uri", root]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"model_uri: {root}/model" in printed and "--metric map50" in printed
    for part in ("model", "eval", "calibration"):
        assert storage.read_manifest(f"{root}/{part}") is not None
    assert main([*argv, "--if-missing"]) == 0
    assert "already published" in capsys.readouterr().err

    eval_dir = storage.fetch_tree(f"{root}/eval", tmp_path / "eval")
    shards = sorted(eval_dir.glob("shard-*.npz"))
    with np.load(shards[0], allow_pickle=False) as data:
        assert data[detection.INPUT_NAME].dtype.kind == "S"
        assert data[detection.BOXES_KEY].shape[1:] == (detection.MAX_OBJECTS, 4)


@pytest.mark.slow
def test_full_training_reaches_map50_of_one_half():
    model, metrics = detector.train(DetectorConfig())
    print(json.dumps({k: metrics[k] for k in ("map50", "map", "train_s", "params")}))
    assert metrics["map50"] >= 0.5
