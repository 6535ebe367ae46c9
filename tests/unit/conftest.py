"""Fixtures of the unit tests: a fake clock for the latency harness."""

from __future__ import annotations

import pytest

from tasks import benchmark
from tests.unit.benchmark_fakes import FakeClock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(benchmark, "_clock", fake)
    return fake
