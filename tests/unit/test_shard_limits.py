"""Shard caps: a zip bomb, a huge shard or a lying array header is refused before loading."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from tasks.errors import UserInputError
from tasks.shard_limits import check_shards, shard_bytes

pytestmark = pytest.mark.unit


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array)
    return buffer.getvalue()


def test_a_normal_shard_passes_with_its_decompressed_size(tmp_path):
    path = tmp_path / "s.npz"
    np.savez_compressed(path, image=np.zeros((10, 4), np.float32), labels=np.arange(10))
    assert shard_bytes(path) >= 10 * 4 * 4 + 10 * 8
    assert check_shards([path], "s3://b/eval") == shard_bytes(path)


def test_a_zip_bomb_is_refused_from_the_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("TFOPT_MAX_SHARD_DECOMPRESSED_MB", "8")
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("image.npy", _npy(np.zeros(16 * 1024 * 1024, np.uint8)))
    assert path.stat().st_size < 100_000  # tiny on disk
    with pytest.raises(UserInputError, match="TFOPT_MAX_SHARD_DECOMPRESSED_MB"):
        shard_bytes(path)


def test_a_header_claiming_more_than_its_data_is_refused(tmp_path):
    path = tmp_path / "liar.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**11,)}
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("image.npy", header.getvalue() + b"\0" * 64)
    with pytest.raises(UserInputError, match="declares"):
        shard_bytes(path)


def test_a_huge_shard_and_a_huge_data_set_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.npz"
    np.savez(path, image=np.ones((1024, 1024), np.float32))
    monkeypatch.setenv("TFOPT_MAX_SHARD_MB", "1")
    with pytest.raises(UserInputError, match="TFOPT_MAX_SHARD_MB"):
        shard_bytes(path)
    monkeypatch.setenv("TFOPT_MAX_SHARD_MB", "10")
    monkeypatch.setenv("TFOPT_MAX_DATA_MB", "6")
    with pytest.raises(UserInputError, match="TFOPT_MAX_DATA_MB"):
        check_shards([path, path], "s3://b/eval")


def test_not_a_zip_is_a_user_error(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(UserInputError, match="not a readable"):
        shard_bytes(path)


def test_open_dataset_checks_the_caps_before_loading_a_shard(tmp_path, monkeypatch):
    from tasks import datasets
    from tasks.signature import Signature, TensorInfo

    monkeypatch.setenv("TFOPT_MAX_SHARD_DECOMPRESSED_MB", "8")
    folder = tmp_path / "eval"
    folder.mkdir()
    with zipfile.ZipFile(folder / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("image.npy", _npy(np.zeros(16 * 1024 * 1024, np.uint8)))
    loaded = []
    monkeypatch.setattr(datasets, "_load_shard", lambda path: loaded.append(path))
    signature = Signature(
        inputs=(TensorInfo("image", "uint8", (None,)),),
        outputs=(TensorInfo("out", "float32", (None, 2)),),
    )
    with pytest.raises(UserInputError, match="TFOPT_MAX_SHARD_DECOMPRESSED_MB"):
        datasets.open_dataset(str(folder), tmp_path / "dl", signature)
    assert loaded == []
