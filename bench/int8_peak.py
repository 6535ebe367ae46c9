"""This machine's measured INT8 and FP32 GEMM peaks through LiteRT's FullyConnected (GOP/s).

A one-layer Keras model `y = x @ W` (x `[n, n]`, W `[n, n]`, no bias) is converted twice: FP32
and full-integer INT8 (int8 activations and weights, calibrated on random data), and each is run
by `ai_edge_litert` with XNNPACK at a fixed thread count. On a CPU with AVX-512 VNNI or AVX-VNNI,
XNNPACK's int8 GEMM uses the VNNI dot-product instructions, so the INT8 rate is the ceiling an
INT8 network run by LiteRT can reach here; the FP32 rate, measured the same way, checks it
against the FP32 matmul peak of `bench.peak`. Run in its own process:

    python -m bench.int8_peak --threads 2    # prints JSON on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.peak import _best_gflops

SIZES = (1024, 2048)
CALIBRATION_BATCHES = 4


def _dense_model(n: int) -> Any:
    import keras

    rng = np.random.default_rng(n)
    inputs = keras.Input((n,), batch_size=n, name="x")
    layer = keras.layers.Dense(n, use_bias=False, name="gemm")
    model = keras.Model(inputs, layer(inputs))
    layer.set_weights([rng.standard_normal((n, n), dtype=np.float32) / np.sqrt(n)])
    return model


def _convert(model: Any, n: int, int8: bool) -> bytes:
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="bench-gemm-") as tmp:
        model.export(str(Path(tmp, "sm")), format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp, "sm")))
        if int8:
            rng = np.random.default_rng(0)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: (
                [rng.standard_normal((n, n), dtype=np.float32)] for _ in range(CALIBRATION_BATCHES)
            )
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        return converter.convert()


def _rate(content: bytes, n: int, threads: int) -> float:
    """Best GOP/s of one `[n, n] x [n, n]` FullyConnected call."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=threads)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], [n, n])
    interpreter.allocate_tensors()
    rng = np.random.default_rng(1)
    if detail["dtype"] == np.int8:
        x = rng.integers(-128, 127, size=(n, n), dtype=np.int8)
    else:
        x = rng.standard_normal((n, n), dtype=np.float32)
    interpreter.set_tensor(detail["index"], x)
    return round(_best_gflops(interpreter.invoke, n), 1)


class GemmRunner:
    """One `[n, n] x [n, n]` FullyConnected per call, whatever the feeds: a runner that
    `benchmark_interleaved` can measure in the same rounds as a network, so the peak and the
    network see the same machine."""

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def __init__(self, content: bytes, n: int, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.ops = 2.0 * n**3
        self._interpreter = Interpreter(model_content=content, num_threads=threads)
        detail = self._interpreter.get_input_details()[0]
        self._interpreter.resize_tensor_input(detail["index"], [n, n])
        self._interpreter.allocate_tensors()
        rng = np.random.default_rng(1)
        if detail["dtype"] == np.int8:
            x = rng.integers(-128, 127, size=(n, n), dtype=np.int8)
        else:
            x = rng.standard_normal((n, n), dtype=np.float32)
        self._interpreter.set_tensor(detail["index"], x)

    def __call__(self, feeds: dict) -> dict:
        self._interpreter.invoke()
        return {}


def gemm_runners(threads: int, n: int = SIZES[0]) -> dict[str, GemmRunner]:
    """`gemm:fp32` and `gemm:int8` runners of one size (GOP per call in `.ops`)."""
    model = _dense_model(n)
    return {
        "gemm:fp32": GemmRunner(_convert(model, n, int8=False), n, threads),
        "gemm:int8": GemmRunner(_convert(model, n, int8=True), n, threads),
    }


def measure_gemm_peaks(threads: int) -> dict[str, Any]:
    """INT8 and FP32 GOP/s per size; the peaks are the best of the sizes."""
    int8: dict[str, float] = {}
    fp32: dict[str, float] = {}
    for n in SIZES:
        model = _dense_model(n)
        int8[str(n)] = _rate(_convert(model, n, int8=True), n, threads)
        fp32[str(n)] = _rate(_convert(model, n, int8=False), n, threads)
    return {
        "threads": threads,
        "method": "LiteRT FullyConnected [n,n]x[n,n], XNNPACK, best single call",
        "int8_gops": int8,
        "fp32_gflops": fp32,
        "int8_peak_gops": max(int8.values()),
        "fp32_peak_gflops": max(fp32.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(json.dumps(measure_gemm_peaks(args.threads)))


if __name__ == "__main__":
    main()
