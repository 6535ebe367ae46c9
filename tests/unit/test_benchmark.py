"""Unit tests of the latency harness with fake runners (no TensorFlow): stable windows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.benchmark import (
    BenchmarkSettings,
    LatencyReport,
    benchmark_variant,
    is_stable,
    measure,
)
from tests.unit.benchmark_fakes import BusyRunner, ClockedRunner, FakeClock
from tests.unit.benchmark_fakes import make_feeds as _feeds

pytestmark = pytest.mark.unit


FAST = BenchmarkSettings(
    warmup_iterations=5,
    warmup_seconds=0.05,
    window_iterations=20,
    min_windows=3,
    max_windows=30,
    max_seconds=5.0,
    batch_sizes=(1, 4),
)


def test_p50_matches_known_cost_and_percentiles_are_ordered(clock: FakeClock) -> None:
    report = measure(ClockedRunner(clock, lambda call: 2.0 + (call % 10) / 10), _feeds(1), 1, FAST)
    assert report.p50_ms == pytest.approx(2.45, abs=0.051)  # calls cost 2.0 ... 2.9 ms in turn
    ordered = [report.min_ms, report.p50_ms, report.p90_ms, report.p95_ms, report.p99_ms]
    assert ordered == sorted(ordered)
    assert report.p99_ms <= report.max_ms
    assert report.min_ms <= report.mean_ms <= report.max_ms
    assert report.iterations >= FAST.window_iterations * FAST.min_windows
    assert len(report.latencies_ms) == report.iterations


def test_throughput_is_batch_size_over_mean_latency() -> None:
    report = measure(BusyRunner(cost_s=0.001), _feeds(8), 8, FAST)
    assert report.batch_size == 8
    assert report.throughput == pytest.approx(
        8 * report.iterations / report.measured_seconds, rel=1e-9
    )
    assert report.throughput == pytest.approx(8 / (report.mean_ms / 1e3), rel=0.1)


def test_stops_after_min_windows_when_stable(clock: FakeClock) -> None:
    runner = ClockedRunner(clock, lambda n: 2.0)
    report = measure(runner, _feeds(1), 1, FAST)
    assert report.stable and report.stop_reason == "stable"
    assert report.windows == FAST.min_windows
    assert report.iterations == FAST.min_windows * FAST.window_iterations
    assert report.p50_ms == pytest.approx(2.0)
    assert runner.calls == report.iterations + report.warmup_iterations


def test_stops_at_time_bound_when_latency_keeps_growing(clock: FakeClock) -> None:
    settings = BenchmarkSettings(
        warmup_iterations=2, window_iterations=10, max_windows=1000, max_seconds=2.0
    )
    runner = ClockedRunner(clock, lambda n: 1.02**n)  # +22 % per window: never stable
    report = measure(runner, _feeds(1), 1, settings)
    assert not report.stable
    assert report.stop_reason == "time_bound"
    assert report.windows < settings.max_windows
    last_call_ns = 1.02**runner.calls * 1e6
    assert 2.0e9 <= clock.now <= 2.0e9 + last_call_ns  # stopped within one call of the bound


def test_stops_at_max_windows_when_unstable(clock: FakeClock) -> None:
    settings = BenchmarkSettings(window_iterations=10, min_windows=3, max_windows=6)
    report = measure(ClockedRunner(clock, lambda n: float(n)), _feeds(1), 1, settings)
    assert (report.stable, report.stop_reason, report.windows) == (False, "max_windows", 6)


def test_feeds_are_rotated_in_order() -> None:
    runner = BusyRunner()
    report = measure(runner, _feeds(2, count=3), 2, FAST)
    markers = [marker for _, marker in runner.seen]
    assert markers[:7] == [0, 1, 2, 0, 1, 2, 0]
    assert all(b == (a + 1) % 3 for a, b in zip(markers, markers[1:], strict=False))
    assert report.distinct_feeds == 3


def test_feed_function_and_batch_size_check() -> None:
    runner = BusyRunner()
    report = measure(runner, lambda size: _feeds(size, count=2), 4, FAST)
    assert {shape for shape, _ in runner.seen} == {4}
    assert report.distinct_feeds == 2
    with pytest.raises(ValueError, match="expected batch size 8"):
        measure(runner, _feeds(4), 8, FAST)
    with pytest.raises(ValueError, match="no feeds"):
        measure(runner, [], 1, FAST)


def test_raw_latencies_are_downsampled(clock: FakeClock) -> None:
    settings = BenchmarkSettings(window_iterations=100, max_raw_latencies=50)
    report = measure(ClockedRunner(clock, lambda n: 1.0 + (n % 7) * 0.01), _feeds(1), 1, settings)
    assert report.iterations == 300
    assert len(report.latencies_ms) == 50
    assert min(report.latencies_ms) >= report.min_ms


def test_json_round_trip() -> None:
    report = measure(BusyRunner(cost_s=0.0002), _feeds(1), 1, FAST)
    data = json.loads(json.dumps(report.to_dict()))
    assert LatencyReport.from_dict(data) == report
    assert report.to_dict(include_latencies=False)["latencies_ms"] == []


def test_benchmark_variant_measures_each_batch_size_in_order() -> None:
    runner = BusyRunner(cost_s=0.0002)
    calls: list[int] = []
    reports = benchmark_variant(
        runner,
        {4: _feeds(4), 1: _feeds(1), 16: _feeds(16)},
        FAST,
        progress=lambda size, report: calls.append(size),
    )
    assert list(reports) == [1, 4] == calls
    sizes = [shape for shape, _ in runner.seen]
    assert sizes == sorted(sizes)  # one batch size after the other, never interleaved
    assert all(report.batch_size == size for size, report in reports.items())


def test_benchmark_variant_defaults_to_every_batch_size_given() -> None:
    settings = BenchmarkSettings(warmup_iterations=2, window_iterations=5)
    assert settings.batch_sizes == ()
    reports = benchmark_variant(BusyRunner(), {8: _feeds(8), 2: _feeds(2)}, settings)
    assert list(reports) == [2, 8]


def test_benchmark_variant_rejects_missing_feeds_and_notes_failures() -> None:
    with pytest.raises(ValueError, match=r"batch size\(s\) \[4\]"):
        benchmark_variant(BusyRunner(), {1: _feeds(1)}, FAST)

    def broken(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("kernel exploded")

    with pytest.raises(RuntimeError) as info:
        benchmark_variant(broken, {1: _feeds(1), 4: _feeds(4)}, FAST)
    assert "while benchmarking at batch size 1" in info.value.__notes__


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1.0, 1.0, 1.0], True),
        ([5.0, 1.0, 1.04, 0.98], True),
        ([1.0, 1.2, 1.0], False),
        ([1.0, 1.0], False),
        ([0.0, 0.0, 0.0], True),
    ],
)
def test_is_stable(values: list[float], expected: bool) -> None:
    assert is_stable(values, 3, 0.05) is expected


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        BenchmarkSettings(min_windows=2, stability_windows=3)
    with pytest.raises(ValueError):
        BenchmarkSettings(batch_sizes=(0,))


# The hardware fingerprint travels with every benchmark result, so it is tested here too.
