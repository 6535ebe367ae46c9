"""The benchmark's figures from the measured runs, and the targets they are judged against."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from tasks.benchmark import BenchmarkSettings
from tasks.config import BASELINE


@dataclass(frozen=True)
class Figure:
    """One measured figure and its target; `passed` is None when it could not be measured."""

    name: str
    value: float | None
    unit: str
    target: str
    passed: bool | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(num: Any, den: Any) -> float | None:
    if num is None or den is None or not den or not math.isfinite(float(num)):
        return None
    return float(num) / float(den)


def _batch(row: dict[str, Any], key: str, size: int) -> float | None:
    values = row.get(key) or {}
    return values.get(size, values.get(str(size)))


def variant_figures(
    row: dict[str, Any], base: dict[str, Any], flops: int, peak_gflops: float
) -> dict[str, Any]:
    """Speed-ups, accuracy, size and efficiency of one variant vs the baseline row."""
    p50_1, p50_8 = _batch(row, "p50_ms_by_batch", 1), _batch(row, "p50_ms_by_batch", 8)
    gflops_1 = _ratio(flops / 1e9, p50_1 / 1e3) if p50_1 else None
    gflops_8 = _ratio(8 * flops / 1e9, p50_8 / 1e3) if p50_8 else None
    delta = row.get("metric_delta")
    return {
        "variant": row["variant"],
        "status": row["status"],
        "reason": row.get("reason") or "",
        "p50_ms_b1": p50_1,
        "p99_ms_b1": row.get("p99_ms"),
        "p50_ms_b8": p50_8,
        "speedup_b1": _ratio(_batch(base, "p50_ms_by_batch", 1), p50_1),
        "speedup_b8": _ratio(_batch(base, "p50_ms_by_batch", 8), p50_8),
        "throughput": row.get("throughput"),
        "throughput_ratio": _ratio(row.get("throughput"), base.get("throughput")),
        "top1": row.get("metric_value"),
        "top1_drop_points": -100 * delta + 0.0 if delta is not None else None,
        "size_bytes": row.get("size_bytes"),
        "size_ratio": _ratio(row.get("size_bytes"), base.get("size_bytes")),
        "gflops_b1": gflops_1,
        "efficiency_b1": _ratio(gflops_1, peak_gflops),
        "gflops_b8": gflops_8,
        "efficiency_b8": _ratio(gflops_8, peak_gflops),
        "conversion_s": row.get("conversion_s"),
    }


def all_variant_figures(
    rows: list[dict[str, Any]], flops: int, peak_gflops: float
) -> list[dict[str, Any]]:
    """`variant_figures` for every row of one run (the baseline row must be present)."""
    base = next(row for row in rows if row["variant"] == BASELINE)
    return [variant_figures(row, base, flops, peak_gflops) for row in rows]


def _check(
    name: str,
    value: float | None,
    unit: str,
    target: str,
    ok: Callable[[float], bool],
    note: str = "",
) -> Figure:
    passed = None if value is None else bool(ok(value))
    return Figure(name, value, unit, target, passed, note)


def target_figures(bench: dict[str, Any]) -> list[Figure]:
    """Every targeted figure of the benchmark, judged (see the issue's targets)."""
    chosen = bench["selected"]
    by_variant = {v["variant"]: v for v in bench["variants"]}
    sel = by_variant[chosen]
    int8 = by_variant.get("tflite:int8", {})
    cost = bench["pipeline_cost"]
    worst_tool = max(
        (h for h in bench["harness_vs_tool"]),
        key=lambda h: abs(h["ratio"] - 1.0),
        default=None,
    )
    repeat = next((r for r in bench["repeatability"] if r["variant"] == chosen), None)
    return [
        _check(f"speed-up b1 ({chosen})", sel["speedup_b1"], "x", ">= 5x", lambda v: v >= 5),
        _check(f"top-1 drop ({chosen})", sel["top1_drop_points"], "pt", "<= 1.0", lambda v: v <= 1),
        _check("INT8 size / FP32", int8.get("size_ratio"), "x", "<= 0.3x", lambda v: v <= 0.3),
        _check(
            f"efficiency b1 ({chosen})",
            _pct(sel["efficiency_b1"]),
            "% peak",
            ">= 40%",
            lambda v: v >= 40,
            _efficiency_note(chosen, by_variant),
        ),
        _check(
            f"harness/tool p50 ({worst_tool['variant']})" if worst_tool else "harness/tool p50",
            worst_tool["ratio"] if worst_tool else None,
            "x",
            "within 10%",
            lambda v: abs(v - 1) <= 0.10,
            _harness_note(worst_tool),
        ),
        _check(
            f"repeatability p50 ({chosen})",
            repeat["ratio"] if repeat else None,
            "x",
            "within 5%",
            lambda v: abs(v - 1) <= 0.05,
            _repeatability_note(repeat),
        ),
        _check(
            "orchestration overhead (DAG)",
            _pct(cost["dag"]["overhead_share"]),
            "% wall",
            "<= 20%",
            lambda v: v <= 20,
            f"stages = {cost['dag'].get('stage_source', '?')}",
        ),
        _check("DAG parse", cost["dag_parse"]["best_s"], "s", "<= 0.3 s", lambda v: v <= 0.3),
        *realsize_figures(bench.get("realsize") or []),
        *_realsize_overhead(bench.get("realsize_orchestration")),
    ]


def _realsize_overhead(orchestration: dict[str, Any] | None) -> list[Figure]:
    if not orchestration:
        return []
    name = f"orchestration overhead (DAG, {orchestration.get('model', '?')})"
    if "error" in orchestration:
        return [Figure(name, None, "% wall", "<= 10%", None, orchestration["error"][:300])]
    dag = orchestration["dag"]
    return [
        _check(
            name,
            _pct(dag["overhead_share"]),
            "% wall",
            "<= 10%",
            lambda v: v <= 10,
            f"CLI {_pct(orchestration['cli']['overhead_share']) or 0:.1f}%; "
            f"stages = {dag.get('stage_source', '?')}",
        )
    ]


def _efficiency_note(chosen: str, by_variant: dict[str, dict[str, Any]]) -> str:
    """Says what the efficiency compares; INT8 MACs are not FP32 FLOPs."""
    note = "model FLOPs / p50 vs the FP32 matmul peak"
    fp32 = by_variant.get("tflite:fp32", {}).get("efficiency_b1")
    if chosen.endswith(":int8") and fp32 is not None:
        note += f"; INT8 runs VNNI dot products, up to 4x the FP32 rate (tflite:fp32 {fp32:.0%})"
    return note


def _harness_note(worst: dict[str, Any] | None) -> str:
    """What the harness figure compares, and the runner's full call beside it."""
    note = (
        "worst tflite variant; the harness timing the tool's own work (LiteRT's CompiledModel "
        "run on inputs written once) and the tool interleaved, order balanced over rounds, median "
        "of the round ratios"
    )
    if worst and worst.get("call_ratio") is not None:
        note += (
            f"; the runner's full call, writing the next input each call: "
            f"{worst['call_ratio']:.2f}x the tool"
        )
    return note


def _repeatability_note(repeat: dict[str, Any] | None) -> str:
    """What the ratio compares, and whether the two runs measured at the same machine speed."""
    note = "DAG run / CLI run"
    probes = repeat and (repeat.get("machine_probe_ms_run1"), repeat.get("machine_probe_ms_run2"))
    if probes and all(probes):
        cli, dag = probes
        note += f"; machine-speed probe {cli:.3f} ms (CLI) vs {dag:.3f} ms (DAG)"
        if abs(dag / cli - 1) > BenchmarkSettings.max_probe_slowdown:
            note += ": the runs measured at different machine speeds"
    if repeat and repeat.get("same_rounds_ratio"):
        note += (
            f"; in the DAG run's rounds, its variant / the CLI run's registered copy "
            f"{repeat['same_rounds_ratio']:.3f}x"
        )
    return note


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def cost_figures(run: dict[str, Any]) -> dict[str, Any]:
    """Wall time, the stages' own time and the orchestration overhead of one pipeline run."""
    wall, stages = run["wall_s"], run["stage_sum_s"]
    return {
        "wall_s": wall,
        "stage_sum_s": stages,
        "overhead_s": round(wall - stages, 2),
        "overhead_share": (wall - stages) / wall if wall else None,
        **{
            k: run[k]
            for k in (
                "in_process_s",
                "dag_run_s",
                "task_duration_sum_s",
                "stage_source",
                "task_bodies_found",
            )
            if k in run
        },
        "stages": run["stages"],
        "log": run["log"],
    }


COMPUTE_BOUND = "resnet50"
"""The bench network whose efficiency is held to a target (the compute-bound one)."""
FP32_PEAK_PRECISIONS = ("fp32", "fp16")
"""Precisions judged against the FP32 peak: LiteRT's fp16 keeps FP16 weights, computes FP32."""


def efficiency(network: dict[str, Any], fp32_peak: float, gemm: dict[str, Any] | None) -> dict:
    """Per tfopt variant of a real-size network: GFLOP/s at batch 1 and the share of its peak.

    FP32 (and LiteRT fp16) against the FP32 peak, INT8 against the INT8 GEMM peak, both
    measured in the run; BF16 has no measured peak and gets none. When the network's run
    measured the GEMMs in its own interleaved rounds (`interleaved_peaks`), those are the
    peaks: they saw the same machine as the network. Else the separate measurements count
    (`fp32_peak`, `gemm`).
    """
    int8_peak = (gemm or {}).get("int8_peak_gops")
    interleaved = network.get("interleaved_peaks") or {}
    if "gemm:fp32" in interleaved and "gemm:int8" in interleaved:
        fp32_peak = interleaved["gemm:fp32"]["gops"]
        int8_peak = interleaved["gemm:int8"]["gops"]
    by_variant = {}
    for name, row in network["rows"].items():
        if row.get("kind") != "tfopt" or "latency" not in row:
            continue
        precision = name.split(":")[-1]
        rate = network["flops"] / row["latency"]["p50_ms"] / 1e6
        peak = fp32_peak if precision in FP32_PEAK_PRECISIONS else None
        peak = int8_peak if precision == "int8" else peak
        by_variant[name] = {"gflops": rate, "peak": peak, "share": _ratio(rate, peak)}
    return {
        "fp32_peak_gflops": fp32_peak,
        "int8_peak_gops": int8_peak,
        "by_variant": by_variant,
        "best_fp32": _best_share(by_variant, FP32_PEAK_PRECISIONS),
        "best_int8": _best_share(by_variant, ("int8",)),
    }


def _best_share(by_variant: dict[str, dict], precisions: tuple[str, ...]) -> dict | None:
    found = {
        name: value
        for name, value in by_variant.items()
        if name.split(":")[-1] in precisions and value["share"] is not None
    }
    if not found:
        return None
    name = max(found, key=lambda n: found[n]["share"])
    return {"variant": name, **found[name]}


def realsize_figures(networks: list[dict[str, Any]]) -> list[Figure]:
    """Per network tfopt's choice vs the best peer; FP32 and INT8 efficiency of the
    compute-bound one.

    A ratio below 1.0 whose head-to-head 95% interval reaches 1.0 is no measured loss: the two
    ran at one speed within the noise of timing (a tie; on LiteRT on x86 `tflite:fp16` and
    `tflite:fp32` compute alike in FP32, and tfopt's `tflite:fp32` is LiteRT's default
    conversion), and the figure counts as met, marked so. It fails when the whole interval
    lies below 1.0: the peer measurably faster.
    """
    out = []
    for net in networks:
        note = f"{net.get('chosen')} vs {net.get('best_peer')}; gate: {net['gate']}"
        same = bool(net.get("same_outputs"))
        ratio = net.get("speed_vs_best_peer")
        interval = net.get("speed_vs_best_peer_interval95")
        if interval:
            note += f"; head to head, 95% interval {interval[0]:.3f}-{interval[1]:.3f}"
        tie = bool(ratio is not None and ratio < 1.0 and interval and interval[1] >= 1.0)
        if tie:
            note += "; a tie: the interval reaches 1.0"
        elif ratio is not None and ratio < 1.0 and interval:
            note += "; the peer measurably faster: the whole interval below 1.0"
        if same:
            note += "; the two computed the same outputs bit for bit"
        out.append(
            _check(
                f"{net['model']}: tfopt / best peer",
                ratio,
                "x",
                ">= 1.0x",
                lambda v, tie=tie: v >= 1.0 or tie,
                note,
            )
        )
        if net["model"] != COMPUTE_BOUND:
            continue
        fp32, int8 = net["efficiency"]["best_fp32"], net["efficiency"]["best_int8"]
        out.append(
            _check(
                f"{net['model']}: FP32 efficiency",
                _pct(fp32 and fp32["share"]),
                "% peak",
                ">= 50%",
                lambda v: v >= 50,
                f"{fp32['variant']} vs the FP32 matmul peak" if fp32 else "",
            )
        )
        out.append(
            Figure(
                f"{net['model']}: INT8 efficiency",
                _pct(int8 and int8["share"]),
                "% peak",
                "no target",
                None,
                f"{int8['variant']} vs the INT8 GEMM peak" if int8 else "",
            )
        )
    return out
