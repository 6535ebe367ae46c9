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
import re
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tasks.backends.base import (
    CalibrationData,
    Conversion,
    ConversionRequest,
    ConverterError,
    Feeds,
    Runner,
    UnsplittableGraphError,
    check_feeds,
    check_precision,
)
from tasks.backends.graph_split import (
    GraphSplit,
    PrefixRunner,
    SplitRunner,
    core_calibration,
    find_split,
    read_split,
    write_split,
)
from tasks.backends.tf import set_tf_threads
from tasks.backends.tflite_reproduce import REPRODUCE_FILE, write_reproduce_script
from tasks.errors import TfoptError, UserInputError
from tasks.signature import Signature

log = logging.getLogger(__name__)

MODEL_FILE = "model.tflite"
IO_DTYPE = "float32"
_MAX_CACHED_SHAPES = 8
_ONE_BY_ONE = object()
"""Marks an input shape the model cannot be resized to: its samples run one call each."""
_STATIC_TENSOR_LISTS = "element_shape to be static"
"""The converter's words for a tensor list (a Keras RNN's loop) over a free batch dimension."""
_BATCH_1_PRECISIONS = ("fp32", "fp16", "dynamic")
"""Where such a model is rebuilt for batch 1. Not INT8: the converter's full-integer pass on a
batch 1 GRU crashed the process (TF 2.21), where the first attempt fails cleanly."""
CONVERTIBLE_OPS = frozenset({"NonMaxSuppressionV4", "NonMaxSuppressionV5"})
"""Ops graph_split denies in general that LiteRT has builtins for."""


def _representative_dataset(
    signature: Signature, calibration_data: CalibrationData, counter: Counter
) -> Any:
    """The converter's `representative_dataset`: calibration feeds keyed by signature input."""
    dtypes = {t.name: np.dtype(t.dtype) for t in signature.inputs}

    def generate() -> Iterator[dict[str, np.ndarray]]:
        for feeds in calibration_data():
            check_feeds(signature.input_names, feeds)
            counter["samples"] += 1
            yield {name: np.asarray(feeds[name], dtype=dtypes[name]) for name in dtypes}

    return generate


def _first_calibration_feeds(request: ConversionRequest) -> Feeds | None:
    return next(iter(request.calibration_data()), None)


def _require_calibration_data(request: ConversionRequest) -> None:
    if _first_calibration_feeds(request) is None:
        raise UserInputError(
            "tflite:int8 needs calibration data, but calibration_data_uri yielded no batch; "
            "point it at a folder of .npz shards named like the model inputs"
        )


def concrete_signature(signature: Signature, sample: Feeds | None) -> Signature:
    """`signature` with unknown non-batch input dims taken from a sample feed, when one is given.

    XNNPack cannot plan a model whose spatial dims are unknown; the data fixes them.
    """
    inputs = []
    for tensor in signature.inputs:
        if None in tensor.shape[1:] and sample is not None and tensor.name in sample:
            dims = np.shape(sample[tensor.name])[1:]
            tensor = replace(tensor, shape=(None, *(int(d) for d in dims)))
        inputs.append(tensor)
    return replace(signature, inputs=tuple(inputs))


def _concrete_function(saved_model_dir: Path, signature: Signature) -> tuple[Any, Any]:
    """The signature traced with its concrete input shapes, and the object that keeps it alive."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model_dir))
    function = loaded.signatures[signature.key]
    names = signature.input_names
    specs = [tf.TensorSpec(t.shape, tf.as_dtype(t.dtype), name=t.name) for t in signature.inputs]

    def serve(*args: Any) -> Any:
        return function(**dict(zip(names, args, strict=True)))

    return tf.function(serve, input_signature=specs).get_concrete_function(), loaded


_OP_PATTERNS = (
    r"'tf\.(\w+)' op is neither",  # converter: "'tf.Erfinv' op is neither a custom op nor ..."
    r"^\s*tf\.(\w+)\(",  # converter: the "Details:" lines, "tf.Erfinv(tensor<...>) -> ..."
    r"unresolved custom op: (\w+)",  # interpreter: "Encountered unresolved custom op: FlexX."
)
_OP_LIST_PATTERNS = (r"Custom ops: ([^\n]+)", r"Flex ops: ([^\n]+)")


def unsupported_ops(text: str) -> tuple[str, ...]:
    """The TensorFlow op types a LiteRT converter or interpreter error names as unsupported."""
    names = {m for pattern in _OP_PATTERNS for m in re.findall(pattern, text, flags=re.M)}
    for pattern in _OP_LIST_PATTERNS:
        for line in re.findall(pattern, text):
            names.update(name.strip().rstrip(".") for name in line.split(","))
    return tuple(sorted({re.sub(r"^Flex(?=[A-Z])", "", name) for name in names if name}))


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _converter_error(exc: Exception, stage: str) -> ConverterError:
    ops = unsupported_ops(str(exc))
    if ops:
        return ConverterError(f"{stage} does not support the ops {', '.join(ops)}", ops)
    text = str(exc).split("\n", 1)[0] if str(exc) else type(exc).__name__
    return ConverterError(f"{stage} failed ({type(exc).__name__}): {_one_line(text)}")


def _convert_bytes(
    saved_model_dir: Path,
    signature: Signature,
    precision: str,
    calibration_data: CalibrationData,
    counter: Counter,
    batch_1_tensor_lists: bool = False,
) -> bytes:
    """Runs TFLiteConverter on the SavedModel's signature, traced at its concrete input shapes.

    `batch_1_tensor_lists` builds the tensor lists of recurrent loops for batch 1: the saved
    graph fixes their element shape with the free batch of the export, whatever the trace.
    """
    import tensorflow as tf

    function, loaded = _concrete_function(saved_model_dir, signature)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], loaded)
    if batch_1_tensor_lists:
        converter._experimental_default_to_single_batch_in_tensor_list_ops = True
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic":  # INT8 weights; activations quantized per call, no calibration
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative_dataset(
            signature, calibration_data, counter
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    with warnings.catch_warnings():
        # The calibrator uses tf.lite.Interpreter internally; its deprecation notice is not ours.
        warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated")
        try:
            return converter.convert()
        except TfoptError:
            raise
        except Exception as exc:  # the converter raises many types; all mean "cannot convert"
            raise _converter_error(exc, "LiteRT's converter") from exc


def check_runs(content: bytes) -> None:
    """Allocates and invokes the converted model once on zeros, as the interpreter will.

    Raises:
        ConverterError: the interpreter cannot run it (e.g. Flex or custom ops it does not link).
    """
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_content=content, num_threads=1)
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
        interpreter.invoke()
    except (RuntimeError, ValueError) as exc:
        raise _converter_error(exc, "the LiteRT interpreter") from exc


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
    """Runs a .tflite model at any batch size: one allocated interpreter per input shape.

    A model built for a static batch of 1 (see `_convert`) that cannot be resized runs a larger
    batch one sample per call, as a server would, and returns the outputs stacked.
    """

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
        self._static_batch_1 = all(
            int(self._inputs[name].get("shape_signature", self._inputs[name]["shape"])[0]) == 1
            for name in self.input_names
        )
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
            try:
                for name, shape in zip(self.input_names, shapes, strict=True):
                    interpreter.resize_tensor_input(self._inputs[name]["index"], list(shape))
                interpreter.allocate_tensors()
            except (RuntimeError, ValueError):
                if not (self._static_batch_1 and shapes[0][0] > 1):
                    raise
                log.info(
                    "the model takes batch 1 only; a batch of %d runs one call each", shapes[0][0]
                )
                interpreter = _ONE_BY_ONE
            self._by_shape[shapes] = interpreter
        return interpreter

    def _one_by_one(self, feeds: Feeds, batch: int) -> Feeds:
        calls = [
            self({name: feeds[name][i : i + 1] for name in self.input_names}) for i in range(batch)
        ]
        return {name: np.concatenate([out[name] for out in calls]) for name in self.output_names}

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
        if interpreter is _ONE_BY_ONE:
            return self._one_by_one(feeds, shapes[0][0])
        for name, index, cast in self._feed_plan:
            interpreter.set_tensor(index, cast(feeds[name]))
        interpreter.invoke()
        outputs = {}
        for name, index, quantized in self._fetch_plan:
            value = interpreter.get_tensor(index)
            outputs[name] = _dequantize(value, self._outputs[name]) if quantized else value
        return outputs


@dataclass(frozen=True)
class _Target:
    """What the converter gets: the whole SavedModel, or the numeric core of a split graph."""

    saved_model_dir: Path
    signature: Signature
    calibration_data: CalibrationData
    split: GraphSplit | None
    batch_1_tensor_lists: bool = False


def _target(request: ConversionRequest, split: GraphSplit | None, sample: Feeds | None) -> _Target:
    if split is None:
        signature = concrete_signature(request.signature, sample)
        return _Target(request.saved_model_dir, signature, request.calibration_data, None)
    calibration = core_calibration(split, request.calibration_data)
    return _Target(split.core_dir, split.core_signature, calibration, split)


def _has_free_batch(signature: Signature) -> bool:
    return any(t.shape and t.shape[0] in (None, -1) for t in signature.inputs)


def _with_batch(signature: Signature, batch: int) -> Signature:
    """`signature` with every input's batch dimension fixed to `batch`."""
    inputs = tuple(replace(t, shape=(batch, *t.shape[1:])) for t in signature.inputs)
    return replace(signature, inputs=inputs)


def _convert_checked(target: _Target, precision: str, counter: Counter) -> bytes:
    counter.clear()
    content = _convert_bytes(
        target.saved_model_dir,
        target.signature,
        precision,
        target.calibration_data,
        counter,
        target.batch_1_tensor_lists,
    )
    check_runs(content)
    return content


def _convert_for_batch_1(
    target: _Target, precision: str, counter: Counter, exc: ConverterError
) -> tuple[bytes, _Target]:
    """Converts a model whose tensor lists (recurrent loops) need a static batch, for batch 1.

    Raises:
        ConverterError: `exc` when the batch is fixed already, or INT8, which is not rebuilt.
    """
    if not _has_free_batch(target.signature):
        raise exc
    if precision not in _BATCH_1_PRECISIONS:
        raise ConverterError(
            f"{exc}. The model loops over a tensor list (a recurrent layer): tflite:fp32, "
            "fp16 and dynamic build it for batch 1; full-integer INT8 of it is not built "
            "(LiteRT's converter crashes on it), try tflite:dynamic or openvino:int8"
        ) from exc
    log.info(
        "LiteRT needs a static batch for the model's tensor lists (recurrent layers): "
        "converting it for batch 1; larger batches run one sample per call"
    )
    target = replace(target, signature=_with_batch(target.signature, 1), batch_1_tensor_lists=True)
    return _convert_checked(target, precision, counter), target


def _convert(request: ConversionRequest, work_dir: Path, counter: Counter) -> tuple[bytes, _Target]:
    """Converts the model, or its core when a prefix must stay in TensorFlow.

    When the converter names ops it does not take, they are tried as a TensorFlow prefix once;
    when it needs a static batch for recurrent loops, the model is converted for batch 1.
    """
    sample = _first_calibration_feeds(request)
    split = find_split(
        request.saved_model_dir,
        request.signature,
        work_dir=work_dir / "split",
        sample=sample,
        convertible=CONVERTIBLE_OPS,
    )
    target = _target(request, split, sample)
    try:
        return _convert_checked(target, request.precision, counter), target
    except ConverterError as exc:
        if _STATIC_TENSOR_LISTS in str(exc):
            return _convert_for_batch_1(target, request.precision, counter, exc)
        if not exc.ops:
            raise
        try:
            split = find_split(
                request.saved_model_dir,
                request.signature,
                work_dir=work_dir / "split-unsupported",
                sample=sample,
                extra_unconvertible=exc.ops,
                convertible=CONVERTIBLE_OPS,
            )
        except UnsplittableGraphError as unsplittable:
            raise ConverterError(f"{exc}; {unsplittable}", exc.ops) from unsplittable
        if split is None:
            raise
        log.info("LiteRT does not take %s; keeping them in a TensorFlow prefix", exc.ops)
        target = _target(request, split, sample)
        return _convert_checked(target, request.precision, counter), target


class TfliteBackend:
    """LiteRT on CPU: FP32, FP16 (float16 weights), dynamic range (INT8 weights, activations
    quantized on the fly, no calibration) and full-integer INT8."""

    name = "tflite"
    precisions = ("fp32", "fp16", "dynamic", "int8")

    def available(self) -> str | None:
        """None when the LiteRT interpreter (`ai_edge_litert`) is installed."""
        if importlib.util.find_spec("ai_edge_litert") is None:
            return "ai-edge-litert is not installed; install ai-edge-litert==2.3.0 to run LiteRT"
        return None

    def convert(self, request: ConversionRequest) -> Conversion:
        """Converts the SavedModel (or the core of its split) to `model.tflite`.

        Raises:
            ConverterError: the converter or the interpreter rejects ops (named in the message).
            UnsplittableGraphError: ops no converter takes do not form a leading prefix.
        """
        check_precision(self.name, self.precisions, request.precision)
        if request.precision == "int8":
            _require_calibration_data(request)
        output_dir = Path(request.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        counter: Counter = Counter()
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="tfopt-tflite-") as work_dir:
            content, target = _convert(request, Path(work_dir), counter)
            if target.split is not None:
                write_split(target.split, output_dir)
        seconds = time.perf_counter() - started
        (output_dir / MODEL_FILE).write_bytes(content)
        request.signature.write(output_dir)
        write_reproduce_script(
            output_dir / REPRODUCE_FILE,
            request,
            target.signature,
            target.split,
            target.batch_1_tensor_lists,
        )
        summary = _summary(content, seconds, request.precision, counter, target.split)
        if target.batch_1_tensor_lists:
            summary["static_batch"] = 1
        log.info(
            "tflite:%s converted in %.1f s: %s bytes, %s ops%s",
            request.precision,
            seconds,
            summary["size_bytes"],
            summary["num_ops"],
            f", {', '.join(target.split.tf_ops)} left in TensorFlow" if target.split else "",
        )
        return Conversion(artifact_dir=output_dir, summary=summary)

    def load(self, artifact_dir: Path, signature: Signature, num_threads: int) -> Runner:
        """Loads `model.tflite` into LiteRT, behind the TensorFlow prefix of a split graph."""
        model_path = Path(artifact_dir) / MODEL_FILE
        if not model_path.is_file():
            raise UserInputError(f"{artifact_dir} holds no {MODEL_FILE}; convert the variant first")
        split = read_split(artifact_dir)
        if split is None:
            return TfliteRunner(model_path, signature, num_threads)
        set_tf_threads(num_threads)
        core = TfliteRunner(model_path, split.core_signature, num_threads)
        return SplitRunner(PrefixRunner(split.prefix_dir), core)


def _summary(
    content: bytes, seconds: float, precision: str, counter: Counter, split: GraphSplit | None
) -> dict[str, Any]:
    ops = op_counts(content)
    summary: dict[str, Any] = {
        "size_bytes": len(content),
        "conversion_seconds": round(seconds, 3),
        "io_dtype": IO_DTYPE,
        "op_counts": ops,
        "num_ops": sum(ops.values()),
    }
    if precision == "int8":
        summary["calibration_samples"] = counter["samples"]
    if split is not None:
        summary["split"] = {"tf_ops": list(split.tf_ops), "boundary": list(split.boundary)}
    return summary
