"""The LiteRT backend: TFLiteConverter to FP32, FP16 or full-integer INT8, run by ai_edge_litert.

INT8 keeps float32 inputs and outputs: the converter puts QUANTIZE/DEQUANTIZE ops at the model's
edges (`inference_input_type`/`inference_output_type` stay tf.float32), so every caller feeds and
reads floats as with the baseline, and the quantisation parameters live in one place (the model).
The runner still quantises/dequantises any integer I/O tensor it meets (e.g. a model converted with
int8 I/O elsewhere), so callers always see float.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tasks.backends.base import (
    Conversion,
    ConversionRequest,
    Feeds,
    check_feeds,
    check_precision,
)
from tasks.errors import UserInputError
from tasks.signature import Signature

log = logging.getLogger(__name__)

MODEL_FILE = "model.tflite"
IO_DTYPE = "float32"
_MAX_CACHED_SHAPES = 8


def _representative_dataset(request: ConversionRequest, counter: Counter) -> Any:
    """The converter's `representative_dataset`: calibration feeds keyed by signature input."""
    dtypes = {t.name: np.dtype(t.dtype) for t in request.signature.inputs}

    def generate() -> Iterator[dict[str, np.ndarray]]:
        for feeds in request.calibration_data():
            check_feeds(request.signature.input_names, feeds)
            counter["samples"] += 1
            yield {name: np.asarray(feeds[name], dtype=dtypes[name]) for name in dtypes}

    return generate


def _require_calibration_data(request: ConversionRequest) -> None:
    if next(iter(request.calibration_data()), None) is None:
        raise UserInputError(
            "tflite:int8 needs calibration data, but calibration_data_uri yielded no batch; "
            "point it at a folder of .npz shards named like the model inputs"
        )


def _convert_bytes(request: ConversionRequest, counter: Counter) -> bytes:
    """Runs TFLiteConverter on the SavedModel at the requested precision."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(request.saved_model_dir), signature_keys=[request.signature.key]
    )
    if request.precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif request.precision == "int8":
        _require_calibration_data(request)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative_dataset(request, counter)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    with warnings.catch_warnings():
        # The calibrator uses tf.lite.Interpreter internally; its deprecation notice is not ours.
        warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated")
        return converter.convert()


REPRODUCE_FILE = "reproduce.py"
_REPRODUCE = '''"""Re-run the LiteRT conversion that made model.tflite (tfopt, tflite:{precision}).

    python reproduce.py SAVED_MODEL_DIR [--calibration-dir DIR] [--output model.tflite]

INT8 calibrates on the .npz shards in --calibration-dir: one array per model input, one sample
at a time, as tfopt did.
"""

import argparse
import glob

import numpy as np
import tensorflow as tf

PRECISION = {precision!r}
SIGNATURE_KEY = {key!r}
INPUTS = {inputs!r}  # name -> dtype


def representative_dataset(directory):
    for path in sorted(glob.glob(f"{{directory}}/**/*.npz", recursive=True)):
        with np.load(path, allow_pickle=False) as shard:
            for i in range(len(shard[next(iter(INPUTS))])):
                yield {{name: shard[name][i : i + 1].astype(t) for name, t in INPUTS.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saved_model_dir")
    parser.add_argument("--calibration-dir")
    parser.add_argument("--output", default="model.tflite")
    args = parser.parse_args()
    converter = tf.lite.TFLiteConverter.from_saved_model(
        args.saved_model_dir, signature_keys=[SIGNATURE_KEY]
    )
    if PRECISION == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif PRECISION == "int8":
        if not args.calibration_dir:
            parser.error("int8 needs --calibration-dir")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: representative_dataset(args.calibration_dir)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    with open(args.output, "wb") as out:
        out.write(converter.convert())


if __name__ == "__main__":
    main()
'''


def write_reproduce_script(path: Path, request: ConversionRequest) -> Path:
    """A standalone script with this conversion's exact settings (kept next to the artifact)."""
    path.write_text(
        _REPRODUCE.format(
            precision=request.precision,
            key=request.signature.key,
            inputs={t.name: t.dtype for t in request.signature.inputs},
        )
    )
    return path


def op_counts(content: bytes) -> dict[str, int]:
    """Counts the operators of a .tflite flatbuffer by name ({} if it cannot be parsed)."""
    try:
        from ai_edge_litert import schema_py_generated as schema

        names = {
            value: key
            for key, value in vars(schema.BuiltinOperator).items()
            if not key.startswith("_")
        }
        model = schema.Model.GetRootAs(content, 0)
        counts: Counter[str] = Counter()
        for s in range(model.SubgraphsLength()):
            subgraph = model.Subgraphs(s)
            for i in range(subgraph.OperatorsLength()):
                code = model.OperatorCodes(subgraph.Operators(i).OpcodeIndex())
                builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
                if builtin == schema.BuiltinOperator.CUSTOM and code.CustomCode():
                    counts[code.CustomCode().decode()] += 1
                else:
                    counts[names.get(builtin, str(builtin))] += 1
        return dict(sorted(counts.items()))
    except Exception:  # the op table is informative only
        log.warning("could not count the operators of the .tflite model", exc_info=True)
        return {}


def _quantize(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Casts a float feed to the tensor's dtype, quantising when the tensor is an integer one."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        quantized = np.round(np.asarray(value, dtype=np.float32) / scale + zero_point)
        return np.clip(quantized, info.min, info.max).astype(dtype)
    return np.asarray(value, dtype=dtype)


def _dequantize(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if np.issubdtype(value.dtype, np.integer) and scale:
        return (value.astype(np.float32) - zero_point) * np.float32(scale)
    return value


def _is_quantized(detail: dict[str, Any]) -> bool:
    scale, _ = detail.get("quantization", (0.0, 0))
    return bool(np.issubdtype(np.dtype(detail["dtype"]), np.integer) and scale)


def _feed_caster(detail: dict[str, Any]) -> Callable[[Any], np.ndarray]:
    """What `_quantize` does for this tensor, decided once instead of on every call."""
    if _is_quantized(detail):
        return functools.partial(_quantize, detail=detail)
    return functools.partial(np.asarray, dtype=np.dtype(detail["dtype"]))


def _io_details(interpreter: Any, signature: Signature) -> tuple[dict, dict]:
    """Input and output tensor details keyed by the signature's names."""
    if signature.key in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(signature.key)
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
    else:
        log.warning("the .tflite model has no signature %r; mapping I/O by order", signature.key)
        inputs = dict(zip(signature.input_names, interpreter.get_input_details(), strict=False))
        outputs = dict(zip(signature.output_names, interpreter.get_output_details(), strict=False))
    for kind, details, names in (
        ("inputs", inputs, signature.input_names),
        ("outputs", outputs, signature.output_names),
    ):
        if set(details) != set(names):
            raise UserInputError(
                f"the .tflite model's {kind} {sorted(details)} do not match the signature's "
                f"{sorted(names)}"
            )
    return inputs, outputs


class TfliteRunner:
    """Runs a .tflite model at any batch size: one allocated interpreter per input shape."""

    def __init__(self, model_path: Path, signature: Signature, num_threads: int) -> None:
        self.input_names = signature.input_names
        self.output_names = signature.output_names
        self._model_path = str(model_path)
        self._num_threads = num_threads
        interpreter = self._new_interpreter()
        self._inputs, self._outputs = _io_details(interpreter, signature)
        # Per-call work decided once: the hot path is a few microseconds of a ~50 us INT8 call.
        self._feed_plan = tuple(
            (name, self._inputs[name]["index"], _feed_caster(self._inputs[name]))
            for name in self.input_names
        )
        self._fetch_plan = tuple(
            (name, detail["index"], _is_quantized(detail))
            for name, detail in ((n, self._outputs[n]) for n in self.output_names)
        )
        shapes = tuple(tuple(self._inputs[name]["shape"]) for name in self.input_names)
        interpreter.allocate_tensors()
        self._by_shape: dict[tuple, Any] = {shapes: interpreter}

    def _new_interpreter(self) -> Any:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter(model_path=self._model_path, num_threads=self._num_threads)

    def _interpreter_for(self, shapes: tuple[tuple[int, ...], ...]) -> Any:
        interpreter = self._by_shape.get(shapes)
        if interpreter is None:
            if len(self._by_shape) >= _MAX_CACHED_SHAPES:
                self._by_shape.pop(next(iter(self._by_shape)))
            interpreter = self._new_interpreter()
            for name, shape in zip(self.input_names, shapes, strict=True):
                interpreter.resize_tensor_input(self._inputs[name]["index"], list(shape))
            interpreter.allocate_tensors()
            self._by_shape[shapes] = interpreter
        return interpreter

    def _shapes(self, feeds: Feeds) -> tuple[tuple[int, ...], ...]:
        """The inputs' shapes in signature order; malformed feeds get `check_feeds`' error."""
        if len(feeds) == len(self.input_names) and all(n in feeds for n in self.input_names):
            shapes = tuple(np.shape(feeds[name]) for name in self.input_names)
            if all(shape and shape[0] == shapes[0][0] for shape in shapes):
                return shapes
        check_feeds(self.input_names, feeds)
        return tuple(np.shape(feeds[name]) for name in self.input_names)

    def __call__(self, feeds: Feeds) -> Feeds:
        shapes = self._shapes(feeds)
        interpreter = self._by_shape.get(shapes)
        if interpreter is None:
            interpreter = self._interpreter_for(shapes)
        for name, index, cast in self._feed_plan:
            interpreter.set_tensor(index, cast(feeds[name]))
        interpreter.invoke()
        outputs = {}
        for name, index, quantized in self._fetch_plan:
            value = interpreter.get_tensor(index)
            outputs[name] = _dequantize(value, self._outputs[name]) if quantized else value
        return outputs


class TfliteBackend:
    """LiteRT on CPU: FP32, FP16 (float16 weights) and full-integer INT8."""

    name = "tflite"
    precisions = ("fp32", "fp16", "int8")

    def available(self) -> str | None:
        """None when the LiteRT interpreter (`ai_edge_litert`) is installed."""
        if importlib.util.find_spec("ai_edge_litert") is None:
            return "ai-edge-litert is not installed; install ai-edge-litert==2.3.0 to run LiteRT"
        return None

    def convert(self, request: ConversionRequest) -> Conversion:
        """Converts the SavedModel to `model.tflite` in `request.output_dir`."""
        check_precision(self.name, self.precisions, request.precision)
        output_dir = Path(request.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        counter: Counter = Counter()
        started = time.perf_counter()
        content = _convert_bytes(request, counter)
        seconds = time.perf_counter() - started
        (output_dir / MODEL_FILE).write_bytes(content)
        request.signature.write(output_dir)
        write_reproduce_script(output_dir / REPRODUCE_FILE, request)
        ops = op_counts(content)
        summary: dict[str, Any] = {
            "size_bytes": len(content),
            "conversion_seconds": round(seconds, 3),
            "io_dtype": IO_DTYPE,
            "op_counts": ops,
            "num_ops": sum(ops.values()),
        }
        if request.precision == "int8":
            summary["calibration_samples"] = counter["samples"]
        log.info(
            "tflite:%s converted in %.1f s: %s bytes, %s ops",
            request.precision,
            seconds,
            summary["size_bytes"],
            summary["num_ops"],
        )
        return Conversion(artifact_dir=output_dir, summary=summary)

    def load(self, artifact_dir: Path, signature: Signature, num_threads: int) -> TfliteRunner:
        """Loads `model.tflite` into a LiteRT interpreter with `num_threads` threads."""
        model_path = Path(artifact_dir) / MODEL_FILE
        if not model_path.is_file():
            raise UserInputError(f"{artifact_dir} holds no {MODEL_FILE}; convert the variant first")
        return TfliteRunner(model_path, signature, num_threads)
