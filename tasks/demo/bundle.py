"""The demo bundle: a trained model plus eval and calibration NPZ shards in a local folder."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.demo import shapes
from tasks.demo.trainer import TrainConfig, train

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

MODEL_FILE = "model/model.keras"
EVAL_DIR = "eval"
CALIBRATION_DIR = "calibration"
SUMMARY_FILE = "bundle.json"
LABELS_KEY = "labels"
_PARTS = (MODEL_FILE.split("/")[0], EVAL_DIR, CALIBRATION_DIR, SUMMARY_FILE)


def serving_input_names(model: keras.Model) -> tuple[str, ...]:
    """Input names as `model.export()` names them in the `serving_default` signature."""
    return tuple(tensor.name for tensor in model.inputs)


def write_shards(directory: Path, arrays: dict[str, np.ndarray], shard_size: int) -> list[Path]:
    """Split equally long `arrays` along axis 0 into `shard-00000.npz`, ... (no pickles).

    Returns:
        The shard paths, in order.
    """
    lengths = {len(array) for array in arrays.values()}
    if len(lengths) != 1 or shard_size < 1:
        raise ValueError(f"need arrays of one length and shard_size >= 1, got {lengths}")
    total = lengths.pop()
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, start in enumerate(range(0, total, shard_size)):
        path = directory / f"shard-{index:05d}.npz"
        np.savez(path, **{key: array[start : start + shard_size] for key, array in arrays.items()})
        paths.append(path)
    return paths


def _train_config(tiny: bool, image_size: int | None, n_eval: int | None, seed: int) -> TrainConfig:
    """The trainer configuration; its held-out set (seed + 2) doubles as the eval set."""
    base = TrainConfig.tiny() if tiny else TrainConfig()
    sized = replace(
        base, image_size=image_size or base.image_size, n_held_out=n_eval or base.n_held_out
    )
    return sized.with_seed(seed)


def _write_data_sets(
    out: Path, config: TrainConfig, input_name: str, n_calibration: int, shard_size: int
) -> dict[str, Any]:
    """Eval shards (the trainer's held-out set, with labels) and calibration shards (seed + 3)."""
    x_eval, y_eval = shapes.generate(config.n_held_out, config.held_out_seed, config.image_size)
    eval_shards = write_shards(out / EVAL_DIR, {input_name: x_eval, LABELS_KEY: y_eval}, shard_size)
    x_cal, _ = shapes.generate(n_calibration, config.seed + 3, config.image_size)
    calibration_shards = write_shards(out / CALIBRATION_DIR, {input_name: x_cal}, shard_size)
    return {
        "eval_dir": str(out / EVAL_DIR),
        "calibration_dir": str(out / CALIBRATION_DIR),
        "n_eval": len(y_eval),
        "n_calibration": len(x_cal),
        "eval_shards": len(eval_shards),
        "calibration_shards": len(calibration_shards),
    }


def write_demo_bundle(
    out_dir: str | Path,
    *,
    image_size: int | None = None,
    n_eval: int | None = None,
    n_calibration: int | None = None,
    shard_size: int = 250,
    seed: int = 0,
    tiny: bool = False,
) -> dict[str, Any]:
    """Train the demo model and write model, eval shards and calibration shards.

    Layout: `model/model.keras`, `eval/shard-*.npz` (`image` + `labels`), `calibration/shard-*.npz`
    (`image` only), `bundle.json` (this function's result). Data seeds: train `seed + 1`,
    eval `seed + 2` (the trainer's held-out set), calibration `seed + 3`.

    Args:
        out_dir: Folder to write; must not already hold a bundle.
        image_size: Pixels per side; default 96 (32 when `tiny`).
        n_eval: Eval images; default 1000 (64 when `tiny`).
        n_calibration: Calibration images; default 200 (32 when `tiny`).
        shard_size: Images per shard.
        seed: Base seed of the model initialisation and of every data set.
        tiny: Train the minute test configuration instead of the accurate one.

    Returns:
        Paths, `input_name`, `held_out_top1`, `train_s`, `image_size`, counts, `params`.
    """
    out = Path(out_dir)
    clashes = [part for part in _PARTS if (out / part).exists()]
    if clashes:
        raise FileExistsError(f"{out} already holds {', '.join(clashes)}; choose an empty folder")
    config = _train_config(tiny, image_size, n_eval, seed)
    n_calibration = n_calibration or (32 if tiny else 200)
    model, metrics = train(config)
    (input_name,) = serving_input_names(model)
    model_path = out / MODEL_FILE
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(model_path)

    summary = {
        "model_path": str(model_path),
        **_write_data_sets(out, config, input_name, n_calibration, shard_size),
        "input_name": input_name,
        "image_size": config.image_size,
        "held_out_top1": metrics["held_out_top1"],
        "train_s": metrics["train_s"],
        "params": metrics["params"],
        "class_names": list(shapes.CLASS_NAMES),
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    logger.info(
        "demo bundle in %s: top-1 %.4f on %d eval images, %d calibration images",
        out,
        summary["held_out_top1"],
        summary["n_eval"],
        summary["n_calibration"],
    )
    return summary


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Train the demo model and write its bundle.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tiny", action="store_true", help="the minute test configuration")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = write_demo_bundle(args.out_dir, tiny=args.tiny)
    print(json.dumps(result, indent=2))  # noqa: T201 - the command-line output
