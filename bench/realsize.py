"""Real-size bench networks: Keras applications at 224 px, BatchNorm statistics from demo images.

No weights can be downloaded here, so the networks are built with `weights=None`. A random-init
network's BatchNorm layers hold mean 0 / variance 1, which real activations do not have; every
BatchNormalization layer's moving statistics are therefore set to those of one batch of the
demo's shapes images (rendered at 224 px), so activations keep realistic ranges through the
depth of the network, which is what quantization sees. The heads give logits
(`classifier_activation=None`): random-init logits are near-tied, so the bench judges variants
by the fidelity metric's cosine similarity, not by argmax agreement.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

IMAGE_SIZE = 224
APPLICATIONS = {"mobilenet_v2": "MobileNetV2", "resnet50": "ResNet50"}
"""Bench model name -> its `keras.applications` constructor."""
WEIGHTS_SEED, BATCHNORM_SEED, EVAL_SEED, CALIBRATION_SEED = 10, 11, 12, 13


def images(count: int, seed: int) -> np.ndarray:
    """`count` demo shapes images at 224 px, float32 in [0, 1], `[count, 224, 224, 3]`."""
    from tasks.demo import shapes

    return shapes.generate(count, seed, IMAGE_SIZE)[0]


def set_batchnorm_statistics(model: Any, batch: np.ndarray) -> int:
    """Moving mean and variance of every BatchNormalization layer := those of `batch`.

    One training-mode forward pass with every layer's momentum at 0 (each layer then sees the
    activations normalised by the layers before it); the momenta are restored afterwards.

    Returns:
        The number of BatchNormalization layers set.
    """
    import keras

    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    try:
        model(batch, training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return len(layers)


def build(name: str, batchnorm_images: int) -> Any:
    """The named network at 224 px with BatchNorm statistics from `batchnorm_images` images.

    Its random weights are seeded (`WEIGHTS_SEED`), so every bench run judges and times the
    same network: unseeded, a variant near the gate (OpenVINO BF16 on MobileNetV2, cosine
    0.989-0.990) passed in one run and failed in the next.
    """
    import keras

    keras.utils.set_random_seed(WEIGHTS_SEED)
    constructor = getattr(keras.applications, APPLICATIONS[name])
    model = constructor(
        weights=None, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), classifier_activation=None
    )
    count = set_batchnorm_statistics(model, images(batchnorm_images, BATCHNORM_SEED))
    logger.info(
        "%s: %d parameters, %d BatchNorm layers set from %d demo images",
        name,
        model.count_params(),
        count,
        batchnorm_images,
    )
    return model


def export(model: Any, out_dir: Path) -> Path:
    """`model.export` to `out_dir/saved_model` (the serving SavedModel tfopt exports too)."""
    saved_model = out_dir / "saved_model"
    model.export(str(saved_model), format="tf_saved_model", verbose=False)
    return saved_model
