"""Integration fixtures: a tiny trained Keras model with eval and calibration shards on disk."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest

INPUT = "image"
SIZE = 16


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.random((n, SIZE, SIZE, 3), dtype=np.float32)
    labels = (
        images[:, : SIZE // 2].mean(axis=(1, 2, 3)) > images[:, SIZE // 2 :].mean(axis=(1, 2, 3))
    ).astype(np.int64)
    return images, labels


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> dict[str, Path]:
    """A small conv net trained for a few epochs (a real model, seconds to build)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("tiny")
    images, labels = _data(800, seed=0)
    inputs = keras.Input((SIZE, SIZE, 3), name=INPUT)
    hidden = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    hidden = keras.layers.Flatten()(hidden)
    outputs = keras.layers.Dense(2, activation="softmax")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(images[:500], labels[:500], epochs=15, verbose=0)
    (root / "model").mkdir()
    model.save(root / "model" / "model.keras")
    for name in ("eval", "calibration", "saved_model_src"):
        (root / name).mkdir()
    np.savez(root / "eval" / "shard-00000.npz", image=images[500:650], labels=labels[500:650])
    np.savez(root / "eval" / "shard-00001.npz", image=images[650:700], labels=labels[650:700])
    np.savez(root / "calibration" / "shard-00000.npz", image=images[700:800])
    return {
        "root": root,
        "model": root / "model" / "model.keras",
        "eval": root / "eval",
        "calibration": root / "calibration",
    }


@pytest.fixture
def model_name() -> str:
    """A registered model name of its own for each test."""
    return f"it-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def work_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TFOPT_WORK_DIR", str(tmp_path / "work"))
    return tmp_path / "work"
