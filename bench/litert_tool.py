"""LiteRT's own benchmark tool (`litert-benchmark`, shipped with ai-edge-litert) on a .tflite.

The tool (`ai_edge_litert.tools.benchmark_litert_model`) runs the model through LiteRT's
CompiledModel API with its own warm-up and timing loop, and reports latencies rounded to 0.01 ms.
At sub-millisecond latencies that rounding is a few percent, so this module runs the tool's own
`run_benchmark` and keeps the unrounded per-run times it passes to `statistics.median`.
`bench.harness --rounds` alternates it with tfopt's harness in one process. Standalone:

    python -m bench.litert_tool path/to/model.tflite --threads 2    # prints JSON on stdout
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

NUM_RUNS = 300
WARMUP_RUNS = 100


class _RecordingStatistics:
    """Stands in for the tool's `statistics` module; keeps the per-run times it is given."""

    def __init__(self) -> None:
        self.times_ms: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(statistics, name)

    def median(self, data: list[float]) -> float:
        self.times_ms = list(data)
        return statistics.median(data)


def run_in_process(model: Path, threads: int) -> dict[str, Any]:
    """Run the tool's own `run_benchmark` on `model` in this process; latencies in ms."""
    from ai_edge_litert.tools import benchmark_litert_model as tool

    recorder = _RecordingStatistics()
    tool.statistics = recorder
    argv = [
        "litert-benchmark",
        f"--model={model}",
        f"--num_threads={threads}",
        f"--num_runs={NUM_RUNS}",
        f"--warmup_runs={WARMUP_RUNS}",
    ]
    with contextlib.redirect_stdout(sys.stderr), _argv(argv):
        reported = tool.run_benchmark(tool.parse_args())
    ms = np.asarray(recorder.times_ms)
    return {
        "tool": "litert-benchmark (ai_edge_litert.tools.benchmark_litert_model, CompiledModel)",
        "num_threads": threads,
        "num_runs": int(ms.size),
        "warmup_runs": WARMUP_RUNS,
        "p50_ms": float(np.median(ms)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "reported_median_ms": reported["latency"]["median_ms"],
        "fully_accelerated": reported.get("fully_accelerated"),
    }


def compiled_as_tool(model: Path, threads: int) -> Callable[[], None]:
    """One run of the tool's own work, for tfopt's harness to time: `model` compiled by the
    tool's own helpers (environment, CPU options, thread count), its input buffers filled once
    by the tool's `fill_random_input`; each call runs the model as the tool's loop does."""
    from ai_edge_litert.tools import benchmark_litert_model as tool

    with _argv(["litert-benchmark", f"--model={model}", f"--num_threads={threads}"]):
        args = tool.parse_args()
    compiled_model, accelerator, environment, environment_options, options, cpu_options = (
        tool._import_litert()
    )
    compiled = compiled_model.from_file(
        str(model),
        environment=tool.create_environment(args, environment, environment_options),
        options=tool.create_model_options(
            args, options, cpu_options, tool.build_hardware_accelerators(args, accelerator)
        ),
    )
    key = next(iter(compiled.get_signature_list()))
    details = compiled.get_input_tensor_details(key)
    inputs = {name: compiled.create_input_buffer_by_name(key, name) for name in details}
    outputs = {
        name: compiled.create_output_buffer_by_name(key, name)
        for name in compiled.get_output_tensor_details(key)
    }
    for name, buffer in inputs.items():
        tool.fill_random_input(buffer, details[name])
    return functools.partial(compiled.run_by_name, key, inputs, outputs)


@contextlib.contextmanager
def _argv(argv: list[str]):
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(run_in_process(args.model, args.threads)))


if __name__ == "__main__":
    main()
