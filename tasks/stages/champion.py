"""The current champion as the benchmark and register stages see it: its recorded figures, its
variant loaded from S3 (only from under this model's run root) and re-measured when it must be."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tasks import storage
from tasks.backends.base import Runner
from tasks.config import PipelineConfig, RunContext, VariantSpec
from tasks.errors import TransientError, UserInputError
from tasks.stages.data import DataPlan

logger = logging.getLogger(__name__)


def _tag_number(tags: dict[str, str], key: str, default: float) -> float:
    try:
        return float(tags.get(key) or default)
    except ValueError:
        return default


def recorded_figures(champion: Any) -> dict[str, Any]:
    """What the champion's version tags recorded when it was registered."""
    tags = champion.tags or {}
    return {
        "version": str(champion.version),
        "variant": tags.get("variant"),
        "hardware_class": tags.get("hardware_class"),
        "p50_ms": _tag_number(tags, "p50_ms_batch_1", float("inf")),
        "throughput": _tag_number(tags, "throughput", 0.0),
        "measured": "recorded",
    }


def variant_uri(ctx: RunContext, champion: Any) -> str:
    """The champion's `variant_uri` tag, only when it lies under this model's run root.

    Raises:
        UserInputError: the tag points elsewhere (a forged or foreign tag is never followed).
    """
    uri = str((champion.tags or {}).get("variant_uri", ""))
    model_root = ctx.root_uri.rsplit("/", 1)[0]
    if not storage.is_under(uri, model_root):
        raise UserInputError(
            f"champion v{champion.version}'s variant_uri {uri!r} lies outside {model_root}; "
            "it is not followed"
        )
    return uri


def load_champion(
    config: PipelineConfig, ctx: RunContext, champion: Any, plan: DataPlan
) -> Runner | None:
    """The champion's variant loaded on this worker, or None (with the reason logged) when it
    cannot be: its runtime is absent here, its tag is foreign, its files are gone.

    Raises:
        TransientError: S3 could not answer (the caller retries).
    """
    from tasks.backends import get_backend

    tags = champion.tags or {}
    try:
        spec = VariantSpec.parse(tags["variant"])
        backend = get_backend(spec.backend)
        if reason := backend.available():
            logger.info("champion v%s (%s) cannot run here: %s", champion.version, spec, reason)
            return None
        local = storage.fetch_tree(
            variant_uri(ctx, champion), ctx.local("champion", str(champion.version))
        )
        return backend.load(Path(local), plan.signature, config.num_threads)
    except TransientError:
        raise
    except Exception as exc:  # noqa: BLE001 - the champion's recorded figures remain
        logger.warning("could not load champion v%s here: %s", champion.version, exc)
        return None


def current_champion_in_lane(config: PipelineConfig, lane: str) -> Any | None:
    """The registered model's current champion when its variant runs on `lane`, else None.

    MLflow's hiccups are not worth a benchmark: they log a warning and give None, and the
    register stage, which reads the champion again under its lock, re-measures it then.
    """
    from tasks import registry
    from tasks.backends import variant_lane

    try:
        champion = registry.current_champion(config.registered_model_name)
    except (TransientError, UserInputError) as exc:
        logger.warning("could not read the current champion (%s); measuring without it", exc)
        return None
    if champion is None:
        return None
    variant = (champion.tags or {}).get("variant", "")
    try:
        on_lane = variant_lane(variant) == lane
    except UserInputError:
        logger.warning("champion v%s names an unknown variant %r", champion.version, variant)
        return None
    return champion if on_lane else None


def champion_now(
    config: PipelineConfig, ctx: RunContext, champion: Any, plan: DataPlan, hardware_class: str
) -> dict[str, Any]:
    """The champion's figures re-measured alone on this worker, or its recorded ones when it
    cannot be loaded here (e.g. a TF-TRT champion seen from a CPU worker).

    The benchmark stage measures the champion in the same rounds as the variants; this is for
    when the champion changed since, or runs on another lane than the chosen variant.
    """
    from tasks.benchmark import BenchmarkSettings, benchmark_variant
    from tasks.datasets import sample_feeds
    from tasks.stages.common import BENCHMARK_DISTINCT_BATCHES

    recorded = recorded_figures(champion)
    runner = load_champion(config, ctx, champion, plan)
    if runner is None:
        return recorded
    feeds = {
        size: sample_feeds(plan.eval_data, size, BENCHMARK_DISTINCT_BATCHES)
        for size in config.batch_sizes
    }
    try:
        reports = benchmark_variant(runner, feeds, BenchmarkSettings())
    except Exception as exc:  # noqa: BLE001 - fall back to the champion's recorded figures
        logger.warning(
            "could not re-measure champion v%s (%s); using its tags", champion.version, exc
        )
        return recorded
    first = reports[min(reports)]
    logger.info("champion v%s re-measured: p50 %.3f ms", champion.version, first.p50_ms)
    return figures(recorded, reports, hardware_class, "re-measured alone")


def figures(
    recorded: dict[str, Any], reports: dict[int, Any], hardware_class: str, how: str
) -> dict[str, Any]:
    """The champion's figures from its latency reports per batch size (as a variant's: p50 at
    batch 1, throughput the best over the batch sizes)."""
    first = reports[min(reports)]
    return {
        **recorded,
        "p50_ms": first.p50_ms,
        "throughput": max(report.throughput for report in reports.values()),
        "hardware_class": hardware_class,
        "measured": how,
    }
