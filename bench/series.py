"""`make bench-series`: consecutive `make bench` runs on one commit, their targets side by side.

Against the local stack (`source .stack/stack.env` first; `make bench-series` does both):

    python -m bench.series [--runs 3] [--out-dir bench/out/series] [-- <bench.run arguments>]

Runs `python -m bench.run` `--runs` times, one after another, each in a fresh process and into
its own folder (`OUT_DIR/run1`, ...), then prints every target's figure in each run as a
Markdown table (the README's form), each real-size network's peer table from the last run,
and whether every target held in every run. Writes
`OUT_DIR/series.md` and `OUT_DIR/series.json`. A run that fails ends the series: the runs
after it would not be consecutive. `--report-only` rebuilds the table from the runs' saved
`bench.json` files.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.orchestration import REPO, child_env
from bench.render import full_speed, peer_order
from tasks.hardware import isa_label

_VARIANT_QUALIFIER = re.compile(r"^(?P<base>.*?)(?: \((?P<what>[a-z0-9_]+:[a-z0-9_]+)\))?$")
"""A target's name, and the variant it names in parentheses (which may differ between runs)."""


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="consecutive runs (default 3)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "out" / "series")
    parser.add_argument(
        "--report-only", action="store_true", help="measure nothing: table the saved runs"
    )
    args, rest = parser.parse_known_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args, [a for a in rest if a != "--"]


def run_series(runs: int, out_dir: Path, bench_args: list[str]) -> list[Path]:
    """`runs` bench runs in turn; the bench.json of each run that completed."""
    done = []
    for number in range(1, runs + 1):
        folder = out_dir / f"run{number}"
        folder.mkdir(parents=True, exist_ok=True)
        print(f"bench-series: run {number}/{runs} -> {folder}", file=sys.stderr, flush=True)
        began = time.perf_counter()
        with (folder / "bench.log").open("w") as log:
            code = subprocess.run(
                [sys.executable, "-m", "bench.run", *bench_args, "--out-dir", str(folder)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=REPO,
                check=False,
            ).returncode
        minutes = (time.perf_counter() - began) / 60
        if code != 0:
            print(
                f"bench-series: run {number} failed (exit {code}) after {minutes:.0f} min; "
                f"see {folder / 'bench.log'}",
                file=sys.stderr,
            )
            break
        print(f"bench-series: run {number} done in {minutes:.0f} min", file=sys.stderr)
        done.append(folder / "bench.json")
    return done


def _cell(target: dict[str, Any]) -> str:
    value, unit = target["value"], target["unit"]
    if value is None:
        return "n/a"
    text = f"{value:.3g}" + (unit if unit == "x" else f" {unit}")
    verdict = {True: "pass", False: "**miss**", None: "-"}[target["passed"]]
    what = _VARIANT_QUALIFIER.match(target["name"]).group("what")
    return f"{text} ({verdict}{', ' + what if what else ''})"


def series_table(documents: list[dict[str, Any]]) -> tuple[str, bool]:
    """The Markdown table of every target in every run, and whether all held in all runs."""
    rows: dict[str, dict[str, Any]] = {}
    for number, document in enumerate(documents, start=1):
        for target in document["targets"]:
            base = _VARIANT_QUALIFIER.match(target["name"]).group("base")
            row = rows.setdefault(base, {"target": target["target"], "cells": {}})
            row["cells"][number] = target
    header = ["figure", *(f"run {n}" for n in range(1, len(documents) + 1)), "target"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    held = bool(documents)
    for base, row in rows.items():
        cells = []
        for number in range(1, len(documents) + 1):
            target = row["cells"].get(number)
            cells.append(_cell(target) if target else "not measured")
            if row["target"] != "no target" and (target is None or target["passed"] is not True):
                held = False
        lines.append("| " + " | ".join([base, *cells, row["target"]]) + " |")
    return "\n".join(lines), held


def peers_markdown(network: dict[str, Any], run: int) -> str:
    """One real-size network's variants and peers as a Markdown table, with its headline."""
    rows = network["rows"]
    interval = network.get("speed_vs_best_peer_interval95")
    ratio = network.get("speed_vs_best_peer")
    head = (
        f"{network['model']} ({network['params'] / 1e6:.1f} M parameters, "
        f"{network['flops'] / 1e9:.2f} GFLOP/image), run {run}; tfopt's choice "
        f"{network.get('chosen')} vs {network.get('best_peer')}: "
        + (f"{ratio:.3f}x head to head" if ratio is not None else "no ratio")
        + (f" (95% interval {interval[0]:.3f}-{interval[1]:.3f})" if interval else "")
        + (", the same outputs bit for bit" if network.get("same_outputs") else "")
        + f"; {len(network['rounds']['kept'])} of {network['rounds']['rounds']} rounds kept:"
    )
    lines = [
        head,
        "",
        "| variant | p50 ms | min-max of the kept round medians | rounds at full speed "
        "| fidelity cosine | gate |",
        "|---|---|---|---|---|---|",
    ]
    for name in peer_order(rows):
        row = rows[name]
        lat, fid = row.get("latency") or {}, row.get("fidelity") or {}
        if row["status"] != "OK":
            lines.append(f"| {name} | {row['status']} | - | - | - | - |")
            continue
        spread = lat.get("round_p50_range_ms") or []
        label = name + (
            " (tfopt's choice)"
            if name == network.get("chosen")
            else " (best peer)"
            if name == network.get("best_peer")
            else ""
        )
        cells = [
            label,
            f"{lat['p50_ms']:.3g}",
            f"{spread[0]:.3g}-{spread[1]:.3g}" if spread else "-",
            full_speed(lat, " of "),
            f"{fid['cosine']:.4f}" if fid.get("cosine") is not None else "-",
            {True: "pass", False: "fail"}.get(row.get("passed"), "-"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_line(documents: list[dict[str, Any]]) -> str:
    """The machine, commit-independent facts and each run's wall time, for the table's caption."""
    first = documents[0]["machine"]
    walls = ", ".join(f"{d['bench_wall_s'] / 60:.0f}" for d in documents)
    return (
        f"{first['cpu_model']}, {first['usable_cores']} cores ({isa_label(first)}), "
        f"{first['memory_gib']} GiB; runs took {walls} minutes; "
        f"created {documents[0]['created_at']} to {documents[-1]['created_at']}"
    )


def main(argv: list[str] | None = None) -> int:
    args, bench_args = parse_args(argv)
    if args.report_only:
        paths = [args.out_dir / f"run{n}" / "bench.json" for n in range(1, args.runs + 1)]
        paths = [p for p in paths if p.is_file()]
    else:
        paths = run_series(args.runs, args.out_dir, bench_args)
    if not paths:
        print(f"bench-series: no run completed under {args.out_dir}", file=sys.stderr)
        return 1
    documents = [json.loads(p.read_text()) for p in paths]
    table, held = series_table(documents)
    complete = len(documents) == args.runs
    runs = "the run" if args.runs == 1 else f"{args.runs} consecutive runs"
    verdict = (
        f"every target held in {'' if args.runs == 1 else 'all '}{runs}"
        if held and complete
        else f"not every target held in {runs}"
        + ("" if complete else f" ({len(documents)} completed)")
    )
    peers = [peers_markdown(n, len(documents)) for n in documents[-1].get("realsize") or []]
    text = "\n\n".join([machine_line(documents), table, *peers, verdict]) + "\n"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "series.md").write_text(text)
    (args.out_dir / "series.json").write_text(
        json.dumps(
            {
                "runs": [str(p) for p in paths],
                "held": held and complete,
                "targets": [d["targets"] for d in documents],
            },
            indent=2,
        )
    )
    print(text)
    return 0 if held and complete else 3


if __name__ == "__main__":
    sys.exit(main())
