"""Unit tests of the procedural demo data set (numpy only, no TensorFlow)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.demo import shapes

pytestmark = pytest.mark.unit


def test_same_seed_gives_identical_images_and_labels():
    first = shapes.generate(40, seed=7, image_size=32)
    second = shapes.generate(40, seed=7, image_size=32)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_different_seeds_give_different_images():
    images_a, _ = shapes.generate(20, seed=1, image_size=32)
    images_b, _ = shapes.generate(20, seed=2, image_size=32)
    assert not np.allclose(images_a, images_b)


@pytest.mark.parametrize("image_size", [32, 96])
def test_shapes_dtypes_and_range(image_size):
    images, labels = shapes.generate(30, seed=0, image_size=image_size)
    assert images.shape == (30, image_size, image_size, 3)
    assert images.dtype == np.float32
    assert labels.shape == (30,)
    assert labels.dtype == np.int64
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert np.isfinite(images).all()


def test_every_class_present_and_balanced():
    _, labels = shapes.generate(200, seed=3, image_size=32)
    counts = np.bincount(labels, minlength=shapes.NUM_CLASSES)
    assert len(shapes.CLASS_NAMES) == shapes.NUM_CLASSES == 10
    assert counts.tolist() == [20] * 10


def test_images_are_not_blank():
    images, _ = shapes.generate(100, seed=4, image_size=48)
    assert (images.std(axis=(1, 2, 3)) > 0.05).all()


def test_empty_request_and_bad_size():
    images, labels = shapes.generate(0, seed=0, image_size=16)
    assert images.shape == (0, 16, 16, 3) and labels.shape == (0,)
    with pytest.raises(ValueError):
        shapes.generate(5, seed=0, image_size=4)


def test_generating_does_not_import_tensorflow():
    code = (
        "import sys; from tasks.demo import shapes; shapes.generate(10, 0, 16); "
        "assert not {'tensorflow', 'keras'} & set(sys.modules), 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
