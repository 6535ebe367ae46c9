"""Several runners measured in interleaved rounds, so the machine's drift hits them all alike.

The rounds, their verdicts (steal, other processes, load, the machine's slow state) and the
reports built from the kept rounds; the settings, the report type and the per-call timing are
`tasks.benchmark`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from tasks import contention, machine_speed
from tasks.backends.base import Feeds, Runner
from tasks.benchmark import (
    NS_PER_MS,
    BenchmarkSettings,
    FeedSource,
    LatencyReport,
    batch_sizes_of,
    collector_paused,
    latency_report,
    materialise,
    timer,
    warm_up,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _now() -> int:
    """Now, by the harness's timer (monotonic ns)."""
    return timer()()


class RunnerFailed(RuntimeError):
    """A runner raised during an interleaved benchmark; `name` says which one."""

    def __init__(self, name: str, error: Exception) -> None:
        super().__init__(f"{name}: {type(error).__name__}: {error}")
        self.name = name
        self.error = error


@dataclass(frozen=True)
class RoundRecord:
    """One interleaved round: the order runners ran in, the contention and machine speed seen,
    the verdict."""

    index: int
    order: tuple[str, ...]
    contention: contention.Contention
    probes_ms: tuple[float, float] = (0.0, 0.0)
    """The machine-speed probes (`machine_speed`) right before and right after the round."""
    spoiled_by: str = ""
    """Empty for a clean round, else what spoiled it (`steal 7.1% > 5.0%`, ...)."""

    @property
    def probe_ms(self) -> float:
        """The slower of the round's two probes: the round ran slow if either end did."""
        return max(self.probes_ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "order": list(self.order),
            **self.contention.to_dict(),
            "probe_ms": round(self.probe_ms, 4),
            "probes_ms": [round(value, 4) for value in self.probes_ms],
            "spoiled_by": self.spoiled_by,
        }


@dataclass
class InterleavedBenchmark:
    """Per runner and batch size a `LatencyReport`; the rounds and which of them were kept."""

    reports: dict[str, dict[int, LatencyReport]]
    rounds: list[RoundRecord]
    kept: list[int]
    stop_reason: str

    def summary(self) -> dict[str, Any]:
        """The rounds, JSON-safe: count, kept indices, the fastest machine-speed probe, each
        round's contention, probe and verdict."""
        return {
            "rounds": len(self.rounds),
            "kept": list(self.kept),
            "probe_fastest_ms": round(fastest_probe(self.rounds), 4),
            "spoiled": sum(1 for r in self.rounds if r.spoiled_by),
            "stop_reason": self.stop_reason,
            "each": [r.to_dict() for r in self.rounds],
        }


def benchmark_interleaved(
    runners: Mapping[str, Runner],
    feeds_by_batch: Mapping[int, FeedSource],
    settings: BenchmarkSettings,
) -> InterleavedBenchmark:
    """Measure several runners in interleaved rounds, so machine drift hits them all alike.

    Every runner is warmed up first. Then each round runs every runner's calls at each batch
    size in turn, in an order balanced for carry-over (`round_order`); each turn starts with a few
    untimed calls (`round_warmup_seconds`). A small matmul timed before and after each round
    tells whether the machine ran in its slow state. Spoiled rounds are left out when enough
    clean ones remain, and extra rounds run while too few are clean. A runner's p50 is its
    speed in the full-speed stretches of its kept rounds (`full_speed_p50`); its other figures
    come from the kept rounds it ran at full speed (those more than `max_round_slowdown` over
    the runner's fastest count as slow: `full_speed_rounds`, `BenchmarkSettings`). The spread
    of those rounds' medians (IQR; min and max over every kept round), the counts of kept,
    spoiled and slow rounds and the kept rounds' median probe go in its report.

    Args:
        runners: name -> loaded runner (variants and, e.g., the current champion).
        feeds_by_batch: batch size -> its feeds (see `measure`), shared by every runner.
        settings: warm-up, round and contention rules; `settings.batch_sizes` picks the sizes.

    Returns:
        The reports (`result.reports[name][batch_size]`) and the rounds.

    Raises:
        ValueError: no runners, or a batch size in `settings.batch_sizes` has no feeds.
        RunnerFailed: a runner raised; its `name` says which (the caller may go on without it).
    """
    if not runners:
        raise ValueError("benchmark_interleaved needs at least one runner")
    sizes = batch_sizes_of(feeds_by_batch, settings)
    batches = {size: materialise(feeds_by_batch[size], size) for size in sizes}
    keys = [(name, size) for name in runners for size in sizes]
    with collector_paused():
        warmups = {}
        for name, size in keys:
            try:
                warmups[(name, size)] = warm_up(
                    runners[name], batches[size], settings, _far_deadline()
                )
            except Exception as exc:
                raise RunnerFailed(name, exc) from exc
        per_round, rounds, stop_reason = _run_rounds(runners, batches, warmups, settings)
    kept = choose_rounds(rounds, settings.min_clean_rounds)
    spoiled = sum(1 for r in rounds if r.spoiled_by)
    kept_clean = not any(rounds[i].spoiled_by for i in kept)
    probe = float(np.median([rounds[i].probe_ms for i in kept]))
    reports: dict[str, dict[int, LatencyReport]] = {name: {} for name in runners}
    for name, size in keys:
        reports[name][size] = _summarise_rounds(
            [per_round[(name, size)][i] for i in kept],
            batch_size=size,
            stop_reason=stop_reason,
            warmup_calls=warmups[(name, size)],
            distinct_feeds=len(batches[size]),
            spoiled=spoiled,
            kept_clean=kept_clean,
            probe_ms=probe,
            settings=settings,
        )
    for name in runners:
        logger.info(
            "%s: p50 b%d %.3f ms (rounds IQR %.3f ms, %d at full speed, %d slow, %d spoiled)",
            name,
            sizes[0],
            reports[name][sizes[0]].p50_ms,
            reports[name][sizes[0]].round_p50_iqr_ms or 0.0,
            reports[name][sizes[0]].rounds_kept,
            reports[name][sizes[0]].rounds_slow,
            spoiled,
        )
    return InterleavedBenchmark(reports, rounds, kept, stop_reason)


def spoiled_by(
    seen: contention.Contention, probe_ms: float, fastest_ms: float, settings: BenchmarkSettings
) -> str:
    """Why a round with this contention and machine-speed probe is spoiled ("" when clean);
    `fastest_ms` is the benchmark's fastest probe."""
    reasons = []
    if seen.steal_share > settings.max_steal_share:
        reasons.append(f"steal {seen.steal_share:.1%} > {settings.max_steal_share:.1%}")
    if seen.other_share > settings.max_other_share:
        reasons.append(
            f"other processes {seen.other_share:.0%} of the CPUs > {settings.max_other_share:.0%}"
        )
    if seen.load1_per_cpu > settings.max_load_per_cpu:
        reasons.append(f"load/CPU {seen.load1_per_cpu:.2f} > {settings.max_load_per_cpu:.2f}")
    if probe_ms > (1 + settings.max_probe_slowdown) * fastest_ms:
        reasons.append(
            f"machine slow: probe {probe_ms:.3f} ms > {1 + settings.max_probe_slowdown:.2f} x "
            f"fastest {fastest_ms:.3f} ms"
        )
    return "; ".join(reasons)


def fastest_probe(rounds: list[RoundRecord]) -> float:
    """The fastest single machine-speed probe of the rounds (0.0 without rounds)."""
    return min((value for r in rounds for value in r.probes_ms), default=0.0)


def judged(rounds: list[RoundRecord], settings: BenchmarkSettings) -> list[RoundRecord]:
    """The rounds with their verdicts, each round's slower probe held against the fastest
    probe of them all (a benchmark that ran slow throughout cannot tell)."""
    fastest = fastest_probe(rounds)
    return [
        replace(r, spoiled_by=spoiled_by(r.contention, r.probe_ms, fastest, settings))
        for r in rounds
    ]


def choose_rounds(rounds: list[RoundRecord], min_clean: int) -> list[int]:
    """Indices of the rounds to keep: the clean ones when at least `min_clean`, else all."""
    clean = [r.index for r in rounds if not r.spoiled_by]
    if len(clean) >= min_clean:
        return clean
    if rounds:
        logger.warning(
            "only %d of %d rounds were clean (< %d): keeping every round; the figures carry "
            "the machine's contention",
            len(clean),
            len(rounds),
            min_clean,
        )
    return [r.index for r in rounds]


def _far_deadline() -> int:
    return _now() + 10**15


def _run_rounds(
    runners: Mapping[str, Runner],
    batches: dict[int, list[Feeds]],
    next_index: dict[tuple[str, int], int],
    settings: BenchmarkSettings,
) -> tuple[dict[tuple[str, int], list[list[int]]], list[RoundRecord], str]:
    """The timed rounds; per (runner, size) one list of call ns per round.

    `settings.rounds` rounds, then extra ones (up to `max_extra_rounds`) while fewer than
    `min_clean_rounds` are clean and the runners' round medians disagree (`_wants_round`); all
    within the time budget.
    """
    names = list(runners)
    index = dict(next_index)
    per_round: dict[tuple[str, int], list[list[int]]] = {key: [] for key in index}
    budget = int(settings.max_seconds * 1e9) * len(index)
    began = _now()
    rounds: list[RoundRecord] = []
    stop_reason = "rounds"
    probe = machine_speed.probe_ms()
    while _wants_round(rounds, settings, per_round):
        number = len(rounds)
        order = round_order(names, number)

        def turns(order: tuple[str, ...] = order) -> None:
            for name in order:
                for size, feeds in batches.items():
                    try:
                        calls, made = _round_calls(
                            runners[name], feeds, index[(name, size)], settings
                        )
                    except Exception as exc:
                        raise RunnerFailed(name, exc) from exc
                    index[(name, size)] += made
                    per_round[(name, size)].append(calls)

        record, _ = observed_round(number, order, probe, turns)
        rounds = judged([*rounds, record], settings)
        probe = rounds[-1].probes_ms[1]
        logger.info(
            "round %d/%d%s done after %.1f s: probe %.3f ms, %s",
            number + 1,
            settings.rounds,
            " (extra: too few clean rounds, round medians spread)"
            if number >= settings.rounds
            else "",
            (_now() - began) / 1e9,
            rounds[-1].probe_ms,
            rounds[-1].spoiled_by or "clean",
        )
        if _now() - began >= budget and _wants_round(rounds, settings, per_round):
            stop_reason = "time_bound"
            break
    return per_round, rounds, stop_reason


def round_order(names: Sequence[str], number: int) -> tuple[str, ...]:
    """The order of round `number`, balanced for carry-over (a Williams design).

    A runner can leave the machine worse for the one after it (TensorFlow's thread pools
    still spinning, the caches full of its weights): with the order only rotated, the same
    runner always followed TensorFlow, and two copies of one model differed by 3-5%. Over
    `len(names)` rounds (twice that for an odd count) every runner follows every other one
    equally often and takes every place in the order.
    """
    count = len(names)
    first, low, high = [0], 1, count - 1
    while len(first) < count:
        first.append(low)
        low += 1
        if len(first) < count:
            first.append(high)
            high -= 1
    if count % 2 == 0:
        shift, backwards = number % count, False
    else:
        shift, backwards = (number // 2) % count, number % 2 == 1
    order = tuple(names[(i + shift) % count] for i in first)
    return order[::-1] if backwards else order


def observed_round(
    index: int, order: tuple[str, ...], probe_before: float, run: Callable[[], T]
) -> tuple[RoundRecord, T]:
    """Round `index`, not yet judged, and what `run()` returned: `run()` with the CPU contention
    around it and a machine-speed probe after it; `probe_before` is the probe that ended the
    round before (or began the benchmark)."""
    before = contention.sample()
    result = run()
    seen = contention.between(before, contention.sample())
    return RoundRecord(index, order, seen, (probe_before, machine_speed.probe_ms())), result


def _wants_round(
    rounds: list[RoundRecord],
    settings: BenchmarkSettings,
    per_round: Mapping[tuple[str, int], list[list[int]]],
) -> bool:
    """Another round: the planned ones are not all done, or too few are clean, extra rounds
    are left and some runner's round medians (`per_round`) still disagree.

    Extra rounds are there to reach figures that settle. When every runner's round medians
    already agree within `stability_tolerance` (IQR against the median), more rounds of the
    same machine add nothing: on a VM whose 15 ms probe scattered 1.5-2x from one round to the
    next while every runner's round medians agreed within 1-2%, the probe judged 12 of 13 rounds
    slow and the six extra rounds doubled the benchmark.
    """
    if len(rounds) < settings.rounds:
        return True
    clean = sum(1 for r in rounds if not r.spoiled_by)
    if clean >= settings.min_clean_rounds:
        return False
    if len(rounds) >= settings.rounds + settings.max_extra_rounds:
        return False
    return not _medians_agree(per_round, settings)


def _medians_agree(
    per_round: Mapping[tuple[str, int], list[list[int]]], settings: BenchmarkSettings
) -> bool:
    """Whether every runner's round medians lie within `stability_tolerance` (IQR / median)."""
    for calls_per_round in per_round.values():
        p50, iqr = _median_and_iqr([_median_ms(calls) for calls in calls_per_round])
        if iqr > settings.stability_tolerance * p50:
            return False
    return True


def _round_calls(
    runner: Runner, batches: list[Feeds], start_index: int, settings: BenchmarkSettings
) -> tuple[list[int], int]:
    """One runner's turn in one round: (per-call ns of the timed calls, calls made in all).

    The untimed calls first let the runner's thread pool wake and its working set come back
    into the caches; the timed ones follow on the next feeds.
    """
    clock = timer()
    count = len(batches)
    made = 0
    warm_end = clock() + int(settings.round_warmup_seconds * 1e9)
    while made < settings.min_round_warmup_iterations or clock() < warm_end:
        runner(batches[(start_index + made) % count])
        made += 1
    began = clock()
    floor = began + int(settings.min_round_seconds * 1e9)
    end = began + int(settings.round_seconds * 1e9)
    calls: list[int] = []
    while len(calls) < settings.min_round_iterations or (
        (now := clock()) < floor or (len(calls) < settings.window_iterations and now < end)
    ):
        feed = batches[(start_index + made) % count]
        t0 = clock()
        runner(feed)
        calls.append(clock() - t0)
        made += 1
    return calls, made


def _median_ms(calls_ns: Sequence[int]) -> float:
    return float(np.median(calls_ns)) / NS_PER_MS


def _median_and_iqr(values: Sequence[float]) -> tuple[float, float]:
    """The median of `values` and their interquartile range."""
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return float(q50), float(q75 - q25)


def full_speed_rounds(medians: Sequence[float], settings: BenchmarkSettings) -> list[int]:
    """Positions of the round medians within `max_round_slowdown` of the fastest: the rounds a
    runner ran at full speed.

    Chosen per runner: on a 2-core VM the slow rounds are mostly the runner's own (the thread
    pools and caches the runner before it left, which the balanced order spreads but does not
    remove), not the machine's. Chosen once for all runners, by the median slowdown over the
    runners, the demo's INT8 model measured 0.157 ms against 0.096-0.100 ms in two other
    processes, its own fastest rounds having been left out as the others ran slow in them.
    """
    if not medians:
        return []
    limit = (1 + settings.max_round_slowdown) * min(medians)
    return [i for i, value in enumerate(medians) if value <= limit]


def full_speed_p50(rounds_ns: Sequence[Sequence[int]], settings: BenchmarkSettings) -> float:
    """A runner's p50 at full speed (ms): its kept rounds cut into stretches of
    `stretch_calls` consecutive calls (fewer when a round made fewer: a ResNet50 makes about
    five calls per turn, one stretch), and the `stretch_quantile` of the stretches' medians.

    The machine's slow states come and go within seconds, inside rounds as well as between
    them, so a round's median mixes fast and slow stretches, and the median of a runner's
    fastest rounds rests on one to three rounds. On a 2-core AVX-512 VM with nothing else
    running, the demo's 0.14 ms INT8 model, measured beside TF and three other LiteRT variants
    as the pipeline does, in four processes with three copies each: the median of the
    full-speed round medians put 70% of the cross-process pairs within 5% of each other (worst
    13.8%); the 10th percentile of 25-call stretch medians, 91% (worst 7.3%).
    """
    size = max(1, min([settings.stretch_calls, *(len(calls) for calls in rounds_ns)]))
    medians = [
        float(np.median(calls[start : start + size]))
        for calls in rounds_ns
        for start in range(0, len(calls) - size + 1, size)
    ]
    return float(np.percentile(medians, 100 * settings.stretch_quantile)) / NS_PER_MS


def _summarise_rounds(
    rounds_ns: list[list[int]],
    *,
    batch_size: int,
    stop_reason: str,
    warmup_calls: int,
    distinct_feeds: int,
    spoiled: int,
    kept_clean: bool,
    probe_ms: float,
    settings: BenchmarkSettings,
) -> LatencyReport:
    """The report from the kept rounds: p50 from stretches of calls over all of them
    (`full_speed_p50`); the other statistics from the calls of the rounds at full speed
    (`full_speed_rounds`). The range and
    `window_p50_ms` cover every kept round, slow ones included, so runners measured in the same
    rounds can be compared round by round.

    Stable when the kept rounds are clean, at least `min_clean_rounds` ran at full speed, and
    the IQR of their medians is within `stability_tolerance` of the p50.
    """
    all_medians = [_median_ms(calls) for calls in rounds_ns]
    fast = full_speed_rounds(all_medians, settings)
    ms = np.concatenate([np.asarray(rounds_ns[i], dtype=np.float64) for i in fast]) / NS_PER_MS
    p50_fast, iqr = _median_and_iqr([all_medians[i] for i in fast])
    clean = kept_clean and len(fast) >= settings.min_clean_rounds
    return latency_report(
        ms,
        full_speed_p50(rounds_ns, settings),
        float(ms.sum()) / 1e3,  # the calls' own time: rounds interleave other runners
        batch_size=batch_size,
        windows=len(all_medians),
        stable=clean and iqr <= settings.stability_tolerance * p50_fast,
        stop_reason=stop_reason,
        warmup_iterations=warmup_calls,
        distinct_feeds=distinct_feeds,
        window_p50_ms=[round(v, 6) for v in all_medians],
        max_raw=settings.max_raw_latencies,
        rounds_kept=len(fast),
        rounds_spoiled=spoiled,
        rounds_slow=len(rounds_ns) - len(fast),
        round_p50_iqr_ms=round(iqr, 6),
        round_p50_range_ms=[round(min(all_medians), 6), round(max(all_medians), 6)],
        machine_probe_ms=round(probe_ms, 4),
    )
