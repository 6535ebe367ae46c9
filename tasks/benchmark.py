"""Latency/throughput harness: warm-up, stable windows, percentiles (rounds: benchmark_rounds)."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tasks.backends.base import Feeds, Runner

logger = logging.getLogger(__name__)

FeedSource = Iterable[Feeds] | Callable[[int], Feeds | Iterable[Feeds]]
"""Pre-materialised feeds of one batch size, or a function `batch_size -> feed(s)`."""
Progress = Callable[[int, "LatencyReport"], None]

NS_PER_MS = 1e6
"""Nanoseconds per millisecond: the timer counts ns, the reports speak ms."""
_clock = time.perf_counter_ns
"""The timer (monotonic ns); a module attribute so tests can substitute a fake clock."""


def timer() -> Callable[[], int]:
    """The timer in use (`_clock`, looked up on every call, so a test's fake clock applies)."""
    return _clock


@dataclass(frozen=True)
class BenchmarkSettings:
    """How long and how carefully to measure one (variant, batch size).

    Warm-up runs until `warmup_iterations` calls or `warmup_seconds`, whichever comes first
    (at least `min_warmup_iterations`). Then windows of `window_iterations` calls run until the
    p50 of each of the last `stability_windows` windows lies within `stability_tolerance` of
    their mean (after at least `min_windows`), or `max_windows` / `max_seconds` is reached.
    `max_seconds` bounds the whole (variant, batch size), warm-up included. Empty
    `batch_sizes` means every batch size the caller has feeds for.

    `benchmark_interleaved` measures in `rounds` instead. In each round every (runner, batch
    size) first makes untimed calls for `round_warmup_seconds` (at least
    `min_round_warmup_iterations`), so it is not charged for the caches and idle thread pools
    the runner before it left; then its timed calls run for `window_iterations` calls or
    `round_seconds`, whichever comes first, but at least `min_round_iterations` calls and
    `min_round_seconds` (a sub-millisecond runner gets hundreds of calls per round, not a few
    milliseconds of them). A round is spoiled when the hypervisor's steal exceeds
    `max_steal_share` of the CPU time, other processes take more than `max_other_share` of the
    CPUs, or the 1-minute load average per CPU exceeds `max_load_per_cpu`. It is spoiled, too,
    when the machine ran slow: a small matmul timed before and after every round
    (`tasks.machine_speed`) ran more than `max_probe_slowdown` over the fastest such probe of
    the benchmark. Spoiled rounds are left out when at least `min_clean_rounds` clean ones
    remain; while fewer are clean and some runner's round medians spread more than
    `stability_tolerance` (IQR / median), up to `max_extra_rounds` more rounds run. The rounds stop
    early once `max_seconds` per (runner, batch size) has been spent in all. Of the kept rounds,
    a runner's figures come from those whose median lies within `max_round_slowdown` of its
    fastest round: a VM runs in stretches at full speed, where a runner's round medians agree
    within 1-2%, and in slow stretches, 5-60% slower, that the probe and the contention counters
    see only in part; the others count as slow (`rounds_slow`). The p50 itself comes from
    stretches of `stretch_calls` consecutive calls over every kept round: the
    `stretch_quantile` of the stretches' medians (`full_speed_p50`).
    """

    warmup_iterations: int = 50
    warmup_seconds: float = 2.0
    min_warmup_iterations: int = 2
    window_iterations: int = 100
    stability_tolerance: float = 0.05
    stability_windows: int = 3
    min_windows: int = 3
    max_windows: int = 40
    max_seconds: float = 60.0
    batch_sizes: tuple[int, ...] = ()
    max_raw_latencies: int = 2000
    rounds: int = 7
    round_seconds: float = 1.0
    min_round_iterations: int = 5
    min_round_seconds: float = 0.05
    round_warmup_seconds: float = 0.02
    min_round_warmup_iterations: int = 1
    min_clean_rounds: int = 3
    max_steal_share: float = 0.05
    max_other_share: float = 0.25
    max_load_per_cpu: float = 1.5
    max_probe_slowdown: float = 0.15
    max_extra_rounds: int = 6
    max_round_slowdown: float = 0.05
    stretch_calls: int = 25
    stretch_quantile: float = 0.10

    def __post_init__(self) -> None:
        if self.window_iterations < 1 or self.stability_windows < 1:
            raise ValueError("window_iterations and stability_windows must be >= 1")
        if self.min_windows < self.stability_windows or self.max_windows < self.min_windows:
            raise ValueError("need stability_windows <= min_windows <= max_windows")
        if self.max_seconds <= 0 or self.stability_tolerance <= 0:
            raise ValueError("max_seconds and stability_tolerance must be > 0")
        if self.rounds < 1 or not 1 <= self.min_clean_rounds <= self.rounds:
            raise ValueError("need rounds >= 1 and 1 <= min_clean_rounds <= rounds")
        if self.round_seconds <= 0 or self.min_round_iterations < 1:
            raise ValueError("round_seconds must be > 0 and min_round_iterations >= 1")
        if not 0 <= self.min_round_seconds <= self.round_seconds:
            raise ValueError("need 0 <= min_round_seconds <= round_seconds")
        if self.round_warmup_seconds < 0 or self.min_round_warmup_iterations < 0:
            raise ValueError("round_warmup_seconds and min_round_warmup_iterations must be >= 0")
        if self.max_probe_slowdown <= 0 or self.max_extra_rounds < 0:
            raise ValueError("need max_probe_slowdown > 0 and max_extra_rounds >= 0")
        if self.max_round_slowdown <= 0:
            raise ValueError("need max_round_slowdown > 0")
        if self.stretch_calls < 1 or not 0 <= self.stretch_quantile <= 1:
            raise ValueError("need stretch_calls >= 1 and 0 <= stretch_quantile <= 1")
        if any(size < 1 for size in self.batch_sizes):
            raise ValueError(f"batch sizes must be >= 1, got {self.batch_sizes}")


@dataclass
class LatencyReport:
    """Latency statistics of one variant at one batch size (milliseconds, samples/s)."""

    batch_size: int
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput: float
    iterations: int
    windows: int
    stable: bool
    stop_reason: str
    warmup_iterations: int
    measured_seconds: float
    distinct_feeds: int
    window_p50_ms: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    rounds_kept: int = 0
    rounds_spoiled: int = 0
    rounds_slow: int = 0
    """Kept rounds left out of these figures: the runner's median ran more than
    `max_round_slowdown` over its fastest round (a slow stretch)."""
    round_p50_iqr_ms: float | None = None
    round_p50_range_ms: list[float] = field(default_factory=list)
    machine_probe_ms: float | None = None

    def to_dict(self, include_latencies: bool = True) -> dict[str, Any]:
        """JSON-safe dict; drop the raw latencies to keep it XCom-sized."""
        data = asdict(self)
        if not include_latencies:
            data["latencies_ms"] = []
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyReport:
        known = {name for name in cls.__dataclass_fields__}
        values = {key: value for key, value in data.items() if key in known}
        values["window_p50_ms"] = list(values.get("window_p50_ms", []))
        values["latencies_ms"] = list(values.get("latencies_ms", []))
        values["round_p50_range_ms"] = list(values.get("round_p50_range_ms", []))
        return cls(**values)


def measure(
    runner: Runner, feeds: FeedSource, batch_size: int, settings: BenchmarkSettings
) -> LatencyReport:
    """Measure the latency of `runner` at one batch size.

    Args:
        runner: callable `{input_name: ndarray} -> {output_name: ndarray}`.
        feeds: distinct real batches of `batch_size` (rotated through, so no single cached
            sample is measured), or a function `batch_size -> feed(s)`. Materialised before
            timing starts, so data loading is never timed.
        batch_size: the leading dimension of every input in `feeds`.
        settings: warm-up, window and stopping rules.

    Returns:
        The statistics, with the raw per-call latencies (downsampled to
        `settings.max_raw_latencies`) for distribution plots.
    """
    batches = materialise(feeds, batch_size)
    with collector_paused():
        deadline = _clock() + int(settings.max_seconds * 1e9)
        warmup_calls = warm_up(runner, batches, settings, deadline)
        latencies_ns, window_p50, stop_reason, wall_ns = _run_windows(
            runner, batches, warmup_calls, settings, deadline
        )
    return _summarise(
        latencies_ns,
        window_p50,
        batch_size=batch_size,
        stop_reason=stop_reason,
        wall_ns=wall_ns,
        warmup_calls=warmup_calls,
        distinct_feeds=len(batches),
        max_raw=settings.max_raw_latencies,
    )


def benchmark_variant(
    runner: Runner,
    feeds_by_batch: Mapping[int, FeedSource],
    settings: BenchmarkSettings,
    progress: Progress | None = None,
) -> dict[int, LatencyReport]:
    """Measure `runner` at each batch size in turn (never concurrently).

    Args:
        runner: the loaded variant.
        feeds_by_batch: batch size -> its feeds (see `measure`).
        settings: measurement rules; `settings.batch_sizes`, when not empty, picks the sizes.
        progress: called as `progress(batch_size, report)` after each batch size.

    Returns:
        Batch size -> its report, in increasing batch size.

    Raises:
        ValueError: a batch size in `settings.batch_sizes` has no feeds.
    """
    sizes = batch_sizes_of(feeds_by_batch, settings)
    reports: dict[int, LatencyReport] = {}
    for size in sizes:
        try:
            report = measure(runner, feeds_by_batch[size], size, settings)
        except Exception as exc:
            exc.add_note(f"while benchmarking at batch size {size}")
            raise
        logger.info(
            "batch %d: p50 %.3f ms, p99 %.3f ms, %.1f samples/s, %d calls in %d windows (%s)",
            size,
            report.p50_ms,
            report.p99_ms,
            report.throughput,
            report.iterations,
            report.windows,
            report.stop_reason,
        )
        reports[size] = report
        if progress is not None:
            progress(size, report)
    return reports


def latency_report(
    ms: np.ndarray, p50: float, seconds: float, *, max_raw: int, **fields: Any
) -> LatencyReport:
    """A LatencyReport from per-call milliseconds, the p50 and the seconds the calls took."""
    p90, p95, p99 = (float(v) for v in np.percentile(ms, [90, 95, 99]))
    return LatencyReport(
        p50_ms=p50,
        p90_ms=p90,
        p95_ms=p95,
        p99_ms=p99,
        mean_ms=float(ms.mean()),
        std_ms=float(ms.std()),
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
        throughput=fields["batch_size"] * ms.size / seconds if seconds > 0 else 0.0,
        iterations=int(ms.size),
        measured_seconds=seconds,
        latencies_ms=_downsample(ms, max_raw),
        **fields,
    )


def batch_sizes_of(feeds_by_batch: Mapping[int, Any], settings: BenchmarkSettings) -> list[int]:
    sizes = sorted(settings.batch_sizes or feeds_by_batch)
    missing = [size for size in sizes if size not in feeds_by_batch]
    if missing:
        raise ValueError(f"no feeds for batch size(s) {missing}; have {sorted(feeds_by_batch)}")
    return sizes


def is_stable(window_p50: list[float], windows: int, tolerance: float) -> bool:
    """True when each of the last `windows` p50 values is within `tolerance` of their mean."""
    if len(window_p50) < windows:
        return False
    last = window_p50[-windows:]
    mean = sum(last) / len(last)
    if mean <= 0:
        return all(value == mean for value in last)
    return all(abs(value - mean) <= tolerance * mean for value in last)


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while timing (as `timeit` does), then as it was.

    Reference counting still frees every call's outputs; only collector pauses, which would land
    in some call's latency, are kept out. (A full `gc.collect()` before each batch size instead
    cost about 0.25 s per call once TensorFlow and MLflow are loaded: 2 s of a 20 s run.)
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def materialise(feeds: FeedSource, batch_size: int) -> list[Feeds]:
    source = feeds(batch_size) if callable(feeds) else feeds
    batches = [source] if isinstance(source, Mapping) else list(source)
    if not batches:
        raise ValueError(f"no feeds given for batch size {batch_size}")
    for feed in batches:
        for name, array in feed.items():
            shape = np.shape(array)
            if not shape or shape[0] != batch_size:
                raise ValueError(
                    f"input {name!r} has shape {shape}, expected batch size {batch_size} first"
                )
    if len(batches) == 1:
        logger.debug("batch %d: a single feed; caches may flatter the numbers", batch_size)
    return batches


def warm_up(
    runner: Runner, batches: list[Feeds], settings: BenchmarkSettings, deadline: int
) -> int:
    clock = _clock
    end = min(clock() + int(settings.warmup_seconds * 1e9), deadline)
    count = len(batches)
    calls = 0
    while calls < settings.min_warmup_iterations or (
        calls < settings.warmup_iterations and clock() < end
    ):
        runner(batches[calls % count])
        calls += 1
    return calls


def _run_windows(
    runner: Runner,
    batches: list[Feeds],
    start_index: int,
    settings: BenchmarkSettings,
    deadline: int,
) -> tuple[list[int], list[float], str, int]:
    """Timed windows; returns (per-call ns, per-window p50 ms, stop reason, wall ns)."""
    clock = _clock
    count = len(batches)
    index = start_index
    latencies: list[int] = []
    window_p50: list[float] = []
    stop_reason = "max_windows"
    began = clock()
    for _ in range(settings.max_windows):
        window: list[int] = []
        for _ in range(settings.window_iterations):
            feed = batches[index % count]
            index += 1
            t0 = clock()
            runner(feed)
            t1 = clock()
            window.append(t1 - t0)
            if t1 >= deadline:
                break
        latencies.extend(window)
        if len(window) < settings.window_iterations:
            stop_reason = "time_bound"
            break
        window_p50.append(float(np.median(window)) / NS_PER_MS)
        if len(window_p50) >= settings.min_windows and is_stable(
            window_p50, settings.stability_windows, settings.stability_tolerance
        ):
            stop_reason = "stable"
            break
        if clock() >= deadline:
            stop_reason = "time_bound"
            break
    return latencies, window_p50, stop_reason, clock() - began


def _summarise(
    latencies_ns: list[int],
    window_p50: list[float],
    *,
    batch_size: int,
    stop_reason: str,
    wall_ns: int,
    warmup_calls: int,
    distinct_feeds: int,
    max_raw: int,
) -> LatencyReport:
    ms = np.asarray(latencies_ns, dtype=np.float64) / NS_PER_MS
    return latency_report(
        ms,
        float(np.percentile(ms, 50)),
        wall_ns / 1e9,
        batch_size=batch_size,
        windows=len(window_p50),
        stable=stop_reason == "stable",
        stop_reason=stop_reason,
        warmup_iterations=warmup_calls,
        distinct_feeds=distinct_feeds,
        window_p50_ms=[round(v, 6) for v in window_p50],
        max_raw=max_raw,
    )


def _downsample(ms: np.ndarray, limit: int) -> list[float]:
    """At most `limit` values, evenly spaced in time order (keeps the distribution's shape)."""
    if limit > 0 and ms.size > limit:
        ms = ms[np.linspace(0, ms.size - 1, limit).round().astype(int)]
    return [round(float(v), 6) for v in ms]
