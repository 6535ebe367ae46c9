"""The peers: what a user does by hand with each runtime, with its default settings.

- OpenVINO FP32: `ov.convert_model(saved_model)` and `core.compile_model(model, "CPU")` with only
  the thread count set (on a CPU with AVX-512 BF16 or AMX the default then computes in BF16:
  that is what the user gets, so the peer keeps it and records the precision it ran).
- OpenVINO INT8: `nncf.quantize(model, nncf.Dataset(calibration))` with NNCF's defaults.
- LiteRT: `TFLiteConverter.from_saved_model(dir).convert()` (FP32), and the one-line
  `optimizations = [tf.lite.Optimize.DEFAULT]` (dynamic-range INT8 weights), run by
  `ai_edge_litert`'s Interpreter with the thread count set.

Every runner maps `{input_name: ndarray}` to `{output_name: ndarray}` like tfopt's runners.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.backends.base import Feeds


class StockOpenVinoRunner:
    """A model compiled by OpenVINO with its defaults (thread count set), single input/output."""

    def __init__(self, compiled: Any, input_name: str, output_name: str) -> None:
        self.input_names = (input_name,)
        self.output_names = (output_name,)
        self._request = compiled.create_infer_request()
        self.inference_precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))

    def __call__(self, feeds: Feeds) -> Feeds:
        self._request.infer({0: feeds[self.input_names[0]]})
        return {self.output_names[0]: np.array(self._request.get_output_tensor(0).data)}


class StockLiteRtRunner:
    """A .tflite flatbuffer in `ai_edge_litert`'s Interpreter, single input/output, batch 1."""

    def __init__(self, content: bytes, threads: int, input_name: str, output_name: str) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.input_names = (input_name,)
        self.output_names = (output_name,)
        self._interpreter = Interpreter(model_content=content, num_threads=threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]

    def __call__(self, feeds: Feeds) -> Feeds:
        self._interpreter.set_tensor(self._input, feeds[self.input_names[0]])
        self._interpreter.invoke()
        return {self.output_names[0]: self._interpreter.get_tensor(self._output).copy()}


def stock_openvino(
    saved_model: Path,
    threads: int,
    names: tuple[str, str],
    calibration: Sequence[np.ndarray] | None = None,
    converted: Any = None,
) -> tuple[StockOpenVinoRunner, dict[str, Any]]:
    """OpenVINO as a user runs it; NNCF's default INT8 when `calibration` images are given.

    `converted` (the result of `ov.convert_model` on the same SavedModel) saves converting
    again; quantization works on a clone of it.
    """
    import openvino as ov

    started = time.perf_counter()
    model = converted if converted is not None else ov.convert_model(str(saved_model))
    if calibration is not None:
        import nncf

        model = nncf.quantize(model.clone(), nncf.Dataset(list(calibration)))
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads})
    runner = StockOpenVinoRunner(compiled, *names)
    runner.model = model
    return runner, {
        "conversion_s": round(time.perf_counter() - started, 2),
        "inference_precision": runner.inference_precision,
        "how": "ov.convert_model + nncf.quantize defaults"
        if calibration is not None
        else "ov.convert_model + compile_model defaults",
    }


def stock_litert(
    saved_model: Path, threads: int, names: tuple[str, str], dynamic_range: bool = False
) -> tuple[StockLiteRtRunner, dict[str, Any]]:
    """LiteRT as a user runs it: the default converter, or its one-line dynamic-range INT8."""
    import tensorflow as tf

    started = time.perf_counter()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if dynamic_range:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    content = converter.convert()
    runner = StockLiteRtRunner(content, threads, *names)
    return runner, {
        "conversion_s": round(time.perf_counter() - started, 2),
        "size_bytes": len(content),
        "how": "TFLiteConverter.from_saved_model"
        + (" + Optimize.DEFAULT (dynamic range)" if dynamic_range else " defaults"),
    }
