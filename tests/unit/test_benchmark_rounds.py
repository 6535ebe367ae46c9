"""Unit tests of the interleaved rounds with fake runners and a fake machine (no TensorFlow)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tasks import benchmark_rounds, contention, machine_speed
from tasks.benchmark import BenchmarkSettings, LatencyReport
from tests.unit.benchmark_fakes import BusyRunner, FakeClock, SleepRunner
from tests.unit.benchmark_fakes import make_feeds as _feeds

pytestmark = pytest.mark.unit


ROUNDS = BenchmarkSettings(
    warmup_iterations=2,
    warmup_seconds=10.0,
    window_iterations=5,
    min_round_iterations=5,
    round_seconds=10.0,
    min_round_seconds=0.0,
    round_warmup_seconds=0.0,
    min_round_warmup_iterations=0,
    rounds=5,
    min_clean_rounds=3,
    max_seconds=1e6,
    batch_sizes=(1,),
)


class FakeMachine:
    """Stands in for `contention.sample`: each round (two samples) sees the given steal share,
    other-process share and load per CPU, on 2 CPUs. It stands in for the machine-speed probe
    too: `probes[k]` is the k-th probe's ms (the one before round 0, then one after each round;
    1.0 past the list)."""

    def __init__(self, steal=(), other=(), load=(), probes=()) -> None:
        self.steal, self.other, self.load = list(steal), list(other), list(load)
        self.probes = list(probes)
        self.calls = 0
        self.probe_calls = 0

    def probe(self) -> float:
        k = self.probe_calls
        self.probe_calls += 1
        return self.probes[k] if k < len(self.probes) else 1.0

    def __call__(self) -> contention.CpuSample:
        round_, end = divmod(self.calls, 2)
        self.calls += 1
        steal = self.steal[round_] if round_ < len(self.steal) else 0.0
        other = self.other[round_] if round_ < len(self.other) else 0.0
        load = self.load[round_] if round_ < len(self.load) else 0.0
        return contention.CpuSample(
            wall_s=10.0 * round_ + end,
            busy_s=end * other * 2.0,
            steal_s=end * steal * 2.0,
            total_s=end * 2.0,
            own_s=0.0,
            load1=2.0 * load,
        )


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> FakeMachine:
    fake = FakeMachine()
    monkeypatch.setattr(contention, "sample", fake)
    monkeypatch.setattr(machine_speed, "probe_ms", fake.probe)
    return fake


class SharedDrift:
    """The machine's speed per round, shared by every runner (1.0 = nominal)."""

    def __init__(self, factors: list[float]) -> None:
        self.factors = factors
        self.round = -1


class DriftRunner:
    """Advances the fake clock by `base_ms` x the current drift factor; logs its rounds."""

    input_names = ("x",)
    output_names = ("y",)

    def __init__(self, name: str, clock: FakeClock, base_ms: float, drift: SharedDrift, log):
        self.name, self.clock, self.base_ms, self.drift, self.log = name, clock, base_ms, drift, log
        self.calls = 0

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.calls > ROUNDS.warmup_iterations and (self.calls - 3) % 5 == 0:
            self.log.append(self.name)  # first call of a round
        factor = self.drift.factors[self.drift.round] if self.drift.round >= 0 else 1.0
        self.clock.now += int(self.base_ms * factor * 1e6)
        return {"y": feeds["x"]}


def _drift_runners(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, factors: list[float], log: list[str]
) -> dict:
    drift = SharedDrift(factors)
    runners = {
        name: DriftRunner(name, clock, base, drift, log)
        for name, base in (("a", 1.0), ("b", 2.0), ("c", 4.0))
    }
    original = contention.sample

    def round_aware_sample() -> contention.CpuSample:
        sampled = original()
        if sampled.wall_s % 10 == 0:  # a round's first sample: the machine's speed changes
            drift.round += 1
        return sampled

    monkeypatch.setattr(contention, "sample", round_aware_sample)
    return runners


def test_interleaved_changes_the_order_every_round(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, machine: FakeMachine
) -> None:
    log: list[str] = []
    runners = _drift_runners(monkeypatch, clock, [1.0] * 5, log)
    result = benchmark_rounds.benchmark_interleaved(runners, {1: _feeds(1)}, ROUNDS)
    assert [r.order for r in result.rounds] == [
        ("a", "b", "c"),
        ("c", "b", "a"),
        ("b", "c", "a"),
        ("a", "c", "b"),
        ("c", "a", "b"),
    ]
    assert log == [name for r in result.rounds for name in r.order]
    assert result.reports["b"][1].iterations == 25
    assert result.reports["b"][1].warmup_iterations == 2


def test_interleaved_drift_hits_every_runner_alike(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, machine: FakeMachine
) -> None:
    """The machine slows 3x in two rounds: the ratios between runners hold, and each runner's
    figures come from its three rounds at full speed; the slow ones stay in the range and the
    per-round medians."""
    runners = _drift_runners(monkeypatch, clock, [1.0, 3.0, 1.0, 3.0, 1.0], [])
    reports = benchmark_rounds.benchmark_interleaved(runners, {1: _feeds(1)}, ROUNDS).reports
    p50 = {name: by_size[1].p50_ms for name, by_size in reports.items()}
    assert p50 == pytest.approx({"a": 1.0, "b": 2.0, "c": 4.0})
    report = reports["a"][1]
    assert report.window_p50_ms == pytest.approx([1.0, 3.0, 1.0, 3.0, 1.0])
    assert report.round_p50_range_ms == pytest.approx([1.0, 3.0])
    assert (report.rounds_kept, report.rounds_slow, report.rounds_spoiled) == (3, 2, 0)
    assert report.round_p50_iqr_ms == pytest.approx(0.0)
    assert report.stable
    assert reports["c"][1].p99_ms == pytest.approx(4.0)  # 12 ms in the slow rounds
    assert report.throughput == pytest.approx(15 / 0.015)  # 15 calls in 3 x 5 x 1 ms


def test_full_speed_rounds_are_those_within_the_slowdown_of_the_fastest() -> None:
    settings = BenchmarkSettings(max_round_slowdown=0.05, min_clean_rounds=3)
    medians = [0.1496, 0.0968, 0.1089, 0.0972, 0.1010, 0.0965]
    assert benchmark_rounds.full_speed_rounds(medians, settings) == [1, 3, 4, 5]
    twice = [2 * value for value in medians]  # a slower runner, the same drift
    assert benchmark_rounds.full_speed_rounds(twice, settings) == [1, 3, 4, 5]
    wide = BenchmarkSettings(max_round_slowdown=0.6)
    assert benchmark_rounds.full_speed_rounds(medians, wide) == [0, 1, 2, 3, 4, 5]
    assert benchmark_rounds.full_speed_rounds([], settings) == []


def test_full_speed_rounds_are_chosen_per_runner() -> None:
    """Two runners slowed in different rounds (by what ran before them, not the machine): each
    keeps its own fast rounds, so neither figure carries the other's slow rounds."""
    settings = BenchmarkSettings(max_round_slowdown=0.05, min_clean_rounds=3)
    first = [0.100, 0.150, 0.101, 0.160, 0.099]
    second = [0.300, 0.200, 0.310, 0.201, 0.290]
    assert benchmark_rounds.full_speed_rounds(first, settings) == [0, 2, 4]
    assert benchmark_rounds.full_speed_rounds(second, settings) == [1, 3]


def test_interleaved_figures_rest_on_each_runners_own_fast_rounds(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, machine: FakeMachine
) -> None:
    """Runner a runs 1.5x slow in rounds 1 and 3, runner b in rounds 0, 2 and 4 (slowed by what
    ran before it, not by the machine): each p50 is its full-speed latency."""
    drifts = {
        "a": SharedDrift([1.0, 1.5, 1.0, 1.5, 1.0]),
        "b": SharedDrift([1.5, 1.0, 1.5, 1.0, 1.5]),
    }
    runners = {
        n: DriftRunner(n, clock, base, drifts[n], []) for n, base in (("a", 1.0), ("b", 2.0))
    }
    original = contention.sample

    def round_aware_sample() -> contention.CpuSample:
        sampled = original()
        if sampled.wall_s % 10 == 0:
            for drift in drifts.values():
                drift.round += 1
        return sampled

    monkeypatch.setattr(contention, "sample", round_aware_sample)
    reports = benchmark_rounds.benchmark_interleaved(runners, {1: _feeds(1)}, ROUNDS).reports
    a, b = reports["a"][1], reports["b"][1]
    assert (a.p50_ms, b.p50_ms) == pytest.approx((1.0, 2.0))
    assert (a.rounds_kept, a.rounds_slow, b.rounds_kept, b.rounds_slow) == (3, 2, 2, 3)
    assert a.stable and not b.stable  # b has 2 full-speed rounds, fewer than min_clean_rounds
    assert b.window_p50_ms == pytest.approx([3.0, 2.0, 3.0, 2.0, 3.0])


def test_interleaved_leaves_out_spoiled_rounds(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, machine: FakeMachine
) -> None:
    machine.steal = [0.0, 0.2, 0.0, 0.0, 0.0]
    machine.other = [0.0, 0.0, 0.0, 0.9, 0.0]
    runners = _drift_runners(monkeypatch, clock, [1.0, 5.0, 1.0, 5.0, 1.0], [])
    result = benchmark_rounds.benchmark_interleaved(runners, {1: _feeds(1)}, ROUNDS)
    assert result.kept == [0, 2, 4]
    assert "steal 20.0% > 5.0%" in result.rounds[1].spoiled_by
    assert "other processes 90%" in result.rounds[3].spoiled_by
    report = result.reports["a"][1]
    assert report.p50_ms == pytest.approx(1.0)
    assert report.max_ms == pytest.approx(1.0)
    assert (report.rounds_kept, report.rounds_spoiled) == (3, 2)
    assert report.stable
    summary = result.summary()
    assert summary["spoiled"] == 2 and summary["each"][1]["steal_share"] == pytest.approx(0.2)
    assert json.loads(json.dumps(summary)) == summary


def test_interleaved_leaves_out_rounds_in_the_machines_slow_state(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, machine: FakeMachine
) -> None:
    """A round is judged by the slower of the probes on either side of it."""
    machine.probes = [0.5, 0.5, 0.7, 0.5, 0.5, 0.56]
    runners = _drift_runners(monkeypatch, clock, [1.0, 1.4, 1.4, 1.0, 1.0], [])
    result = benchmark_rounds.benchmark_interleaved(runners, {1: _feeds(1)}, ROUNDS)
    assert result.kept == [0, 3, 4]
    assert [r.probe_ms for r in result.rounds] == [0.5, 0.7, 0.7, 0.5, 0.56]
    assert result.rounds[1].spoiled_by == "machine slow: probe 0.700 ms > 1.15 x fastest 0.500 ms"
    assert result.rounds[4].spoiled_by == ""  # 12% over the fastest: within 15%
    report = result.reports["b"][1]
    assert report.p50_ms == pytest.approx(2.0)
    assert (report.rounds_kept, report.rounds_spoiled) == (3, 2)
    assert report.machine_probe_ms == pytest.approx(0.5)
    summary = result.summary()
    assert summary["probe_fastest_ms"] == 0.5 and summary["each"][2]["probe_ms"] == 0.7


def test_interleaved_runs_extra_rounds_until_enough_are_clean(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, machine: FakeMachine
) -> None:
    """Fast before the first round, then slow for the 5 planned rounds (by 20-60%, unevenly)
    and fast after: the rounds run on until 3 are clean."""
    machine.probes = [0.5] + [0.7] * 5 + [0.5] * 5
    runners = _drift_runners(monkeypatch, clock, [1.4, 1.4, 1.2, 1.5, 1.3, 1.6] + [1.0] * 5, [])
    result = benchmark_rounds.benchmark_interleaved(runners, {1: _feeds(1)}, ROUNDS)
    assert len(result.rounds) == 9
    assert result.kept == [6, 7, 8]
    assert result.stop_reason == "rounds"
    assert result.reports["c"][1].p50_ms == pytest.approx(4.0)
    assert result.reports["c"][1].machine_probe_ms == pytest.approx(0.5)


def test_interleaved_extra_rounds_are_bounded(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, machine: FakeMachine
) -> None:
    machine.probes = [0.5] + [0.7] * 20
    settings = BenchmarkSettings(**{**ROUNDS.__dict__, "max_extra_rounds": 2})
    runners = _drift_runners(monkeypatch, clock, [1.0] + [1.4, 1.2, 1.6, 1.3] * 5, [])
    result = benchmark_rounds.benchmark_interleaved(runners, {1: _feeds(1)}, settings)
    assert len(result.rounds) == 7  # 5 planned + 2 extra; none of them clean
    assert result.kept == list(range(7))  # too few clean ones: every round, flagged unstable
    assert not result.reports["a"][1].stable


def test_interleaved_runs_no_extra_rounds_when_the_round_medians_agree(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, machine: FakeMachine
) -> None:
    """A probe that scatters from round to round (it judges every planned round slow) while
    every runner's round medians agree: extra rounds would add nothing, none run."""
    machine.probes = [0.5, 0.9, 0.7, 1.0, 0.8, 0.9] + [0.5] * 6
    runners = _drift_runners(monkeypatch, clock, [1.0, 1.0, 1.01, 1.0, 0.99, 1.0], [])
    result = benchmark_rounds.benchmark_interleaved(runners, {1: _feeds(1)}, ROUNDS)
    assert len(result.rounds) == 5
    assert all(r.spoiled_by.startswith("machine slow") for r in result.rounds)
    assert result.kept == list(range(5))  # too few clean: every round, flagged unstable
    assert result.reports["b"][1].p50_ms == pytest.approx(2.0, rel=0.01)  # 1.98-2.02 a round
    assert not result.reports["b"][1].stable


def test_interleaved_keeps_every_round_when_too_few_are_clean(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, machine: FakeMachine
) -> None:
    machine.load = [3.0, 3.0, 0.5, 3.0, 0.5]
    settings = BenchmarkSettings(**{**ROUNDS.__dict__, "max_extra_rounds": 0})
    runners = _drift_runners(monkeypatch, clock, [2.0, 2.0, 1.0, 2.0, 1.0], [])
    result = benchmark_rounds.benchmark_interleaved(runners, {1: _feeds(1)}, settings)
    assert result.kept == [0, 1, 2, 3, 4]
    assert "load/CPU 3.00 > 1.50" in result.rounds[0].spoiled_by
    report = result.reports["a"][1]
    assert report.p50_ms == pytest.approx(1.0)  # of the kept rounds, the two at full speed
    assert (report.rounds_kept, report.rounds_slow, report.rounds_spoiled) == (2, 3, 3)
    assert not report.stable


def test_interleaved_stops_at_the_time_bound(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, machine: FakeMachine
) -> None:
    settings = BenchmarkSettings(**{**ROUNDS.__dict__, "max_seconds": 0.012})
    runners = _drift_runners(monkeypatch, clock, [1.0] * 5, [])
    result = benchmark_rounds.benchmark_interleaved(runners, {1: _feeds(1)}, settings)
    # budget 3 x 12 ms; a round costs 5 x (1 + 2 + 4) = 35 ms, so the second round is the last
    assert len(result.rounds) == 2
    assert result.stop_reason == "time_bound"
    assert result.reports["a"][1].stop_reason == "time_bound"


def test_interleaved_round_ends_at_round_seconds(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, machine: FakeMachine
) -> None:
    settings = BenchmarkSettings(
        **{**ROUNDS.__dict__, "window_iterations": 1000, "round_seconds": 0.0095}
    )
    runners = _drift_runners(monkeypatch, clock, [1.0] * 5, [])
    reports = benchmark_rounds.benchmark_interleaved(runners, {1: _feeds(1)}, settings).reports
    assert reports["a"][1].iterations == 5 * 10  # 10 calls of 1 ms pass 9.5 ms
    assert reports["c"][1].iterations == 5 * 5  # min_round_iterations


def test_interleaved_reports_keep_the_per_variant_shape(machine: FakeMachine) -> None:
    runners = {"x": SleepRunner(0.002), "y": SleepRunner(0.03)}
    settings = BenchmarkSettings(
        **{**ROUNDS.__dict__, "rounds": 3, "batch_sizes": (), "round_seconds": 0.05}
    )
    result = benchmark_rounds.benchmark_interleaved(runners, {1: _feeds(1), 4: _feeds(4)}, settings)
    assert sorted(result.reports) == ["x", "y"]
    for by_size in result.reports.values():
        assert sorted(by_size) == [1, 4]
        for report in by_size.values():
            data = report.to_dict()
            assert {"p50_ms", "p99_ms", "throughput", "latencies_ms", "stable"} <= set(data)
            assert LatencyReport.from_dict(json.loads(json.dumps(data))) == report
    assert result.reports["y"][1].p50_ms > result.reports["x"][1].p50_ms >= 2.0


def test_interleaved_rejects_no_runners_and_missing_feeds() -> None:
    with pytest.raises(ValueError, match="at least one runner"):
        benchmark_rounds.benchmark_interleaved({}, {1: _feeds(1)}, ROUNDS)
    with pytest.raises(ValueError, match=r"no feeds for batch size\(s\) \[1\]"):
        benchmark_rounds.benchmark_interleaved({"a": BusyRunner()}, {4: _feeds(4)}, ROUNDS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rounds": 0},
        {"min_clean_rounds": 8},
        {"round_seconds": 0},
        {"min_round_iterations": 0},
        {"max_probe_slowdown": 0},
        {"max_extra_rounds": -1},
        {"stretch_calls": 0},
        {"stretch_quantile": 1.5},
    ],
)
def test_round_settings_are_validated(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        BenchmarkSettings(**kwargs)


def test_machine_speed_probe_times_a_matmul_then_lets_the_blas_threads_settle() -> None:
    began = time.perf_counter()
    probe = machine_speed.probe_ms(settle_seconds=0.05)
    assert time.perf_counter() - began >= 0.05
    assert 0.0 < probe < 1000.0


def test_contention_between_two_samples() -> None:
    before = contention.CpuSample(100.0, 50.0, 1.0, 400.0, 10.0, 0.5)
    after = contention.CpuSample(102.0, 53.0, 1.4, 404.0, 11.5, 2.5)
    seen = contention.between(before, after, cpus=2)
    assert seen.seconds == pytest.approx(2.0)
    assert seen.steal_share == pytest.approx(0.1)
    assert seen.other_share == pytest.approx((3.0 - 1.5) / 4.0)
    assert seen.load1_per_cpu == pytest.approx(1.25)


def test_contention_sample_reads_proc_stat(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 5 5 30 0 0\ncpu0 1 2 3\n")
    monkeypatch.setattr(contention, "_STAT", stat)
    monkeypatch.setattr(contention, "_HZ", 100)
    sampled = contention.sample()
    assert sampled.busy_s == pytest.approx(1.6)
    assert sampled.steal_s == pytest.approx(0.3)
    assert sampled.total_s == pytest.approx(10.0)
    monkeypatch.setattr(contention, "_STAT", tmp_path / "absent")
    assert contention.sample().total_s == 0.0


def test_interleaved_names_the_runner_that_throws(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, machine: FakeMachine
) -> None:
    log: list[str] = []
    runners = _drift_runners(monkeypatch, clock, [1.0] * 5, log)
    healthy = runners["b"]

    def breaks_in_round_two(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if healthy.calls >= 10:  # past warm-up and the first round
            raise ValueError("bad kernel")
        return healthy(feeds)

    runners["b"] = breaks_in_round_two
    with pytest.raises(benchmark_rounds.RunnerFailed, match="b: ValueError: bad kernel") as caught:
        benchmark_rounds.benchmark_interleaved(runners, {1: _feeds(1)}, ROUNDS)
    assert caught.value.name == "b"
    assert isinstance(caught.value.error, ValueError)


class ColdTurnRunner:
    """1 ms per call, but 10 ms on the first call after another runner ran (cold caches)."""

    input_names = ("x",)
    output_names = ("y",)

    def __init__(self, name: str, clock: FakeClock, last: list[str]) -> None:
        self.name, self.clock, self.last = name, clock, last
        self.calls = 0

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        cold = self.last and self.last[0] != self.name
        self.clock.now += int((10.0 if cold else 1.0) * 1e6)
        self.last[:] = [self.name]
        return {"y": feeds["x"]}


def test_interleaved_turns_start_with_untimed_calls(clock: FakeClock, machine: FakeMachine) -> None:
    """The call that pays for the previous runner's state is made, but not timed."""
    last: list[str] = []
    cold = {name: ColdTurnRunner(name, clock, last) for name in ("a", "b")}
    reports = benchmark_rounds.benchmark_interleaved(cold, {1: _feeds(1)}, ROUNDS).reports
    assert reports["a"][1].max_ms == pytest.approx(10.0)  # no turn warm-up: charged

    last.clear()
    settings = BenchmarkSettings(
        **{**ROUNDS.__dict__, "round_warmup_seconds": 0.003, "min_round_warmup_iterations": 1}
    )
    warm = {name: ColdTurnRunner(name, clock, last) for name in ("a", "b")}
    result = benchmark_rounds.benchmark_interleaved(warm, {1: _feeds(1)}, settings)
    report = result.reports["a"][1]
    assert report.max_ms == pytest.approx(1.0)
    assert report.iterations == 5 * 5
    # after the warm-up, 5 timed calls per round and the untimed ones: 1 when cold (10 ms pass
    # 3 ms), 3 in rounds 2 and 4, where "a" opens the round right after its own last turn
    assert warm["a"].calls - report.warmup_iterations == 5 * 5 + (1 + 1 + 3 + 1 + 3)


def test_interleaved_turn_lasts_at_least_min_round_seconds(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, machine: FakeMachine
) -> None:
    settings = BenchmarkSettings(**{**ROUNDS.__dict__, "min_round_seconds": 0.02})
    runners = _drift_runners(monkeypatch, clock, [1.0] * 5, [])
    reports = benchmark_rounds.benchmark_interleaved(runners, {1: _feeds(1)}, settings).reports
    assert reports["a"][1].iterations == 5 * 20  # 1 ms calls for 20 ms, past window_iterations
    assert reports["c"][1].iterations == 5 * 5  # 4 ms calls: 5 of them pass 20 ms


def test_settings_refuse_a_round_floor_above_the_round() -> None:
    with pytest.raises(ValueError, match="min_round_seconds"):
        BenchmarkSettings(min_round_seconds=2.0, round_seconds=1.0)


@pytest.mark.parametrize("count", [2, 3, 4, 5, 6])
def test_round_order_balances_who_follows_whom(count: int) -> None:
    """Over one cycle of rounds every runner takes every place equally often and follows every
    other runner equally often (the carry-over of one runner onto the next is spread evenly)."""
    names = [f"r{i}" for i in range(count)]
    cycle = count if count % 2 == 0 else 2 * count
    orders = [benchmark_rounds.round_order(names, number) for number in range(cycle)]
    assert all(sorted(order) == names for order in orders)
    places = {(name, order.index(name)) for order in orders for name in order}
    assert len(places) == count * count
    follows: dict[tuple[str, str], int] = {}
    for order in orders:
        for before, after in zip(order, order[1:], strict=False):
            follows[(before, after)] = follows.get((before, after), 0) + 1
    assert len(follows) == count * (count - 1)
    assert len(set(follows.values())) == 1
    assert benchmark_rounds.round_order(names, cycle) == orders[0]


def test_full_speed_p50_is_the_low_quantile_of_stretch_medians() -> None:
    """A round that ran fast in its first 50 calls and 1.5x slow in the next 50, and one that
    ran slow throughout: the p50 is the fast stretches' speed, not the rounds' medians."""
    settings = BenchmarkSettings(stretch_calls=25, stretch_quantile=0.1)
    mixed = [100_000] * 50 + [150_000] * 50
    slow = [150_000] * 100
    assert benchmark_rounds.full_speed_p50([mixed, slow], settings) == pytest.approx(0.1)
    alone = BenchmarkSettings(stretch_calls=25, stretch_quantile=0.5)
    assert benchmark_rounds.full_speed_p50([mixed, slow], alone) == pytest.approx(0.15)


def test_full_speed_p50_cuts_short_rounds_into_one_stretch_each() -> None:
    """Five calls per round (a ResNet50-sized model): each round is one stretch."""
    settings = BenchmarkSettings(stretch_calls=25, stretch_quantile=0.1)
    rounds = [[60_000_000 + k * 1_000_000] * 5 for k in (3, 0, 1, 2, 4)]
    assert benchmark_rounds.full_speed_p50(rounds, settings) == pytest.approx(60.4)
