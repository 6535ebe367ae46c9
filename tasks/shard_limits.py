"""Size caps on `.npz` shards, read from the zip directory and array headers before loading."""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from tasks.errors import UserInputError

_MB = 1024 * 1024
DEFAULTS_MB = {
    "TFOPT_MAX_SHARD_MB": 1024,  # bytes of one .npz file
    "TFOPT_MAX_SHARD_DECOMPRESSED_MB": 4096,  # its arrays once decompressed
    "TFOPT_MAX_DATA_MB": 16384,  # all shards of one data set, decompressed
}


def limit_bytes(name: str) -> int:
    """The cap `name` (an environment variable in MB, see `DEFAULTS_MB`) in bytes."""
    value = os.environ.get(name, "").strip() or str(DEFAULTS_MB[name])
    try:
        megabytes = float(value)
    except ValueError as exc:
        raise UserInputError(f"{name} must be a number of MB, got {value!r}") from exc
    if megabytes <= 0:
        raise UserInputError(f"{name} must be > 0, got {value!r}")
    return int(megabytes * _MB)


def _declared_bytes(archive: zipfile.ZipFile, member: zipfile.ZipInfo, shard: str) -> int:
    """The bytes the member's .npy header says its array holds (checked against the member)."""
    with archive.open(member) as handle:
        try:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(handle)
        except (ValueError, OSError) as exc:
            raise UserInputError(f"{shard}: {member.filename} is not a .npy array: {exc}") from exc
        header_end = handle.tell()
    declared = math.prod(shape) * dtype.itemsize
    if declared > member.file_size - header_end:
        raise UserInputError(
            f"{shard}: {member.filename} declares {declared} bytes of data but holds "
            f"{member.file_size - header_end}; the shard is corrupt or crafted"
        )
    return declared


def shard_bytes(path: Path) -> int:
    """Check one shard against the caps and return its decompressed size.

    Raises:
        UserInputError: the file, or its arrays once decompressed, exceed a cap, or an array
            header claims more data than its member holds (a zip bomb or a corrupt shard).
    """
    size, cap = path.stat().st_size, limit_bytes("TFOPT_MAX_SHARD_MB")
    if size > cap:
        raise UserInputError(
            f"{path.name} is {size / _MB:.1f} MB, over TFOPT_MAX_SHARD_MB ({cap / _MB:.0f} MB); "
            "split the data into smaller shards or raise the limit"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            unpacked = sum(member.file_size for member in members)
            cap = limit_bytes("TFOPT_MAX_SHARD_DECOMPRESSED_MB")
            if unpacked > cap:
                raise UserInputError(
                    f"{path.name} decompresses to {unpacked / _MB:.1f} MB, over "
                    f"TFOPT_MAX_SHARD_DECOMPRESSED_MB ({cap / _MB:.0f} MB); split it into "
                    "smaller shards or raise the limit"
                )
            for member in members:
                _declared_bytes(archive, member, path.name)
    except zipfile.BadZipFile as exc:
        raise UserInputError(f"{path.name} is not a readable .npz (zip) file: {exc}") from exc
    return unpacked


def check_shards(shards: Iterable[Path], uri: str) -> int:
    """Check every shard and the data set's total; returns the total decompressed bytes.

    Raises:
        UserInputError: a shard or the total exceeds its cap (`TFOPT_MAX_*`).
    """
    total = sum(shard_bytes(shard) for shard in shards)
    cap = limit_bytes("TFOPT_MAX_DATA_MB")
    if total > cap:
        raise UserInputError(
            f"the data at {uri} decompresses to {total / _MB:.1f} MB, over TFOPT_MAX_DATA_MB "
            f"({cap / _MB:.0f} MB); use a smaller evaluation set or raise the limit"
        )
    return total
