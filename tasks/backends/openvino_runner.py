"""Running an OpenVINO model: compiled per input shape, ports keyed by the signature's names."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.backends.base import Feeds, check_feeds
from tasks.errors import UserInputError
from tasks.signature import Signature, numpy_dtype

log = logging.getLogger(__name__)


def ports_by_name(ports: Sequence[Any], names: tuple[str, ...], kind: str) -> dict[str, Any]:
    """The compiled model's ports keyed by the signature's names (by order if names differ)."""
    by_name = {name: port for port in ports for name in port.get_names()}
    if all(name in by_name for name in names):
        return {name: by_name[name] for name in names}
    if len(ports) == len(names):
        log.warning("OpenVINO %s %s lack the signature's names; mapping by order", kind, names)
        return dict(zip(names, ports, strict=True))
    raise UserInputError(
        f"the OpenVINO model's {kind} {sorted(by_name)} do not match the signature's {list(names)}"
    )


MAX_STATIC_SHAPES = 4
"""Input shapes an OpenVinoRunner compiles statically; further shapes share the dynamic model."""


@dataclass
class _Compiled:
    """One compiled model with its infer request and ports keyed by the signature's names."""

    model: Any
    request: Any
    inputs: dict[str, Any]
    outputs: dict[str, Any]

    @classmethod
    def of(cls, compiled: Any, input_names: tuple[str, ...], output_names: tuple[str, ...]):
        return cls(
            compiled,
            compiled.create_infer_request(),
            ports_by_name(compiled.inputs, input_names, "inputs"),
            ports_by_name(compiled.outputs, output_names, "outputs"),
        )


StaticCompiler = Callable[[dict[str, tuple[int, ...]]], Any]
"""Compiles the runner's model for fixed input shapes (input name -> shape)."""


class OpenVinoRunner:
    """Runs an OpenVINO model at any batch size; a context manager that frees it.

    OpenVINO's CPU plugin runs a model compiled for static shapes faster than one compiled with
    a dynamic batch (MobileNetV2 224, batch 1: about 10% in FP32 and BF16 alike). Given
    `compile_static`, the runner compiles the model for each input shape it meets, up to
    `MAX_STATIC_SHAPES` shapes (~0.1 s each); further shapes run on `compiled`, the dynamic
    model, rather than evicting one, so a server fed many batch sizes never recompiles in a loop.
    Each compiled model holds its own copy of the weights in the plugin's layout (ResNet50 FP32:
    about 120 MB each, measured), which bounds `MAX_STATIC_SHAPES`. Without `compile_static`
    (NNCF's validation hands over a model it compiled), `compiled` runs every shape.
    """

    def __init__(
        self, compiled: Any, signature: Signature, compile_static: StaticCompiler | None = None
    ) -> None:
        self.input_names = signature.input_names
        self.output_names = signature.output_names
        self._dtypes = {t.name: numpy_dtype(t.dtype) for t in signature.inputs}
        self._dynamic: _Compiled | None = _Compiled.of(
            compiled, self.input_names, self.output_names
        )
        self._compile_static = compile_static
        self._by_shape: dict[tuple[tuple[int, ...], ...], _Compiled] = {}

    @property
    def compiled_model(self) -> Any:
        """The dynamic-batch compiled model (its properties are those of every static one)."""
        return self._dynamic.model if self._dynamic else None

    @property
    def static_models(self) -> dict[tuple[tuple[int, ...], ...], Any]:
        """The models compiled for static shapes so far, keyed by the inputs' shapes."""
        return {shapes: compiled.model for shapes, compiled in self._by_shape.items()}

    def _compiled_for(self, feeds: dict[str, np.ndarray]) -> _Compiled:
        if self._compile_static is None:
            return self._dynamic
        shapes = tuple(feeds[name].shape for name in self.input_names)
        compiled = self._by_shape.get(shapes)
        if compiled is None and len(self._by_shape) < MAX_STATIC_SHAPES:
            model = self._compile_static(dict(zip(self.input_names, shapes, strict=True)))
            compiled = _Compiled.of(model, self.input_names, self.output_names)
            self._by_shape[shapes] = compiled
        return compiled or self._dynamic

    def __call__(self, feeds: Feeds) -> Feeds:
        check_feeds(self.input_names, feeds)
        arrays = {
            name: np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
            for name in self.input_names
        }
        compiled = self._compiled_for(arrays)
        compiled.request.infer({compiled.inputs[name]: arrays[name] for name in self.input_names})
        return {
            name: np.array(compiled.request.get_tensor(port).data, copy=True)
            for name, port in compiled.outputs.items()
        }

    def close(self) -> None:
        """Releases the infer requests and the compiled models."""
        self._dynamic = None
        self._by_shape.clear()

    def __enter__(self) -> OpenVinoRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
