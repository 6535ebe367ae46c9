"""The backend registry: one table of runtimes, their precisions, lanes, serving needs and colours.

Everything else derives from `ENTRIES`: the known variants and their display order
(`tasks.config`), the DAG's lane per variant, the pip requirements of a served variant and the
report's colours. Adding a runtime is one module with a backend class plus one entry here.

Importing this package is light (no numpy, TensorFlow or runtime libraries): backend classes are
imported on first use by `get_backend`, and the shared contract (`ConversionRequest`, `Runner`,
...) is re-exported lazily from `tasks.backends.base`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from tasks.errors import UserInputError

if TYPE_CHECKING:
    from tasks.backends.base import Backend

CPU_LANE = "default"
"""The queue of CPU workers (Airflow's default queue)."""
GPU_LANE = "gpu"
"""The queue of GPU workers."""
COMMON_REQUIREMENTS = ("numpy",)
"""Packages every served variant needs, whatever its runtime."""
PREFIX_REQUIREMENTS = ("tensorflow-cpu",)
"""Packages a served variant needs when its graph was split (the prefix runs in TensorFlow)."""
FALLBACK_COLOUR = "#937860"


@dataclass(frozen=True)
class BackendEntry:
    """One runtime in the registry.

    Attributes:
        name: the backend part of a variant name (`tflite` in `tflite:int8`).
        precisions: the precisions it builds, in display order.
        factory: `module:Class` of the backend, imported on first use.
        lane: the worker queue its variants run on (`CPU_LANE` or `GPU_LANE`).
        serving_requirements: pip distributions the served pyfunc model needs (pinned to the
            installed versions when logged).
        colour: its colour in the report's plots.
    """

    name: str
    precisions: tuple[str, ...]
    factory: str
    lane: str = CPU_LANE
    serving_requirements: tuple[str, ...] = ()
    colour: str = FALLBACK_COLOUR

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(f"{self.name}:{precision}" for precision in self.precisions)


_TABLE = (
    BackendEntry(
        "tf", ("fp32",), "tasks.backends.tf:TfBackend", CPU_LANE, ("tensorflow-cpu",), "#4c72b0"
    ),
    BackendEntry(
        "tflite",
        ("fp32", "fp16", "dynamic", "int8"),
        "tasks.backends.tflite:TfliteBackend",
        CPU_LANE,
        ("tensorflow-cpu", "ai-edge-litert"),
        "#dd8452",
    ),
    BackendEntry(
        "openvino",
        ("fp32", "bf16", "int8"),
        "tasks.backends.openvino:OpenVinoBackend",
        CPU_LANE,
        ("openvino",),
        "#8172b3",
    ),
    BackendEntry(
        "tftrt",
        ("fp32", "fp16", "int8"),
        "tasks.backends.tftrt:TfTrtBackend",
        GPU_LANE,
        ("tensorflow",),
        "#55a868",
    ),
)

ENTRIES: Mapping[str, BackendEntry] = MappingProxyType({entry.name: entry for entry in _TABLE})
"""Backend name -> entry, in display order."""
KNOWN_VARIANTS: tuple[str, ...] = tuple(v for entry in _TABLE for v in entry.variants)
"""Every `backend:precision` tfopt builds, in display order."""
PRECISIONS: tuple[str, ...] = tuple(dict.fromkeys(p for entry in _TABLE for p in entry.precisions))
LANES: tuple[str, ...] = tuple(dict.fromkeys(entry.lane for entry in _TABLE))

_INSTANCES: dict[str, Backend] = {}
_CONTRACT = (
    "AccuracyValidation",
    "Backend",
    "BackendUnavailableError",
    "Conversion",
    "ConversionRequest",
    "Runner",
)

__all__ = [
    "CPU_LANE",
    "ENTRIES",
    "GPU_LANE",
    "KNOWN_VARIANTS",
    "LANES",
    "PRECISIONS",
    "BackendEntry",
    "backend_colour",
    "entry",
    "get_backend",
    "serving_requirements",
    "variant_lane",
    "variants_in_lane",
    *_CONTRACT,
]


def __getattr__(name: str) -> Any:
    """The shared contract, imported from `tasks.backends.base` when first asked for."""
    if name in _CONTRACT:
        return getattr(importlib.import_module("tasks.backends.base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def entry(name: str) -> BackendEntry:
    """The registry entry of backend `name` (case and surrounding space ignored).

    Raises:
        UserInputError: no backend has that name.
    """
    try:
        return ENTRIES[name.strip().lower()]
    except KeyError:
        raise UserInputError(
            f"unknown backend {name!r}; choose from {', '.join(ENTRIES)}"
        ) from None


def get_backend(name: str) -> Backend:
    """The backend registered as `name`, its module imported on first use.

    Raises:
        UserInputError: no backend has that name.
    """
    found = entry(name)
    backend = _INSTANCES.get(found.name)
    if backend is None:
        module, class_name = found.factory.split(":")
        backend = getattr(importlib.import_module(module), class_name)()
        _INSTANCES[found.name] = backend
    return backend


def variant_lane(variant: str) -> str:
    """The worker queue a `backend:precision` variant runs on."""
    return entry(variant.split(":")[0]).lane


def variants_in_lane(variants: Iterable[str], lane: str) -> list[str]:
    """The variants among `variants` that run on `lane`, in the given order."""
    return [variant for variant in variants if variant_lane(variant) == lane]


def serving_requirements(backend: str, *, tensorflow_prefix: bool = False) -> tuple[str, ...]:
    """Pip distributions a served variant of `backend` needs (common ones first).

    `tensorflow_prefix`: the variant runs a decoding prefix of its graph in TensorFlow.
    """
    prefix = PREFIX_REQUIREMENTS if tensorflow_prefix else ()
    return tuple(
        dict.fromkeys((*COMMON_REQUIREMENTS, *entry(backend).serving_requirements, *prefix))
    )


def backend_colour(variant: str) -> str:
    """The report colour of a variant's backend (a neutral one for unknown names)."""
    found = ENTRIES.get(str(variant).split(":")[0].strip().lower())
    return found.colour if found else FALLBACK_COLOUR
