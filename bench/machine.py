"""How busy the machine was while the benchmark measured: load and CPU taken by other processes.

Timings are the product here, so every phase records the 1-minute load average and the CPU
seconds that processes other than this benchmark (and its children) used meanwhile, read from
/proc/stat and getrusage. The local stack's S3 and MLflow servers count as "other".
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_HZ = os.sysconf("SC_CLK_TCK")
_STAT = Path("/proc/stat")


def _cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot (0, 0 without /proc)."""
    try:
        fields = [int(x) for x in _STAT.read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / _HZ, steal / _HZ


def _own_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@dataclass
class LoadLog:
    """Per-phase wall time, load average and CPU used by other processes."""

    phases: list[dict[str, Any]] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Record one phase of the benchmark."""
        logger.info("%s ...", name)
        load_before = os.getloadavg()[0]
        busy0, steal0 = _cpu_seconds()
        own0, t0 = _own_seconds(), time.perf_counter()
        try:
            yield
        finally:
            wall = time.perf_counter() - t0
            busy1, steal1 = _cpu_seconds()
            other = max(0.0, (busy1 - busy0) - (_own_seconds() - own0))
            cores = os.cpu_count() or 1
            logger.info("%s: %.1f s", name, wall)
            self.phases.append(
                {
                    "phase": name,
                    "wall_s": round(wall, 2),
                    "load1_before": round(load_before, 2),
                    "load1_after": round(os.getloadavg()[0], 2),
                    "other_cpu_s": round(other, 2),
                    "other_cpu_share": round(other / (wall * cores), 3) if wall else None,
                    "steal_s": round(steal1 - steal0, 2),
                }
            )

    def summary(self) -> str:
        """One line: the highest load and the largest share of the CPUs others took."""
        if not self.phases:
            return "no phases recorded"
        load = max(max(p["load1_before"], p["load1_after"]) for p in self.phases)
        other = max(p["other_cpu_share"] or 0 for p in self.phases)
        steal = sum(p["steal_s"] for p in self.phases)
        return (
            f"load1 max {load:.2f}; other processes took at most {100 * other:.0f}% of the CPUs "
            f"in a phase; steal {steal:.1f} s"
        )
