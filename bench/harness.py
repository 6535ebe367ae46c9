"""tfopt's own harness against LiteRT's own tool on one published variant, in one fresh process.

Loads the variant with its tfopt backend and measures it with `tasks.benchmark.measure` (the
harness's calls and timer, in stable windows; the benchmark stage times the same calls in
interleaved rounds) and the default settings, on the real eval inputs the stage uses. With
`--rounds N` it alternates that with LiteRT's `litert-benchmark` on the same file, in the same
process, the order swapped every round: both then share the process's state and the machine's
drift, and the figure is the median of the per-round ratios.

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


def _measure(runner: Any, feeds: Any) -> dict[str, Any]:
    from tasks.benchmark import BenchmarkSettings, measure

    report = measure(runner, feeds, 1, BenchmarkSettings())
    return {
        "p50_ms": report.p50_ms,
        "p99_ms": report.p99_ms,
        "iterations": report.iterations,
        "measured_s": report.measured_seconds,
        "stable": report.stable,
    }


def measure_variant(
    backend: str, model_dir: Path, export_dir: Path, eval_uri: str, threads: int
) -> dict[str, Any]:
    """p50 at batch 1 of the variant in `model_dir`, timed by tfopt's harness."""
    runner, feeds = _load(backend, model_dir, export_dir, eval_uri, threads)
    return _measure(runner, feeds)


def versus_tool(
    model_dir: Path, export_dir: Path, eval_uri: str, threads: int, rounds: int
) -> list[dict[str, Any]]:
    """`rounds` rounds of tfopt's harness and LiteRT's tool on the variant's .tflite, the order
    swapped every round (the tool first in odd rounds); each round's CPU contention recorded."""
    from bench.litert_tool import run_in_process
    from tasks import contention
    from tasks.backends.tflite import MODEL_FILE

    runner, feeds = _load("tflite", model_dir, export_dir, eval_uri, threads)
    out = []
    for number in range(rounds):
        tool_first = bool(number % 2)
        before = contention.sample()
        turns = {
            "tool": lambda: run_in_process(model_dir / MODEL_FILE, threads),
            "harness": lambda: _measure(runner, feeds),
        }
        order = ("tool", "harness") if tool_first else ("harness", "tool")
        done = {name: turns[name]() for name in order}
        tool, measured = done["tool"], done["harness"]
        out.append(
            {
                "harness_p50_ms": measured["p50_ms"],
                "tool_p50_ms": tool["p50_ms"],
                "ratio": measured["p50_ms"] / tool["p50_ms"],
                "tool_first": tool_first,
                "contention": contention.between(before, contention.sample()).to_dict(),
                "harness": measured,
                "tool": tool,
            }
        )
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
