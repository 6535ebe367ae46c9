"""Graph splitting: a TensorFlow-only prefix (decoding, parsing) in front of a convertible core.

A serving graph that decodes JPEG or base64 strings in-graph cannot run in LiteRT or OpenVINO as a
whole, but its numeric rest can. `find_split` finds where the unconvertible prefix ends, and
writes two SavedModels: the prefix (original inputs -> boundary tensors, run by TensorFlow) and the
core (boundary tensors -> original outputs, with concrete non-batch shapes) that a converter takes
as it would any exported SavedModel. `SplitRunner` chains the two at inference.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.backends.base import (
    CalibrationData,
    Feeds,
    Runner,
    UnsplittableGraphError,
    check_feeds,
)
from tasks.errors import UserInputError
from tasks.signature import Signature, TensorInfo

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
PREFIX_DIR = "prefix"
CORE_DIR = "core"
FORMAT_VERSION = 1
MAX_BOUNDARY = 4
"""More boundary tensors than this means the prefix is entangled with the rest: no clean split."""

UNCONVERTIBLE_OPS = frozenset(
    """
    DecodeJpeg DecodeAndCropJpeg DecodePng DecodeImage DecodeBmp DecodeGif DecodeBase64 DecodeRaw
    DecodeCSV DecodeCompressed DecodeProtoV2 DecodeWav ParseExample ParseExampleV2
    ParseSingleExample ParseSequenceExample ParseSequenceExampleV2 ParseSingleSequenceExample
    StringToNumber NonMaxSuppression NonMaxSuppressionV2 NonMaxSuppressionV3 NonMaxSuppressionV4
    NonMaxSuppressionV5 NonMaxSuppressionWithOverlaps CombinedNonMaxSuppression
    """.split()
)
"""Op types no converter here runs (besides any op on string tensors)."""

COMPUTE_OPS = frozenset(
    """
    Conv2D Conv3D DepthwiseConv2dNative Conv2DBackpropInput MatMul BatchMatMul BatchMatMulV2
    BatchMatMulV3 Einsum
    """.split()
)
"""The model's heavy work: a prefix that holds one of these is not a prefix but the model."""

_HARMLESS_STRING_OPS = frozenset({"Const", "Assert", "PrintV2", "StringFormat", "NoOp"})
_TRIVIAL_OPS = frozenset({"Placeholder", "Const", "Identity", "NoOp"})
_CALL_SCOPES = ("StatefulPartitionedCall", "PartitionedCall")
_DOMINATOR_SEARCH = 256
_DT_STRING = 7  # types_pb2.DT_STRING


@dataclass(frozen=True)
class GraphSplit:
    """A serving graph cut in two: a TensorFlow prefix and a numeric core.

    Attributes:
        tf_ops: op types that stay in TensorFlow (sorted, unique; placeholders, constants and
            identities left out).
        boundary: names of the tensors the prefix hands to the core, in the core's input order.
        prefix_dir: SavedModel of the prefix: original inputs -> boundary tensors.
        core_dir: SavedModel of the core: boundary tensors -> original outputs (`serving_default`).
            A split read back with `read_split` does not persist it: the converted core replaces it.
        core_signature: the core's signature: sanitized boundary names, concrete non-batch shapes.
    """

    tf_ops: tuple[str, ...]
    boundary: tuple[str, ...]
    prefix_dir: Path
    core_dir: Path
    core_signature: Signature

    def to_dict(self) -> dict[str, Any]:
        """What split.json holds (directories are implied by its location)."""
        return {
            "format_version": FORMAT_VERSION,
            "tf_ops": list(self.tf_ops),
            "boundary": list(self.boundary),
            "core_signature": self.core_signature.to_dict(),
        }


@dataclass(frozen=True)
class _Frozen:
    """A signature with its variables frozen, imported into a prunable wrapped function."""

    wrapped: Any
    library: dict[str, Any]
    inputs: dict[str, Any]
    outputs: dict[str, Any]


def _signature_function(saved_model_dir: Path, signature: Signature) -> tuple[Any, Any]:
    """The signature's function and the loaded object that keeps it alive."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model_dir))
    if signature.key not in loaded.signatures:
        raise UserInputError(
            f"SavedModel {saved_model_dir} has no signature {signature.key!r}; "
            f"it has {sorted(loaded.signatures)}"
        )
    return loaded.signatures[signature.key], loaded


def _may_need_split(function: Any, denylist: Collection[str]) -> bool:
    """False when no op of the function or of any function it calls can be unconvertible.

    A cheap look at the traced graph, before the costly freezing that the full analysis needs.
    """
    graph_def = function.graph.as_graph_def()
    nodes = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    return any(
        node.op in denylist or (node.op not in _HARMLESS_STRING_OPS and _string_typed(node))
        for node in nodes
    )


def _freeze(function: Any, signature: Signature) -> _Frozen:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    frozen = convert_variables_to_constants_v2(function, lower_control_flow=False)
    graph_def = frozen.graph.as_graph_def()
    wrapped = tf.compat.v1.wrap_function(
        lambda: tf.graph_util.import_graph_def(graph_def, name=""), []
    )
    graph = wrapped.graph
    input_names = sorted(function.structured_input_signature[1])
    output_names = sorted(function.structured_outputs)
    if len(input_names) != len(frozen.inputs) or len(output_names) != len(frozen.outputs):
        raise UserInputError(
            f"the signature {signature.key!r} takes and returns dicts of "
            "tensors only; nested or positional structures cannot be split"
        )
    return _Frozen(
        wrapped=wrapped,
        library={f.signature.name: f for f in graph_def.library.function},
        inputs={
            n: graph.get_tensor_by_name(t.name)
            for n, t in zip(input_names, frozen.inputs, strict=True)
        },
        outputs={
            n: graph.get_tensor_by_name(t.name)
            for n, t in zip(output_names, frozen.outputs, strict=True)
        },
    )


def _called_functions(attrs: Any) -> list[str]:
    names = []
    for value in attrs.values():
        if value.HasField("func"):
            names.append(value.func.name)
        names.extend(f.name for f in value.list.func)
    return names


def _inner_nodes(op: Any, library: dict[str, Any]) -> list[Any]:
    """NodeDefs of every function `op` calls (While bodies, If branches, calls), recursively."""
    pending = _called_functions(op.node_def.attr)
    seen: set[str] = set()
    nodes = []
    while pending:
        name = pending.pop()
        if name in seen or name not in library:
            continue
        seen.add(name)
        for node in library[name].node_def:
            nodes.append(node)
            pending.extend(_called_functions(node.attr))
    return nodes


def _string_typed(node: Any) -> bool:
    return any(v.type == _DT_STRING or _DT_STRING in v.list.type for v in node.attr.values())


def _unconvertible_types(op: Any, library: dict[str, Any], denylist: Collection[str]) -> list[str]:
    """The op types that make `op` unconvertible: itself, or ops inside the functions it calls."""
    import tensorflow as tf

    found = []
    tensors = list(op.inputs) + list(op.outputs)
    if op.type in denylist or any(t.dtype == tf.string for t in tensors):
        found.append(op.type)
    for node in _inner_nodes(op, library):
        if node.op in denylist or (node.op not in _HARMLESS_STRING_OPS and _string_typed(node)):
            found.append(node.op)
    return found


def _is_numeric(tensor: Any) -> bool:
    return bool(tensor.dtype.is_floating or tensor.dtype.is_integer)


def _closure(tensors: Iterable[Any], stop: Collection[Any] = ()) -> set[Any]:
    """Ops that compute `tensors` (data edges only), not looking past the tensors in `stop`."""
    stop_refs = {t.ref() for t in stop}
    ops: set[Any] = set()
    pending = [t for t in tensors if t.ref() not in stop_refs]
    while pending:
        op = pending.pop().op
        if op in ops:
            continue
        ops.add(op)
        pending.extend(t for t in op.inputs if t.ref() not in stop_refs)
    return ops


def _crossing(region: set[Any], live: set[Any]) -> list[Any]:
    """Tensors produced inside `region` that a live op outside it consumes, in graph order."""
    return [
        t
        for op in sorted(region, key=lambda o: o.name)
        for t in op.outputs
        if any(c in live and c not in region for c in t.consumers())
    ]


def _prefix_region(seeds: set[Any], live: set[Any]) -> set[Any]:
    """The seeds and what they need, grown until only numeric tensors leave it."""
    region = _closure(t for op in seeds for t in op.outputs)
    while True:
        opaque = [t for t in _crossing(region, live) if not _is_numeric(t)]
        if not opaque:
            return region
        consumers = {c for t in opaque for c in t.consumers() if c in live and c not in region}
        region |= _closure(t for op in consumers for t in op.outputs)


def _compute_ops(ops: Iterable[Any], library: dict[str, Any]) -> list[tuple[str, str]]:
    found = []
    for op in ops:
        if op.type in COMPUTE_OPS:
            found.append((op.type, op.name))
        found.extend(
            (n.op, f"{op.name} ({op.type})")
            for n in _inner_nodes(op, library)
            if n.op in COMPUTE_OPS
        )
    return found


def _trailing_error(bad: dict[Any, list[str]], library: dict[str, Any]) -> UnsplittableGraphError:
    """The error for unconvertible ops that depend on the model's numeric work."""
    places = []
    for op, types in sorted(bad.items(), key=lambda item: item[0].name):
        before = _compute_ops(_closure(op.inputs), library)
        if before:
            compute_type, compute_name = before[0]
            places.append(
                f"{'/'.join(sorted(set(types)))} at {op.name!r} (after {compute_type} "
                f"{compute_name!r})"
            )
    return UnsplittableGraphError(
        "ops that no converter runs sit after the model's numeric part, so they cannot stay in "
        f"a TensorFlow prefix: {'; '.join(places) or 'unknown'}; take them out of the served "
        "graph (e.g. run NMS after the model) or serve this model with tf:fp32"
    )


def _dominator(
    outputs: list[Any], region: set[Any], core: set[Any], library: dict[str, Any]
) -> Any | None:
    """The first float tensor through which alone every output depends on the prefix.

    Typically the decoded float image batch; accepted only if the ops it moves into the prefix do
    no heavy work.
    """
    for op in _topological(core)[:_DOMINATOR_SEARCH]:
        for tensor in op.outputs:
            if not tensor.dtype.is_floating:
                continue
            needed = _closure(outputs, stop=[tensor])
            if needed & region:
                continue
            moved = core - needed
            if not _compute_ops(moved, library):
                return tensor
    return None


def _topological(ops: set[Any]) -> list[Any]:
    order: list[Any] = []
    done: set[Any] = set()
    for start in sorted(ops, key=lambda o: o.name):
        stack = [(start, False)]
        while stack:
            op, expanded = stack.pop()
            if op in done:
                continue
            if expanded:
                done.add(op)
                order.append(op)
                continue
            stack.append((op, True))
            stack.extend((t.op, False) for t in op.inputs if t.op in ops and t.op not in done)
    return order


def _boundary(frozen: _Frozen, denylist: Collection[str]) -> tuple[list[Any], set[Any]] | None:
    """The boundary tensors and the prefix ops, or None when the whole graph converts."""
    outputs = list(frozen.outputs.values())
    live = _closure(outputs)
    bad = {
        op: types for op in live if (types := _unconvertible_types(op, frozen.library, denylist))
    }
    if not bad:
        return None
    region = _prefix_region(set(bad), live)
    passthrough = {
        t.op
        for t in frozen.inputs.values()
        if t.op in live and t.op not in region and _is_numeric(t)
    }
    region |= passthrough
    in_prefix = [name for name, t in frozen.outputs.items() if t.op in region]
    if _compute_ops(region, frozen.library):
        raise _trailing_error(bad, frozen.library)
    if in_prefix:
        raise UnsplittableGraphError(
            f"the outputs {in_prefix} come straight from ops no converter runs "
            f"({', '.join(sorted({t for types in bad.values() for t in types}))}); "
            "nothing would be left to convert: serve this model with tf:fp32"
        )
    boundary = _crossing(region, live)
    if len(boundary) > 1 or not boundary[0].dtype.is_floating:
        core = _closure(outputs, stop=boundary)
        single = _dominator(outputs, region, core, frozen.library)
        if single is not None:
            boundary = [single]
    if len(boundary) > MAX_BOUNDARY:
        kept = ", ".join(sorted({t for types in bad.values() for t in types}))
        raise UnsplittableGraphError(
            f"the TensorFlow-only prefix ({kept}) hands {len(boundary)} tensors to the rest of "
            f"the graph, more than {MAX_BOUNDARY}: "
            f"{', '.join(t.name for t in boundary[:8])}; no clean split"
        )
    return boundary, _closure(boundary)


def _tf_ops(prefix_ops: set[Any], library: dict[str, Any]) -> tuple[str, ...]:
    types = {op.type for op in prefix_ops}
    for op in prefix_ops:
        types.update(node.op for node in _inner_nodes(op, library))
    return tuple(sorted(types - _TRIVIAL_OPS))


def sanitize(tensor_name: str, taken: Collection[str] = ()) -> str:
    """A signature input name for a graph tensor: its last op names, `[A-Za-z0-9_]` only."""
    op_name, _, index = tensor_name.partition(":")
    parts = [p for p in op_name.split("/") if p not in ("", *_CALL_SCOPES)]
    name = re.sub(r"\W", "_", "_".join(parts[-2:]) or "boundary")
    if index and index != "0":
        name = f"{name}_{index}"
    if name[0].isdigit():
        name = f"t_{name}"
    unique, n = name, 1
    while unique in taken:
        n += 1
        unique = f"{name}_{n}"
    return unique


def _tensor_spec(info: TensorInfo) -> Any:
    import tensorflow as tf

    return tf.TensorSpec(info.shape, tf.as_dtype(info.dtype), name=info.name)


def feed_array(value: Any, dtype: str) -> np.ndarray:
    """`value` as the array TensorFlow takes for a signature dtype (strings as bytes)."""
    array = np.asarray(value)
    if dtype == "string":
        return np.char.encode(array, "utf-8") if array.dtype.kind == "U" else array
    return array.astype(dtype, copy=False)


def _core_inputs(
    boundary: list[Any], prefix_fn: Any, signature: Signature, sample: Feeds | None
) -> tuple[TensorInfo, ...]:
    """The core's inputs: sanitized names, dtypes, shapes with only the batch left unknown."""
    shapes = []
    for tensor in boundary:
        shape = tensor.shape.as_list() if tensor.shape.rank is not None else None
        shapes.append(shape)
    if any(s is None or None in s[1:] for s in shapes):
        if sample is None:
            unknown = [
                t.name for t, s in zip(boundary, shapes, strict=True) if s is None or None in s[1:]
            ]
            raise UserInputError(
                f"the boundary tensors {unknown} between the TensorFlow prefix and the core have "
                "unknown non-batch dimensions; give a sample batch (calibration data) or make the "
                "prefix produce a fixed size (e.g. resize after decoding)"
            )
        import tensorflow as tf

        values = prefix_fn(
            *(tf.constant(feed_array(sample[t.name], t.dtype)) for t in signature.inputs)
        )
        shapes = [list(np.shape(v)) for v in values]
    names: list[str] = []
    for tensor in boundary:
        names.append(sanitize(tensor.name, names))
    return tuple(
        TensorInfo(name, tensor.dtype.name, tuple([None, *shape[1:]]) if shape else ())
        for name, tensor, shape in zip(names, boundary, shapes, strict=True)
    )


def _save_function(function: Any, inputs: tuple[TensorInfo, ...], directory: Path) -> None:
    """Saves `function` (positional inputs) as a SavedModel with a `serving_default` signature."""
    import tensorflow as tf

    module = tf.Module()
    module.pruned = function  # kept alive: the signature calls it

    def serve(*args: Any) -> Any:
        return function(*args)

    module.serve = tf.function(serve, input_signature=[_tensor_spec(t) for t in inputs])
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})


def find_split(
    saved_model_dir: Path,
    signature: Signature,
    *,
    work_dir: Path | None = None,
    sample: Feeds | None = None,
    extra_unconvertible: Collection[str] = (),
    convertible: Collection[str] = (),
) -> GraphSplit | None:
    """Where the serving graph's unconvertible prefix ends; None when every op converts.

    Args:
        saved_model_dir: the exported SavedModel.
        signature: its serving signature (concrete non-batch input dimensions).
        work_dir: where to write `prefix/` and `core/` (by default a new temporary folder,
            which the caller removes once done: `split.core_dir.parent`).
        sample: one feed of the original inputs, used only when a boundary tensor's static
            shape leaves non-batch dimensions unknown.
        extra_unconvertible: op types a converter reported as unsupported, on top of
            `UNCONVERTIBLE_OPS` and string ops.
        convertible: op types of `UNCONVERTIBLE_OPS` the caller's converter does take.

    Raises:
        UnsplittableGraphError: unconvertible ops also sit after the numeric part (e.g. NMS at
            the end), or the prefix hands more than `MAX_BOUNDARY` tensors to the rest.
    """
    denylist = (UNCONVERTIBLE_OPS - set(convertible)) | set(extra_unconvertible)
    function, loaded = _signature_function(Path(saved_model_dir), signature)
    if not _may_need_split(function, denylist):
        return None
    frozen = _freeze(function, signature)
    found = _boundary(frozen, denylist)
    if found is None:
        return None
    boundary, prefix_ops = found
    graph_inputs = [frozen.inputs[t.name] for t in signature.inputs]
    prefix_fn = frozen.wrapped.prune(feeds=graph_inputs, fetches=boundary)
    core_inputs = _core_inputs(boundary, prefix_fn, signature, sample)
    prefix_fn = frozen.wrapped.prune(
        feeds=graph_inputs,
        fetches={info.name: t for info, t in zip(core_inputs, boundary, strict=True)},
    )
    core_fn = frozen.wrapped.prune(feeds=boundary, fetches=frozen.outputs)
    work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="tfopt-split-"))
    split = GraphSplit(
        tf_ops=_tf_ops(prefix_ops, frozen.library),
        boundary=tuple(t.name for t in boundary),
        prefix_dir=work_dir / PREFIX_DIR,
        core_dir=work_dir / CORE_DIR,
        core_signature=Signature(inputs=core_inputs, outputs=signature.outputs),
    )
    _save_function(prefix_fn, signature.inputs, split.prefix_dir)
    Signature(inputs=signature.inputs, outputs=core_inputs).write(split.prefix_dir)
    _save_function(core_fn, core_inputs, split.core_dir)
    split.core_signature.write(split.core_dir)
    log.info(
        "split %s: %s stay in TensorFlow, the core starts at %s",
        saved_model_dir,
        ", ".join(split.tf_ops),
        ", ".join(split.boundary),
    )
    return split


def write_split(split: GraphSplit, out_dir: Path) -> Path:
    """Copies the prefix SavedModel to `out_dir/prefix` and writes `out_dir/split.json`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if split.prefix_dir.resolve() != (out_dir / PREFIX_DIR).resolve():
        shutil.copytree(split.prefix_dir, out_dir / PREFIX_DIR, dirs_exist_ok=True)
    path = out_dir / SPLIT_FILE
    path.write_text(json.dumps(split.to_dict(), indent=2))
    return path


def read_split(directory: Path) -> GraphSplit | None:
    """The split a variant's artifact dir holds, or None when it has no `split.json`."""
    directory = Path(directory)
    path = directory / SPLIT_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("format_version") != FORMAT_VERSION:
        raise UserInputError(
            f"{path} has format_version {data.get('format_version')!r}; this tfopt reads "
            f"{FORMAT_VERSION}: convert the variant again"
        )
    return GraphSplit(
        tf_ops=tuple(data["tf_ops"]),
        boundary=tuple(data["boundary"]),
        prefix_dir=directory / PREFIX_DIR,
        core_dir=directory / CORE_DIR,
        core_signature=Signature.from_dict(data["core_signature"]),
    )


class PrefixRunner:
    """Runs the prefix SavedModel in TensorFlow: original inputs -> boundary tensors."""

    def __init__(self, prefix_dir: Path) -> None:
        import tensorflow as tf

        signature = Signature.read(prefix_dir)
        self.input_names = signature.input_names
        self.output_names = signature.output_names
        self._dtypes = {t.name: t.dtype for t in signature.inputs}
        self._tf = tf
        self._loaded = tf.saved_model.load(str(prefix_dir))  # the function holds weak references
        self._function = self._loaded.signatures["serving_default"]

    def __call__(self, feeds: Feeds) -> Feeds:
        check_feeds(self.input_names, feeds)
        tensors = {
            name: self._tf.constant(feed_array(feeds[name], dtype))
            for name, dtype in self._dtypes.items()
        }
        outputs = self._function(**tensors)
        return {name: outputs[name].numpy() for name in self.output_names}


class SplitRunner:
    """Runs the prefix in TensorFlow, feeds the boundary to the core runner, returns its outputs.

    `prefix_runner` runs the prefix alone on the same feeds, so a benchmark can measure its share.
    """

    def __init__(self, prefix: Runner, core: Runner) -> None:
        if set(prefix.output_names) != set(core.input_names):
            raise UserInputError(
                f"the prefix returns {sorted(prefix.output_names)} but the core takes "
                f"{sorted(core.input_names)}; convert the variant again"
            )
        self.prefix_runner = prefix
        self.core_runner = core
        self.input_names = prefix.input_names
        self.output_names = core.output_names

    def __call__(self, feeds: Feeds) -> Feeds:
        return self.core_runner(self.prefix_runner(feeds))


def core_calibration(split: GraphSplit, calibration_data: CalibrationData) -> CalibrationData:
    """Calibration batches for the core: the prefix run over the user's calibration feeds."""
    prefix: list[PrefixRunner] = []

    def generate() -> Iterator[Feeds]:
        if not prefix:
            prefix.append(PrefixRunner(split.prefix_dir))
        for feeds in calibration_data():
            yield prefix[0](feeds)

    return generate
