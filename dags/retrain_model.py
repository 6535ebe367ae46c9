"""
### retrain_model

A scheduled demo retrain: generates a fresh procedural shapes data set, trains a demo model on
it, and publishes the model with its eval and calibration shards to
`s3://<bucket>/demo/retrain/<run>/` (`.../demo/detection/retrain/<run>/` for detection). The
`task` param picks the model: `classification` (the MobileNet-class classifier, a `.keras` file)
or `detection` (a CenterNet-style shapes detector exported as a SavedModel that takes JPEG bytes,
`image_bytes`, and returns the TF Object Detection API outputs; its eval shards carry `gt_boxes`
and `gt_classes`, scored with `map50`). It then emits the `tfopt_demo_model` asset event, whose
extra carries the three URIs, the task, its metric and a registered model name;
`optimize_model` is scheduled on that asset and optimises the new model. Stands in for a
team's real training pipeline.
"""

from __future__ import annotations

import os
import zlib
from datetime import datetime
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from tfopt_airflow import DEFAULT_ARGS, DEMO_MODEL_ASSET, DEMO_ROOT, user_errors_fail_fast


@task(outlets=[DEMO_MODEL_ASSET])
@user_errors_fail_fast
def train_and_publish() -> dict[str, Any]:
    """Train on freshly generated data and publish; the asset event carries the URIs."""
    from tasks.config import RunContext
    from tasks.demo.publish import demo_root, publish_demo

    context = get_current_context()
    run = RunContext.create(context["dag_run"].run_id, "retrain")
    seed = context["params"]["seed"]
    if seed is None:
        seed = zlib.crc32(run.run_id.encode()) % 100_000
    task = context["params"]["task"]
    root = demo_root(DEMO_ROOT, task)
    output_uri = context["params"]["output_uri"] or f"{root}/retrain/{run.run_id}"
    published = publish_demo(output_uri, seed=int(seed), task=task)
    keys = ("model_uri", "eval_data_uri", "calibration_data_uri", "metric", "registered_model_name")
    figures = ("map50", "map") if task == "detection" else ("held_out_top1",)
    summary = {k: published[k] for k in (*keys, *figures)} | {"task": task, "seed": int(seed)}
    context["outlet_events"][DEMO_MODEL_ASSET].extra = summary
    return {**summary, "train_s": published["train_s"]}


@dag(
    dag_id="retrain_model",
    schedule=os.environ.get("TFOPT_RETRAIN_SCHEDULE", "@weekly"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={
        "task": Param(
            "classification",
            type="string",
            enum=["classification", "detection"],
            title="Task",
            description="classification: the shapes classifier; detection: the shapes detector "
            "(JPEG-bytes input, map50 metric).",
        ),
        "seed": Param(
            None,
            type=["null", "integer"],
            description="Data/training seed; empty derives a fresh one from the run id.",
        ),
        "output_uri": Param(
            None,
            type=["null", "string"],
            description="Where to publish; empty means s3://<bucket>/demo/retrain/<run id>.",
        ),
    },
    doc_md=__doc__,
    tags=["tfopt", "demo"],
)
def retrain_model():
    train_and_publish()


retrain_model()
