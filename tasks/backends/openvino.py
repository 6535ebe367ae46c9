"""The OpenVINO backend: convert_model from the SavedModel, precision pinned at compile, NNCF INT8.

The inference precision is a compile-time setting, not part of the saved model: on a CPU with
AVX-512 BF16 or AMX, OpenVINO computes in BF16 unless told otherwise. So every variant records
its `INFERENCE_PRECISION_HINT` (`f32` for fp32 and for INT8's non-quantized parts, `bf16` for
bf16) in `openvino.json` beside `model.xml`, and `load` compiles with exactly that hint.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.backends.base import (
    AccuracyValidation,
    BackendUnavailableError,
    CalibrationData,
    Conversion,
    ConversionRequest,
    ConverterError,
    Feeds,
    Runner,
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
from tasks.backends.openvino_reproduce import (
    REPRODUCE_FILE,
    ReproduceSettings,
    write_reproduce_script,
)
from tasks.backends.openvino_runner import OpenVinoRunner, ports_by_name
from tasks.errors import UserInputError
from tasks.signature import STRING, Signature, as_feed

log = logging.getLogger(__name__)

MODEL_FILE = "model.xml"
WEIGHTS_FILE = "model.bin"
SETTINGS_FILE = "openvino.json"
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
"""INFERENCE_PRECISION_HINT per precision; INT8 runs its non-quantized parts in FP32."""
DEFAULT_TOLERANCE = 0.01
REPAIR_BUDGET_S = 600.0
"""How long NNCF's accuracy control may score INT8 candidates before the variant gives up."""
REPAIR_MAX_REVERTED_SHARE = 0.25
"""At most this share of the weighted layers goes back to FP32: past it INT8 gains too little."""
_WEIGHTED_OPS = frozenset(
    {
        "Convolution",
        "GroupConvolution",
        "ConvolutionBackpropData",
        "GroupConvolutionBackpropData",
        "MatMul",
    }
)


@functools.cache
def _core() -> Any:
    import openvino as ov

    return ov.Core()


def bf16_unavailable_reason() -> str | None:
    """None when OpenVINO's CPU plugin computes BF16 natively here, else why not."""
    core = _core()
    capabilities = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    if "BF16" in capabilities:
        return None
    cpu = core.get_property("CPU", "FULL_DEVICE_NAME")
    return (
        f"this CPU ({cpu}) has no native BF16 (OpenVINO CPU capabilities: "
        f"{', '.join(capabilities)}); openvino:bf16 needs AVX-512 BF16 or AMX"
    )


def compile_config(precision_hint: str, performance_hint: str, num_threads: int) -> dict[str, Any]:
    """The CPU plugin's settings: pinned precision, thread count and latency/throughput hint."""
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": precision_hint,
        "INFERENCE_NUM_THREADS": int(num_threads),
        "PERFORMANCE_HINT": performance_hint,
    }
    if performance_hint == "LATENCY":
        config["NUM_STREAMS"] = 1
    return config


def _performance_hint(objective: str) -> str:
    return "THROUGHPUT" if objective == "throughput" else "LATENCY"


# --- conversion --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """What convert_model gets: the whole SavedModel, or the numeric core of a split graph."""

    saved_model_dir: Path
    signature: Signature
    calibration_data: CalibrationData
    split: GraphSplit | None


def _target(request: ConversionRequest, work_dir: Path) -> _Target:
    """The SavedModel to convert; a string-decoding prefix stays in TensorFlow (graph_split)."""
    sample = next(iter(request.calibration_data()), None)
    split = find_split(
        request.saved_model_dir, request.signature, work_dir=work_dir / "split", sample=sample
    )
    if split is not None:
        calibration = core_calibration(split, request.calibration_data)
        return _Target(split.core_dir, split.core_signature, calibration, split)
    strings = [t.name for t in request.signature.inputs if t.dtype == STRING]
    if strings:
        raise ConverterError(
            f"openvino cannot convert this model: its string input(s) {strings} feed no "
            "decoding prefix tfopt can keep in TensorFlow; use the tf variant, or export a model "
            "that takes the decoded numeric tensor"
        )
    return _Target(request.saved_model_dir, request.signature, request.calibration_data, None)


def input_shapes(signature: Signature, calibration_data: CalibrationData) -> dict[str, list[int]]:
    """Each input's shape for OpenVINO: batch dynamic (-1), other dims from the signature.

    Non-batch dimensions the signature leaves unknown are taken from the first calibration
    sample, as the data fixes them for every other stage.
    """
    shapes = {t.name: [-1, *t.shape[1:]] for t in signature.inputs}
    if any(d is None for shape in shapes.values() for d in shape):
        first = next(iter(calibration_data()), None)
        if first is None:
            raise UserInputError(
                "the model's signature leaves input dimensions unknown and the calibration "
                "data is empty; give calibration shards so openvino can fix the input shapes"
            )
        for name, shape in shapes.items():
            known = np.shape(first[name])
            shapes[name] = [-1, *(known[i] if d is None else d for i, d in enumerate(shape) if i)]
    return {name: [int(d) for d in shape] for name, shape in shapes.items()}


def read_saved_model(saved_model_dir: Path, signature_key: str, shapes: dict[str, list]) -> Any:
    """`openvino.convert_model` on the SavedModel's signature, reshaped to `shapes`."""
    import openvino as ov

    if signature_key == "serving_default":
        model = ov.convert_model(str(saved_model_dir))
    else:
        import tensorflow as tf

        loaded = tf.saved_model.load(str(saved_model_dir))
        model = ov.convert_model(loaded.signatures[signature_key])
    names = {name for port in model.inputs for name in port.get_names()}
    missing = sorted(set(shapes) - names)
    if missing:
        raise UserInputError(
            f"OpenVINO's conversion of {saved_model_dir} has inputs {sorted(names)}, not the "
            f"signature's {missing}; export the model with named serving inputs"
        )
    model.reshape({name: ov.PartialShape(shape) for name, shape in shapes.items()})
    return model


def op_counts(model: Any) -> dict[str, int]:
    """Operations of an OpenVINO model by type (Parameter/Result/Constant left out)."""
    skipped = {"Parameter", "Result", "Constant"}
    counts = Counter(op.get_type_name() for op in model.get_ops())
    return {name: n for name, n in sorted(counts.items()) if name not in skipped}


def _weights_quantized(op: Any) -> bool:
    """True when the op's weights are INT8 (a FakeQuantize, or int8 constants dequantized)."""
    source = op.input(1).get_source_output().get_node()
    if source.get_type_name() == "FakeQuantize":
        return True
    pending = [source]
    while pending:
        node = pending.pop()
        if node.get_type_name() == "Constant":
            if node.get_element_type().get_type_name() in ("i8", "u8", "i4", "u4"):
                return True
        elif node.get_type_name() in ("Multiply", "Subtract", "Convert", "Reshape"):
            pending.extend(i.get_source_output().get_node() for i in node.inputs())
    return False


def weighted_ops(model: Any) -> list[Any]:
    """Convolutions and matmuls in topological order (stable across conversions of one graph)."""
    return [op for op in model.get_ordered_ops() if op.get_type_name() in _WEIGHTED_OPS]


def kept_in_float(model: Any) -> list[int]:
    """Positions in `weighted_ops(model)` of the operations whose weights stayed in float."""
    return [i for i, op in enumerate(weighted_ops(model)) if not _weights_quantized(op)]


# --- INT8 by NNCF ------------------------------------------------------------------------------


def _calibration_samples(target: _Target) -> list[Feeds]:
    names = target.signature.input_names
    samples = []
    for feeds in target.calibration_data():
        check_feeds(names, feeds)
        samples.append({t.name: as_feed(feeds[t.name], t.dtype) for t in target.signature.inputs})
    if not samples:
        raise UserInputError(
            "openvino:int8 needs calibration data, but calibration_data_uri yielded no batch; "
            "point it at a folder of .npz shards named like the model inputs"
        )
    return samples


class _RepairOutOfTime(Exception):
    """Raised from inside NNCF's accuracy control when it has used up its time budget."""

    def __init__(self, elapsed_s: float, calls: int) -> None:
        super().__init__(f"accuracy control out of time after {elapsed_s:.0f} s")
        self.elapsed_s = elapsed_s
        self.calls = calls


class _ValidationProbe:
    """NNCF's `validation_fn`: tfopt's metric on the compiled model NNCF hands over.

    Its data items are sample indices into `validation.samples`; full-slice scores are kept in
    order (the FP32 reference first, then the plain INT8 model, then each repair step).

    NNCF wants higher-is-better scores and also computes a relative drop, dividing by the
    reference score, which fails on a perfect error metric (0.0). So it sees the metric shifted
    by `SCORE_OFFSET` (negated first for error metrics): absolute drops are unchanged.
    """

    SCORE_OFFSET = 1000.0

    def __init__(self, validation: AccuracyValidation, target: _Target, budget_s: float) -> None:
        self._validation = validation
        self._target = target
        self._prefix = PrefixRunner(target.split.prefix_dir) if target.split else None
        self.full_scores: list[float] = []
        self.calls = 0
        self.budget_s = budget_s
        self.started = time.monotonic()

    def runner(self, compiled: Any) -> Runner:
        """The model's runner: the compiled core behind the TensorFlow prefix when split."""
        core = OpenVinoRunner(compiled, self._target.signature)
        return SplitRunner(self._prefix, core) if self._prefix else core

    def core_feeds(self, index: int) -> Feeds:
        """Validation sample `index` as the converted model takes it (through the prefix)."""
        feeds = self._validation.samples[index]
        return self._prefix(feeds) if self._prefix else feeds

    def __call__(self, compiled: Any, items: Iterable[int]) -> tuple[float, None]:
        elapsed = time.monotonic() - self.started
        if elapsed > self.budget_s:
            raise _RepairOutOfTime(elapsed, self.calls)
        self.calls += 1
        indices = [int(i) for i in items]
        runner = self.runner(compiled)
        value = float(self._validation.metric(runner, indices))
        if len(indices) == len(self._validation.samples):
            self.full_scores.append(value)
        score = value if self._validation.higher_is_better else -value
        return self.SCORE_OFFSET + score, None


def _max_drop(model: Any, request: ConversionRequest, probe: _ValidationProbe) -> float:
    """NNCF's absolute `max_drop`; a relative tolerance is scaled by the FP32 model's metric."""
    tolerance = (
        DEFAULT_TOLERANCE if request.accuracy_tolerance is None else request.accuracy_tolerance
    )
    if request.validation is None or not request.validation.relative:
        return tolerance
    compiled = _core().compile_model(model, "CPU", compile_config("f32", "LATENCY", 1))
    reference = abs(float(request.validation.metric(probe.runner(compiled), None)))
    return max(tolerance * reference, 1e-12)


def _quantize_with_accuracy_control(
    model: Any,
    calibration: Any,
    validation: AccuracyValidation,
    request: ConversionRequest,
    target: _Target,
    budget_s: float,
) -> tuple[Any, dict[str, Any]]:
    """NNCF's accuracy-aware quantization driven by tfopt's metric on the validation slice.

    Bounded two ways, since NNCF's restorer has no bound of its own and reverts one layer group
    after another, re-ranking the rest each time: at most `max_reverted_layers` revert steps
    (it then returns its best model, which the accuracy gate judges), and `budget_s` of scoring
    (the conversion then fails, saying what the INT8 model scored).
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    probe = _ValidationProbe(validation, target, budget_s)
    max_drop = _max_drop(model, request, probe)
    max_reverts = max_reverted_layers(len(weighted_ops(model)))
    try:
        quantized = nncf.quantize_with_accuracy_control(
            model,
            calibration,
            nncf.Dataset(range(len(validation.samples)), probe.core_feeds),
            probe,
            max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            subset_size=calibration.get_length(),
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                max_num_iterations=max_reverts
            ),
        )
    except _RepairOutOfTime as exc:
        raise ConverterError(_out_of_time_message(exc, probe.full_scores, max_drop)) from exc
    scores = probe.full_scores
    return quantized, {
        "method": "quantize_with_accuracy_control",
        "validation_samples": len(validation.samples),
        "max_drop": max_drop,
        "max_reverts": max_reverts,
        "budget_s": budget_s,
        "metric_fp32": scores[0] if scores else None,
        "metric_int8_plain": scores[1] if len(scores) > 1 else None,
    }


def max_reverted_layers(weighted: int) -> int:
    """NNCF's revert steps allowed for a model with `weighted` conv/matmul layers (at least 1)."""
    return max(1, int(weighted * REPAIR_MAX_REVERTED_SHARE))


def _out_of_time_message(exc: _RepairOutOfTime, scores: list[float], max_drop: float) -> str:
    """Why openvino:int8 gave up, with the scores seen, and what to do instead."""
    seen = ""
    if len(scores) > 1:
        seen = (
            f"; on the validation slice FP32 scored {scores[0]:.4g} and plain INT8 "
            f"{scores[1]:.4g} (allowed drop {max_drop:.4g})"
        )
    return (
        f"openvino:int8: NNCF's accuracy control could not bring INT8 within the accuracy "
        f"tolerance in {exc.elapsed_s:.0f} s ({exc.calls} scorings of candidate models){seen}. "
        "INT8 of this model loses too much accuracy; keep openvino:fp32 or tflite:dynamic, "
        "or raise accuracy_tolerance if that drop is acceptable"
    )


def _nncf_logs_to_logging() -> None:
    """NNCF's logger writes to stdout with a handler of its own: hand its records to logging."""
    from nncf.common.logging.logger import nncf_logger

    for handler in list(nncf_logger.handlers):
        nncf_logger.removeHandler(handler)
    nncf_logger.propagate = True


def quantize(model: Any, request: ConversionRequest, target: _Target) -> tuple[Any, dict[str, Any]]:
    """INT8 by NNCF post-training quantization, accuracy-controlled when validation is given.

    NNCF draws progress bars on stdout, which belongs to the caller (e.g. `tfopt --json`): they
    go to stderr instead.
    """
    import nncf

    _nncf_logs_to_logging()
    samples = _calibration_samples(target)
    calibration = nncf.Dataset(samples)
    started = time.perf_counter()
    details: dict[str, Any] = {"calibration_samples": len(samples)}
    validation = request.validation
    with contextlib.redirect_stdout(sys.stderr):
        if validation is None or not validation.samples:
            quantized = nncf.quantize(model, calibration, subset_size=len(samples))
            details["method"] = "quantize"
        else:
            quantized, control = _quantize_with_accuracy_control(
                model, calibration, request.validation, request, target, REPAIR_BUDGET_S
            )
            details.update(control)
    details["seconds"] = round(time.perf_counter() - started, 3)
    details["fake_quantize_ops"] = op_counts(quantized).get("FakeQuantize", 0)
    ops = weighted_ops(quantized)
    details["weighted_ops"] = len(ops)
    details["kept_fp32"] = kept_in_float(quantized)
    details["kept_fp32_names"] = [ops[i].get_friendly_name() for i in details["kept_fp32"]]
    return quantized, details


class OpenVinoBackend:
    """OpenVINO on CPU: FP32 and BF16 (compile-time precision) and NNCF INT8."""

    name = "openvino"
    precisions = ("fp32", "bf16", "int8")

    def available(self) -> str | None:
        """None when the OpenVINO runtime (and NNCF, for INT8) is installed."""
        if importlib.util.find_spec("openvino") is None:
            return "openvino is not installed; install openvino==2026.4.1 to run OpenVINO"
        return None

    def convert(self, request: ConversionRequest) -> Conversion:
        """Converts the SavedModel (or the core of its split) to `model.xml` + `model.bin`.

        Raises:
            BackendUnavailableError: bf16 on a CPU without native BF16, or NNCF missing (int8).
            ConverterError: string inputs with no decoding prefix to keep in TensorFlow.
            UnsplittableGraphError: ops no converter takes do not form a leading prefix.
        """
        check_precision(self.name, self.precisions, request.precision)
        self._check_runs_here(request.precision)
        import openvino as ov

        output_dir = Path(request.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        nncf_details: dict[str, Any] | None = None
        with tempfile.TemporaryDirectory(prefix="tfopt-openvino-") as work_dir:
            target = _target(request, Path(work_dir))
            shapes = input_shapes(target.signature, target.calibration_data)
            model = read_saved_model(target.saved_model_dir, target.signature.key, shapes)
            if request.precision == "int8":
                model, nncf_details = quantize(model, request, target)
            ov.save_model(model, str(output_dir / MODEL_FILE), compress_to_fp16=False)
            if target.split is not None:
                write_split(target.split, output_dir)
        seconds = time.perf_counter() - started
        settings = {
            "precision": request.precision,
            "inference_precision_hint": PRECISION_HINTS[request.precision],
            "performance_hint": _performance_hint(request.objective),
            "openvino_version": ov.__version__,
        }
        (output_dir / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
        request.signature.write(output_dir)
        write_reproduce_script(
            output_dir / REPRODUCE_FILE,
            request,
            ReproduceSettings(
                hint=PRECISION_HINTS[request.precision],
                shapes=shapes,
                split=target.split,
                nncf=nncf_details,
                weighted_ops=tuple(sorted(_WEIGHTED_OPS)),
            ),
        )
        summary = _summary(output_dir, model, settings, seconds, nncf_details, target.split)
        log.info(
            "openvino:%s converted in %.1f s: %s bytes, %s ops%s%s",
            request.precision,
            seconds,
            summary["size_bytes"],
            summary["num_ops"],
            f", NNCF {nncf_details['method']}" if nncf_details else "",
            f", {', '.join(target.split.tf_ops)} left in TensorFlow" if target.split else "",
        )
        return Conversion(artifact_dir=output_dir, summary=summary)

    def _check_runs_here(self, precision: str) -> None:
        reason = self.available()
        if reason is None and precision == "bf16":
            reason = bf16_unavailable_reason()
        if reason is None and precision == "int8" and importlib.util.find_spec("nncf") is None:
            reason = "nncf is not installed; install nncf==3.4.0 to build openvino:int8"
        if reason:
            raise BackendUnavailableError(reason)

    def load(self, artifact_dir: Path, signature: Signature, num_threads: int) -> Runner:
        """Compiles `model.xml` with the variant's recorded precision and hints (CPU), once with
        a dynamic batch and, as calls come, for each input shape (see OpenVinoRunner).

        A split variant runs its TensorFlow prefix first, then the compiled core.
        """
        artifact_dir = Path(artifact_dir)
        model_path, settings_path = artifact_dir / MODEL_FILE, artifact_dir / SETTINGS_FILE
        if not (model_path.is_file() and settings_path.is_file()):
            raise UserInputError(
                f"{artifact_dir} holds no {MODEL_FILE} with {SETTINGS_FILE}; convert the variant "
                "first"
            )
        settings = json.loads(settings_path.read_text())
        config = compile_config(
            settings["inference_precision_hint"], settings["performance_hint"], num_threads
        )
        core = _core()
        model = core.read_model(str(model_path))
        compiled = core.compile_model(model, "CPU", config)

        def compile_static(shapes: dict[str, tuple[int, ...]]) -> Any:
            static = model.clone()
            ports = ports_by_name(static.inputs, tuple(shapes), "inputs")
            static.reshape({ports[name]: list(shape) for name, shape in shapes.items()})
            return core.compile_model(static, "CPU", config)

        split = read_split(artifact_dir)
        if split is None:
            return OpenVinoRunner(compiled, signature, compile_static)
        from tasks.backends.tf import set_tf_threads

        set_tf_threads(num_threads)
        core_runner = OpenVinoRunner(compiled, split.core_signature, compile_static)
        return SplitRunner(PrefixRunner(split.prefix_dir), core_runner)


def _summary(
    output_dir: Path,
    model: Any,
    settings: dict[str, Any],
    seconds: float,
    nncf_details: dict[str, Any] | None,
    split: GraphSplit | None,
) -> dict[str, Any]:
    ops = op_counts(model)
    summary: dict[str, Any] = {
        "size_bytes": sum((output_dir / f).stat().st_size for f in (MODEL_FILE, WEIGHTS_FILE)),
        "conversion_seconds": round(seconds, 3),
        "inference_precision_hint": settings["inference_precision_hint"],
        "performance_hint": settings["performance_hint"],
        "op_counts": ops,
        "num_ops": sum(ops.values()),
    }
    if nncf_details:
        summary["nncf"] = nncf_details
        summary["calibration_samples"] = nncf_details["calibration_samples"]
        summary["quantization_seconds"] = nncf_details["seconds"]
        summary["fake_quantize_ops"] = nncf_details["fake_quantize_ops"]
        summary["layers_kept_fp32"] = len(nncf_details["kept_fp32"])
    if split is not None:
        summary["split"] = {"tf_ops": list(split.tf_ops), "boundary": list(split.boundary)}
    return summary
