"""Unit tests of the procedural detection data set and its shard format (numpy only)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.demo import detection

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def scenes():
    return detection.generate(60, seed=11, image_size=64, with_masks=True)


def test_arrays_dtypes_and_shapes(scenes):
    n, m = 60, detection.MAX_OBJECTS
    assert scenes.images.shape == (n, 64, 64, 3) and scenes.images.dtype == np.float32
    assert scenes.boxes.shape == (n, m, 4) and scenes.boxes.dtype == np.float32
    assert scenes.classes.shape == (n, m) and scenes.classes.dtype == np.int64
    assert scenes.masks.shape == (n, m, 64, 64)
    assert 0.0 <= scenes.images.min() and scenes.images.max() <= 1.0


def test_every_image_has_one_to_three_objects_with_label_map_ids(scenes):
    present = scenes.classes > 0
    assert (present.sum(axis=1) >= 1).all() and (present.sum(axis=1) <= 3).all()
    assert set(np.unique(scenes.classes[present])) <= set(range(1, detection.NUM_CLASSES + 1))
    assert np.unique(scenes.classes[present]).size == detection.NUM_CLASSES


def test_padding_rows_are_minus_one_and_come_last(scenes):
    absent = scenes.classes == detection.PADDING
    assert (scenes.boxes[absent] == -1).all()
    assert not (scenes.boxes[~absent] == -1).any()
    assert not scenes.masks[absent].any()
    # objects fill the first slots: no present object after an absent one
    assert (np.diff(absent.astype(int), axis=1) >= 0).all()


def test_boxes_are_the_tight_boxes_of_the_drawn_masks(scenes):
    size = 64
    for i, slot in zip(*np.nonzero(scenes.classes > 0), strict=True):
        rows, cols = np.nonzero(scenes.masks[i, slot])
        expected = [rows.min() / size, cols.min() / size, (rows.max() + 1) / size]
        expected.append((cols.max() + 1) / size)
        np.testing.assert_allclose(scenes.boxes[i, slot], expected, atol=1e-6)
    present = scenes.boxes[scenes.classes > 0]
    assert (present[:, 0] < present[:, 2]).all() and (present[:, 1] < present[:, 3]).all()
    assert present.min() >= 0.0 and present.max() <= 1.0


def test_the_masks_are_what_was_drawn(scenes):
    """Inside an object's mask the image differs from the background around it."""
    for i, slot in zip(*np.nonzero(scenes.classes > 0), strict=True):
        mask = scenes.masks[i, slot]
        ymin, xmin, ymax, xmax = (scenes.boxes[i, slot] * 64).astype(int)
        inside = scenes.images[i][mask].mean(axis=0)
        ring = np.zeros_like(mask)
        ring[max(ymin - 3, 0) : ymax + 3, max(xmin - 3, 0) : xmax + 3] = True
        ring &= ~scenes.masks[i].any(axis=0)
        outside = scenes.images[i][ring].mean(axis=0)
        assert np.linalg.norm(inside - outside) > 0.15, (i, slot)


def test_objects_do_not_overlap(scenes):
    overlap = scenes.masks.sum(axis=1) > 1
    assert not overlap.any()


def test_same_seed_same_scenes_other_seed_other_scenes():
    first = detection.generate(20, seed=3, image_size=48)
    second = detection.generate(20, seed=3, image_size=48)
    other = detection.generate(20, seed=4, image_size=48)
    for name in ("images", "boxes", "classes"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert not np.array_equal(first.boxes, other.boxes)
    assert first.masks is None


def test_empty_request_and_bad_size():
    empty = detection.generate(0, seed=0, image_size=32)
    assert empty.images.shape == (0, 32, 32, 3) and empty.boxes.shape == (0, 3, 4)
    with pytest.raises(ValueError):
        detection.generate(2, seed=0, image_size=8)


def test_boxes_of_empty_and_full_masks():
    masks = np.zeros((2, 4, 8), dtype=bool)
    masks[1, 1:3, 2:8] = True
    boxes = detection.boxes_of_masks(masks)
    np.testing.assert_array_equal(boxes[0], [-1, -1, -1, -1])
    np.testing.assert_allclose(boxes[1], [0.25, 0.25, 0.75, 1.0])


def _jpeg_like(body: bytes) -> bytes:
    return b"\xff\xd8\xff\xe0" + body + b"\xff\xd9"


def test_s_array_round_trip_through_npz_keeps_every_byte(tmp_path):
    items = [_jpeg_like(b"\x00\x00ab\x00"), _jpeg_like(b""), _jpeg_like(b"\x00" * 50)]
    packed = detection.pack_bytes(items)
    assert packed.dtype == np.dtype(f"S{max(len(item) for item in items)}")
    np.savez(tmp_path / "shard.npz", image_bytes=packed)
    with np.load(tmp_path / "shard.npz", allow_pickle=False) as data:
        loaded = data["image_bytes"]
    assert [bytes(item) for item in loaded] == items


def test_numpy_strips_trailing_nul_so_such_items_are_refused():
    stripped = np.array([b"ab\x00\x00"], dtype="S4")
    assert stripped[0] == b"ab"
    with pytest.raises(ValueError, match="NUL"):
        detection.pack_bytes([b"\xff\xd9", b"ab\x00"])


def test_summary_counts_objects_per_class(scenes):
    counts = detection.summary(scenes)
    assert counts["images"] == 60
    assert counts["objects"] == int((scenes.classes > 0).sum())
    assert sum(counts["per_class"].values()) == counts["objects"]
    assert list(counts["per_class"]) == list(detection.CLASS_NAMES)


def test_generating_does_not_import_tensorflow():
    code = (
        "import sys; from tasks.demo import detection; detection.generate(4, 0, 32); "
        "detection.pack_bytes([b'\\xff\\xd9']); "
        "assert not {'tensorflow', 'keras'} & set(sys.modules), 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
