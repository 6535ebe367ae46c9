"""Many models: producer DAGs emit their model's asset; each model's optimise DAG runs on it."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

pytestmark = [pytest.mark.dags, pytest.mark.slow]

RUN_TIMEOUT_S = 1800  # a 2-core machine shared with other test suites can be this slow


def _asset_triggered_run(server, dag_id: str, timeout_s: float = RUN_TIMEOUT_S) -> dict:
    """The DAG's first asset-triggered run, once finished."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = [r for r in server.runs(dag_id) if r["run_type"] == "asset_triggered"]
        if runs and runs[0]["state"] in ("success", "failed"):
            return runs[0]
        assert time.monotonic() < deadline, f"{dag_id}: {runs} not finished in {timeout_s} s"
        time.sleep(3)


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_two_producers_get_two_models_optimised_concurrently(test_airflow, local_stack) -> None:
    from mlflow.tracking import MlflowClient

    server, models = test_airflow.server, (test_airflow.demo, test_airflow.other)
    for model in models:
        server.trigger(model.producer)
    for model in models:
        produced = server.wait_for_run(model.producer, timeout_s=300)
        assert produced["state"] == "success", produced

    runs = {model.name: _asset_triggered_run(server, model.dag_id) for model in models}

    for model in models:
        run = runs[model.name]
        states = server.task_states(model.dag_id, run["dag_run_id"])
        assert run["state"] == "success", (states, server.log_tail())
        assert states["variant_cpu[tflite:int8]"] == "success", states
    a, b = (runs[model.name] for model in models)
    assert _when(a["start_date"]) < _when(b["end_date"]), "the runs did not overlap"
    assert _when(b["start_date"]) < _when(a["end_date"]), "the runs did not overlap"
    client = MlflowClient(local_stack.mlflow_tracking_uri)
    for model in models:
        champion = client.get_model_version_by_alias(model.name, "champion")
        assert champion.tags["source_model_uri"] == model.uris["model_uri"]
        assert champion.tags["variant"] in ("tf:fp32", "tflite:int8")
