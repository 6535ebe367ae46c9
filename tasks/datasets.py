"""Eval and calibration data: folders of `.npz` shards, checked against the signature, streamed.

A shard holds one array per model input, named as the serving signature names it, batch first,
in the signature's dtype (strings as fixed-width bytes, numpy dtype kind `S`), plus the ground
truth the metric needs (`labels`, or `gt_boxes` + `gt_classes`). Non-batch dimensions that the
signature leaves unknown are fixed by the data and must agree across shards.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tasks import storage
from tasks.errors import UserInputError
from tasks.metrics import GROUND_TRUTH_ARRAYS, labels_form, merge_labels_forms
from tasks.shard_limits import check_shards
from tasks.signature import Signature, TensorInfo

logger = logging.getLogger(__name__)

LABELS = "labels"
Feeds = dict[str, np.ndarray]
Truth = dict[str, np.ndarray]

HOLDOUT_SEED = 1234
"""Seed of the eval slice held out for INT8 calibration when no calibration data is given."""
HOLDOUT_FRACTION = 0.1
HOLDOUT_MIN, HOLDOUT_MAX = 16, 256
HOLDOUT_MIN_EVAL = 32


@dataclass(frozen=True)
class HoldOut:
    """A seeded slice of the eval data kept for calibration and excluded from validation.

    `count` samples are drawn without replacement by `numpy.random.default_rng(seed)` from the
    global sample indices (shards in sorted order).
    """

    seed: int
    count: int

    @classmethod
    def for_samples(cls, num_samples: int, seed: int = HOLDOUT_SEED) -> HoldOut:
        count = min(HOLDOUT_MAX, max(HOLDOUT_MIN, round(num_samples * HOLDOUT_FRACTION)))
        if num_samples - count < HOLDOUT_MIN_EVAL:
            raise UserInputError(
                f"the eval data has {num_samples} samples, too few to hold {count} out for INT8 "
                f"calibration and keep {HOLDOUT_MIN_EVAL} for validation; give "
                "calibration_data_uri, or drop the int8 variants"
            )
        return cls(seed, count)

    def indices(self, num_samples: int) -> frozenset[int]:
        rng = np.random.default_rng(self.seed)
        return frozenset(int(i) for i in rng.choice(num_samples, self.count, replace=False))

    def to_dict(self) -> dict:
        return {"seed": self.seed, "count": self.count}


@dataclass(frozen=True)
class ShardSet:
    """A checked data set on local disk: its shards, sample count, lineage digest and shapes.

    `truth` names the ground-truth arrays every shard carries; `sample_shapes` is each input's
    per-sample shape as the data fixes it. `keep`/`drop` restrict it to some global sample
    indices (a held-out slice); `num_samples` counts what remains.
    """

    uri: str
    shards: tuple[Path, ...]
    num_samples: int
    truth: tuple[str, ...]
    digest: str
    sample_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    labels_kind: str | None = None
    labels_form: str | None = None
    total_samples: int = 0
    keep: frozenset[int] | None = None
    drop: frozenset[int] | None = None

    @property
    def has_labels(self) -> bool:
        return LABELS in self.truth

    def without(self, indices: frozenset[int]) -> ShardSet:
        """This data minus the given global sample indices."""
        return replace(self, drop=indices, keep=None, num_samples=self.total_samples - len(indices))

    def only(self, indices: frozenset[int]) -> ShardSet:
        """Only the given global sample indices of this data."""
        return replace(self, keep=indices, drop=None, num_samples=len(indices))

    def to_dict(self) -> dict:
        """The checked description (the full data, without a keep/drop restriction)."""
        return {
            "uri": self.uri,
            "num_samples": self.total_samples,
            "truth": list(self.truth),
            "digest": self.digest,
            "shards": len(self.shards),
            "sample_shapes": {k: list(v) for k, v in self.sample_shapes.items()},
            "labels_kind": self.labels_kind,
            "labels_form": self.labels_form,
        }

    @classmethod
    def described(cls, data: dict) -> ShardSet:
        """A checked description read back (no shards on disk: pass it to `open_dataset`)."""
        return cls(
            uri=data["uri"],
            shards=(),
            num_samples=int(data["num_samples"]),
            truth=tuple(data["truth"]),
            digest=data["digest"],
            sample_shapes={k: tuple(v) for k, v in data["sample_shapes"].items()},
            labels_kind=data.get("labels_kind"),
            labels_form=data.get("labels_form"),
            total_samples=int(data["num_samples"]),
        )


def _load_shard(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise UserInputError(
            f"shard {path.name} is not a readable .npz without pickled objects: {exc}; store "
            "strings as fixed-width bytes (np.array(values, dtype='S')), never dtype=object"
        ) from exc


def _check_dtype(shard: str, tensor: TensorInfo, array: np.ndarray) -> None:
    if tensor.is_string:
        if array.dtype.kind != "S":
            raise UserInputError(
                f"{shard}: input {tensor.name!r} is a string input; store it as fixed-width "
                f"bytes (np.array(values, dtype='S')), got dtype {array.dtype}"
            )
        return
    if array.dtype != np.dtype(tensor.dtype):
        raise UserInputError(
            f"{shard}: input {tensor.name!r} has dtype {array.dtype}, the model's signature "
            f"expects {tensor.dtype}; cast it (e.g. array.astype(np.{tensor.dtype}))"
        )


def _check_shape(shard: str, tensor: TensorInfo, array: np.ndarray) -> None:
    expected = tuple(tensor.shape[1:])
    actual = tuple(array.shape[1:])
    fits = len(expected) == len(actual) and all(
        e in (None, -1) or e == a for e, a in zip(expected, actual, strict=True)
    )
    if not fits:
        want = "x".join("?" if d in (None, -1) else str(d) for d in expected) or "a scalar"
        raise UserInputError(
            f"{shard}: input {tensor.name!r} has per-sample shape "
            f"{'x'.join(map(str, actual)) or 'a scalar'}, the model's signature expects {want} "
            "(batch dimension first)"
        )


def _check_input(shard: str, tensor: TensorInfo, array: np.ndarray) -> None:
    _check_dtype(shard, tensor, array)
    _check_shape(shard, tensor, array)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(array.size - np.isfinite(array).sum())
        raise UserInputError(f"{shard}: input {tensor.name!r} contains {bad} NaN/Inf value(s)")


@dataclass(frozen=True)
class ShardCheck:
    """What one checked shard holds."""

    samples: int
    truth: tuple[str, ...]
    sample_shapes: dict[str, tuple[int, ...]]
    labels_kind: str | None
    labels_form: str | None = None


def check_shard(path: Path, signature: Signature, *, metric=None) -> ShardCheck:  # noqa: ANN001
    """Check one shard against the signature (and the metric's ground truth, when given).

    Args:
        metric: A `tasks.metrics.MetricSpec` whose ground truth the shard must carry, or None.
    """
    arrays = _load_shard(path)
    names = set(signature.input_names)
    missing = sorted(names - set(arrays))
    extra = sorted(set(arrays) - names - set(GROUND_TRUTH_ARRAYS))
    if missing or extra:
        raise UserInputError(
            f"{path.name}: arrays {sorted(arrays)} do not fit the signature inputs "
            f"{sorted(names)} (missing {missing or 'none'}, unexpected {extra or 'none'}); "
            f"name one array per input, plus the ground truth "
            f"({', '.join(GROUND_TRUTH_ARRAYS)}) the metric needs"
        )
    for tensor in signature.inputs:
        _check_input(path.name, tensor, arrays[tensor.name])
    sizes = {len(arrays[name]) for name in arrays}
    if len(sizes) != 1:
        lengths = {name: len(value) for name, value in arrays.items()}
        raise UserInputError(f"{path.name}: arrays have different lengths {lengths}")
    samples = sizes.pop()
    if metric is not None:
        metric.check_ground_truth(arrays, samples, path.name)
    truth = tuple(name for name in GROUND_TRUTH_ARRAYS if name in arrays)
    labels = arrays.get(LABELS)
    labels_kind = labels.dtype.kind if labels is not None else None
    form = labels_form(labels) if labels is not None and labels_kind in "iubf" else None
    shapes = {t.name: tuple(int(d) for d in arrays[t.name].shape[1:]) for t in signature.inputs}
    return ShardCheck(samples, truth, shapes, labels_kind, form)


def _merge_shapes(
    merged: dict[str, tuple[int, ...]], shard: ShardCheck, name: str, signature: Signature
) -> None:
    for tensor in signature.inputs:
        if not tensor.dynamic_dims:
            continue
        shape = shard.sample_shapes[tensor.name]
        seen = merged.setdefault(tensor.name, shape)
        if seen != shape:
            raise UserInputError(
                f"{name}: input {tensor.name!r} has per-sample shape {'x'.join(map(str, shape))}"
                f" but earlier shards have {'x'.join(map(str, seen))}; the signature leaves "
                f"those dimensions unknown ({tensor.shape}) and tfopt fixes them from the data, "
                "so every shard must agree (resize the inputs to one shape)"
            )


def _digest(shards: tuple[Path, ...]) -> str:
    return storage.tree_digest(
        {
            shard.relative_to(shards[0].parent).as_posix(): storage.sha256_file(shard)
            for shard in shards
        }
    )


def open_dataset(
    uri: str,
    local_dir: Path,
    signature: Signature,
    *,
    metric=None,  # noqa: ANN001 - a tasks.metrics.MetricSpec
    checked: ShardSet | None = None,
) -> ShardSet:
    """Fetch a folder of `.npz` shards and check every shard against the signature.

    Args:
        metric: The metric whose ground truth every shard must carry (None: inputs only).
        checked: The same data as a full check earlier in the run described it. The shards are
            then only digested and compared with it, not read again.

    Raises:
        UserInputError: the URI holds no shards, a shard does not fit the signature or the
            metric, shards disagree on dynamic dimensions, or the data changed since checked.
    """
    local = Path(storage.fetch_tree(uri, local_dir, require_manifest=False))
    shards = tuple(sorted(local.rglob("*.npz"))) if local.is_dir() else (local,)
    if not shards or shards[0].suffix != ".npz":
        raise UserInputError(f"no .npz shards found at {uri}; a data set is a folder of .npz")
    check_shards(shards, uri)
    digest = _digest(shards)
    if checked is not None:
        if digest != checked.digest:
            raise UserInputError(
                f"the data at {uri} changed during this run (digest {digest[:12]}, checked "
                f"{checked.digest[:12]}); do not modify inputs while a run uses them"
            )
        return replace(checked, shards=shards)
    total, shapes = 0, {}
    truths, kinds, forms = set(), set(), set()
    for shard in shards:
        result = check_shard(shard, signature, metric=metric)
        _merge_shapes(shapes, result, shard.name, signature)
        total += result.samples
        truths.add(result.truth)
        kinds.add(result.labels_kind)
        forms.add(result.labels_form)
    if len(truths) != 1:
        raise UserInputError(
            f"the shards at {uri} carry different ground truth arrays {sorted(truths)}; every "
            "shard needs the same ones"
        )
    logger.info("%s: %d shard(s), %d samples, digest %s", uri, len(shards), total, digest[:12])
    return ShardSet(
        uri,
        shards,
        total,
        truths.pop(),
        digest,
        sample_shapes=shapes,
        labels_kind=kinds.pop() if len(kinds) == 1 else None,
        labels_form=merge_labels_forms(forms),
        total_samples=total,
    )


def check_truth(data: ShardSet, metric) -> None:  # noqa: ANN001 - a tasks.metrics.MetricSpec
    """Check that every shard carries the ground truth `metric` needs, in a form it can read.

    Only the ground-truth arrays are read (the inputs were checked by `open_dataset`).
    """
    missing = [name for name in metric.ground_truth if name not in data.truth]
    if missing:
        raise UserInputError(
            f"metric {metric.name!r} needs {', '.join(metric.ground_truth)} in every eval shard; "
            f"the shards at {data.uri} have {', '.join(data.truth) or 'no ground truth'}. Add "
            f"them, or choose a metric that fits the data (fidelity needs none)"
        )
    for shard in data.shards:
        with np.load(shard, allow_pickle=False) as arrays:
            truth = {name: arrays[name] for name in data.truth}
        if truth:
            metric.check_ground_truth(truth, len(next(iter(truth.values()))), shard.name)


def _restrict(arrays: dict[str, np.ndarray], data: ShardSet, start: int) -> dict[str, np.ndarray]:
    if data.keep is None and data.drop is None:
        return arrays
    size = len(next(iter(arrays.values())))
    index = np.arange(start, start + size)
    if data.keep is not None:
        mask = np.isin(index, np.fromiter(data.keep, dtype=np.int64))
    else:
        mask = ~np.isin(index, np.fromiter(data.drop or (), dtype=np.int64))
    return {name: value[mask] for name, value in arrays.items()}


def _shard_arrays(data: ShardSet) -> Iterator[dict[str, np.ndarray]]:
    start = 0
    for shard in data.shards:
        arrays = _load_shard(shard)
        size = len(next(iter(arrays.values())))
        yield _restrict(arrays, data, start)
        start += size


def iter_batches(
    data: ShardSet, batch_size: int, *, limit: int | None = None
) -> Iterator[tuple[Feeds, Truth]]:
    """Stream `(feeds, truth)` batches of `batch_size` across shards (the last may be short)."""
    remaining = data.num_samples if limit is None else min(limit, data.num_samples)
    buffer: dict[str, np.ndarray] = {}
    offset = 0
    for arrays in _shard_arrays(data):
        if buffer:
            arrays = {k: _concat(buffer[k][offset:], arrays[k]) for k in arrays}
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


def _concat(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    if first.dtype.kind == "S" and second.dtype.kind == "S":  # keep the wider fixed width
        width = max(first.dtype.itemsize, second.dtype.itemsize, 1)
        return np.concatenate([first.astype(f"S{width}"), second.astype(f"S{width}")])
    return np.concatenate([first, second])


def _split(arrays: dict[str, np.ndarray], offset: int, take: int) -> tuple[Feeds, Truth]:
    end = offset + take
    feeds = {
        k: np.ascontiguousarray(v[offset:end])
        for k, v in arrays.items()
        if k not in GROUND_TRUTH_ARRAYS
    }
    truth = {k: v[offset:end] for k, v in arrays.items() if k in GROUND_TRUTH_ARRAYS}
    return feeds, truth


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
