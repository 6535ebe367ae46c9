"""Eval and calibration data: folders of `.npz` shards, checked against the signature, streamed."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks import storage
from tasks.errors import UserInputError
from tasks.signature import Signature

logger = logging.getLogger(__name__)

LABELS = "labels"
Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class ShardSet:
    """A checked data set on local disk: its shards, sample count and lineage digest."""

    uri: str
    shards: tuple[Path, ...]
    num_samples: int
    has_labels: bool
    digest: str

    def to_dict(self) -> dict:
        return {
            "uri": self.uri,
            "num_samples": self.num_samples,
            "has_labels": self.has_labels,
            "digest": self.digest,
            "shards": len(self.shards),
        }


def _load_shard(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise UserInputError(
            f"shard {path.name} is not a readable .npz without pickled objects: {exc}"
        ) from exc


def _check_array(shard: str, name: str, array: np.ndarray, dtype: str, shape: tuple) -> None:
    if array.dtype != np.dtype(dtype):
        raise UserInputError(
            f"{shard}: input {name!r} has dtype {array.dtype}, the model's signature expects "
            f"{dtype}; cast it (e.g. array.astype(np.{dtype}))"
        )
    expected = tuple(shape[1:])
    actual = tuple(array.shape[1:])
    fits = len(expected) == len(actual) and all(
        e in (None, -1) or e == a for e, a in zip(expected, actual, strict=True)
    )
    if not fits:
        want = "x".join("?" if d in (None, -1) else str(d) for d in expected)
        raise UserInputError(
            f"{shard}: input {name!r} has per-sample shape {'x'.join(map(str, actual))}, "
            f"the model's signature expects {want} (batch dimension first)"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(array.size - np.isfinite(array).sum())
        raise UserInputError(f"{shard}: input {name!r} contains {bad} NaN/Inf value(s)")


def check_shard(path: Path, signature: Signature, *, require_labels: bool) -> int:
    """Check one shard against the signature and return its number of samples."""
    arrays = _load_shard(path)
    names = set(signature.input_names)
    missing = sorted(names - set(arrays))
    extra = sorted(set(arrays) - names - {LABELS})
    if missing or extra:
        raise UserInputError(
            f"{path.name}: arrays {sorted(arrays)} do not fit the signature inputs "
            f"{sorted(names)} (missing {missing or 'none'}, unexpected {extra or 'none'}); "
            f"name one array per input, plus {LABELS!r} for eval data"
        )
    sizes = {len(arrays[name]) for name in names}
    for tensor in signature.inputs:
        _check_array(path.name, tensor.name, arrays[tensor.name], tensor.dtype, tensor.shape)
    if require_labels and LABELS not in arrays:
        raise UserInputError(
            f"{path.name}: no {LABELS!r} array; eval data needs labels for the top-1 metric"
        )
    if LABELS in arrays:
        labels = arrays[LABELS]
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise UserInputError(
                f"{path.name}: {LABELS!r} must be a 1-D integer array of class ids, "
                f"got {labels.dtype} with shape {labels.shape}"
            )
        sizes.add(len(labels))
    if len(sizes) != 1:
        raise UserInputError(f"{path.name}: arrays have different lengths {sorted(sizes)}")
    return sizes.pop()


def open_dataset(
    uri: str,
    local_dir: Path,
    signature: Signature,
    *,
    require_labels: bool,
    checked: tuple[str, int] | None = None,
) -> ShardSet:
    """Fetch a folder of `.npz` shards and check every shard against the signature.

    Args:
        checked: `(digest, num_samples)` from a full check of the same data earlier in the run.
            The shards are then only digested and compared with it, not read again.

    Raises:
        UserInputError: the URI holds no shards, a shard does not fit the signature, or the
            data changed since it was checked.
    """
    local = Path(storage.fetch_tree(uri, local_dir, require_manifest=False))
    shards = tuple(sorted(local.rglob("*.npz"))) if local.is_dir() else (local,)
    if not shards or shards[0].suffix != ".npz":
        raise UserInputError(f"no .npz shards found at {uri}; a data set is a folder of .npz")
    digest = storage.tree_digest(
        {
            shard.relative_to(shards[0].parent).as_posix(): storage.sha256_file(shard)
            for shard in shards
        }
    )
    if checked is not None:
        if digest != checked[0]:
            raise UserInputError(
                f"the data at {uri} changed during this run (digest {digest[:12]}, checked "
                f"{checked[0][:12]}); do not modify inputs while a run uses them"
            )
        return ShardSet(uri, shards, checked[1], require_labels, digest)
    total = 0
    has_labels = True
    for shard in shards:
        total += check_shard(shard, signature, require_labels=require_labels)
        has_labels = has_labels and LABELS in np.load(shard, allow_pickle=False).files
    logger.info("%s: %d shard(s), %d samples, digest %s", uri, len(shards), total, digest[:12])
    return ShardSet(uri, shards, total, has_labels, digest)


def iter_batches(
    data: ShardSet, batch_size: int, *, limit: int | None = None
) -> Iterator[tuple[Feeds, np.ndarray | None]]:
    """Stream `(feeds, labels)` batches of `batch_size` across shards (the last may be short)."""
    remaining = data.num_samples if limit is None else min(limit, data.num_samples)
    buffer: dict[str, np.ndarray] = {}
    offset = 0
    for shard in data.shards:
        arrays = _load_shard(shard)
        if buffer:
            arrays = {k: np.concatenate([buffer[k][offset:], arrays[k]]) for k in arrays}
        buffer, offset = arrays, 0
        size = len(next(iter(buffer.values())))
        while remaining and size - offset >= min(batch_size, remaining):
            take = min(batch_size, remaining)
            yield _split(buffer, offset, take)
            offset += take
            remaining -= take
        if not remaining:
            return
    size = len(next(iter(buffer.values()))) if buffer else 0
    if remaining and size > offset:
        yield _split(buffer, offset, min(size - offset, remaining))


def _split(
    arrays: dict[str, np.ndarray], offset: int, take: int
) -> tuple[Feeds, np.ndarray | None]:
    end = offset + take
    feeds = {k: np.ascontiguousarray(v[offset:end]) for k, v in arrays.items() if k != LABELS}
    labels = arrays[LABELS][offset:end] if LABELS in arrays else None
    return feeds, labels


def sample_feeds(data: ShardSet, batch_size: int, count: int) -> list[Feeds]:
    """Up to `count` distinct full batches of real inputs (for benchmarks and build shapes)."""
    batches = [
        feeds
        for feeds, _ in iter_batches(data, batch_size, limit=batch_size * count)
        if len(next(iter(feeds.values()))) == batch_size
    ]
    if not batches:
        raise UserInputError(
            f"{data.uri} has {data.num_samples} samples, fewer than one batch of {batch_size}"
        )
    return batches
