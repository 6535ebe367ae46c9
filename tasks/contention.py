"""CPU contention around a timed interval: steal, load average and CPU taken by other processes."""

from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_STAT = Path("/proc/stat")
_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSample:
    """Machine-wide CPU counters at one instant (seconds since boot, from /proc/stat)."""

    wall_s: float
    busy_s: float
    steal_s: float
    total_s: float
    own_s: float
    load1: float


@dataclass(frozen=True)
class Contention:
    """How contended the CPUs were between two samples.

    Attributes:
        seconds: wall time between the samples.
        steal_share: CPU time the hypervisor gave to other guests, over all CPU time.
        other_share: CPU time of processes other than this one, over wall x CPUs.
        load1_per_cpu: the 1-minute load average at the end, per CPU.
    """

    seconds: float
    steal_share: float
    other_share: float
    load1_per_cpu: float

    def to_dict(self) -> dict[str, Any]:
        return {key: round(value, 4) for key, value in asdict(self).items()}


def sample() -> CpuSample:
    """Read /proc/stat, this process's CPU time and the load average (zeros when absent)."""
    busy = steal = total = 0.0
    try:
        fields = [int(x) for x in _STAT.read_text().splitlines()[0].split()[1:]]
        user, nice, system, idle, iowait, irq, softirq, stolen = (fields + [0] * 8)[:8]
        busy = (user + nice + system + irq + softirq) / _HZ
        steal = stolen / _HZ
        total = (user + nice + system + idle + iowait + irq + softirq + stolen) / _HZ
    except (OSError, ValueError, IndexError):
        logger.debug("could not read %s; steal and other-process CPU read as 0", _STAT)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = 0.0
    return CpuSample(
        wall_s=time.monotonic(),
        busy_s=busy,
        steal_s=steal,
        total_s=total,
        own_s=usage.ru_utime + usage.ru_stime,
        load1=load1,
    )


def between(before: CpuSample, after: CpuSample, cpus: int | None = None) -> Contention:
    """The contention between two samples of this process (`cpus`: the machine's CPU count)."""
    cpus = cpus or os.cpu_count() or 1
    wall = max(after.wall_s - before.wall_s, 0.0)
    total = after.total_s - before.total_s
    steal = after.steal_s - before.steal_s
    other = (after.busy_s - before.busy_s) - (after.own_s - before.own_s)
    return Contention(
        seconds=wall,
        steal_share=steal / total if total > 0 else 0.0,
        other_share=min(1.0, max(0.0, other / (wall * cpus))) if wall > 0 else 0.0,
        load1_per_cpu=after.load1 / cpus,
    )
