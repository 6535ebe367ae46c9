"""Publish a real-size bench network as a user would hand it to tfopt: model, eval, calibration.

    python -m bench.realsize_publish mobilenet_v2 --output-uri s3://tfopt/bench/mobilenet_v2

Writes `model/model.keras` (built by `bench.realsize`, BatchNorm statistics from demo images),
`eval/` (unlabelled .npz shards: the pipeline judges them with the fidelity metric) and
`calibration/`, each published with its manifest. Prints the URIs as JSON. With `--if-missing`
an already published network is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bench import realsize

EVAL_IMAGES = 64
CALIBRATION_IMAGES = 64
BATCHNORM_IMAGES = 32
SHARD_SIZE = 32


def uris(root: str) -> dict[str, str]:
    """The three URIs `tfopt optimize` takes for a network published at `root`."""
    return {
        "model_uri": f"{root}/model/model.keras",
        "eval_data_uri": f"{root}/eval",
        "calibration_data_uri": f"{root}/calibration",
    }


def publish(name: str, root: str, if_missing: bool) -> dict[str, Any]:
    """Build, write and publish the network and its data; reuse them when asked and present."""
    import keras

    from tasks import storage
    from tasks.demo.bundle import serving_input_names, write_shards

    root = root.rstrip("/")
    parts = ("model", "eval", "calibration")
    if if_missing and all(storage.read_manifest(f"{root}/{part}") for part in parts):
        return {**uris(root), "published": False}
    model = realsize.build(name, BATCHNORM_IMAGES)
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        out = Path(tmp)
        (out / "model").mkdir()
        model.save(out / "model" / "model.keras")
        # the input's name as tfopt will see it: a saved and reloaded model names its input
        # after the input layer ("input_layer"), the model built in memory after its tensor
        (input_name,) = serving_input_names(keras.models.load_model(out / "model" / "model.keras"))
        eval_images = realsize.images(EVAL_IMAGES, realsize.EVAL_SEED)
        write_shards(out / "eval", {input_name: eval_images}, SHARD_SIZE)
        calibration = realsize.images(CALIBRATION_IMAGES, realsize.CALIBRATION_SEED)
        write_shards(out / "calibration", {input_name: calibration}, SHARD_SIZE)
        for part in parts:
            storage.publish_tree(out / part, f"{root}/{part}", overwrite=True)
    return {**uris(root), "published": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(realsize.APPLICATIONS))
    parser.add_argument("--output-uri", required=True)
    parser.add_argument("--if-missing", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(json.dumps(publish(args.model, args.output_uri, args.if_missing)))


if __name__ == "__main__":
    main()
