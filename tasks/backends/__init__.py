"""The backend registry: one runtime per name ("tf", "tflite", "tftrt"), one shared contract."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from tasks.backends.base import (
    Backend,
    BackendUnavailableError,
    Conversion,
    ConversionRequest,
    Runner,
)
from tasks.backends.tf import TfBackend
from tasks.backends.tflite import TfliteBackend
from tasks.backends.tftrt import TfTrtBackend
from tasks.errors import UserInputError

BACKENDS: Mapping[str, Backend] = MappingProxyType(
    {"tf": TfBackend(), "tflite": TfliteBackend(), "tftrt": TfTrtBackend()}
)

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailableError",
    "Conversion",
    "ConversionRequest",
    "Runner",
    "get_backend",
]


def get_backend(name: str) -> Backend:
    """The backend registered as `name` (`tf`, `tflite` or `tftrt`).

    Raises:
        UserInputError: no backend has that name.
    """
    try:
        return BACKENDS[name.strip().lower()]
    except KeyError:
        raise UserInputError(
            f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}"
        ) from None
