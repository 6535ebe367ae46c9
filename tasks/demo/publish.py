"""Publish a demo bundle (model, eval shards, calibration shards) to S3 or a local folder."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from tasks import storage

logger = logging.getLogger(__name__)

TASKS = ("classification", "detection")
DETECTION_PREFIX = "detection"  # under the demo root: s3://<bucket>/demo/detection/...
REGISTERED_MODEL_NAMES = {"classification": "tfopt-demo", "detection": "tfopt-demo-detector"}
METRICS = {"classification": "top1", "detection": "map50"}


def demo_root(base_uri: str, task: str) -> str:
    """Where a task's demo lives under `base_uri` (classification: the root itself)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    root = base_uri.rstrip("/")
    return f"{root}/{DETECTION_PREFIX}" if task == "detection" else root


def model_uri(root: str, task: str) -> str:
    """The model URI inside a published demo: a .keras file or a SavedModel folder."""
    return f"{root}/model" if task == "detection" else f"{root}/model/model.keras"


def publish_demo(
    output_uri: str,
    *,
    tiny: bool = False,
    seed: int = 0,
    task: str = "classification",
    encoding: str = "jpeg",
    calibration: bool = True,
) -> dict[str, Any]:
    """Train a demo model on freshly generated data and publish it with its data sets.

    Args:
        output_uri: Where to publish the demo's `model`, `eval` and `calibration` folders.
        tiny: Train the minute test configuration.
        seed: Base seed of the model and of every data set.
        task: `classification` (the shapes classifier) or `detection` (the shapes detector).
        encoding: Detection only: the serving input, `jpeg` bytes or web-safe `base64` of them.
        calibration: Detection only: also publish calibration shards.

    Returns:
        What to pass to `tfopt optimize`: the URIs (`calibration_data_uri` None when not
        published), `metric` and a `registered_model_name`; plus the trainer's figures
        (`held_out_top1`, or `map50` and `map`), `train_s` and `info`.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    root = output_uri.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="tfopt-demo-") as tmp:
        if task == "detection":
            info = write_detection_bundle(
                Path(tmp), seed=seed, tiny=tiny, encoding=encoding, calibration=calibration
            )
        else:
            from tasks.demo.bundle import write_demo_bundle

            info = write_demo_bundle(Path(tmp), seed=seed, tiny=tiny)
        parts = ("model", "eval", "calibration") if calibration else ("model", "eval")
        for part in parts:
            storage.publish_tree(Path(tmp, part), f"{root}/{part}", overwrite=True)
    logger.info("%s demo published under %s", task, root)
    figures = ("map50", "map") if task == "detection" else ("held_out_top1",)
    return {
        "task": task,
        "metric": METRICS[task],
        "registered_model_name": REGISTERED_MODEL_NAMES[task],
        "model_uri": model_uri(root, task),
        "eval_data_uri": f"{root}/eval",
        "calibration_data_uri": f"{root}/calibration" if calibration else None,
        **{name: info.get(name) for name in figures},
        "train_s": info.get("train_s"),
        "info": info,
    }


def write_detection_bundle(
    out_dir: Path,
    *,
    seed: int = 0,
    tiny: bool = False,
    encoding: str = "jpeg",
    calibration: bool = True,
    n_calibration: int | None = None,
    shard_size: int = 250,
) -> dict[str, Any]:
    """Train the demo detector and write its serving SavedModel and data shards to `out_dir`.

    Layout: `model/` (SavedModel, `serving_default` on `image_bytes`), `eval/shard-*.npz`
    (`image_bytes` + `gt_boxes` + `gt_classes`: the trainer's held-out set), `calibration/
    shard-*.npz` (`image_bytes`, seed + 3), `bundle.json` (this function's result).
    """
    from tasks.demo import detection
    from tasks.demo.detector import DetectorConfig, export_serving, train

    config = (DetectorConfig.tiny() if tiny else DetectorConfig()).with_seed(seed)
    model, metrics = train(config)
    export_serving(model, config, out_dir / "model", encoding=encoding)
    held_out = detection.generate(config.n_eval, config.eval_seed, config.image_size)
    eval_shards = detection.write_eval_shards(out_dir / "eval", held_out, shard_size, encoding)
    summary: dict[str, Any] = {
        "model_path": str(out_dir / "model"),
        "eval_dir": str(out_dir / "eval"),
        "eval_shards": len(eval_shards),
        "eval_set": detection.summary(held_out),
        "input_name": detection.INPUT_NAME,
        "encoding": encoding,
        "class_names": list(detection.CLASS_NAMES),
        **{key: metrics[key] for key in ("map50", "map", "train_s", "params")},
        "config": config.to_dict(),
    }
    if calibration:
        count = n_calibration or (16 if tiny else 200)
        calibration_set = detection.generate(count, seed + 3, config.image_size)
        shards = detection.write_calibration_shards(
            out_dir / "calibration", calibration_set, shard_size, encoding
        )
        summary.update(calibration_dir=str(out_dir / "calibration"), n_calibration=count)
        summary["calibration_shards"] = len(shards)
    (out_dir / "bundle.json").write_text(json.dumps(summary, indent=2))
    return summary
