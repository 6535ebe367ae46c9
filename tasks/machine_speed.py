"""How fast the machine computes right now: a small fixed matmul, timed.

Some virtual machines switch between a fast and a slow state for seconds to minutes at a time,
and neither the hypervisor's steal nor the load average shows it. On a 2-core KVM guest, traced
for 10 minutes at idle, the slow state was present 42% of the time: a LiteRT call ran 1.5x slower
in it and a 384x384 float32 matmul 1.34x slower, while a 64 MB copy did not slow at all. The
matmul is the cheap witness: `probe_ms` times it, and a benchmark compares each round's probe
with the fastest one it saw (`tasks.benchmark_rounds`).
"""

from __future__ import annotations

import functools
import time

import numpy as np

PROBE_SIZE = 384
"""The matmul's side: about 0.5 ms on a 2-core AVX-512 machine, small enough to run every turn."""
PROBE_REPEATS = 5
"""Matmuls per probe; the probe is their median, so one interrupted call does not count."""
SETTLE_SECONDS = 0.15
"""The pause after a probe. NumPy's BLAS threads spin for a while after a matmul and take the
CPUs from whatever runs next: a LiteRT call timed right after the probe measured up to 2x
slower. After 0.15 s asleep, calls timed before and after a probe agreed (median ratio 1.000)."""


@functools.cache
def _operands() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((PROBE_SIZE, PROBE_SIZE), dtype=np.float32)
    b = rng.standard_normal((PROBE_SIZE, PROBE_SIZE), dtype=np.float32)
    return a, b, np.empty_like(a)


def probe_ms(settle_seconds: float = SETTLE_SECONDS) -> float:
    """The median time of `PROBE_REPEATS` fixed float32 matmuls, in milliseconds.

    Comparable with other probes on the same machine: the figure is the machine's speed of the
    moment, not a peak. Returns after `settle_seconds` asleep, so the probe does not slow what
    the caller times next.
    """
    a, b, out = _operands()
    np.matmul(a, b, out=out)  # the BLAS threads wake before the timed calls
    times = []
    for _ in range(PROBE_REPEATS):
        began = time.perf_counter_ns()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter_ns() - began)
    time.sleep(settle_seconds)
    return float(np.median(times)) / 1e6
