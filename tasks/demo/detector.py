"""The demo detector: a CenterNet-style single-shot model of the detection shapes, its trainer and
its serving export (encoded image strings in, TF Object Detection API outputs out)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.demo import detection

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

logger = logging.getLogger(__name__)

MODEL_INPUT = "image"
HEAD_OUTPUT = "head"
OUTPUT_NAMES = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
BN_MOMENTUM = 0.9
_PRIOR = 0.1  # initial heatmap probability (CenterNet's focal-loss bias init)


@dataclass(frozen=True)
class DetectorConfig:
    """How to build, train and decode the detector; the defaults meet the mAP@0.5 >= 0.5 target.

    The network sees `image_size` px and predicts, per cell of a grid of stride 4, a heatmap per
    class, the box size (in cells) and the centre's offset within the cell. Decoding keeps the
    `top_k` 3x3 local maxima of the heatmap over all classes (no NMS).
    """

    image_size: int = detection.DEFAULT_IMAGE_SIZE
    widths: tuple[int, int, int, int] = (24, 48, 96, 128)
    depth: tuple[int, int, int] = (1, 1, 1)
    head_width: int = 64
    n_train: int = 4000
    n_eval: int = 500
    epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_fraction: float = 0.03
    top_k: int = 20
    min_score: float = 0.05
    seed: int = 0
    train_seed: int = 1
    eval_seed: int = 2

    @classmethod
    def tiny(cls) -> DetectorConfig:
        """A real but minute configuration for tests: 64 px, few filters, 128 images, 1 epoch."""
        return cls(
            image_size=64,
            widths=(8, 16, 16, 32),
            head_width=16,
            n_train=128,
            n_eval=32,
            epochs=1,
            batch_size=32,
        )

    @property
    def stride(self) -> int:
        return 4

    @property
    def grid(self) -> int:
        return self.image_size // self.stride

    def with_seed(self, seed: int) -> DetectorConfig:
        """This configuration with model seed `seed`, train data `seed + 1`, eval `seed + 2`."""
        return replace(self, seed=seed, train_seed=seed + 1, eval_seed=seed + 2)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["widths"] = list(self.widths)
        data["depth"] = list(self.depth)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        values = dict(data)
        for key in ("widths", "depth"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


# --- targets ----------------------------------------------------------------------------------


def encode_targets(boxes: np.ndarray, classes: np.ndarray, grid: int) -> np.ndarray:
    """Training targets [N, grid, grid, C + 5]: heatmaps, size, offset, centre mask.

    Each object puts a Gaussian (sigma = its size / 6 per axis, peak 1 at its centre cell) on its
    class's heatmap, and its size in cells and centre offset within the cell at that cell.
    """
    n, c = len(boxes), detection.NUM_CLASSES
    targets = np.zeros((n, grid, grid, c + 5), dtype=np.float32)
    cells = np.arange(grid, dtype=np.float32)
    for i, slot in zip(*np.nonzero(classes > 0), strict=True):
        ymin, xmin, ymax, xmax = boxes[i, slot] * grid
        cy, cx = (ymin + ymax) / 2, (xmin + xmax) / 2
        row, col = min(int(cy), grid - 1), min(int(cx), grid - 1)
        sy, sx = max((ymax - ymin) / 6, 0.5), max((xmax - xmin) / 6, 0.5)
        gauss = np.exp(
            -((cells[:, None] - row) ** 2) / (2 * sy**2) - (cells[None, :] - col) ** 2 / (2 * sx**2)
        )
        channel = classes[i, slot] - 1
        np.maximum(targets[i, :, :, channel], gauss, out=targets[i, :, :, channel])
        targets[i, row, col, c:] = (ymax - ymin, xmax - xmin, cy - row, cx - col, 1.0)
    return targets


# --- model ------------------------------------------------------------------------------------


def _conv_bn_relu(x: Any, filters: int, kernel: int, stride: int, name: str) -> Any:
    import keras

    layers = keras.layers
    x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x)


def _separable(x: Any, filters: int, stride: int, name: str) -> Any:
    """Depthwise 3x3 + BN + ReLU6, then pointwise 1x1 + BN + ReLU6."""
    import keras

    layers = keras.layers
    x = layers.DepthwiseConv2D(3, stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    return _conv_bn_relu(x, filters, 1, 1, f"{name}_pw")


def _stage(x: Any, filters: int, depth: int, name: str) -> Any:
    """A stride-2 separable block followed by `depth` stride-1 ones."""
    x = _separable(x, filters, 2, f"{name}a")
    for index in range(depth):
        x = _separable(x, filters, 1, f"{name}b{index or ''}")
    return x


def _merge_up(coarse: Any, fine: Any, filters: int, name: str) -> Any:
    """Upsample `coarse` x2, project both to `filters`, add, refine with a separable block."""
    import keras

    layers = keras.layers
    up = layers.UpSampling2D(2, name=f"{name}_up")(coarse)
    up = _conv_bn_relu(up, filters, 1, 1, f"{name}_up_proj")
    lateral = _conv_bn_relu(fine, filters, 1, 1, f"{name}_lateral")
    return _separable(layers.Add(name=f"{name}_add")([up, lateral]), filters, 1, f"{name}_out")


def build_model(config: DetectorConfig) -> keras.Model:
    """The network: `image` float32 [N, H, W, 3] in [0, 1] -> `head` [N, H/4, W/4, C + 4].

    The head holds per cell the class heatmap logits, the box size (cells) and centre offset.
    """
    import keras

    w1, w2, w3, w4 = config.widths
    size = config.image_size
    inputs = keras.Input(shape=(size, size, 3), name=MODEL_INPUT)
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="to_symmetric")(inputs)
    x = _conv_bn_relu(x, w1, 3, 2, "stem")
    c4 = _stage(x, w2, config.depth[0], "s4")
    c8 = _stage(c4, w3, config.depth[1], "s8")
    c16 = _stage(c8, w4, config.depth[2], "s16")
    p8 = _merge_up(c16, c8, w3, "p8")
    p4 = _merge_up(p8, c4, config.head_width, "p4")
    heat = _separable(p4, config.head_width, 1, "heat_hidden")
    heat = keras.layers.Conv2D(
        detection.NUM_CLASSES,
        1,
        bias_initializer=keras.initializers.Constant(-math.log((1 - _PRIOR) / _PRIOR)),
        name="heatmap",
    )(heat)
    box = _separable(p4, config.head_width, 1, "box_hidden")
    box = keras.layers.Conv2D(4, 1, name="box")(box)
    outputs = keras.layers.Concatenate(name=HEAD_OUTPUT)([heat, box])
    return keras.Model(inputs, outputs, name=f"shapes_centernet_{size}")


def detection_loss(targets: tf.Tensor, head: tf.Tensor) -> tf.Tensor:
    """CenterNet's loss: penalty-reduced focal loss on heatmaps + L1 on size (x0.1) and offset."""
    import tensorflow as tf

    c = detection.NUM_CLASSES
    heat = tf.clip_by_value(tf.sigmoid(head[..., :c]), 1e-4, 1.0 - 1e-4)
    gt, mask = targets[..., :c], targets[..., c + 4 : c + 5]
    positive = tf.cast(tf.equal(gt, 1.0), tf.float32)
    pos_loss = tf.math.log(heat) * tf.square(1.0 - heat) * positive
    neg_loss = tf.math.log(1.0 - heat) * tf.square(heat) * tf.pow(1.0 - gt, 4.0) * (1.0 - positive)
    num_objects = tf.maximum(tf.reduce_sum(mask), 1.0)
    focal = -tf.reduce_sum(pos_loss + neg_loss) / num_objects
    size_l1 = tf.reduce_sum(tf.abs(head[..., c : c + 2] - targets[..., c : c + 2]) * mask)
    offset_l1 = tf.reduce_sum(tf.abs(head[..., c + 2 : c + 4] - targets[..., c + 2 : c + 4]) * mask)
    return focal + (0.1 * size_l1 + offset_l1) / num_objects


# --- decoding ---------------------------------------------------------------------------------


def decode(head: tf.Tensor, top_k: int, min_score: float) -> dict[str, tf.Tensor]:
    """Head [N, G, G, C + 4] -> the TF Object Detection API outputs, from top-K heatmap peaks.

    Only numeric ops (max-pool, top-k, gather), so a converter can take the whole decoder.
    """
    import tensorflow as tf

    c = detection.NUM_CLASSES
    grid = head.shape[1]
    heat = tf.sigmoid(head[..., :c])
    peaks = heat * tf.cast(tf.equal(tf.nn.max_pool2d(heat, 3, 1, "SAME"), heat), heat.dtype)
    scores, index = tf.math.top_k(tf.reshape(peaks, [-1, grid * grid * c]), k=top_k)
    cell, label = index // c, index % c
    box = tf.gather(tf.reshape(head[..., c:], [-1, grid * grid, 4]), cell, batch_dims=1)
    row = tf.cast(cell // grid, tf.float32)
    col = tf.cast(cell % grid, tf.float32)
    cy, cx = (row + box[..., 2]) / grid, (col + box[..., 3]) / grid
    half_h, half_w = tf.abs(box[..., 0]) / (2 * grid), tf.abs(box[..., 1]) / (2 * grid)
    boxes = tf.clip_by_value(
        tf.stack([cy - half_h, cx - half_w, cy + half_h, cx + half_w], axis=-1), 0.0, 1.0
    )
    return {
        "detection_boxes": boxes,
        "detection_scores": scores,
        "detection_classes": tf.cast(label + 1, tf.float32),
        "num_detections": tf.reduce_sum(tf.cast(scores >= min_score, tf.float32), axis=1),
    }


def predict(
    model: keras.Model, images: np.ndarray, config: DetectorConfig, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Decoded detections of float images [N, H, W, 3] (the serving graph's numeric part)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def run(batch: tf.Tensor) -> dict[str, tf.Tensor]:
        return decode(model(batch, training=False), config.top_k, config.min_score)

    parts = [
        run(tf.constant(images[i : i + batch_size])) for i in range(0, len(images), batch_size)
    ]
    return {name: np.concatenate([p[name].numpy() for p in parts]) for name in OUTPUT_NAMES}


# --- evaluation -------------------------------------------------------------------------------


def coco_map(
    detections: dict[str, np.ndarray], gt_boxes: np.ndarray, gt_classes: np.ndarray
) -> dict[str, float]:
    """COCO bbox mAP of decoded detections (`map50`, `map`), by tfopt's own detection metric."""
    from tasks.metrics import OutputChoice, get_metric

    if not np.asarray(detections["num_detections"]).any():
        return {"map50": 0.0, "map": 0.0}
    roles = dict(zip(("boxes", "scores", "classes", "num_detections"), OUTPUT_NAMES, strict=True))
    accumulator = get_metric("map50").accumulator(OutputChoice(roles))
    accumulator.update(detections, {"gt_boxes": gt_boxes, "gt_classes": gt_classes}, detections)
    details = accumulator.value().details
    return {"map50": details["map50"], "map": details["map"]}


# --- training ---------------------------------------------------------------------------------


def _compiled_model(config: DetectorConfig) -> keras.Model:
    """The seeded, freshly initialised model with Adam on a warm-up + cosine schedule."""
    import keras

    keras.utils.set_random_seed(config.seed)
    model = build_model(config)
    total = max(1, config.epochs * math.ceil(config.n_train / config.batch_size))
    warmup = int(total * config.warmup_fraction)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.learning_rate,
        decay_steps=total - warmup,
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=detection_loss)
    return model


def _train_dataset(scenes: detection.Scenes, config: DetectorConfig) -> tf.data.Dataset:
    import tensorflow as tf

    targets = encode_targets(scenes.boxes, scenes.classes, config.grid)
    return (
        tf.data.Dataset.from_tensor_slices((scenes.images, targets))
        .shuffle(len(targets), seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


def _epoch_logger(epochs: int) -> keras.callbacks.Callback:
    """A callback logging one line per epoch (loss, elapsed)."""
    import keras

    class EpochLogger(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            loss = (logs or {}).get("loss", math.nan)
            elapsed = time.perf_counter() - self.start
            logger.info("epoch %d/%d: loss %.4f (%.1f s)", epoch + 1, epochs, loss, elapsed)

    return EpochLogger()


def train(config: DetectorConfig | None = None) -> tuple[keras.Model, dict[str, Any]]:
    """Generate the data, build the detector and train it; score it on the held-out set.

    Returns:
        `(model, metrics)`: `map50`, `map` (COCO, held-out set), `train_s` (the `fit` wall
        time), `data_s`, `params`, the per-epoch `loss` and the `config`.
    """
    config = config or DetectorConfig()
    started = time.perf_counter()
    train_set = detection.generate(config.n_train, config.train_seed, config.image_size)
    held_out = detection.generate(config.n_eval, config.eval_seed, config.image_size)
    data_seconds = time.perf_counter() - started
    model = _compiled_model(config)
    logger.info(
        "training %s (%d params) on %d images for %d epochs",
        model.name,
        model.count_params(),
        config.n_train,
        config.epochs,
    )
    fit_start = time.perf_counter()
    history = model.fit(
        _train_dataset(train_set, config),
        epochs=config.epochs,
        callbacks=[_epoch_logger(config.epochs)],
        shuffle=False,  # the dataset shuffles, seeded
        verbose=0,
    )
    train_seconds = time.perf_counter() - fit_start
    scores = coco_map(predict(model, held_out.images, config), held_out.boxes, held_out.classes)
    metrics = {
        **scores,
        "train_s": round(train_seconds, 2),
        "data_s": round(data_seconds, 2),
        "params": int(model.count_params()),
        "loss": [float(v) for v in history.history["loss"]],
        "config": config.to_dict(),
    }
    logger.info(
        "held-out mAP@0.5 %.4f, mAP %.4f, %.1f s of training",
        metrics["map50"],
        metrics["map"],
        train_seconds,
    )
    return model, metrics


# --- serving export ---------------------------------------------------------------------------


class _Serving:
    """Builds the `serving_default` function: encoded strings -> decoded float batch -> outputs."""

    def __init__(self, model: keras.Model, config: DetectorConfig, encoding: str) -> None:
        self.model, self.config, self.encoding = model, config, encoding

    def decode_images(self, image_bytes: tf.Tensor) -> tf.Tensor:
        """[N] strings -> float32 [N, S, S, 3] in [0, 1]."""
        import tensorflow as tf

        size = self.config.image_size

        def one(item: tf.Tensor) -> tf.Tensor:
            data = tf.io.decode_base64(item) if self.encoding == "base64" else item
            image = tf.io.decode_jpeg(data, channels=3)
            return tf.image.resize(tf.cast(image, tf.float32), [size, size])

        spec = tf.TensorSpec([size, size, 3], tf.float32)
        return tf.map_fn(one, image_bytes, fn_output_signature=spec) / 255.0

    def __call__(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        head = self.model(self.decode_images(image_bytes), training=False)
        return decode(head, self.config.top_k, self.config.min_score)


def export_serving(
    model: keras.Model, config: DetectorConfig, out_dir: str | Path, encoding: str = "jpeg"
) -> Path:
    """Write a SavedModel whose `serving_default` takes `image_bytes` tf.string [None].

    Args:
        model: The trained network.
        config: Its configuration (image size, top-K, score threshold of `num_detections`).
        out_dir: The SavedModel folder to write.
        encoding: `jpeg` (raw JPEG bytes) or `base64` (web-safe base64 of JPEG bytes).

    Returns:
        The SavedModel folder.
    """
    import tensorflow as tf

    if encoding not in detection.ENCODINGS:
        raise ValueError(f"encoding must be one of {detection.ENCODINGS}, got {encoding!r}")
    module = tf.Module()
    module.model = model
    serving = _Serving(model, config, encoding)
    spec = tf.TensorSpec([None], tf.string, name=detection.INPUT_NAME)
    module.serve = tf.function(serving.__call__, input_signature=[spec])
    path = Path(out_dir)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    logger.info("exported the %s-input detector to %s", encoding, path)
    return path
