"""The serving signature manifest: input/output names, dtypes and shapes of a SavedModel."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

SIGNATURE_FILE = "signature.json"
STRING = "string"
"""TensorFlow's name for tf.string; in numpy a fixed-width bytes array (dtype kind "S")."""


def numpy_dtype(tf_dtype: str) -> np.dtype:
    """The numpy dtype that carries a signature dtype (`string` -> bytes, `S`)."""
    return np.dtype("S") if tf_dtype == STRING else np.dtype(tf_dtype)


def as_feed(value: Any, tf_dtype: str) -> np.ndarray:
    """`value` as an array of the signature's dtype (strings stay fixed-width bytes)."""
    array = np.asarray(value)
    if tf_dtype == STRING:
        if array.dtype.kind in "SO":
            return array.astype(np.bytes_) if array.dtype.kind == "O" else array
        if array.dtype.kind == "U":
            return np.char.encode(array, "utf-8")
        raise TypeError(f"a string input needs bytes or str values, got {array.dtype}")
    return array.astype(tf_dtype, copy=False)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the signature; `shape` uses None for unknown dimensions (batch first).

    `declared_shape` is the shape as the SavedModel declares it, when the data fixed some of its
    unknown non-batch dimensions into `shape` (None when nothing was fixed).
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    declared_shape: tuple[int | None, ...] | None = None

    @property
    def is_string(self) -> bool:
        return self.dtype == STRING

    @property
    def dynamic_dims(self) -> tuple[int, ...]:
        """Axes (after the batch) that the signature leaves unknown."""
        return tuple(i for i, dim in enumerate(self.shape) if i and dim in (None, -1))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.declared_shape is not None:
            data["declared_shape"] = list(self.declared_shape)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorInfo:
        declared = data.get("declared_shape")
        return cls(
            data["name"],
            data["dtype"],
            tuple(data["shape"]),
            None if declared is None else tuple(declared),
        )


@dataclass(frozen=True)
class Signature:
    """The `serving_default` signature of the exported model."""

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    key: str = "serving_default"

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    @property
    def has_dynamic_dims(self) -> bool:
        return any(t.dynamic_dims for t in self.inputs)

    def with_input_shapes(self, sample_shapes: dict[str, tuple[int, ...]]) -> Signature:
        """This signature with unknown non-batch input dims fixed to `sample_shapes` (per sample).

        Inputs whose dims are all known are left as they are.
        """
        inputs = []
        for tensor in self.inputs:
            if not tensor.dynamic_dims or tensor.name not in sample_shapes:
                inputs.append(tensor)
                continue
            fixed = (tensor.shape[0], *sample_shapes[tensor.name])
            inputs.append(replace(tensor, shape=fixed, declared_shape=tensor.shape))
        return replace(self, inputs=tuple(inputs))

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        return cls(
            inputs=tuple(TensorInfo.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorInfo.from_dict(t) for t in data["outputs"]),
            key=data.get("key", "serving_default"),
        )

    def write(self, directory: Path) -> Path:
        path = Path(directory) / SIGNATURE_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def read(cls, directory: Path) -> Signature:
        return cls.from_dict(json.loads((Path(directory) / SIGNATURE_FILE).read_text()))
