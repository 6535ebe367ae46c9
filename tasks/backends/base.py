"""The one contract every runtime implements: available() -> reason, convert(), load() -> runner."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tasks.signature import Signature

Feeds = dict[str, np.ndarray]
CalibrationData = Callable[[], Iterable[Feeds]]
"""Calling it yields calibration batches `{input_name: ndarray}` (batch 1 each), afresh per call."""


@dataclass(frozen=True)
class ConversionRequest:
    """What a backend needs to build one variant from the exported SavedModel."""

    saved_model_dir: Path
    signature: Signature
    precision: str
    output_dir: Path
    calibration_data: CalibrationData
    batch_sizes: tuple[int, ...] = (1,)


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
    name: str
    precisions: tuple[str, ...]

    def available(self) -> str | None:
        """None when this worker can run the backend, else the reason it cannot."""

    def convert(self, request: ConversionRequest) -> Conversion: ...

    def load(self, artifact_dir: Path, signature: Signature, num_threads: int) -> Runner: ...
