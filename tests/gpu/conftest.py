"""GPU tier fixtures: TF-TRT or a skip with its reason, and a tiny exported Keras model."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tasks.backends import get_backend
from tasks.signature import Signature, TensorInfo

log = logging.getLogger(__name__)

INPUT = "image"


@pytest.fixture(scope="session")
def tftrt_backend():
    """The TF-TRT backend, or a skip carrying the reason it cannot run on this worker."""
    backend = get_backend("tftrt")
    reason = backend.available()
    if reason:
        log.warning("skipping TF-TRT tests: %s", reason)
        pytest.skip(reason)
    return backend


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 16x16x3 conv + dense + softmax model with random weights, exported for serving."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3), name=INPUT)
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    saved_model_dir = tmp_path_factory.mktemp("export") / "saved_model"
    model.export(str(saved_model_dir), verbose=False)
    rng = np.random.default_rng(0)
    calibration = rng.random((16, 16, 16, 3), dtype=np.float32)
    test_x = rng.random((8, 16, 16, 3), dtype=np.float32)
    return {
        "dir": saved_model_dir,
        "signature": Signature(
            inputs=(TensorInfo(INPUT, "float32", (None, 16, 16, 3)),),
            outputs=(TensorInfo("output_0", "float32", (None, 10)),),
        ),
        "calibration": lambda: ({INPUT: calibration[i : i + 1]} for i in range(16)),
        "test_x": test_x,
        "expected": model.predict(test_x, verbose=0),
    }
