"""FLOPs of one forward pass at batch 1: TF's profiler on the frozen graph, checked against Keras.

Run in its own process (it imports TensorFlow):

    python -m bench.flops path/to/model.keras    # prints JSON on stdout
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any


def profiler_flops(model: Any) -> dict[str, Any]:
    """Float ops counted by `tf.compat.v1.profiler` on the frozen batch-1 concrete function."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec([1, *model.inputs[0].shape[1:]], model.inputs[0].dtype)
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(function)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(
        graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options
    )
    by_op: dict[str, int] = {}
    nodes = list(profile.children)
    while nodes:  # the "op" view nests each op type under the previous one; keep self counts
        node = nodes.pop()
        by_op[node.name] = int(node.float_ops)
        nodes.extend(node.children)
    return {"total": int(profile.total_float_ops), "by_op": by_op}


def _layer_macs(layer: Any) -> int:
    """Multiply-accumulates of one conv / depthwise conv / dense layer at batch 1 (else 0)."""
    kind = type(layer).__name__
    if kind not in ("Conv2D", "DepthwiseConv2D", "Dense"):
        return 0
    in_shape, out_shape = layer.input.shape, layer.output.shape
    if kind == "Dense":
        return int(in_shape[-1]) * int(out_shape[-1])
    kh, kw = layer.kernel_size
    out_pixels = int(out_shape[1]) * int(out_shape[2])
    if kind == "DepthwiseConv2D":
        return out_pixels * int(out_shape[-1]) * kh * kw
    groups = getattr(layer, "groups", 1) or 1
    return out_pixels * int(out_shape[-1]) * kh * kw * int(in_shape[-1]) // groups


def layer_flops(model: Any) -> dict[str, Any]:
    """2 x the MACs of the conv, depthwise conv and dense layers read from the Keras model."""
    macs = {layer.name: _layer_macs(layer) for layer in model.layers}
    macs = {name: value for name, value in macs.items() if value}
    total = sum(macs.values())
    return {"macs": total, "flops": 2 * total, "layers": len(macs), "params": model.count_params()}


def count_flops(model_path: str) -> dict[str, Any]:
    """Both counts and their ratio (profiler / layers; > 1 by the elementwise ops)."""
    import keras

    model = keras.models.load_model(model_path, compile=False)
    profiled = profiler_flops(model)
    layers = layer_flops(model)
    ratio = profiled["total"] / layers["flops"] if layers["flops"] else math.nan
    return {
        "model": model.name,
        "input_shape": [1, *model.inputs[0].shape[1:]],
        "flops": profiled["total"],
        "source": "tf.compat.v1.profiler float_operation on the frozen batch-1 graph",
        "profiler_by_op": profiled["by_op"],
        "layer_count": layers,
        "profiler_vs_layers": round(ratio, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_path", help="a .keras file")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(json.dumps(count_flops(args.model_path)))


if __name__ == "__main__":
    main()
