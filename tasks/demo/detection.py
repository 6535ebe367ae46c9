"""The procedural detection data set: 1-3 drawn shapes per image with their boxes and classes."""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.demo import shapes
from tasks.demo.bundle import write_shards

logger = logging.getLogger(__name__)

CLASS_NAMES = ("circle", "square", "triangle", "cross")
NUM_CLASSES = len(CLASS_NAMES)
MAX_OBJECTS = 3
DEFAULT_IMAGE_SIZE = 96
PADDING = -1
INPUT_NAME = "image_bytes"
BOXES_KEY = "gt_boxes"
CLASSES_KEY = "gt_classes"
ENCODINGS = ("jpeg", "base64")
JPEG_QUALITY = 95
_SHAPE_INDEX = tuple(shapes.CLASS_NAMES.index(name) for name in CLASS_NAMES)
_CHUNK = 128
_MIN_SCALE, _MAX_SCALE = 0.2, 0.36  # shape radius, as a fraction of half the image side
_EXTENT = 1.2  # how far a shape may reach from its centre, in shape-local units
_PLACEMENT_TRIES = 20
_MIN_COLOUR_DISTANCE = 0.4


@dataclass(frozen=True)
class Scenes:
    """Generated images with their ground truth.

    Attributes:
        images: float32 [N, H, W, 3] in [0, 1].
        boxes: float32 [N, MAX_OBJECTS, 4], normalized `[ymin, xmin, ymax, xmax]` (pixel edges:
            row r spans [r / H, (r + 1) / H]); absent objects are rows of -1.
        classes: int64 [N, MAX_OBJECTS], label-map ids `1..NUM_CLASSES` (`CLASS_NAMES[id - 1]`,
            0 is background as in the TF Object Detection API); absent objects are -1.
        masks: bool [N, MAX_OBJECTS, H, W], each object's drawn pixels, when asked for.
    """

    images: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)


def _place(rng: np.random.Generator, count: int) -> list[tuple[float, float, float]]:
    """Up to `count` (cx, cy, scale) in [-1, 1] image units, inside the image, not overlapping."""
    placed: list[tuple[float, float, float]] = []
    for _ in range(count):
        for _ in range(_PLACEMENT_TRIES):
            scale = rng.uniform(_MIN_SCALE, _MAX_SCALE)
            reach = _EXTENT * scale
            cx, cy = rng.uniform(-1.0 + reach, 1.0 - reach, size=2)
            if all(
                np.hypot(cx - ox, cy - oy) > _EXTENT * (scale + other) for ox, oy, other in placed
            ):
                placed.append((float(cx), float(cy), float(scale)))
                break
    return placed


def _foregrounds(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """Object colours [n, MAX_OBJECTS, 3], each far enough from its image's background."""
    n = len(background)
    candidates = rng.uniform(0.0, 1.0, size=(n, MAX_OBJECTS, 16, 3))
    distance = np.linalg.norm(candidates - background[:, None, None, :], axis=-1)
    first_far = np.argmax(distance > _MIN_COLOUR_DISTANCE, axis=-1)
    picked = np.take_along_axis(candidates, first_far[..., None, None], axis=2)[:, :, 0]
    return picked.astype(np.float32)


def _sample_layout(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Per-image objects (class, pose, colour) and background, drawn up front."""
    counts = rng.integers(1, MAX_OBJECTS + 1, size=n)
    present = np.zeros((n, MAX_OBJECTS), dtype=bool)
    pose = np.zeros((n, MAX_OBJECTS, 3), dtype=np.float32)
    for i, count in enumerate(counts):
        placed = _place(rng, int(count))
        present[i, : len(placed)] = True
        pose[i, : len(placed)] = placed
    background = rng.uniform(0.0, 1.0, size=(n, 3)).astype(np.float32)
    return {
        "present": present,
        "classes": np.where(present, rng.integers(0, NUM_CLASSES, size=(n, MAX_OBJECTS)), -1),
        "pose": pose,
        "angle": rng.uniform(0.0, 2 * np.pi, size=(n, MAX_OBJECTS)).astype(np.float32),
        "freq": (rng.uniform(2.2, 3.6, size=(n, MAX_OBJECTS)) * np.pi).astype(np.float32),
        "background": background,
        "foreground": _foregrounds(rng, background),
        "texture": rng.uniform(0.05, 0.2, n),
        "noise": rng.uniform(0.02, 0.08, n),
        "line_width": np.where(rng.random(n) < 0.5, rng.uniform(0.01, 0.03, n), 0.0),
        "line_offset": rng.uniform(-0.6, 0.6, n),
        "line_angle": rng.uniform(0.0, np.pi, n),
        "line_colour": rng.uniform(0.0, 1.0, size=(n, 3)).astype(np.float32),
    }


def _object_masks(layout: dict[str, np.ndarray], axis: np.ndarray) -> np.ndarray:
    """Each object's pixels, bool [B, MAX_OBJECTS, H, W] (all False for absent objects)."""
    b, size = len(layout["present"]), len(axis)
    masks = np.zeros((b, MAX_OBJECTS, size, size), dtype=bool)
    for slot in range(MAX_OBJECTS):
        cx, cy, scale = (layout["pose"][:, slot, k][:, None, None] for k in range(3))
        u, v = axis[None, None, :] - cx, axis[None, :, None] - cy
        cos = np.cos(layout["angle"][:, slot])[:, None, None]
        sin = np.sin(layout["angle"][:, slot])[:, None, None]
        x = (u * cos + v * sin) / np.maximum(scale, 1e-6)
        y = (v * cos - u * sin) / np.maximum(scale, 1e-6)
        freq = np.broadcast_to(layout["freq"][:, slot, None, None], x.shape)
        labels = layout["classes"][:, slot]
        for label in np.unique(labels[labels >= 0]):
            idx = np.flatnonzero(labels == label)
            masks[idx, slot] = shapes._MASKS[_SHAPE_INDEX[label]](x[idx], y[idx], freq[idx])
    return masks


def _render(
    layout: dict[str, np.ndarray], masks: np.ndarray, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw one chunk of images [B, size, size, 3] float32 in [0, 1] from its objects' masks."""
    b = len(masks)
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    tint = layout["texture"].astype(np.float32)[:, None, None, None]
    images = layout["background"][:, None, None, :] + tint * shapes._smooth_noise(rng, b, size, 6)
    images = shapes._draw_line(images, axis, layout)
    texture = 0.5 * tint * shapes._smooth_noise(rng, b, size, 4)
    for slot in range(MAX_OBJECTS):
        colour = layout["foreground"][:, slot, None, None, :] + texture
        images = np.where(masks[:, slot, ..., None], colour, images)
    sigma = layout["noise"].astype(np.float32)[:, None, None, None]
    noise = rng.random(images.shape, dtype=np.float32) - 0.5
    images = images + (sigma * np.sqrt(12.0, dtype=np.float32)) * noise
    return np.clip(images, 0.0, 1.0).astype(np.float32)


def boxes_of_masks(masks: np.ndarray) -> np.ndarray:
    """Tight normalized boxes [..., 4] of boolean masks [..., H, W]; -1 rows for empty masks."""
    height, width = masks.shape[-2:]
    rows, cols = masks.any(axis=-1), masks.any(axis=-2)
    present = rows.any(axis=-1)
    ymin = np.argmax(rows, axis=-1)
    ymax = height - np.argmax(rows[..., ::-1], axis=-1)
    xmin = np.argmax(cols, axis=-1)
    xmax = width - np.argmax(cols[..., ::-1], axis=-1)
    boxes = np.stack([ymin / height, xmin / width, ymax / height, xmax / width], axis=-1)
    return np.where(present[..., None], boxes, PADDING).astype(np.float32)


def generate(
    n: int, seed: int, image_size: int = DEFAULT_IMAGE_SIZE, *, with_masks: bool = False
) -> Scenes:
    """Generate `n` images with 1-3 non-overlapping shapes each, the same for the same arguments.

    Args:
        n: Number of images.
        seed: Seed of the generator; different seeds give different scenes.
        image_size: Height and width in pixels.
        with_masks: Also return every object's mask (memory: N * 3 * H * W bytes).

    Returns:
        The scenes; each box is the tight box of its object's drawn pixels.
    """
    if n < 0 or image_size < 16:
        raise ValueError(f"need n >= 0 and image_size >= 16, got n={n}, image_size={image_size}")
    rng = np.random.default_rng(seed)
    layout = _sample_layout(rng, n)
    axis = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size * 2.0 - 1.0
    images = np.empty((n, image_size, image_size, 3), dtype=np.float32)
    boxes = np.full((n, MAX_OBJECTS, 4), PADDING, dtype=np.float32)
    all_masks = np.zeros((n, MAX_OBJECTS, image_size, image_size), bool) if with_masks else None
    for start in range(0, n, _CHUNK):
        part = slice(start, min(start + _CHUNK, n))
        chunk = {key: value[part] for key, value in layout.items()}
        masks = _object_masks(chunk, axis)
        images[part] = _render(chunk, masks, image_size, rng)
        boxes[part] = boxes_of_masks(masks)
        if all_masks is not None:
            all_masks[part] = masks
    drawn = boxes[..., 0] >= 0
    classes = np.where(drawn, layout["classes"] + 1, PADDING).astype(np.int64)
    logger.debug("generated %d scenes of %d px (seed %d)", n, image_size, seed)
    return Scenes(images=images, boxes=boxes, classes=classes, masks=all_masks)


def pack_bytes(items: Sequence[bytes]) -> np.ndarray:
    """Byte strings as a fixed-width `S` array, loadable with `allow_pickle=False`.

    numpy drops trailing NUL bytes of `S` items, so an item ending in NUL would not survive the
    round trip and is refused (JPEG ends with FF D9, base64 text never holds NUL).
    """
    truncated = [index for index, item in enumerate(items) if item.endswith(b"\0")]
    if truncated:
        raise ValueError(f"items {truncated[:5]} end with NUL bytes, which an S array drops")
    width = max((len(item) for item in items), default=1)
    return np.array(list(items), dtype=f"S{max(width, 1)}")


def encode_images(images: np.ndarray, encoding: str = "jpeg") -> list[bytes]:
    """Encode float images [N, H, W, 3] in [0, 1] as JPEG bytes, or web-safe base64 of them."""
    import tensorflow as tf

    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    pixels = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    encoded = [tf.io.encode_jpeg(image, quality=JPEG_QUALITY).numpy() for image in pixels]
    if encoding == "base64":
        return [base64.urlsafe_b64encode(item) for item in encoded]
    return encoded


def write_eval_shards(
    directory: Path, scenes: Scenes, shard_size: int, encoding: str = "jpeg"
) -> list[Path]:
    """Eval shards: `image_bytes` (S array), `gt_boxes` float32 and `gt_classes` int64."""
    arrays = {
        INPUT_NAME: pack_bytes(encode_images(scenes.images, encoding)),
        BOXES_KEY: scenes.boxes,
        CLASSES_KEY: scenes.classes,
    }
    return write_shards(directory, arrays, shard_size)


def write_calibration_shards(
    directory: Path, scenes: Scenes, shard_size: int, encoding: str = "jpeg"
) -> list[Path]:
    """Calibration shards: `image_bytes` only."""
    arrays = {INPUT_NAME: pack_bytes(encode_images(scenes.images, encoding))}
    return write_shards(directory, arrays, shard_size)


def summary(scenes: Scenes) -> dict[str, Any]:
    """Counts of a generated set: images, objects, objects per class name."""
    ids = scenes.classes[scenes.classes > 0]
    per_class = np.bincount(ids, minlength=NUM_CLASSES + 1)[1:]
    return {
        "images": len(scenes),
        "objects": int(ids.size),
        "per_class": dict(zip(CLASS_NAMES, per_class.tolist(), strict=True)),
    }
