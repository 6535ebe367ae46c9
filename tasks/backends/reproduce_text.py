"""Source text the backends' `reproduce.py` scripts share: the graph cut and calibration samples.

A script defines `INPUTS` (name -> (dtype, shape)), `BOUNDARY` (graph tensors where the
converted core starts) and `CORE_INPUTS` (core input name -> (dtype, shape)) and imports `glob`
and `numpy as np` before this text. Its functions import TensorFlow only when called.
"""

from __future__ import annotations

from tasks.signature import TensorInfo


def tensor_table(tensors: tuple[TensorInfo, ...]) -> dict[str, tuple[str, list]]:
    """`INPUTS` / `CORE_INPUTS` as the shared text reads them: name -> (dtype, shape)."""
    return {t.name: (t.dtype, list(t.shape)) for t in tensors}


CUT_AND_SAMPLES = '''
def cut(signature):
    """The signature's prefix (INPUTS -> CORE_INPUTS) and core (BOUNDARY -> outputs).

    Returns (wrapped, prefix, core); the pruned functions only hold weak references to the
    graph `wrapped` owns, so keep it alive while they are used.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    frozen = convert_variables_to_constants_v2(signature, lower_control_flow=False)
    graph_def = frozen.graph.as_graph_def()
    wrapped = tf.compat.v1.wrap_function(
        lambda: tf.graph_util.import_graph_def(graph_def, name=""), []
    )
    get = wrapped.graph.get_tensor_by_name
    inputs = dict(zip(sorted(signature.structured_input_signature[1]), frozen.inputs))
    outputs = dict(zip(sorted(signature.structured_outputs), frozen.outputs))
    boundary = [get(name) for name in BOUNDARY]
    prefix = wrapped.prune(
        feeds=[get(inputs[name].name) for name in INPUTS],
        fetches=dict(zip(CORE_INPUTS, boundary)),
    )
    core = wrapped.prune(feeds=boundary, fetches={n: get(t.name) for n, t in outputs.items()})
    return wrapped, prefix, core


def samples(directory, prefix):
    """One-sample feeds from the .npz shards in `directory`, through `prefix` unless None."""
    for path in sorted(glob.glob(f"{directory}/**/*.npz", recursive=True)):
        with np.load(path, allow_pickle=False) as shard:
            arrays = {name: shard[name] for name in INPUTS}
        for i in range(len(next(iter(arrays.values())))):
            feeds = {name: arrays[name][i : i + 1] for name in INPUTS}
            if prefix is None:
                yield {name: feeds[name].astype(dtype) for name, (dtype, _) in INPUTS.items()}
            else:
                import tensorflow as tf

                values = prefix(*(tf.constant(feeds[name]) for name in INPUTS))
                yield {name: value.numpy() for name, value in values.items()}
'''.strip("\n")
