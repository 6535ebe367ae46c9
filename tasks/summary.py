"""The typed per-variant record every later stage reads: select, register, report, the UI plugin.

One `VariantSummary` per variant merges its conversion, validation and benchmark results. The
selection adds each row's verdict. `results.json` (format_version 2) holds the run's settings,
the selection, the registration and these records, in this one shape:

    {"format_version": 2,
     "run": {"model", "run_id", "hardware", "objective", "latency_slo_ms",
             "metric": {"name", "title", "higher_is_better", "tolerance", "tolerance_meaning",
                        "output"},
             "calibration": {"source", "uri", "samples", "holdout"}, "measurement"},
     "selection": {"chosen", "objective", "reason", "ranking", "rejections", "baseline"},
     "registration": {"model_version", "champion", "champion_reason", "model_version_url", ...},
     "variants": [VariantSummary.to_dict(), ...]}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from tasks.config import BASELINE
from tasks.results import StageResult, Status

RESULTS_FORMAT_VERSION = 2


class Verdict(StrEnum):
    """What the selection made of a variant; every surface shows the same one."""

    CHOSEN = "chosen"
    ELIGIBLE = "eligible"
    REJECTED = "rejected"
    FAILED = "failed"
    SKIPPED = "skipped"


def _num(value: Any) -> float | None:
    """A finite float, or None (missing, NaN and Inf all count as not measured)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class VariantSummary:
    """One variant of a run: status, accuracy, speed, size, where its artifacts are, verdict.

    Metric figures are in the metric's own units (`metric_name`); `metric_delta` is variant minus
    baseline. Latencies are milliseconds at batch 1, `throughput` samples/s at the best batch
    size. They come from one interleaved benchmark per lane: a p50 is the speed of the
    variant's full-speed stretches of calls (`tasks.benchmark_rounds.full_speed_p50`),
    `round_p50_iqr_ms` the spread of its full-speed round medians at batch 1, `rounds_spoiled`
    the rounds the machine's contention or slow state spoiled, `rounds_slow` the kept rounds this
    variant ran more than `BenchmarkSettings.max_round_slowdown` over its fastest (left out of its
    figures), and `machine_probe_ms` the machine-speed probe over the kept rounds
    (`tasks.machine_speed`: two runs whose probes differ ran at different machine speeds).
    `champion_in_rounds` holds the current champion's figures measured in the same rounds, when it
    runs on the variant's lane. `split` describes ops kept in TensorFlow in front of a converted
    core, if any (`tf_ops`, `boundary`, `prefix_share` of the latency). `verdict` is set by the
    selection.
    """

    variant: str
    status: Status
    reason: str = ""
    verdict: Verdict | None = None
    verdict_reason: str = ""
    validation_passed: bool | None = None
    validation_reasons: tuple[str, ...] = ()
    has_nan_or_inf: bool = False
    metric_name: str | None = None
    metric_value: float | None = None
    baseline_metric_value: float | None = None
    metric_delta: float | None = None
    metric_details: dict[str, float | None] = field(default_factory=dict)
    max_abs_error: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    p50_ms_by_batch: dict[str, float | None] = field(default_factory=dict)
    throughput_by_batch: dict[str, float | None] = field(default_factory=dict)
    throughput: float | None = None
    speedup: float | None = None
    hardware_class: str | None = None
    size_bytes: int | None = None
    conversion_s: float | None = None
    conversion_summary: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] | None = None
    model_uri: str | None = None
    validation_uri: str | None = None
    benchmark_uri: str | None = None
    round_p50_iqr_ms: float | None = None
    rounds_kept: int | None = None
    rounds_spoiled: int | None = None
    rounds_slow: int | None = None
    machine_probe_ms: float | None = None
    champion_in_rounds: dict[str, Any] | None = None

    @property
    def backend(self) -> str:
        return self.variant.split(":")[0]

    @property
    def precision(self) -> str:
        return self.variant.split(":")[-1]

    @property
    def is_ok(self) -> bool:
        return self.status is Status.OK

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["verdict"] = None if self.verdict is None else self.verdict.value
        data["validation_reasons"] = list(self.validation_reasons)
        data["backend"], data["precision"] = self.backend, self.precision
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VariantSummary:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["status"] = Status(values["status"])
        values["verdict"] = Verdict(values["verdict"]) if values.get("verdict") else None
        values["validation_reasons"] = tuple(values.get("validation_reasons") or ())
        return cls(**values)


def _first_not_ok(stages: Iterable[StageResult]) -> tuple[Status, str]:
    for stage in stages:
        if stage.status is not Status.OK:
            return stage.status, f"{stage.stage}: {stage.reason}"
    return Status.OK, ""


def summarize(
    conversion: StageResult, validation: StageResult, benchmark: StageResult
) -> VariantSummary:
    """One variant's record; the first stage that is not OK gives its status and reason."""
    status, reason = _first_not_ok((conversion, validation, benchmark))
    val, bench, conv = validation.metrics, benchmark.metrics, conversion.metrics
    sizes = sorted(int(k.removeprefix("throughput_b")) for k in bench if k.startswith("through"))
    outputs = val.get("outputs") or []
    errors = [o["max_abs_error"] for o in outputs if o.get("max_abs_error") is not None]
    summary = conv.get("summary") or {}
    split = summary.get("split")
    if split is not None and bench.get("prefix_share") is not None:
        split = {**split, "prefix_share": bench["prefix_share"]}
    return VariantSummary(
        variant=conversion.variant,
        status=status,
        reason=reason,
        validation_passed=val.get("passed"),
        validation_reasons=tuple(val.get("reasons") or ()),
        has_nan_or_inf=any(o.get("has_nan") or o.get("has_inf") for o in outputs),
        metric_name=val.get("metric_name"),
        metric_value=_num(val.get("metric")),
        baseline_metric_value=_num(val.get("baseline_metric")),
        metric_delta=_num(val.get("metric_delta")),
        metric_details=dict(val.get("metric_details") or {}),
        max_abs_error=max(errors) if errors else None,
        p50_ms=_num(bench.get("p50_ms_b1")),
        p99_ms=_num(bench.get("p99_ms_b1")),
        p50_ms_by_batch={str(b): _num(bench.get(f"p50_ms_b{b}")) for b in sizes},
        throughput_by_batch={str(b): _num(bench.get(f"throughput_b{b}")) for b in sizes},
        throughput=max((_num(bench[f"throughput_b{b}"]) or 0.0 for b in sizes), default=None),
        hardware_class=bench.get("hardware_class"),
        size_bytes=conv.get("size_bytes"),
        conversion_s=conv.get("conversion_s"),
        conversion_summary=summary,
        split=split,
        model_uri=conversion.uris.get("model"),
        validation_uri=validation.uris.get("validation"),
        benchmark_uri=benchmark.uris.get("benchmark"),
        round_p50_iqr_ms=_num(bench.get("round_p50_iqr_ms_b1")),
        rounds_kept=bench.get("rounds_kept"),
        rounds_spoiled=bench.get("rounds_spoiled"),
        rounds_slow=bench.get("rounds_slow"),
        machine_probe_ms=_num(bench.get("machine_probe_ms")),
        champion_in_rounds=bench.get("champion"),
    )


def with_speedups(summaries: Iterable[VariantSummary]) -> list[VariantSummary]:
    """The records with `speedup` (baseline p50 / variant p50 at batch 1) filled in."""
    summaries = list(summaries)
    base = next((s for s in summaries if s.variant == BASELINE), None)
    base_p50 = base.p50_ms if base else None
    return [
        replace(s, speedup=round(base_p50 / s.p50_ms, 3) if base_p50 and s.p50_ms else None)
        for s in summaries
    ]


def find(summaries: Iterable[VariantSummary], variant: str | None) -> VariantSummary | None:
    return next((s for s in summaries if s.variant == variant), None)
