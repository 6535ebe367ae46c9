"""Run configuration: frozen dataclasses shared by the CLI, the DAG params and every stage."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tasks import backends as _registry
from tasks.errors import UserInputError

# The variant table lives in the backend registry (tasks.backends); these names are its views.
BACKENDS = tuple(_registry.ENTRIES)
PRECISIONS = _registry.PRECISIONS
KNOWN_VARIANTS = _registry.KNOWN_VARIANTS
BASELINE = "tf:fp32"
DEFAULT_VARIANTS = KNOWN_VARIANTS
OBJECTIVES = ("latency", "throughput")
AUTO_METRIC = "auto"
METRIC_NAMES = (
    AUTO_METRIC,
    "top1",
    "top5",
    "multilabel_map",
    "miou",
    "mae",
    "rmse",
    "map50",
    "map",
    "fidelity",
)
"""`metric` choices: the names of tasks.metrics.METRICS (a unit test keeps them equal), plus
`auto` (top1 for class ids, multilabel_map for multi-hot rows, miou for a class per element,
mae for float labels, map50 for boxes, fidelity without labels).
Kept here so that DAG files can offer them without importing numpy."""
REQUIRED_PARAMS = ("model_uri", "eval_data_uri", "registered_model_name")
OPTIONAL_PARAMS = (
    "calibration_data_uri",
    "metric",
    "metric_output",
    "variants",
    "accuracy_tolerance",
    "latency_slo_ms",
    "batch_sizes",
    "objective",
    "num_threads",
)
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True, order=True)
class VariantSpec:
    """One candidate: a runtime (`backend`) at a numeric `precision`, e.g. `tflite:int8`."""

    backend: str
    precision: str

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.precision}"

    @property
    def slug(self) -> str:
        """The name as it appears in S3 keys and MLflow run names (`tflite-int8`)."""
        return f"{self.backend}-{self.precision}"

    @property
    def is_baseline(self) -> bool:
        return self.name == BASELINE

    @classmethod
    def parse(cls, text: str) -> VariantSpec:
        name = text.strip().lower()
        if name not in KNOWN_VARIANTS:
            raise UserInputError(
                f"unknown variant {text!r}; choose from {', '.join(KNOWN_VARIANTS)}"
            )
        backend, precision = name.split(":")
        return cls(backend, precision)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class AccuracyGate:
    """How far the task metric may move against the baseline: its meaning is the metric's own
    (an absolute drop for top-1/top-5/mAP/fidelity agreement, 0.01 = one point; a relative rise
    of the error for mae/rmse, 0.05 = 5%)."""

    tolerance: float = 0.01

    def __post_init__(self) -> None:
        if not (0.0 <= self.tolerance <= 1.0):
            raise UserInputError(
                f"accuracy_tolerance must be between 0 and 1 (e.g. 0.01: one point of top-1, "
                f"or 1% more error for mae/rmse), got {self.tolerance}"
            )


@dataclass(frozen=True)
class LatencySLO:
    """Optional budget on p99 latency at batch 1, in milliseconds."""

    p99_ms: float | None = None

    def __post_init__(self) -> None:
        if self.p99_ms is not None and not self.p99_ms > 0:
            raise UserInputError(f"latency_slo_ms must be > 0 when set, got {self.p99_ms}")


def _parse_variants(value: Any) -> tuple[VariantSpec, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    specs = [VariantSpec.parse(str(item)) for item in items if str(item).strip()]
    if not specs:
        raise UserInputError("variants is empty; name at least one, e.g. tflite:int8")
    baseline = VariantSpec.parse(BASELINE)
    unique = sorted(set(specs) | {baseline}, key=lambda s: KNOWN_VARIANTS.index(s.name))
    return tuple(unique)


def _parse_batch_sizes(value: Any) -> tuple[int, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        sizes = tuple(sorted({int(str(item).strip()) for item in items if str(item).strip()}))
    except ValueError as exc:
        raise UserInputError(f"batch_sizes must be integers like 1,8; got {value!r}") from exc
    if not sizes or any(size < 1 or size > 1024 for size in sizes):
        raise UserInputError(f"batch_sizes must be integers in 1..1024; got {value!r}")
    if 1 not in sizes:
        sizes = (1, *sizes)
    return sizes


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one optimisation run needs; CLI flags and DAG params use the same names."""

    model_uri: str
    eval_data_uri: str
    calibration_data_uri: str | None
    registered_model_name: str
    variants: tuple[VariantSpec, ...] = field(
        default_factory=lambda: _parse_variants(DEFAULT_VARIANTS)
    )
    accuracy_gate: AccuracyGate = field(default_factory=AccuracyGate)
    latency_slo: LatencySLO = field(default_factory=LatencySLO)
    batch_sizes: tuple[int, ...] = (1, 8)
    objective: str = "latency"
    num_threads: int = 2
    metric: str = AUTO_METRIC
    metric_output: str | None = None

    def __post_init__(self) -> None:
        for name in ("model_uri", "eval_data_uri"):
            if not str(getattr(self, name)).strip():
                raise UserInputError(f"{name} is required")
        if self.metric not in METRIC_NAMES:
            raise UserInputError(
                f"metric must be one of {', '.join(METRIC_NAMES)}; got {self.metric!r}"
            )
        if not _MODEL_NAME.match(self.registered_model_name or ""):
            raise UserInputError(
                "registered_model_name must be 1-100 characters of letters, digits, '_', '.', '-' "
                f"starting with a letter or digit; got {self.registered_model_name!r}"
            )
        if self.objective not in OBJECTIVES:
            raise UserInputError(
                f"objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}"
            )
        if self.num_threads < 1:
            raise UserInputError(f"num_threads must be >= 1; got {self.num_threads}")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> PipelineConfig:
        """Build from flat CLI flags / DAG params (`accuracy_tolerance`, `latency_slo_ms`, ...)."""
        known = set(REQUIRED_PARAMS) | set(OPTIONAL_PARAMS)
        unknown = sorted(set(params) - known)
        if unknown:
            raise UserInputError(f"unknown parameter(s): {', '.join(unknown)}")
        missing = [name for name in REQUIRED_PARAMS if params.get(name) in (None, "")]
        if missing:
            raise UserInputError(f"missing required parameter(s): {', '.join(missing)}")
        slo = params.get("latency_slo_ms")
        try:
            tolerance = float(params.get("accuracy_tolerance", AccuracyGate.tolerance))
            slo_ms = float(slo) if slo not in (None, "", 0) else None
            threads = int(params.get("num_threads", 2))
        except (TypeError, ValueError) as exc:
            raise UserInputError(f"a numeric parameter is not a number: {exc}") from exc
        calibration = str(params.get("calibration_data_uri") or "").strip() or None
        return cls(
            model_uri=str(params["model_uri"]),
            eval_data_uri=str(params["eval_data_uri"]),
            calibration_data_uri=calibration,
            registered_model_name=str(params["registered_model_name"]),
            variants=_parse_variants(params.get("variants") or DEFAULT_VARIANTS),
            accuracy_gate=AccuracyGate(tolerance),
            latency_slo=LatencySLO(slo_ms),
            batch_sizes=_parse_batch_sizes(params.get("batch_sizes") or (1, 8)),
            objective=str(params.get("objective") or "latency"),
            num_threads=threads,
            metric=str(params.get("metric") or AUTO_METRIC).strip().lower(),
            metric_output=str(params.get("metric_output") or "").strip() or None,
        )

    def to_params(self) -> dict[str, Any]:
        """The flat, JSON-safe form (inverse of `from_params`)."""
        return {
            "model_uri": self.model_uri,
            "eval_data_uri": self.eval_data_uri,
            "calibration_data_uri": self.calibration_data_uri,
            "registered_model_name": self.registered_model_name,
            "variants": [spec.name for spec in self.variants],
            "accuracy_tolerance": self.accuracy_gate.tolerance,
            "latency_slo_ms": self.latency_slo.p99_ms,
            "batch_sizes": list(self.batch_sizes),
            "objective": self.objective,
            "num_threads": self.num_threads,
            "metric": self.metric,
            "metric_output": self.metric_output,
        }

    @property
    def needs_calibration(self) -> bool:
        """An INT8 variant is asked for (it calibrates on representative data)."""
        return any(spec.precision == "int8" for spec in self.variants)


RUN_KEY_HASH_CHARS = 12
_SAFE_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def run_key(run_id: str) -> str:
    """The storage key of a run id, one-to-one: a safe id as is, else a prefix and a hash.

    A run id of letters, digits, `_`, `.` and `-` (starting with a letter or digit) is its own
    key. Any other id becomes its sanitised form, `~` and a short sha256 of the raw id: two
    different ids never share a key (`~` never occurs in a safe id).

    Raises:
        UserInputError: the run id is empty, `.` or `..`.
    """
    import hashlib

    if run_id.strip() in ("", ".", ".."):
        raise UserInputError(f"run id {run_id!r} is not allowed; pass a name such as 'nightly-1'")
    if _SAFE_RUN_ID.match(run_id):
        return run_id
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("_.-")[:64] or "run"
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:RUN_KEY_HASH_CHARS]
    return f"{prefix}~{digest}"


@dataclass(frozen=True)
class RunContext:
    """Where one pipeline run keeps its artifacts: `<root_uri>/<model>/<run key>/...` in S3.

    `run_id` is the run's key (see `run_key`); `work_dir` is this worker's private scratch
    space for the run (0700, under `TFOPT_WORK_DIR`).
    """

    run_id: str
    root_uri: str
    work_dir: str

    @classmethod
    def create(cls, run_id: str, registered_model_name: str) -> RunContext:
        from tasks.scratch import work_root
        from tasks.storage import default_run_root

        key = run_key(run_id)
        base = default_run_root()
        return cls(
            run_id=key,
            root_uri=f"{base.rstrip('/')}/{registered_model_name}/{key}",
            work_dir=str(work_root() / registered_model_name / key),
        )

    @property
    def owner(self) -> str:
        """Who this process is, for locks: run key, host and process id."""
        import os
        import socket

        return f"{self.run_id}@{socket.gethostname()}:{os.getpid()}"

    def champion_lock_uri(self) -> str:
        """The lock that serialises champion decisions of this run's model."""
        return f"{self.root_uri.rsplit('/', 1)[0]}/_champion.lock"

    def uri(self, *parts: str) -> str:
        return "/".join([self.root_uri, *parts])

    def cleanup(self) -> None:
        """Remove this worker's scratch space of the run (published artifacts stay in S3).

        Safe on any worker, any number of times, also when the scratch space was never made.
        """
        import shutil

        shutil.rmtree(self.work_dir, ignore_errors=True)

    def for_task(self, label: str) -> RunContext:
        """The same run with scratch space of one task's own (`<run scratch>/<label>`), so a
        task can remove its scratch when it ends while other tasks of the run go on."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("._") or "task"
        return replace(self, work_dir=str(Path(self.work_dir) / safe))

    def local(self, *parts: str) -> Path:
        """A folder in the run's private scratch space, created on first use."""
        from tasks.scratch import private_tree, work_root

        work = Path(self.work_dir)
        root = work_root()
        levels = work.relative_to(root).parts if work.is_relative_to(root) else ()
        if not levels:
            root, levels = work.parent.parent, (work.parent.name, work.name)
        scratch = private_tree(root, *levels)
        path = scratch.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path
