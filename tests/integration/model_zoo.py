"""Small models of the kinds users bring, built and trained in seconds, with their .npz shards.

Each builder writes `model` (a .keras file or a SavedModel directory) and an `eval` folder of
shards under `root`, and returns their paths with the flags a run needs.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

SIZE = 16


def _images(n: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.random((n, size, size, 3), dtype=np.float32)
    half = size // 2
    labels = (images[:, :half].mean(axis=(1, 2, 3)) > images[:, half:].mean(axis=(1, 2, 3))).astype(
        np.int64
    )
    return images, labels


def _save_shards(folder: Path, arrays: dict[str, np.ndarray], shards: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(arrays.values())))
    bounds = np.linspace(0, n, shards + 1).astype(int)
    for i in range(shards):
        part = {k: v[bounds[i] : bounds[i + 1]] for k, v in arrays.items()}
        np.savez(folder / f"shard-{i:05d}.npz", **part)
    return folder


def _conv_classifier(input_shape: tuple, name: str = "image"):
    import keras

    inputs = keras.Input(input_shape, name=name)
    hidden = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    outputs = keras.layers.Dense(2, activation="softmax")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def dynamic_spatial(root: Path) -> dict:
    """A classifier whose input is (None, None, None, 3): the data fixes 16x16."""
    import keras

    keras.utils.set_random_seed(1)
    images, labels = _images(300, seed=1)
    model = _conv_classifier((None, None, 3))
    model.fit(images[:200], labels[:200], epochs=8, verbose=0)
    model.save(root / "dynamic.keras")
    _save_shards(root / "dynamic-eval", {"image": images[200:], "labels": labels[200:]})
    return {"model": root / "dynamic.keras", "eval": root / "dynamic-eval", "flags": []}


def regression(root: Path) -> dict:
    """A regression head on two float features: float labels, judged by rmse."""
    import keras

    keras.utils.set_random_seed(2)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    y = (x @ rng.normal(size=(8, 1)) + 0.1 * rng.normal(size=(400, 1))).astype(np.float32)
    inputs = keras.Input((8,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="value")(hidden))
    model.compile("adam", "mse")
    model.fit(x[:300], y[:300], epochs=20, verbose=0)
    model.save(root / "regression.keras")
    _save_shards(root / "regression-eval", {"features": x[300:], "labels": y[300:, 0]})
    return {
        "model": root / "regression.keras",
        "eval": root / "regression-eval",
        "flags": ["--metric", "rmse", "--accuracy-tolerance", "0.05"],
    }


def text_ids(root: Path) -> dict:
    """int32 token ids through an Embedding: integer inputs, class labels."""
    import keras

    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    tokens = rng.integers(1, 50, size=(400, 12)).astype(np.int32)
    labels = (tokens[:, :6].sum(axis=1) > tokens[:, 6:].sum(axis=1)).astype(np.int64)
    inputs = keras.Input((12,), dtype="int32", name="token_ids")
    hidden = keras.layers.Embedding(50, 8)(inputs)
    hidden = keras.layers.GlobalAveragePooling1D()(hidden)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(tokens[:300], labels[:300], epochs=15, verbose=0)
    model.save(root / "text.keras")
    _save_shards(root / "text-eval", {"token_ids": tokens[300:], "labels": labels[300:]})
    return {"model": root / "text.keras", "eval": root / "text-eval", "flags": []}


def unlabelled(root: Path, tiny_model: Path, images: np.ndarray) -> dict:
    """The tiny classifier's inputs without labels: only fidelity to the baseline can judge."""
    _save_shards(root / "unlabelled-eval", {"image": images})
    return {
        "model": tiny_model,
        "eval": root / "unlabelled-eval",
        "flags": ["--metric", "fidelity", "--accuracy-tolerance", "0.05"],
    }


def _jpeg(image: np.ndarray) -> bytes:
    import tensorflow as tf

    pixels = tf.convert_to_tensor(np.clip(image * 255, 0, 255).astype(np.uint8))
    return bytes(tf.io.encode_jpeg(pixels, quality=95).numpy())


def base64_jpeg_classifier(root: Path) -> dict:
    """Serving signature: web-safe base64 JPEG strings, decoded in-graph, then a small CNN."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(4)
    images, labels = _images(300, seed=4)
    core = _conv_classifier((SIZE, SIZE, 3))
    core.fit(images[:200], labels[:200], epochs=10, verbose=0)

    class Served(tf.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_b64")])
        def serve(self, image_b64):
            def decode(item):
                raw = tf.io.decode_base64(item)
                pixels = tf.io.decode_jpeg(raw, channels=3)
                pixels = tf.image.resize(tf.cast(pixels, tf.float32) / 255.0, (SIZE, SIZE))
                return tf.ensure_shape(pixels, (SIZE, SIZE, 3))

            batch = tf.map_fn(decode, image_b64, fn_output_signature=tf.float32)
            return {"probabilities": self.model(batch)}

    served = Served(core)
    path = root / "b64_jpeg_savedmodel"
    tf.saved_model.save(served, str(path), signatures={"serving_default": served.serve})
    encoded = [base64.urlsafe_b64encode(_jpeg(image)) for image in images[200:]]
    strings = np.array(encoded, dtype=f"S{max(len(e) for e in encoded)}")
    _save_shards(root / "b64-eval", {"image_b64": strings, "labels": labels[200:]})
    return {"model": path, "eval": root / "b64-eval", "flags": []}


def segmentation(root: Path) -> dict:
    """A per-pixel classifier: [N, H, W] integer labels, judged by mean IoU (chosen by auto)."""
    import keras

    keras.utils.set_random_seed(4)
    rng = np.random.default_rng(4)
    images = rng.random((160, SIZE, SIZE, 3), dtype=np.float32)
    masks = (images[..., 0] > images[..., 1]).astype(np.uint8)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv2D(2, 1, activation="softmax", name="mask")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(images[:100], masks[:100], epochs=6, verbose=0)
    model.save(root / "segmentation.keras")
    _save_shards(root / "segmentation-eval", {"image": images[100:], "labels": masks[100:]})
    return {"model": root / "segmentation.keras", "eval": root / "segmentation-eval", "flags": []}


def multilabel(root: Path) -> dict:
    """Sigmoid scores per label: multi-hot [N, C] labels, judged by multi-label mAP (auto)."""
    import keras

    keras.utils.set_random_seed(5)
    images, _ = _images(240, seed=5)
    labels = np.stack([images[..., c].mean(axis=(1, 2)) > 0.5 for c in range(3)], axis=1)
    labels = labels.astype(np.int64)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    hidden = keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    )
    model = keras.Model(inputs, keras.layers.Dense(3, activation="sigmoid")(hidden))
    model.compile("adam", "binary_crossentropy")
    model.fit(images[:160], labels[:160], epochs=8, verbose=0)
    model.save(root / "multilabel.keras")
    _save_shards(root / "multilabel-eval", {"image": images[160:], "labels": labels[160:]})
    return {"model": root / "multilabel.keras", "eval": root / "multilabel-eval", "flags": []}
