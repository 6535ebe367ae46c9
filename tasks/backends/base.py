"""The one contract every runtime implements: available() -> reason, convert(), load() -> runner."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tasks.errors import TfoptError, UserInputError
from tasks.signature import Signature

Feeds = dict[str, np.ndarray]
CalibrationData = Callable[[], Iterable[Feeds]]
"""Calling it yields calibration batches `{input_name: ndarray}` (batch 1 each), afresh per call."""


class BackendUnavailableError(TfoptError):
    """The backend cannot run on this worker; the variant is SKIPPED with `reason`, not FAILED."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConverterError(TfoptError):
    """A converter or its runtime rejected the model; `ops` are the op types it named."""

    def __init__(self, message: str, ops: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.ops = ops


class UnsplittableGraphError(UserInputError):
    """The serving graph has ops no converter takes, and they do not form a leading prefix.

    The message names the op types and where they sit in the graph.
    """


@dataclass(frozen=True)
class AccuracyValidation:
    """tfopt's task metric on a held-out validation slice, for accuracy-aware conversions.

    A quantizer that ranks its choices by accuracy (NNCF's accuracy control) scores subsets of
    the slice, so the metric takes the indices of the samples to score.

    Attributes:
        samples: the slice, one `{input_name: ndarray}` batch of 1 per sample, in order.
        metric: `metric(runner, indices)` is the task metric of `runner` over the samples at
            `indices` (all of them when None).
        higher_is_better: False for error metrics (MAE, RMSE).
        relative: the tolerance is a relative rise of the metric (0.05 = 5% more error), as the
            accuracy gate judges error metrics, instead of an absolute drop.
    """

    samples: Sequence[Feeds]
    metric: Callable[[Runner, Sequence[int] | None], float]
    higher_is_better: bool = True
    relative: bool = False


@dataclass(frozen=True)
class ConversionRequest:
    """What a backend needs to build one variant from the exported SavedModel.

    `validation` and `accuracy_tolerance` (max absolute drop of the metric) let a backend keep
    accuracy-sensitive layers in higher precision; `objective` (`latency` | `throughput`) lets it
    tune the compiled model for the run's goal. Backends that cannot use them ignore them.
    """

    saved_model_dir: Path
    signature: Signature
    precision: str
    output_dir: Path
    calibration_data: CalibrationData
    batch_sizes: tuple[int, ...] = (1,)
    validation: AccuracyValidation | None = None
    accuracy_tolerance: float | None = None
    objective: str = "latency"


@dataclass(frozen=True)
class Conversion:
    """A converted variant on local disk: where it is, and what the converter reports."""

    artifact_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)


class Runner(Protocol):
    """Runs the variant: maps `{input_name: ndarray}` to `{output_name: ndarray}`, any batch."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def __call__(self, feeds: Feeds) -> Feeds: ...


class Backend(Protocol):
    """A runtime: `available()` says whether it runs here, `convert()` builds, `load()` runs."""

    name: str
    precisions: tuple[str, ...]

    def available(self) -> str | None:
        """None when this worker can run the backend, else the reason it cannot."""

    def convert(self, request: ConversionRequest) -> Conversion:
        """Builds the variant in `request.output_dir`.

        Raises:
            BackendUnavailableError: this worker cannot build it (the variant is SKIPPED).
            UserInputError: the precision, model or calibration data does not fit.
        """

    def load(self, artifact_dir: Path, signature: Signature, num_threads: int) -> Runner:
        """Loads a converted variant; the runner returns the signature's output names."""


def check_precision(backend: str, precisions: tuple[str, ...], precision: str) -> None:
    """Raises UserInputError when `backend` does not build `precision`."""
    if precision not in precisions:
        raise UserInputError(
            f"backend {backend!r} has no precision {precision!r}; "
            f"choose from {', '.join(precisions)}"
        )


def check_feeds(input_names: tuple[str, ...], feeds: Feeds) -> int:
    """Checks that `feeds` holds every input with one common batch size, and returns that size.

    Raises:
        UserInputError: an input is missing or unknown, or the batch sizes differ.
    """
    missing = [name for name in input_names if name not in feeds]
    unknown = sorted(set(feeds) - set(input_names))
    if missing or unknown:
        raise UserInputError(
            f"feeds must hold exactly the inputs {list(input_names)}; "
            f"missing {missing}, unknown {unknown}"
        )
    batches = {int(np.shape(feeds[name])[0]) for name in input_names}
    if len(batches) != 1:
        raise UserInputError(f"all inputs must share one batch size; got {sorted(batches)}")
    return batches.pop()
