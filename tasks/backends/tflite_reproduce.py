"""The reproduce.py written beside every LiteRT variant: the same conversion, standalone."""

from __future__ import annotations

from pathlib import Path

from tasks.backends.base import ConversionRequest
from tasks.backends.graph_split import GraphSplit
from tasks.backends.reproduce_text import CUT_AND_SAMPLES, tensor_table
from tasks.signature import Signature

REPRODUCE_FILE = "reproduce.py"
_REPRODUCE = '''"""Re-run the LiteRT conversion that made model.tflite (tfopt, tflite:{precision}).

    python reproduce.py SAVED_MODEL_DIR [--calibration-dir DIR] [--output model.tflite]

SAVED_MODEL_DIR is the exported model. The signature is traced with the input shapes tfopt used.
When BOUNDARY is set, the graph was split: its prefix (decoding) stays in TensorFlow and only the
core, from the BOUNDARY tensors to the outputs, is converted, as tfopt did. INT8 calibrates on the
.npz shards in --calibration-dir: one array per model input, one sample at a time (through the
prefix when split).
"""

import argparse
import glob

import numpy as np
import tensorflow as tf

PRECISION = {precision!r}
SIGNATURE_KEY = {key!r}
INPUTS = {inputs!r}  # name -> (dtype, shape)
BOUNDARY = {boundary!r}  # graph tensors where the converted core starts (empty: no split)
CORE_INPUTS = {core_inputs!r}  # core input name -> (dtype, shape)
BATCH_1_TENSOR_LISTS = {batch_1!r}  # recurrent loops built for batch 1 (no free batch in LiteRT)


def traced(function, inputs):
    specs = [tf.TensorSpec(shape, dtype, name=name) for name, (dtype, shape) in inputs.items()]
    return tf.function(function, input_signature=specs).get_concrete_function()


{cut_and_samples}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saved_model_dir")
    parser.add_argument("--calibration-dir")
    parser.add_argument("--output", default="model.tflite")
    args = parser.parse_args()
    loaded = tf.saved_model.load(args.saved_model_dir)
    signature = loaded.signatures[SIGNATURE_KEY]
    prefix = None
    if BOUNDARY:
        wrapped, prefix, core = cut(signature)  # wrapped keeps prefix and core alive
        function = traced(lambda *args: core(*args), CORE_INPUTS)
    else:
        names = list(INPUTS)
        function = traced(lambda *args: signature(**dict(zip(names, args))), INPUTS)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], loaded)
    if BATCH_1_TENSOR_LISTS:
        converter._experimental_default_to_single_batch_in_tensor_list_ops = True
    if PRECISION == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif PRECISION == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif PRECISION == "int8":
        if not args.calibration_dir:
            parser.error("int8 needs --calibration-dir")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: samples(args.calibration_dir, prefix)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    with open(args.output, "wb") as out:
        out.write(converter.convert())


if __name__ == "__main__":
    main()
'''


def write_reproduce_script(
    path: Path,
    request: ConversionRequest,
    signature: Signature,
    split: GraphSplit | None,
    batch_1_tensor_lists: bool = False,
) -> Path:
    """A standalone script with this conversion's exact settings (kept next to the artifact).

    `signature` is the one converted (concrete input shapes); `split`, if any, the graph's cut
    (then the script takes the model's own inputs, and converts the core from the boundary on);
    `batch_1_tensor_lists`, whether recurrent loops were built for batch 1.
    """

    path.write_text(
        _REPRODUCE.format(
            precision=request.precision,
            key=request.signature.key,
            inputs=tensor_table(request.signature.inputs if split else signature.inputs),
            boundary=list(split.boundary) if split else [],
            core_inputs=tensor_table(split.core_signature.inputs) if split else {},
            cut_and_samples=CUT_AND_SAMPLES,
            batch_1=batch_1_tensor_lists,
        )
    )
    return path
