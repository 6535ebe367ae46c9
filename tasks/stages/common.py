"""What every stage shares: reuse of published results, publishing, variant failures."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tasks import storage
from tasks.config import PipelineConfig, RunContext
from tasks.results import StageResult, Status
from tasks.signature import Signature

logger = logging.getLogger(__name__)

VALIDATION_BATCH = 32
BENCHMARK_DISTINCT_BATCHES = 16
ACCURACY_CONTROL_SAMPLES = 300
"""Eval samples an accuracy-aware quantizer may score its choices on (NNCF accuracy control)."""
REFERENCE_DIR = "reference"
CHAMPION_MIN_GAIN = 0.05
"""A new version takes `champion` only when it is at least this much faster (the benchmark's own
stability tolerance), so two measurements of the same model do not swap the alias."""


def _published(
    uri: str, stage: str, variant: str = "", *, config: PipelineConfig, ctx: RunContext
) -> StageResult | None:
    """The stage's published result, when it was made from this run's inputs.

    Raises:
        UserInputError: it was published under this run id from other inputs.
    """
    from tasks.lineage import check_reuse, stage_inputs

    manifest = storage.read_manifest(uri)
    if manifest is None or "result" not in manifest.metadata:
        return None
    current = stage_inputs(config, stage, variant)
    check_reuse(manifest.metadata.get("inputs"), current, run_id=ctx.run_id, uri=uri)
    logger.info(
        "%s%s already published at %s; reusing it", stage, f" {variant}" if variant else "", uri
    )
    return StageResult.from_dict(manifest.metadata["result"])


def _publish(local_dir: Path, uri: str, result: StageResult, config: PipelineConfig) -> StageResult:
    from tasks.lineage import stage_inputs

    inputs = stage_inputs(config, result.stage, result.variant or "")
    storage.publish_tree(local_dir, uri, metadata={"result": result.to_dict(), "inputs": inputs})
    return result


def _fetch_export(export: StageResult, ctx: RunContext) -> tuple[Path, Signature]:
    local = Path(storage.fetch_tree(export.uris["export"], ctx.local("fetched", "export")))
    return local / "saved_model", Signature.read(local)


def _variant_failure(stage: str, variant: str, exc: BaseException) -> StageResult:
    """A non-baseline variant that threw: FAILED with one line (stage, exception type, message)."""
    message = " ".join(str(exc).split()) or "no message"
    if len(message) > 600:
        message = message[:597] + "..."
    logger.warning("%s %s FAILED: %s: %s", stage, variant, type(exc).__name__, message)
    return StageResult(
        stage, Status.FAILED, reason=f"{type(exc).__name__}: {message}", variant=variant
    )


def _guarded(stage: str, variant: str, work: Any) -> StageResult:
    """Runs `work()`; for a non-baseline variant any error but a transient one becomes FAILED.

    The baseline's errors, and transient ones (S3/MLflow, retried by the caller), propagate.
    """
    try:
        return work()
    except Exception as exc:  # noqa: BLE001 - a broken variant never stops the run
        return _failure_or_raise(stage, variant, exc)


def _failure_or_raise(stage: str, variant: str, exc: Exception) -> StageResult:
    """`exc` re-raised when it is transient or the baseline's, else the variant's FAILED result.

    Call it from an `except` block: the re-raise keeps the traceback.
    """
    from tasks.config import BASELINE
    from tasks.errors import TransientError

    if variant == BASELINE or isinstance(exc, TransientError):
        raise exc
    logger.debug("%s %s failed", stage, variant, exc_info=exc)
    return _variant_failure(stage, variant, exc)


def _not_ok(stage: str, upstream: StageResult) -> StageResult:
    return StageResult(stage, upstream.status, reason=upstream.reason, variant=upstream.variant)
