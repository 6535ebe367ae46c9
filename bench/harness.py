"""tfopt's own harness on one published variant at batch 1, in a fresh process.

Loads the variant with its tfopt backend and measures it with `tasks.benchmark.measure` (the
harness's calls and timer, in stable windows; the benchmark stage times the same calls in
interleaved rounds) and the default settings, on the real eval inputs the stage uses:

    python -m bench.harness <model folder> <export folder> <eval data uri> --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def measure_variant(
    backend: str, model_dir: Path, export_dir: Path, eval_uri: str, threads: int
) -> dict[str, Any]:
    """p50 at batch 1 of the variant in `model_dir`, timed by tfopt's harness."""
    from tasks.backends import get_backend
    from tasks.benchmark import BenchmarkSettings, measure
    from tasks.datasets import open_dataset, sample_feeds
    from tasks.signature import Signature
    from tasks.stages.common import BENCHMARK_DISTINCT_BATCHES

    signature = Signature.read(export_dir)
    runner = get_backend(backend).load(model_dir, signature, threads)
    with tempfile.TemporaryDirectory(prefix="bench-harness-") as tmp:
        data = open_dataset(eval_uri, Path(tmp), signature)
        feeds = sample_feeds(data, 1, BENCHMARK_DISTINCT_BATCHES)
    report = measure(runner, feeds, 1, BenchmarkSettings())
    return {
        "p50_ms": report.p50_ms,
        "p99_ms": report.p99_ms,
        "iterations": report.iterations,
        "measured_s": report.measured_seconds,
        "stable": report.stable,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("eval_uri")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = measure_variant(
        args.backend, args.model_dir, args.export_dir, args.eval_uri, args.threads
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
