"""tfopt's own harness against LiteRT's own tool on one published variant, in one fresh process.

Loads the variant with its tfopt backend and measures it with `tasks.benchmark.measure` (the
harness's calls and timer, in stable windows; the benchmark stage times the same calls in
interleaved rounds) and the default settings, on the real eval inputs the stage uses.

With `--rounds N` it holds the harness against LiteRT's `litert-benchmark` on the same file, in
the same process, the order balanced over the rounds, so both share the process's state and the
machine's drift; the figures are medians of the per-round ratios. The tool writes its inputs
once and then only runs the model, while a runner call writes the next input every call (on
the demo's 0.09 ms INT8 model that write alone is about 7 us). So each round times three turns:
  - `tool`: LiteRT's tool;
  - `harness`: the harness timing the same work as the tool, the model compiled as the tool
    compiles it (LiteRT's CompiledModel) and run on inputs written once (`ResidentInputs`): it
    checks the harness's timing, like for like;
  - `call`: the harness timing the runner's full call, as the benchmark stage does. The runner
    runs the model in LiteRT's Interpreter, so `call/tool` carries the input writes and any
    difference between the two engines (on an AVX2 CPU the Interpreter ran a dynamic range
    model about 1.3x slower than the CompiledModel; on AVX-512 the two were within 3%).

    python -m bench.harness <model folder> <export folder> <eval data uri> --threads 2 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _load(backend: str, model_dir: Path, export_dir: Path, eval_uri: str, threads: int):
    from tasks.backends import get_backend
    from tasks.datasets import open_dataset, sample_feeds
    from tasks.signature import Signature
    from tasks.stages.common import BENCHMARK_DISTINCT_BATCHES

    signature = Signature.read(export_dir)
    runner = get_backend(backend).load(model_dir, signature, threads)
    with tempfile.TemporaryDirectory(prefix="bench-harness-") as tmp:
        data = open_dataset(eval_uri, Path(tmp), signature)
        feeds = sample_feeds(data, 1, BENCHMARK_DISTINCT_BATCHES)
    return runner, feeds


TURN_CALLS = 300
"""Timed calls per turn when the harness alternates with the tool: as many as the tool runs
(`bench.litert_tool.NUM_RUNS`), so the turns of a round are as short and as long as each other
and lie close in time."""


def _measure(runner: Any, feeds: Any, settings: Any = None) -> dict[str, Any]:
    from tasks.benchmark import BenchmarkSettings, measure

    report = measure(runner, feeds, 1, settings or BenchmarkSettings())
    return {
        "p50_ms": report.p50_ms,
        "p99_ms": report.p99_ms,
        "iterations": report.iterations,
        "measured_s": report.measured_seconds,
        "stable": report.stable,
    }


class ResidentInputs:
    """The tool's own work (`bench.litert_tool.compiled_as_tool`): the .tflite compiled as
    `litert-benchmark` compiles it, its inputs written once; every call only runs the model, as
    the tool's loop does on buffers it never rewrites."""

    def __init__(self, model: Path, threads: int) -> None:
        from bench.litert_tool import compiled_as_tool

        self._run = compiled_as_tool(model, threads)

    def __call__(self, feeds: Any) -> dict[str, Any]:
        self._run()
        return {}


def measure_variant(
    backend: str, model_dir: Path, export_dir: Path, eval_uri: str, threads: int
) -> dict[str, Any]:
    """p50 at batch 1 of the variant in `model_dir`, timed by tfopt's harness."""
    runner, feeds = _load(backend, model_dir, export_dir, eval_uri, threads)
    return _measure(runner, feeds)


def versus_tool(
    model_dir: Path, export_dir: Path, eval_uri: str, threads: int, rounds: int
) -> list[dict[str, Any]]:
    """`rounds` rounds of LiteRT's tool, the harness on the tool's work and the harness on the
    runner's full call, on the variant's .tflite, each turn as long as the tool's (its warm-up,
    then `TURN_CALLS` timed calls), the order balanced over the rounds. `ratio` is
    harness / tool, `call_ratio` call / tool. Each round is judged as the benchmark stage judges
    its rounds (contention, and the machine-speed probes on either side of it); `kept` marks
    the rounds the figures should use."""
    from bench.litert_tool import WARMUP_RUNS, run_in_process
    from tasks import machine_speed
    from tasks.backends.tflite import MODEL_FILE
    from tasks.benchmark import BenchmarkSettings
    from tasks.benchmark_rounds import choose_rounds, judged, observed_round, round_order

    runner, feeds = _load("tflite", model_dir, export_dir, eval_uri, threads)
    resident = ResidentInputs(model_dir / MODEL_FILE, threads)
    windows = TURN_CALLS // 100
    turn = BenchmarkSettings(
        warmup_iterations=WARMUP_RUNS,
        warmup_seconds=10.0,
        window_iterations=100,
        stability_windows=windows,
        min_windows=windows,
        max_windows=windows,
    )
    turns = {
        "tool": lambda: run_in_process(model_dir / MODEL_FILE, threads),
        "harness": lambda: _measure(resident, feeds, turn),
        "call": lambda: _measure(runner, feeds, turn),
    }
    out, records = [], []
    probe = machine_speed.probe_ms()
    for number in range(rounds):
        order = round_order(list(turns), number)
        record, done = observed_round(
            number, order, probe, lambda order=order: {name: turns[name]() for name in order}
        )
        records.append(record)
        probe = record.probes_ms[1]
        tool_ms = done["tool"]["p50_ms"]
        out.append(
            {
                "harness_p50_ms": done["harness"]["p50_ms"],
                "call_p50_ms": done["call"]["p50_ms"],
                "tool_p50_ms": tool_ms,
                "ratio": done["harness"]["p50_ms"] / tool_ms,
                "call_ratio": done["call"]["p50_ms"] / tool_ms,
                **done,
            }
        )
    settings = BenchmarkSettings()
    records = judged(records, settings)
    kept = set(choose_rounds(records, settings.min_clean_rounds))
    for row, record in zip(out, records, strict=True):
        row.update(record.to_dict(), kept=record.index in kept)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("eval_uri")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=0, help="alternate with LiteRT's tool for this many rounds"
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.rounds:
        if args.backend != "tflite":
            parser.error("--rounds compares with LiteRT's tool: the backend must be tflite")
        result: Any = versus_tool(
            args.model_dir, args.export_dir, args.eval_uri, args.threads, args.rounds
        )
    else:
        result = measure_variant(
            args.backend, args.model_dir, args.export_dir, args.eval_uri, args.threads
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
