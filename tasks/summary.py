"""Per-variant summary rows: conversion, validation and benchmark merged for select and report."""

from __future__ import annotations

from typing import Any

from tasks.config import BASELINE
from tasks.results import StageResult, Status


def variant_row(
    conversion: StageResult, validation: StageResult, benchmark: StageResult
) -> dict[str, Any]:
    """One flat, JSON-safe row describing a variant; the first non-OK stage gives the status."""
    status, reason = Status.OK, ""
    for stage in (conversion, validation, benchmark):
        if stage.status is not Status.OK:
            status, reason = stage.status, f"{stage.stage}: {stage.reason}"
            break
    val, bench, conv = validation.metrics, benchmark.metrics, conversion.metrics
    batch_sizes = sorted(
        int(key.removeprefix("throughput_b")) for key in bench if key.startswith("throughput_b")
    )
    comparisons = val.get("outputs") or []
    return {
        "variant": conversion.variant,
        "status": status.value,
        "reason": reason,
        "validation_passed": val.get("passed"),
        "validation_reasons": list(val.get("reasons") or []),
        "has_nan_or_inf": any(c.get("has_nan") or c.get("has_inf") for c in comparisons),
        "metric_name": val.get("metric_name"),
        "metric": val.get("metric"),
        "baseline_metric": val.get("baseline_metric"),
        "metric_delta": val.get("metric_delta"),
        "agreement": val.get("agreement"),
        "max_abs_error": max((c.get("max_abs_error") or 0.0 for c in comparisons), default=None),
        "p50_ms": bench.get("p50_ms_b1"),
        "p99_ms": bench.get("p99_ms_b1"),
        "p50_ms_by_batch": {b: bench.get(f"p50_ms_b{b}") for b in batch_sizes},
        "throughput_by_batch": {b: bench.get(f"throughput_b{b}") for b in batch_sizes},
        "throughput": max((bench[f"throughput_b{b}"] for b in batch_sizes), default=None),
        "hardware_class": bench.get("hardware_class"),
        "size_bytes": conv.get("size_bytes"),
        "conversion_s": conv.get("conversion_s"),
        "conversion_summary": conv.get("summary") or {},
        "model_uri": conversion.uris.get("model"),
        "benchmark_uri": benchmark.uris.get("benchmark"),
        "validation_uri": validation.uris.get("validation"),
    }


def add_speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add `speedup` (baseline p50 / variant p50 at batch 1) to every measured row."""
    base = next((r for r in rows if r["variant"] == BASELINE), None)
    base_p50 = base.get("p50_ms") if base else None
    for row in rows:
        p50 = row.get("p50_ms")
        row["speedup"] = round(base_p50 / p50, 3) if base_p50 and p50 else None
    return rows
