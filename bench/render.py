"""The benchmark's output: the tables printed on stdout and the PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.figures import Figure
from tasks.config import BASELINE


def _fmt(value: Any, spec: str = ".2f", suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:{spec}}{suffix}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


_VARIANT_HEADER = [
    "variant", "status", "p50 b1 ms", "p50 b8 ms", "x b1", "x b8", "x thrpt", "top-1", "drop pt",
    "size MB", "x size", "GFLOP/s b1", "% peak", "conv s", "tool p50", "harn/tool", "call/tool",
    "pipe/tool", "rerun",
]  # fmt: skip


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def _variant_cells(v: dict[str, Any], tool: dict[str, Any], rerun: dict[str, Any]) -> list[str]:
    return [
        _ms(v["p50_ms_b1"]),
        _ms(v["p50_ms_b8"]),
        _fmt(v["speedup_b1"]),
        _fmt(v["speedup_b8"]),
        _fmt(v["throughput_ratio"]),
        _fmt(v["top1"], ".4f"),
        _fmt(v["top1_drop_points"], "+.2f"),
        _fmt(v["size_bytes"] and v["size_bytes"] / 1e6, ".2f"),
        _fmt(v["size_ratio"], ".3f"),
        _fmt(v["gflops_b1"], ".1f"),
        _fmt(_pct(v["efficiency_b1"]), ".1f"),
        _fmt(v["conversion_s"], ".1f"),
        _ms(tool.get("tool_p50_ms")),
        _fmt(tool.get("ratio"), ".3f"),
        _fmt(tool.get("call_ratio"), ".3f"),
        _fmt(tool.get("pipeline_vs_tool"), ".3f"),
        _fmt(rerun.get("ratio"), ".3f"),
    ]


def variants_table(bench: dict[str, Any]) -> str:
    """Per variant: latency, speed-ups, throughput, top-1, size, efficiency, harness checks.

    Ratios are vs tf:fp32 (`x b1`, `x b8`: p50 ratios; `x thrpt`: best throughput ratio);
    `harn/tool`: tfopt's harness p50 on the tool's own work (compiled as the tool compiles it,
    inputs written once) / LiteRT's tool p50, back to back (median of rounds); `call/tool`: the
    same with the runner's full call, which writes the next input every call and runs in
    LiteRT's Interpreter; `pipe/tool`: the CLI run's p50 / the tool's;
    `rerun`: the DAG run's p50 / the CLI run's.
    """
    tool = {h["variant"]: h for h in bench["harness_vs_tool"]}
    rerun = {r["variant"]: r for r in bench["repeatability"]}
    rows = []
    for v in bench["variants"]:
        name = v["variant"] + (" *" if v["variant"] == bench["selected"] else "")
        if v["status"] != "OK":
            rows.append([name, v["status"]] + ["-"] * (len(_VARIANT_HEADER) - 2))
        else:
            cells = _variant_cells(v, tool.get(v["variant"], {}), rerun.get(v["variant"], {}))
            rows.append([name, v["status"], *cells])
    return _table(_VARIANT_HEADER, rows)


_PEER_HEADER = [
    "variant", "status", "p50 ms", "round IQR", "min-max of rounds", "full speed", "cosine",
    "agree", "max err", "gate", "GFLOP/s", "% peak", "conv s",
]  # fmt: skip


def _peer_cells(name: str, row: dict[str, Any], eff: dict[str, Any]) -> list[str]:
    lat, fid = row.get("latency") or {}, row.get("fidelity") or {}
    spread = lat.get("round_p50_range_ms") or []
    gate = "-" if "passed" not in row else ("pass" if row["passed"] else "FAIL")
    return [
        name,
        row["status"],
        _ms(lat.get("p50_ms")),
        _fmt(lat.get("round_p50_iqr_ms"), ".3f"),
        "-" if not spread else f"{_ms(spread[0])}-{_ms(spread[1])}",
        full_speed(lat),
        _fmt(fid.get("cosine"), ".4f"),
        _fmt(fid.get("agreement"), ".2f"),
        _fmt(fid.get("max_abs_error"), ".3g"),
        gate,
        _fmt((eff.get(name) or {}).get("gflops"), ".1f"),
        _fmt(_pct((eff.get(name) or {}).get("share")), ".1f"),
        _fmt(row.get("conversion_s"), ".1f"),
    ]


def full_speed(lat: dict[str, Any], joiner: str = "/") -> str:
    """`a/b`: a of the b kept rounds ran at full speed (the p50's rounds)."""
    if lat.get("rounds_kept") is None:
        return "-"
    return f"{lat['rounds_kept']}{joiner}{lat['rounds_kept'] + (lat.get('rounds_slow') or 0)}"


def _round_range(per_round: list[float] | None) -> str:
    """ " (median of N round ratios, min-max a-b)" when the ratio was taken per round."""
    if not per_round:
        return ""
    return (
        f" (head to head: median of {len(per_round)} round ratios, min-max "
        f"{min(per_round):.2f}-{max(per_round):.2f})"
    )


def _interval(interval: list[float] | None) -> str:
    """ ", 95% interval a-b" for a head-to-head ratio."""
    return f", 95% interval {interval[0]:.3f}-{interval[1]:.3f}" if interval else ""


def peer_order(rows: dict[str, Any]) -> list[str]:
    """A network's runner names: tfopt's variants first, then the peers."""
    return [n for n in rows if rows[n]["kind"] == "tfopt"] + [
        n for n in rows if rows[n]["kind"] == "peer"
    ]


def peers_table(network: dict[str, Any]) -> str:
    """One real-size network: tfopt's variants, then the peers, all measured in one run."""
    eff = network["efficiency"]["by_variant"]
    rows = network["rows"]
    order = peer_order(rows)
    body = [_peer_cells(name, rows[name], eff) for name in order]
    rounds = network["rounds"]
    ratio = network.get("speed_vs_best_peer")
    title = (
        f"{network['model']} {network['image_size']} px, {network['params'] / 1e6:.1f} M "
        f"parameters, {network['flops'] / 1e9:.2f} GFLOP/image, {network['threads']} threads; "
        f"{rounds['rounds']} rounds ({rounds['spoiled']} spoiled, {len(rounds['kept'])} kept); "
        f"gate {network['gate']}\n"
        f"tfopt's choice {network.get('chosen')} {_ms(network.get('chosen_p50_ms'))} ms vs best "
        f"peer {network.get('best_peer')} {_ms(network.get('best_peer_p50_ms'))} ms: "
        f"{_fmt(ratio, '.3f', 'x')}{_round_range(network.get('speed_vs_best_peer_rounds'))}"
        + _interval(network.get("speed_vs_best_peer_interval95"))
        + (" (the same outputs bit for bit)" if network.get("same_outputs") else "")
    )
    notes = [
        f"  {name}: {rows[name]['status']}: {rows[name].get('reason', '')}"
        for name in order
        if rows[name]["status"] != "OK"
    ]
    return "\n".join([title, _table(_PEER_HEADER, body), *notes])


def realsize_cost_table(orchestration: dict[str, Any]) -> str:
    """Wall time vs the stages' own time of the pipeline on the real-size network."""
    rows = []
    for label, run in (("tfopt optimize (CLI)", "cli"), ("airflow dags test", "dag")):
        cost = orchestration[run]
        rows.append(
            [
                f"{orchestration['model']}: {label}",
                _fmt(cost["wall_s"], ".1f"),
                _fmt(cost["stage_sum_s"], ".1f"),
                _fmt(cost["overhead_s"], ".1f"),
                _fmt(_pct(cost["overhead_share"]), ".1f", "%"),
            ]
        )
    return _table(["pipeline run", "wall s", "stages s", "overhead s", "overhead"], rows)


def conversion_line(costs: list[dict[str, Any]]) -> str:
    """Conversion seconds per variant (converter only, and the whole convert stage)."""
    parts = []
    for c in costs:
        text = f"{c['variant']} {_fmt(c['conversion_s'], '.1f')} s"
        text += f" (stage {_fmt(c['convert_stage_s'], '.1f')} s)"
        if c.get("calibration_samples"):
            text += (
                f", calibration on {c['calibration_samples']} samples ~"
                f"{_fmt(c.get('calibration_estimate_s'), '.1f')} s over FP32"
            )
        parts.append(text)
    return "conversion: " + "; ".join(parts)


def targets_table(figures: list[Figure]) -> str:
    """Each targeted figure, its target and PASS / MISS (n/a when it could not be measured)."""
    rows = []
    for f in figures:
        verdict = "n/a" if f.passed is None else ("PASS" if f.passed else "MISS")
        verdict = "-" if f.target == "no target" else verdict
        value = _fmt(f.value, ".3f" if f.unit in ("x", "s") else ".2f")
        rows.append([f.name, f"{value} {f.unit}", f.target, verdict, f.note])
    return _table(["figure", "value", "target", "result", "note"], rows)


def cost_table(cost: dict[str, Any]) -> str:
    """Wall time vs the stages' own time for the CLI and the DAG run, and the DAG parse time."""
    cli, dag = cost["cli"], cost["dag"]
    runs = [
        ("tfopt optimize (CLI)", cli, "stage timings"),
        ("airflow dags test", dag, dag.get("stage_source", "")),
    ]
    rows = [
        [
            name,
            _fmt(run["wall_s"], ".1f"),
            _fmt(run["stage_sum_s"], ".1f"),
            _fmt(run["overhead_s"], ".1f"),
            _fmt(_pct(run["overhead_share"]), ".1f", "%"),
            source,
        ]
        for name, run, source in runs
    ]
    if "task_duration_sum_s" in dag:
        wall, tasks = dag["wall_s"], dag["task_duration_sum_s"]
        overhead = f"{100 * (wall - tasks) / wall:.1f}%"
        row = ["  (same, by Airflow's task durations)", _fmt(wall, ".1f"), _fmt(tasks, ".1f")]
        rows.append([*row, _fmt(wall - tasks, ".1f"), overhead, "task_instance.duration"])
    parse = cost["dag_parse"]
    label = f"DAG file parse (best of {len(parse['all_s'])})"
    rows.append([label, _fmt(parse["best_s"], ".3f"), "", "", "", "after import airflow.sdk"])
    header = ["pipeline run", "wall s", "stages s", "overhead s", "overhead", "stages from"]
    return _table(header, rows)


def _latency_panel(axis: Any, measured: list[dict[str, Any]], colors: list[str]) -> None:
    from matplotlib import ticker

    p50 = [v["p50_ms_b1"] for v in measured]
    bars = axis.bar([v["variant"] for v in measured], p50, color=colors)
    axis.set_yscale("log")
    axis.set_ylim(min(p50) / 2, max(p50) * 3)
    axis.set_ylabel("p50 latency at batch 1 (ms, log scale)")
    axis.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    axis.yaxis.set_minor_locator(ticker.LogLocator(subs=(2.0, 5.0)))
    axis.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
    axis.tick_params(axis="y", which="minor", labelsize=7)
    labels = [f"{v['p50_ms_b1']:.3f} ms\n{v['speedup_b1']:.1f}x" for v in measured]
    axis.bar_label(bars, labels=labels, fontsize=8)


def _accuracy_panel(axis: Any, measured: list[dict[str, Any]], colors: list[str]) -> None:
    top1 = [100 * v["top1"] for v in measured]
    bars = axis.bar([v["variant"] for v in measured], top1, color=colors)
    base = next(v for v in measured if v["variant"] == BASELINE)
    labels = [f"{t:.1f}%\n{t - 100 * base['top1']:+.1f} pt" for t in top1]
    axis.bar_label(bars, labels=labels, fontsize=8)
    axis.axhline(100 * base["top1"], color="black", lw=0.8, label="baseline")
    axis.axhline(100 * base["top1"] - 1.0, color="red", ls="--", lw=0.8, label="baseline - 1 pt")
    axis.set_ylim(min(top1) - 3, 101.5)
    axis.set_ylabel("top-1 on the eval set (%)")
    axis.legend(loc="lower left", fontsize=8)


def write_plot(bench: dict[str, Any], path: Path) -> Path:
    """Two panels per measured variant: p50 at batch 1 (log scale) and top-1 with the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [v for v in bench["variants"] if v["status"] == "OK"]
    colors = ["tab:orange" if v["variant"] == bench["selected"] else "tab:blue" for v in measured]
    fig, (lat, acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    _latency_panel(lat, measured, colors)
    _accuracy_panel(acc, measured, colors)
    for axis in (lat, acc):
        axis.tick_params(axis="x", labelrotation=20, labelsize=8)
    skipped = [v["variant"] for v in bench["variants"] if v["status"] != "OK"]
    fig.suptitle(
        f"tfopt demo model on {bench['machine']['cpu_model']} "
        f"({bench['config']['num_threads']} threads); selected {bench['selected']} (orange)"
        + (f"\nnot measured: {', '.join(skipped)}" if skipped else ""),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
