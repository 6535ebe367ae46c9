"""This machine's measured FP32 peak: dense square matmuls at a fixed thread count (GFLOP/s).

Run in its own process (TensorFlow's thread pools are fixed once it starts):

    python -m bench.peak --threads 2    # prints JSON on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

SIZES = (1024, 2048, 3072)
MIN_SECONDS_PER_SIZE = 1.5
MIN_CALLS = 5


def _best_gflops(call: Callable[[], object], n: int) -> float:
    """Best single-call rate of `call` (one n x n x n matmul) after a warm-up call."""
    call()
    flop = 2.0 * n**3
    best = float("inf")
    calls = 0
    deadline = time.perf_counter() + MIN_SECONDS_PER_SIZE
    while calls < MIN_CALLS or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return flop / best / 1e9


def tensorflow_peak(threads: int) -> dict[str, float]:
    """GFLOP/s of `tf.linalg.matmul` per matrix size, intra-op threads = `threads`."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rates = {}
    for n in SIZES:
        a = tf.random.normal([n, n], dtype=tf.float32)
        b = tf.random.normal([n, n], dtype=tf.float32)
        matmul = tf.function(lambda a=a, b=b: tf.linalg.matmul(a, b))
        rates[str(n)] = round(_best_gflops(lambda m=matmul: m().numpy(), n), 1)
    return rates


def numpy_peak(threads: int) -> dict[str, float]:
    """GFLOP/s of numpy's BLAS `matmul` per matrix size, limited to `threads` threads."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    rates = {}
    with threadpool_limits(limits=threads):
        for n in SIZES:
            a = rng.standard_normal((n, n), dtype=np.float32)
            b = rng.standard_normal((n, n), dtype=np.float32)
            rates[str(n)] = round(_best_gflops(lambda a=a, b=b: a @ b, n), 1)
    return rates


def measure_peak(threads: int) -> dict[str, object]:
    """Both libraries' rates; `peak_gflops` is the best of all (the honest denominator)."""
    tf_rates = tensorflow_peak(threads)
    np_rates = numpy_peak(threads)
    best_tf, best_np = max(tf_rates.values()), max(np_rates.values())
    return {
        "threads": threads,
        "dtype": "float32",
        "tensorflow_gflops": tf_rates,
        "numpy_gflops": np_rates,
        "peak_gflops": max(best_tf, best_np),
        "peak_source": "tf.linalg.matmul" if best_tf >= best_np else "numpy matmul (BLAS)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(json.dumps(measure_peak(args.threads)))


if __name__ == "__main__":
    main()
