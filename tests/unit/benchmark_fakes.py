"""Fakes shared by the latency harness's unit tests: feeds, runners and a clock."""

from __future__ import annotations

import time

import numpy as np


def busy_wait(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def make_feeds(batch_size: int, count: int = 4) -> list[dict[str, np.ndarray]]:
    """Distinct batches; batch i is filled with the value i so a runner can tell them apart."""
    return [{"x": np.full((batch_size, 3), i, dtype=np.float32)} for i in range(count)]


class BusyRunner:
    """Costs `cost_s` (times `growth` per call made) by busy-waiting; records the batches."""

    input_names = ("x",)
    output_names = ("y",)

    def __init__(self, cost_s: float = 0.0, growth: float = 1.0) -> None:
        self.cost_s = cost_s
        self.growth = growth
        self.seen: list[tuple[int, int]] = []

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["x"]
        self.seen.append((x.shape[0], int(x[0, 0])))
        busy_wait(self.cost_s * self.growth ** len(self.seen))
        return {"y": x}


class FakeClock:
    """A nanosecond clock that only moves when a fake runner says so."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


class ClockedRunner:
    """Advances the fake clock by `latency_ms(call_number)` per call."""

    input_names = ("x",)
    output_names = ("y",)

    def __init__(self, clock: FakeClock, latency_ms) -> None:
        self.clock = clock
        self.latency_ms = latency_ms
        self.calls = 0

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        self.clock.now += int(self.latency_ms(self.calls) * 1e6)
        return {"y": feeds["x"]}


class SleepRunner(BusyRunner):
    """Sleeps `cost_s` per call: never shorter, and robust to other processes on the CPU."""

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(self.cost_s)
        return {"y": feeds["x"]}
