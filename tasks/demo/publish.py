"""Publish the demo bundle (model, eval shards, calibration shards) to S3 or a local folder."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from tasks import storage

logger = logging.getLogger(__name__)


def publish_demo(output_uri: str, *, tiny: bool = False, seed: int = 0) -> dict[str, Any]:
    """Train the demo model on freshly generated data and publish it with its data sets.

    Returns:
        The URIs to pass to `tfopt optimize` plus the trainer's figures.
    """
    from tasks.demo.bundle import write_demo_bundle

    root = output_uri.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="tfopt-demo-") as tmp:
        info = write_demo_bundle(Path(tmp), seed=seed, tiny=tiny)
        for part in ("model", "eval", "calibration"):
            storage.publish_tree(Path(tmp, part), f"{root}/{part}", overwrite=True)
    logger.info("demo published under %s", root)
    return {
        "model_uri": f"{root}/model/model.keras",
        "eval_data_uri": f"{root}/eval",
        "calibration_data_uri": f"{root}/calibration",
        "held_out_top1": info.get("held_out_top1"),
        "train_s": info.get("train_s"),
        "info": info,
    }
