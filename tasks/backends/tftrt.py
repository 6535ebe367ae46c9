"""The TF-TRT backend: TrtGraphConverterV2 to FP32/FP16/INT8 TensorRT engines, on GPU workers.

TensorFlow 2.17 was the last release built with TensorRT, so on this project's TF 2.21 stack
`available()` returns the reason and the variant is SKIPPED; the conversion itself runs on a GPU
worker with TF 2.17 + TensorRT 8.6 or NVIDIA's TensorFlow container. The converter module is
reached only through `_trt_module()`, and the probe only through `probe_tensorrt()`, so tests can
substitute both.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tasks.backends.base import (
    BackendUnavailableError,
    Conversion,
    ConversionRequest,
    Feeds,
    check_feeds,
    check_precision,
)
from tasks.backends.graph_split import feed_array
from tasks.backends.tf import TfRunner, directory_size, set_tf_threads
from tasks.errors import UserInputError
from tasks.signature import Signature

log = logging.getLogger(__name__)

REPRODUCE_FILE = "reproduce.py"
SUMMARY_FILE = "trt_summary.txt"
PRECISION_MODES = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}
MINIMUM_SEGMENT_SIZE = 3
LAST_TF_WITH_TENSORRT = (2, 17)
STRING = "string"
_TF_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly")
_WHERE_TO_RUN = (
    "run tftrt variants on a GPU worker with TF 2.17 + TensorRT 8.6 "
    "or NVIDIA's TensorFlow container"
)


def _trt_module() -> Any:
    """The seam: TensorFlow's `trt_convert` module (a recording stand-in in unit tests)."""
    from tensorflow.python.compiler.tensorrt import trt_convert

    return trt_convert


def _installed_tf_version() -> str | None:
    """TensorFlow's version from package metadata, without importing TensorFlow."""
    for distribution in _TF_DISTRIBUTIONS:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _major_minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def no_tensorrt_reason(version: str) -> str:
    """The SKIPPED reason for a TensorFlow release that has no TF-TRT."""
    major_minor = _major_minor(version)
    shown = f"{major_minor[0]}.{major_minor[1]}" if major_minor else version
    return f"TensorFlow {shown} has no TensorRT (TF-TRT was removed after 2.17); {_WHERE_TO_RUN}"


def probe_runtime() -> str | None:
    """Tries TF-TRT for real: import, construct a converter, and look for a GPU."""
    try:
        trt = _trt_module()
        import tensorflow as tf
    except ImportError as exc:
        return f"TF-TRT cannot be imported ({exc}); {_WHERE_TO_RUN}"
    version = tf.__version__
    try:
        # The constructor runs TF-TRT's own check: built with TensorRT, and a loadable libnvinfer
        # of a compatible version. It reads no files.
        trt.TrtGraphConverterV2(input_saved_model_dir="unused-probe")
    except RuntimeError as exc:
        major_minor = _major_minor(version)
        if major_minor and major_minor > LAST_TF_WITH_TENSORRT:
            return no_tensorrt_reason(version)
        return f"TensorFlow {version}: TF-TRT is not usable ({exc}); {_WHERE_TO_RUN}"
    if not tf.config.list_physical_devices("GPU"):
        return f"TensorFlow {version} has TensorRT but sees no GPU; TF-TRT needs an NVIDIA GPU"
    return None


@functools.cache
def probe_tensorrt() -> str | None:
    """None when TF-TRT can convert on this worker, else the reason (probed once per process).

    A TensorFlow newer than 2.17 (known from its package metadata) has no TensorRT, so that case
    is answered without importing TensorFlow; anything else is tried for real.
    """
    version = _installed_tf_version()
    major_minor = _major_minor(version) if version else None
    if major_minor and major_minor > LAST_TF_WITH_TENSORRT:
        return no_tensorrt_reason(version or "")
    return probe_runtime()


def converter_kwargs(request: ConversionRequest, trt: Any) -> dict[str, Any]:
    """The exact TrtGraphConverterV2 arguments for a request (also written to reproduce.py)."""
    precision = request.precision
    return {
        "input_saved_model_dir": str(request.saved_model_dir),
        "input_saved_model_signature_key": request.signature.key,
        "precision_mode": getattr(trt.TrtPrecisionMode, PRECISION_MODES[precision]),
        "use_calibration": precision == "int8",
        # Implicit batch: one engine per shape that build() sees, cached side by side; a smaller
        # batch runs on a larger engine, an unseen larger one builds at runtime.
        "use_dynamic_shape": False,
        "minimum_segment_size": MINIMUM_SEGMENT_SIZE,
        "maximum_cached_engines": max(1, len(request.batch_sizes)),
        "allow_build_at_runtime": True,
    }


def converter_feed(value: Any, dtype: str) -> Any:
    """One input as the converter gets it: a tf.string tensor for strings, else a numpy array."""
    array = feed_array(value, dtype)
    if dtype != STRING:
        return array
    import tensorflow as tf

    return tf.constant(array, dtype=tf.string)


def calibration_input_fn(request: ConversionRequest) -> Callable[[], Iterator[Feeds]]:
    """INT8 calibration feeds, one `{input_name: array}` dict per calibration batch, in order.

    Dicts, not tuples: the converter calls its function with positional arguments in the frozen
    graph's order (input names sorted), not the signature's order, so a tuple could silently feed
    one input into another. `trt_convert` passes a dict as keyword arguments. String inputs (e.g.
    encoded images the graph decodes) go in as tf.string tensors.
    """
    dtypes = {t.name: t.dtype for t in request.signature.inputs}

    def generate() -> Iterator[Feeds]:
        for feeds in request.calibration_data():
            check_feeds(request.signature.input_names, feeds)
            yield {name: converter_feed(feeds[name], dtype) for name, dtype in dtypes.items()}

    return generate


def engine_input_shapes(request: ConversionRequest) -> list[dict[str, tuple[int, ...]]]:
    """For each requested batch size, the input shapes to build an engine for.

    Non-batch dimensions come from the signature; unknown ones from the first calibration batch.
    """
    sample: Feeds | None = None
    if any(None in t.shape[1:] for t in request.signature.inputs):
        sample = _build_sample(request, "has unknown non-batch input dimensions")
    shapes = []
    for batch in request.batch_sizes:
        per_input = {}
        for tensor in request.signature.inputs:
            dims = tuple(
                int(np.shape(sample[tensor.name])[axis]) if dim is None and sample else dim
                for axis, dim in enumerate(tensor.shape[1:], start=1)
            )
            per_input[tensor.name] = (batch, *dims)
        shapes.append(per_input)
    return shapes


def _build_sample(request: ConversionRequest, why: str) -> Feeds:
    sample = next(iter(request.calibration_data()), None)
    if sample is None:
        raise UserInputError(
            f"the model {why} and the calibration data is empty; TF-TRT needs one calibration "
            "batch to build its engines: give calibration_data_uri (or eval data to hold out from)"
        )
    check_feeds(request.signature.input_names, sample)
    return sample


def _rows(value: np.ndarray, batch: int) -> np.ndarray:
    """`batch` rows cycled from `value` (a calibration batch of any size)."""
    return np.take(value, np.arange(batch) % len(value), axis=0)


def build_input_fn(
    request: ConversionRequest, shapes: list[dict[str, tuple[int, ...]]]
) -> Callable[[], Iterator[Feeds]]:
    """`build()` feeds, one per requested batch size: zeros of each shape for numeric inputs.

    String inputs (encoded images, serialized examples) cannot be zeros: the graph decodes them
    before any engine runs, so they come from the first calibration batch, cycled to the batch.
    """
    dtypes = {t.name: t.dtype for t in request.signature.inputs}
    sample = None
    if STRING in dtypes.values():
        sample = _build_sample(request, "has string inputs")

    def generate() -> Iterator[Feeds]:
        for per_input in shapes:
            feeds: Feeds = {}
            for name, shape in per_input.items():
                if dtypes[name] == STRING and sample is not None:
                    rows = _rows(feed_array(sample[name], STRING), shape[0])
                    feeds[name] = converter_feed(rows, STRING)
                else:
                    feeds[name] = np.zeros(shape, dtype=np.dtype(dtypes[name]))
            yield feeds

    return generate


def conversion_summary(converter: Any) -> tuple[dict[str, Any], str]:
    """Engines and op counts from `converter.summary()`, and its full text."""
    lines: list[str] = []
    try:
        converter.summary(
            line_length=160, detailed=True, print_fn=lambda line="": lines.append(line)
        )
    except Exception:  # the summary is informative; the conversion itself succeeded
        log.warning("TF-TRT converter.summary() failed", exc_info=True)
    text = "\n".join(str(line) for line in lines)
    engines = re.search(r"Total number of TensorRT engines: (\d+)", text)
    ratio = re.search(r"% of OPs Converted: ([\d.]+)% \[(\d+)/(\d+)\]", text)
    op_types: Counter[str] = Counter()
    for name, count in re.findall(r"^\s*- (\S+): (\d+)x\s*$", text, flags=re.MULTILINE):
        op_types[name] += int(count)
    summary: dict[str, Any] = {
        "trt_engines": int(engines.group(1)) if engines else None,
        "ops_converted": int(ratio.group(2)) if ratio else None,
        "ops_total": int(ratio.group(3)) if ratio else None,
        "percent_converted": float(ratio.group(1)) if ratio else None,
        "converted_op_types": dict(sorted(op_types.items())),
    }
    if ratio:
        summary["ops_not_converted"] = summary["ops_total"] - summary["ops_converted"]
    return summary, text


class TfTrtBackend:
    """TF-TRT on an NVIDIA GPU: TensorRT engines inside a SavedModel."""

    name = "tftrt"
    precisions = ("fp32", "fp16", "int8")

    def available(self) -> str | None:
        """None only when TF-TRT really works here (TensorRT build, libnvinfer, a GPU)."""
        return probe_tensorrt()

    def convert(self, request: ConversionRequest) -> Conversion:
        """Converts, pre-builds an engine per batch size, saves, and writes reproduce.py."""
        check_precision(self.name, self.precisions, request.precision)
        reason = self.available()
        if reason:
            raise BackendUnavailableError(reason)
        if request.precision == "int8" and next(iter(request.calibration_data()), None) is None:
            raise UserInputError(
                "tftrt:int8 needs calibration data, but calibration_data_uri yielded no batch"
            )
        trt = _trt_module()
        kwargs = converter_kwargs(request, trt)
        shapes = engine_input_shapes(request)
        build_feeds = build_input_fn(request, shapes)
        output_dir = Path(request.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_reproduce_script(output_dir / REPRODUCE_FILE, kwargs, request, shapes)
        started = time.perf_counter()
        converter = trt.TrtGraphConverterV2(**kwargs)
        if request.precision == "int8":
            converter.convert(calibration_input_fn=calibration_input_fn(request))
        else:
            converter.convert()
        converter.build(input_fn=build_feeds)
        converter.save(str(output_dir))
        seconds = time.perf_counter() - started
        summary, text = conversion_summary(converter)
        (output_dir / SUMMARY_FILE).write_text(text)
        request.signature.write(output_dir)
        summary.update(
            conversion_seconds=round(seconds, 3),
            size_bytes=directory_size(output_dir),
            engine_batch_sizes=list(request.batch_sizes),
            converter_kwargs={key: _plain(value) for key, value in kwargs.items()},
        )
        log.info(
            "tftrt:%s converted in %.1f s: %s TRTEngineOps, %s of %s ops converted",
            request.precision,
            seconds,
            summary["trt_engines"],
            summary["ops_converted"],
            summary["ops_total"],
        )
        return Conversion(artifact_dir=output_dir, summary=summary)

    def load(self, artifact_dir: Path, signature: Signature, num_threads: int) -> TfRunner:
        """Loads the converted SavedModel's signature (TensorRT engines run inside it)."""
        reason = self.available()
        if reason:
            raise BackendUnavailableError(reason)
        set_tf_threads(num_threads)
        return TfRunner(Path(artifact_dir), signature)


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


_REPRODUCE_TEMPLATE = '''\
"""Re-runs tfopt's TF-TRT conversion ({variant}) by hand on a GPU worker with TF-TRT.

Generated by tfopt. Needs TensorFlow built with TensorRT (TF 2.17 + TensorRT 8.6, or NVIDIA's
TensorFlow container) and a GPU. INT8 needs --calibration-dir: a folder of .npz shards, one array
per model input named as below, rows along axis 0 (each row is one batch-1 calibration feed).
A model with string inputs (encoded images it decodes) needs it for every precision: its engines
are built on the first calibration rows, as tfopt did, since zeros do not decode.
"""

import argparse
import glob
import os

import numpy as np
import tensorflow as tf
from tensorflow.python.compiler.tensorrt import trt_convert as trt

CONVERTER_KWARGS = {kwargs}
INPUT_DTYPES = {dtypes}
ENGINE_INPUT_SHAPES = {shapes}


def feed(value, dtype):
    return tf.constant(value, tf.string) if dtype == "string" else value.astype(dtype)


def calibration_rows(calibration_dir):
    for path in sorted(glob.glob(os.path.join(calibration_dir, "*.npz"))):
        with np.load(path, allow_pickle=False) as shard:
            arrays = {{name: shard[name] for name in INPUT_DTYPES}}
        for row in range(len(next(iter(arrays.values())))):
            yield {{name: arrays[name][row : row + 1] for name in INPUT_DTYPES}}


def calibration_input_fn(calibration_dir):
    def generate():
        for rows in calibration_rows(calibration_dir):
            yield {{name: feed(rows[name], dtype) for name, dtype in INPUT_DTYPES.items()}}

    return generate


def build_input_fn(calibration_dir):
    first = next(calibration_rows(calibration_dir)) if calibration_dir else None

    def generate():
        for per_input in ENGINE_INPUT_SHAPES:
            feeds = {{}}
            for name, shape in per_input.items():
                dtype = INPUT_DTYPES[name]
                if dtype == "string":
                    rows = np.take(first[name], np.arange(shape[0]) % len(first[name]), axis=0)
                    feeds[name] = feed(rows, dtype)
                else:
                    feeds[name] = np.zeros(shape, dtype)
            yield feeds

    return generate


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--saved-model", default=CONVERTER_KWARGS["input_saved_model_dir"])
    parser.add_argument("--output", default="reproduced_tftrt")
    parser.add_argument("--calibration-dir")
    args = parser.parse_args()
    if "string" in INPUT_DTYPES.values() and not args.calibration_dir:
        parser.error("a model with string inputs needs --calibration-dir to build its engines")
    kwargs = dict(CONVERTER_KWARGS, input_saved_model_dir=args.saved_model)
    converter = trt.TrtGraphConverterV2(**kwargs)
    if kwargs["use_calibration"] and kwargs["precision_mode"].upper() == "INT8":
        if not args.calibration_dir:
            parser.error("INT8 needs --calibration-dir")
        converter.convert(calibration_input_fn=calibration_input_fn(args.calibration_dir))
    else:
        converter.convert()
    converter.build(input_fn=build_input_fn(args.calibration_dir))
    converter.save(args.output)
    converter.summary()


if __name__ == "__main__":
    main()
'''


def write_reproduce_script(
    path: Path,
    kwargs: dict[str, Any],
    request: ConversionRequest,
    shapes: list[dict[str, tuple[int, ...]]],
) -> Path:
    """Writes a standalone script that re-runs this exact conversion (Model Navigator style)."""
    plain = {key: _plain(value) for key, value in kwargs.items()}
    dtypes = {t.name: t.dtype for t in request.signature.inputs}
    path.write_text(
        _REPRODUCE_TEMPLATE.format(
            variant=f"tftrt:{request.precision}",
            kwargs=repr(plain),
            dtypes=repr(dtypes),
            shapes=repr([{name: list(shape) for name, shape in s.items()} for s in shapes]),
        )
    )
    return path
