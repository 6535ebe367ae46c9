"""A real Airflow for the DAG tier: two tiny models in S3, a models file, two producer DAGs."""

from __future__ import annotations

import os
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from airflow_server import AirflowServer, airflow_standalone, prepare_dags_folder

VARIANTS = ["tf:fp32", "tflite:int8"]
# Beside the test stack's own Airflow port (18080 + offset), not on it: a `make up` may use that.
AIRFLOW_PORT = 18130 + int(os.environ.get("TFOPT_TEST_PORT_OFFSET") or 0)

PRODUCER = textwrap.dedent(
    '''
    """Producer of {model}: publishes a model and emits its asset with the URIs (the contract)."""

    from airflow.sdk import Asset, dag, get_current_context, task

    ASSET = Asset(name="{asset}")


    @task(outlets=[ASSET])
    def publish():
        get_current_context()["outlet_events"][ASSET].extra = {extra!r}


    @dag(dag_id="{dag_id}", schedule=None, tags=["producer"])
    def producer():
        publish()


    producer()
    '''
)


@dataclass(frozen=True)
class TestModel:
    """A registered model of the test models file: its optimise DAG, asset, producer, data."""

    name: str
    dag_id: str
    asset: str
    producer: str
    uris: dict[str, str]


@dataclass(frozen=True)
class TestAirflow:
    """The running test Airflow and the two models its models file lists."""

    server: AirflowServer
    demo: TestModel
    other: TestModel


def _publish_bundle(bundle: dict[str, Path], root: str) -> dict[str, str]:
    from tasks import storage

    for part in ("model", "eval", "calibration"):
        folder = bundle["model"].parent if part == "model" else bundle[part]
        storage.publish_tree(folder, f"{root}/{part}")
    return {
        "model_uri": f"{root}/model/{bundle['model'].name}",
        "eval_data_uri": f"{root}/eval",
        "calibration_data_uri": f"{root}/calibration",
    }


def _models_yaml(models: list[TestModel], defaults_for: TestModel) -> str:
    lines = ["models:"]
    for model in models:
        lines += [
            f"  - registered_model_name: {model.name}",
            f"    dag_id: {model.dag_id}",
            f"    asset: {model.asset}",
            "    defaults:",
            f"      variants: {VARIANTS}",
            "      batch_sizes: [1]",
        ]
        if model is defaults_for:
            lines += [f"      {key}: {value}" for key, value in model.uris.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def test_airflow(local_stack, tiny_bundle, tmp_path_factory) -> Iterator[TestAirflow]:
    """`airflow standalone` with `optimize_model` (defaults: a tiny model) and a second model's
    optimise DAG, each with a producer DAG emitting its asset; on the test stack's S3/MLflow."""
    from tasks import storage

    tag = uuid.uuid4().hex[:8]
    root = f"s3://{local_stack.bucket}/it-airflow/{tag}"
    models = []
    for key, dag_id in (("a", "optimize_model"), ("b", f"optimize_it_{tag}_b")):
        uris = _publish_bundle(tiny_bundle, f"{root}/{key}")
        name = f"it-{tag}-{key}"
        models.append(TestModel(name, dag_id, f"it_{tag}_{key}", f"produce_{tag}_{key}", uris))
    home = tmp_path_factory.mktemp("airflow")
    models_file = home / "models.yaml"
    models_file.write_text(_models_yaml(models, defaults_for=models[0]))
    producers = {
        f"{m.producer}.py": PRODUCER.format(
            model=m.name, asset=m.asset, dag_id=m.producer, extra=m.uris
        )
        for m in models
    }
    prepare_dags_folder(home / "dags", producers)
    assert storage.exists(models[0].uris["model_uri"])
    with airflow_standalone(
        local_stack.env, home, AIRFLOW_PORT, home / "dags", models_file
    ) as server:
        server.wait_for_dags({m.dag_id for m in models} | {m.producer for m in models})
        yield TestAirflow(server, *models)
