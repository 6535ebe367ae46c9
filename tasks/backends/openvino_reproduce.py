"""The reproduce.py written beside every OpenVINO variant: the same conversion, standalone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.backends.base import ConversionRequest
from tasks.backends.graph_split import GraphSplit
from tasks.backends.reproduce_text import CUT_AND_SAMPLES, tensor_table

REPRODUCE_FILE = "reproduce.py"


@dataclass(frozen=True)
class ReproduceSettings:
    """What the conversion decided beyond the request.

    Attributes:
        hint: the INFERENCE_PRECISION_HINT to compile with.
        shapes: the converted model's input shapes (-1: dynamic).
        split: the graph's cut when a decoding prefix stays in TensorFlow.
        nncf: what NNCF did (INT8): `method`, and `kept_fp32`, positions of weighted ops.
        weighted_ops: the op types `kept_fp32` counts.
    """

    hint: str
    shapes: dict[str, list[int]]
    split: GraphSplit | None
    nncf: dict[str, Any] | None
    weighted_ops: tuple[str, ...]


_REPRODUCE = '''"""Re-run the OpenVINO conversion that made model.xml (tfopt, openvino:{precision}).

    python reproduce.py SAVED_MODEL_DIR [--calibration-dir DIR] [--output model.xml]

SAVED_MODEL_DIR is the exported model; openvino.convert_model converts it with the inputs
reshaped to SHAPES (-1: dynamic). When BOUNDARY is set, the graph was split: its prefix
(decoding) stays in TensorFlow and only the core, from the BOUNDARY tensors on, is converted.
INT8 quantizes with NNCF on the .npz shards in --calibration-dir, one sample at a time (through
the prefix when split), as tfopt did. When tfopt ran NNCF's accuracy control (METHOD), which
needs tfopt's task metric, this script instead leaves the convolutions/matmuls accuracy control
kept in FP32 (KEPT_FP32: positions in topological order) out of plain quantization: the same
layers in FP32, quantization parameters possibly a little different. The inference precision is
a compile-time setting: compile with {{"INFERENCE_PRECISION_HINT": {hint!r}}}. tfopt runs the
model reshaped to the static shape of each call (batch 1 for latency), which OpenVINO's CPU
plugin runs faster than the dynamic batch; to do the same:

    model.reshape({{name: [1, *shape[1:]] for name, shape in SHAPES.items()}})
    compiled = ov.Core().compile_model(model, "CPU", {{"INFERENCE_PRECISION_HINT": {hint!r}}})
"""

import argparse
import glob
import tempfile

import numpy as np
import openvino as ov

PRECISION = {precision!r}
SIGNATURE_KEY = {key!r}
INPUTS = {inputs!r}  # the model's inputs: name -> (dtype, shape)
SHAPES = {shapes!r}  # the converted inputs: name -> shape
BOUNDARY = {boundary!r}  # graph tensors where the converted core starts (empty: no split)
CORE_INPUTS = {core_inputs!r}  # core input name -> (dtype, shape)
METHOD = {method!r}
KEPT_FP32 = {kept!r}
WEIGHTED_OPS = {weighted!r}
KEEP_ALIVE = []


{cut_and_samples}


def split(signature, directory):
    """Saves the core (BOUNDARY -> outputs) as a SavedModel; returns wrapped and the prefix."""
    import tensorflow as tf

    wrapped, prefix, core = cut(signature)
    module = tf.Module()
    module.pruned = core
    specs = [tf.TensorSpec(s, d, name=n) for n, (d, s) in CORE_INPUTS.items()]
    module.serve = tf.function(lambda *args: core(*args), input_signature=specs)
    tf.saved_model.save(module, directory, signatures={{"serving_default": module.serve}})
    return wrapped, prefix


def convert(saved_model_dir, work_dir):
    prefix = None
    if BOUNDARY:
        import tensorflow as tf

        signature = tf.saved_model.load(saved_model_dir).signatures[SIGNATURE_KEY]
        wrapped, prefix = split(signature, work_dir)
        KEEP_ALIVE.append(wrapped)  # the pruned prefix only holds weak references
        model = ov.convert_model(work_dir)
    elif SIGNATURE_KEY == "serving_default":
        model = ov.convert_model(saved_model_dir)
    else:
        import tensorflow as tf

        model = ov.convert_model(tf.saved_model.load(saved_model_dir).signatures[SIGNATURE_KEY])
    model.reshape({{name: ov.PartialShape(shape) for name, shape in SHAPES.items()}})
    return model, prefix


def quantize(model, calibration_dir, prefix):
    import nncf

    data = list(samples(calibration_dir, prefix))
    weighted = [op for op in model.get_ordered_ops() if op.get_type_name() in WEIGHTED_OPS]
    names = [weighted[i].get_friendly_name() for i in KEPT_FP32]
    ignored = nncf.IgnoredScope(names=names) if names else None
    return nncf.quantize(model, nncf.Dataset(data), subset_size=len(data), ignored_scope=ignored)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saved_model_dir")
    parser.add_argument("--calibration-dir")
    parser.add_argument("--output", default="model.xml")
    args = parser.parse_args()
    if PRECISION == "int8" and not args.calibration_dir:
        parser.error("int8 needs --calibration-dir")
    with tempfile.TemporaryDirectory() as work_dir:
        model, prefix = convert(args.saved_model_dir, work_dir)
        if PRECISION == "int8":
            model = quantize(model, args.calibration_dir, prefix)
        ov.save_model(model, args.output, compress_to_fp16=False)


if __name__ == "__main__":
    main()
'''


def write_reproduce_script(
    path: Path, request: ConversionRequest, settings: ReproduceSettings
) -> Path:
    """A standalone script with this conversion's exact settings (kept next to the artifact)."""

    split, nncf = settings.split, settings.nncf or {}
    path.write_text(
        _REPRODUCE.format(
            precision=request.precision,
            hint=settings.hint,
            key=request.signature.key,
            inputs=tensor_table(request.signature.inputs),
            shapes=settings.shapes,
            boundary=list(split.boundary) if split else [],
            core_inputs=tensor_table(split.core_signature.inputs) if split else {},
            method=nncf.get("method"),
            kept=list(nncf.get("kept_fp32", [])),
            weighted=list(settings.weighted_ops),
            cut_and_samples=CUT_AND_SAMPLES,
        )
    )
    return path
