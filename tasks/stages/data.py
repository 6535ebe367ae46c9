"""The data stage: checked data, dims fixed, the metric chosen, the baseline's reference outputs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.backends.tf import set_tf_threads
from tasks.config import PipelineConfig, RunContext
from tasks.errors import UserInputError
from tasks.results import StageResult, Status
from tasks.signature import Signature
from tasks.stages.common import (
    REFERENCE_DIR,
    VALIDATION_BATCH,
    _fetch_export,
    _publish,
    _published,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataPlan:
    """What the data stage decided, as every later stage reads it back from its result."""

    signature: Signature
    metric: Any  # tasks.metrics.MetricSpec
    choice: Any  # tasks.metrics.OutputChoice
    eval_data: Any  # tasks.datasets.ShardSet: the samples validated (held-out ones excluded)
    calibration: Any  # tasks.datasets.ShardSet | None


def _resolve_metric(config: PipelineConfig, eval_data: Any) -> Any:
    from tasks.config import AUTO_METRIC
    from tasks.metrics import auto_metric, get_metric

    name = config.metric
    if name == AUTO_METRIC:
        name = auto_metric(set(eval_data.truth), eval_data.labels_kind, eval_data.labels_form)
        logger.info("metric: %s (chosen from the eval data's ground truth)", name)
    return get_metric(name)


def _open_calibration(
    config: PipelineConfig, ctx: RunContext, signature: Signature, eval_data: Any
) -> tuple[Any, Any, dict[str, Any]]:
    """(eval data for validation, calibration data or None, the calibration's description)."""
    from tasks.datasets import HoldOut, open_dataset

    if config.calibration_data_uri:
        calibration = open_dataset(config.calibration_data_uri, ctx.local("calibration"), signature)
        for name, shape in calibration.sample_shapes.items():
            if eval_data.sample_shapes.get(name, shape) != shape:
                raise UserInputError(
                    f"calibration input {name!r} has per-sample shape {list(shape)} but the eval "
                    f"data has {list(eval_data.sample_shapes[name])}; give both one shape"
                )
        described = {"source": "calibration_data_uri", **calibration.to_dict()}
        return eval_data, calibration, described
    if not config.needs_calibration:
        return eval_data, None, {"source": "none (no int8 variant)"}
    holdout = HoldOut.for_samples(eval_data.num_samples)
    indices = holdout.indices(eval_data.num_samples)
    described = {
        "source": "held-out eval slice",
        "uri": config.eval_data_uri,
        "num_samples": holdout.count,
        "holdout": holdout.to_dict(),
    }
    logger.info(
        "no calibration data given: %d eval samples (seed %d) held out for INT8 calibration and "
        "excluded from validation",
        holdout.count,
        holdout.seed,
    )
    return eval_data.without(indices), eval_data.only(indices), described


def _storable(value: Any) -> np.ndarray:
    array = np.asarray(value)
    return array.astype(np.bytes_) if array.dtype.kind == "O" else array


def _write_reference(runner: Any, eval_data: Any, out_dir: Path) -> int:
    """Runs the baseline over the eval data, one reference file per batch (streamed to disk)."""
    from tasks.datasets import iter_batches

    count = 0
    for index, (feeds, _) in enumerate(iter_batches(eval_data, VALIDATION_BATCH)):
        outputs = {name: _storable(value) for name, value in runner(feeds).items()}
        np.savez(out_dir / REFERENCE_DIR / f"batch-{index:05d}.npz", **outputs)
        count += 1
    return count


def prepare_data_stage(config: PipelineConfig, ctx: RunContext, export: StageResult) -> StageResult:
    """Check the eval (and calibration) data, fix dynamic dims, pick the metric, run the baseline.

    The baseline (the exported SavedModel) runs once over the eval data here; every variant is
    later compared with these reference outputs. Unknown non-batch input dimensions are fixed
    from the data into the signature every converter gets (`declared_shape` keeps the original).
    """
    from tasks.backends import get_backend
    from tasks.datasets import check_truth, open_dataset

    uri = ctx.uri("data")
    if done := _published(uri, "data", config=config, ctx=ctx):
        return done
    set_tf_threads(config.num_threads)
    saved_model, declared = _fetch_export(export, ctx)
    eval_data = open_dataset(config.eval_data_uri, ctx.local("eval"), declared)
    metric = _resolve_metric(config, eval_data)
    check_truth(eval_data, metric)
    signature = declared.with_input_shapes(eval_data.sample_shapes)
    choice = metric.resolve_output(signature.outputs, config.metric_output)
    validation_data, calibration, calibration_info = _open_calibration(
        config, ctx, signature, eval_data
    )
    out_dir = ctx.local("data-out")
    (out_dir / REFERENCE_DIR).mkdir(exist_ok=True)
    runner = get_backend("tf").load(saved_model, signature, config.num_threads)
    batches = _write_reference(runner, validation_data, out_dir)
    signature.write(out_dir)
    result = StageResult(
        stage="data",
        status=Status.OK,
        uris={"data": uri, "eval": config.eval_data_uri},
        metrics={
            "eval": eval_data.to_dict(),
            "eval_digest": eval_data.digest,
            "eval_samples": eval_data.num_samples,
            "validation_samples": validation_data.num_samples,
            "calibration": calibration_info,
            "calibration_digest": calibration.digest if calibration else None,
            "metric": {
                "name": metric.name,
                "title": metric.title,
                "higher_is_better": metric.higher_is_better,
                "tolerance": config.accuracy_gate.tolerance,
                "tolerance_meaning": metric.tolerance_meaning,
                "output": choice.to_dict(),
            },
            "signature": signature.to_dict(),
            "reference_batches": batches,
        },
    )
    return _publish(out_dir, uri, result, config)


def data_plan(config: PipelineConfig, ctx: RunContext, data: StageResult) -> DataPlan:
    """The data stage's decisions, with its data sets re-fetched and compared by digest."""
    from tasks.datasets import HoldOut, ShardSet, open_dataset
    from tasks.metrics import OutputChoice, get_metric

    signature = Signature.from_dict(data.metrics["signature"])
    described = ShardSet.described(data.metrics["eval"])
    eval_data = open_dataset(config.eval_data_uri, ctx.local("eval"), signature, checked=described)
    info = data.metrics["calibration"]
    calibration = None
    if info.get("holdout"):
        holdout = HoldOut(**info["holdout"])
        indices = holdout.indices(eval_data.num_samples)
        eval_data, calibration = eval_data.without(indices), eval_data.only(indices)
    elif info["source"] == "calibration_data_uri":
        calibration = open_dataset(
            info["uri"], ctx.local("calibration"), signature, checked=ShardSet.described(info)
        )
    metric_info = data.metrics["metric"]
    return DataPlan(
        signature=signature,
        metric=get_metric(metric_info["name"]),
        choice=OutputChoice.from_dict(metric_info["output"]),
        eval_data=eval_data,
        calibration=calibration,
    )
