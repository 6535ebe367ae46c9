"""Unit tests of tasks.datasets: every signature dtype, dynamic dims, ground truth, the hold-out."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.datasets import HoldOut, check_truth, iter_batches, open_dataset, sample_feeds
from tasks.errors import UserInputError
from tasks.metrics import get_metric
from tasks.signature import Signature, TensorInfo, as_feed, numpy_dtype

pytestmark = pytest.mark.unit


def signature(*inputs: TensorInfo) -> Signature:
    return Signature(inputs=inputs, outputs=(TensorInfo("y", "float32", (None, 2)),))


def write(folder, **shards):
    folder.mkdir(parents=True, exist_ok=True)
    for name, arrays in shards.items():
        np.savez(folder / f"{name}.npz", **arrays)
    return folder


DTYPES = [
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "bool",
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_numeric_dtype_is_checked_and_batched(tmp_path, dtype):
    x = np.ones((5, 3), dtype=dtype)
    folder = write(tmp_path / "d", a={"x": x, "labels": np.arange(5)})
    data = open_dataset(str(folder), tmp_path / "w", signature(TensorInfo("x", dtype, (None, 3))))
    assert data.num_samples == 5 and data.truth == ("labels",)
    (feeds, truth), *_ = list(iter_batches(data, 4))
    assert feeds["x"].dtype == np.dtype(dtype) and truth["labels"].tolist() == [0, 1, 2, 3]


def test_a_wrong_dtype_names_the_cast(tmp_path):
    folder = write(tmp_path / "d", a={"x": np.ones((2, 3), np.float64)})
    with pytest.raises(UserInputError, match=r"astype\(np.float32\)"):
        open_dataset(str(folder), tmp_path / "w", signature(TensorInfo("x", "float32", (None, 3))))


def test_strings_are_fixed_width_bytes_across_shards(tmp_path):
    first = np.array([b"ab", b"abcdef"], dtype="S6")
    second = np.array([b"x" * 10], dtype="S10")
    folder = write(tmp_path / "d", a={"s": first}, b={"s": second})
    sig = signature(TensorInfo("s", "string", (None,)))
    data = open_dataset(str(folder), tmp_path / "w", sig)
    (feeds, _), *_ = list(iter_batches(data, 3))
    assert feeds["s"].tolist() == [b"ab", b"abcdef", b"x" * 10]


def test_jpeg_bytes_survive_the_fixed_width_round_trip(tmp_path):
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x00" + b"\x00" * 3 + b"\xff\xd9"
    folder = write(tmp_path / "d", a={"s": np.array([jpeg, jpeg[:-2] + b"\xff\xd9"], dtype="S")})
    data = open_dataset(str(folder), tmp_path / "w", signature(TensorInfo("s", "string", (None,))))
    (feeds, _), *_ = list(iter_batches(data, 2))
    assert feeds["s"][0] == jpeg  # numpy strips trailing NULs only; a JPEG ends with FF D9


@pytest.mark.parametrize("bad", [np.array(["a", "b"]), np.array([1, 2], dtype=np.int64)])
def test_string_inputs_must_be_bytes(tmp_path, bad):
    folder = write(tmp_path / "d", a={"s": bad})
    with pytest.raises(UserInputError, match="fixed-width"):
        open_dataset(str(folder), tmp_path / "w", signature(TensorInfo("s", "string", (None,))))


def test_pickled_objects_are_refused_with_the_fix(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    np.savez(folder / "a.npz", s=np.array([b"a", None], dtype=object))
    with pytest.raises(UserInputError, match="dtype='S'"):
        open_dataset(str(folder), tmp_path / "w", signature(TensorInfo("s", "string", (None,))))


def test_dynamic_dims_are_fixed_by_the_data(tmp_path):
    images = np.zeros((4, 16, 12, 3), np.float32)
    folder = write(tmp_path / "d", a={"image": images}, b={"image": images[:2]})
    declared = signature(TensorInfo("image", "float32", (None, None, None, 3)))
    data = open_dataset(str(folder), tmp_path / "w", declared)
    assert data.sample_shapes == {"image": (16, 12, 3)}
    fixed = declared.with_input_shapes(data.sample_shapes)
    (tensor,) = fixed.inputs
    assert tensor.shape == (None, 16, 12, 3)
    assert tensor.declared_shape == (None, None, None, 3)
    assert Signature.from_dict(fixed.to_dict()) == fixed


def test_shards_that_disagree_on_a_dynamic_dim_are_refused(tmp_path):
    folder = write(
        tmp_path / "d",
        a={"image": np.zeros((2, 16, 16, 3), np.float32)},
        b={"image": np.zeros((2, 20, 16, 3), np.float32)},
    )
    declared = signature(TensorInfo("image", "float32", (None, None, None, 3)))
    with pytest.raises(UserInputError, match="every shard must agree"):
        open_dataset(str(folder), tmp_path / "w", declared)


def test_a_fixed_dim_that_does_not_fit_is_refused(tmp_path):
    folder = write(tmp_path / "d", a={"image": np.zeros((2, 8, 8, 3), np.float32)})
    with pytest.raises(UserInputError, match="expects 16x16x3"):
        open_dataset(
            str(folder),
            tmp_path / "w",
            signature(TensorInfo("image", "float32", (None, 16, 16, 3))),
        )


def test_detection_ground_truth_is_carried_and_checked(tmp_path):
    boxes = np.full((3, 2, 4), -1, np.float32)
    boxes[:, 0] = [0.1, 0.1, 0.5, 0.5]
    classes = np.full((3, 2), -1, np.int64)
    classes[:, 0] = 1
    x = np.zeros((3, 4), np.float32)
    folder = write(tmp_path / "d", a={"x": x, "gt_boxes": boxes, "gt_classes": classes})
    data = open_dataset(
        str(folder), tmp_path / "w", signature(TensorInfo("x", "float32", (None, 4)))
    )
    assert data.truth == ("gt_boxes", "gt_classes")
    check_truth(data, get_metric("map50"))
    with pytest.raises(UserInputError, match="labels"):
        check_truth(data, get_metric("top1"))


def test_unexpected_arrays_are_named(tmp_path):
    folder = write(tmp_path / "d", a={"x": np.zeros((2, 4), np.float32), "extra": np.zeros(2)})
    with pytest.raises(UserInputError, match="unexpected \\['extra'\\]"):
        open_dataset(str(folder), tmp_path / "w", signature(TensorInfo("x", "float32", (None, 4))))


def test_the_holdout_is_seeded_disjoint_and_excluded(tmp_path):
    x = np.arange(200, dtype=np.float32).reshape(200, 1)
    folder = write(tmp_path / "d", a={"x": x[:120]}, b={"x": x[120:]})
    data = open_dataset(
        str(folder), tmp_path / "w", signature(TensorInfo("x", "float32", (None, 1)))
    )
    holdout = HoldOut.for_samples(data.num_samples)
    assert holdout.count == 20
    indices = holdout.indices(data.num_samples)
    assert indices == HoldOut.for_samples(200).indices(200)  # the same slice on every worker
    kept = np.concatenate([f["x"] for f, _ in iter_batches(data.without(indices), 7)])
    held = np.concatenate([f["x"] for f, _ in iter_batches(data.only(indices), 7)])
    assert len(kept) == 180 and len(held) == 20
    assert sorted(held[:, 0].astype(int)) == sorted(indices)
    assert not set(kept[:, 0].astype(int)) & indices


def test_too_little_data_for_a_holdout_says_what_to_give():
    with pytest.raises(UserInputError, match="calibration_data_uri"):
        HoldOut.for_samples(40)


def test_sample_feeds_needs_one_full_batch(tmp_path):
    folder = write(tmp_path / "d", a={"x": np.zeros((3, 1), np.float32)})
    data = open_dataset(
        str(folder), tmp_path / "w", signature(TensorInfo("x", "float32", (None, 1)))
    )
    assert len(sample_feeds(data, 2, 4)) == 1
    with pytest.raises(UserInputError, match="fewer than one batch"):
        sample_feeds(data, 8, 1)


def test_feeds_are_cast_to_the_signature_dtype():
    assert numpy_dtype("string").kind == "S"
    assert as_feed(["ab", "c"], "string").tolist() == [b"ab", b"c"]
    assert as_feed(np.array([b"x", b"yz"], dtype=object), "string").dtype.kind == "S"
    assert as_feed([1, 2], "int32").dtype == np.int32
