"""The shape every task metric shares: its spec, output choice, accumulator and value."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tasks.errors import UserInputError

METRIC_OUTPUT_FLAG = "metric_output"
"""The run parameter (CLI flag `--metric-output`, DAG param) that names the output(s) to read."""


class TensorInfoLike(Protocol):
    """What a metric needs to know of a model output (`tasks.signature.TensorInfo` fits)."""

    @property
    def name(self) -> str: ...

    @property
    def dtype(self) -> str: ...

    @property
    def shape(self) -> tuple[int | None, ...]: ...


@dataclass(frozen=True)
class OutputChoice:
    """The model outputs a metric reads, by role.

    Roles: `class` (top-k), `value` (regression), `boxes` / `scores` / `classes` /
    `num_detections` (detection); for fidelity each role is the output's own name.
    """

    roles: Mapping[str, str]

    @property
    def output_names(self) -> tuple[str, ...]:
        """The distinct outputs read, in role order."""
        return tuple(dict.fromkeys(self.roles.values()))

    def __str__(self) -> str:
        return ",".join(f"{role}={name}" for role, name in self.roles.items())

    def to_dict(self) -> dict[str, str]:
        return dict(self.roles)

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> OutputChoice:
        return cls(dict(data))


@dataclass(frozen=True)
class MetricValue:
    """A metric computed over all batches; `value` is None when no sample was scored."""

    name: str
    value: float | None
    details: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "details": dict(self.details)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricValue:
        return cls(data["name"], data.get("value"), dict(data.get("details") or {}))


class MetricAccumulator(Protocol):
    """Streams batches into a metric; `value()` once all batches are in."""

    def update(
        self,
        outputs: Mapping[str, np.ndarray],
        truth: Mapping[str, np.ndarray],
        baseline_outputs: Mapping[str, np.ndarray],
    ) -> None: ...

    def value(self) -> MetricValue: ...


@dataclass(frozen=True)
class MetricSpec(abc.ABC):
    """One task metric: what it is called, which way is better, what data and outputs it needs."""

    name: str
    title: str
    higher_is_better: bool
    ground_truth: tuple[str, ...]
    tolerance_meaning: str

    @abc.abstractmethod
    def check_ground_truth(
        self, arrays: Mapping[str, np.ndarray], num_samples: int, shard: str
    ) -> None:
        """Raises UserInputError naming `shard` and the fix when its ground truth is unusable."""

    @abc.abstractmethod
    def resolve_output(
        self, outputs: Sequence[TensorInfoLike], metric_output: str | None
    ) -> OutputChoice:
        """Which output(s) the metric reads; `metric_output` (the user's flag) wins."""

    @abc.abstractmethod
    def accumulator(self, choice: OutputChoice) -> MetricAccumulator:
        """A fresh accumulator reading the outputs of `choice`."""


def is_string_dtype(dtype: str) -> bool:
    """True for TensorFlow's `string` and NumPy byte / unicode / object dtypes."""
    if dtype == "string":
        return True
    try:
        return np.dtype(dtype).kind in "SUO"
    except TypeError:
        return False


def is_float_dtype(dtype: str) -> bool:
    """True for float16/32/64 and bfloat16 (TensorFlow or NumPy names)."""
    return dtype.startswith(("float", "bfloat")) or dtype in ("half", "double")


def describe_outputs(outputs: Sequence[TensorInfoLike]) -> str:
    """`name (dtype, shape)` for each output, for error messages."""
    return ", ".join(f"{t.name} ({t.dtype}, {list(t.shape)})" for t in outputs)


def named_output(outputs: Sequence[TensorInfoLike], name: str, metric: str) -> TensorInfoLike:
    """The output called `name`, else UserInputError listing the outputs."""
    for tensor in outputs:
        if tensor.name == name:
            return tensor
    raise UserInputError(
        f"{METRIC_OUTPUT_FLAG}={name!r} is not an output of the model; metric {metric!r} can "
        f"read one of: {describe_outputs(outputs)}"
    )


def ambiguous(outputs: Sequence[TensorInfoLike], metric: str, why: str) -> UserInputError:
    """The error for outputs the metric cannot choose between."""
    return UserInputError(
        f"metric {metric!r}: {why}; set {METRIC_OUTPUT_FLAG} to the output to read. "
        f"Outputs: {describe_outputs(outputs)}"
    )


def require_array(
    arrays: Mapping[str, np.ndarray], name: str, shard: str, metric: str
) -> np.ndarray:
    """The array `name` of a shard, else UserInputError saying the metric needs it."""
    if name not in arrays:
        raise UserInputError(
            f"{shard}: no {name!r} array, which metric {metric!r} needs; add it to every eval "
            f"shard or choose another metric (fidelity needs no ground truth)"
        )
    return np.asarray(arrays[name])


def require_samples(array: np.ndarray, name: str, num_samples: int, shard: str) -> None:
    """UserInputError unless `array` has one row per sample."""
    if array.ndim == 0 or array.shape[0] != num_samples:
        raise UserInputError(
            f"{shard}: {name!r} has shape {array.shape} but the shard has {num_samples} "
            f"samples; give one row per sample"
        )


def batch_output(outputs: Mapping[str, Any], name: str) -> np.ndarray:
    """One output of a batch as an array, else ValueError naming what was given."""
    if name not in outputs:
        raise ValueError(f"outputs lack {name!r}; got {sorted(outputs)}")
    array = np.asarray(outputs[name])
    if array.dtype.kind in "SUO":
        raise UserInputError(
            f"output {name!r} holds strings ({array.dtype}); metrics read numeric outputs, so "
            f"set {METRIC_OUTPUT_FLAG} to a numeric one"
        )
    return array


def choose_output(
    outputs: Sequence[TensorInfoLike],
    metric_output: str | None,
    metric: str,
    fits: Callable[[TensorInfoLike], bool],
    what: str,
) -> TensorInfoLike:
    """The output a metric reads: the user's flag, else the only output, else the one numeric
    output that `fits`; `what` names what it should hold, for the error."""
    if metric_output:
        chosen = named_output(outputs, metric_output, metric)
    elif len(outputs) == 1:
        chosen = outputs[0]
    else:
        candidates = [t for t in outputs if not is_string_dtype(t.dtype) and fits(t)]
        if len(candidates) != 1:
            raise ambiguous(outputs, metric, f"{len(candidates)} outputs could hold {what}")
        chosen = candidates[0]
    if is_string_dtype(chosen.dtype):
        raise ambiguous(outputs, metric, f"output {chosen.name!r} holds strings")
    return chosen
