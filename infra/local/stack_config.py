"""The local stack's settings: folder, ports, generated secrets and the client environment."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent  # the venv's bin: weed, mlflow, airflow, redis-server
HOST = "127.0.0.1"
REGION = "us-east-1"
STANDALONE = "standalone"
CLUSTER = "cluster"
# Set only in the environment of processes the stack spawns (inherited by their children, e.g.
# Airflow's task processes): `down` scans /proc for it to prove that nothing survives.
SPAWN_MARKER = "TFOPT_STACK_SPAWNED"


class StackError(Exception):
    """The stack cannot do what was asked; the message says what to change."""


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or {} when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and which ports it uses."""

    stack_dir: Path
    s3_port: int = 8333
    mlflow_port: int = 5000
    airflow_port: int = 8080
    postgres_port: int = 5432
    redis_port: int = 6379
    bucket: str = "tfopt"

    @classmethod
    def load(cls, environ: dict[str, str] | None = None) -> StackConfig:
        """From TFOPT_STACK_DIR / TFOPT_*_PORT / TFOPT_BUCKET, else what the stack dir recorded."""
        env = os.environ if environ is None else environ
        stack_dir = Path(env.get("TFOPT_STACK_DIR") or REPO / ".stack").expanduser().resolve()
        recorded = read_json(stack_dir / "stack.json")

        def port(var: str, key: str, default: int) -> int:
            value = env.get(var) or recorded.get(key) or default
            try:
                number = int(value)
            except ValueError:
                raise StackError(f"{var} must be a port number, got {value!r}") from None
            if not 1024 <= number <= 65525:
                raise StackError(f"{var} must be a port in 1024..65525, got {number}")
            return number

        return cls(
            stack_dir=stack_dir,
            s3_port=port("TFOPT_S3_PORT", "s3_port", 8333),
            mlflow_port=port("TFOPT_MLFLOW_PORT", "mlflow_port", 5000),
            airflow_port=port("TFOPT_AIRFLOW_PORT", "airflow_port", 8080),
            postgres_port=port("TFOPT_POSTGRES_PORT", "postgres_port", 5432),
            redis_port=port("TFOPT_REDIS_PORT", "redis_port", 6379),
            bucket=env.get("TFOPT_BUCKET") or recorded.get("bucket") or "tfopt",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack_dir": str(self.stack_dir),
            "s3_port": self.s3_port,
            "mlflow_port": self.mlflow_port,
            "airflow_port": self.airflow_port,
            "postgres_port": self.postgres_port,
            "redis_port": self.redis_port,
            "bucket": self.bucket,
        }

    @property
    def env_file(self) -> Path:
        return self.stack_dir / "stack.env"

    @property
    def run_dir(self) -> Path:
        return self.stack_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.stack_dir / "logs"

    @property
    def airflow_home(self) -> Path:
        return self.stack_dir / "airflow"

    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def airflow_url(self) -> str:
        return f"http://{HOST}:{self.airflow_port}"

    @property
    def postgres_url(self) -> str:
        """The SQLAlchemy URL of the cluster's Airflow database (psycopg 3, trust auth)."""
        return f"postgresql+psycopg://postgres@{HOST}:{self.postgres_port}/airflow"

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.redis_port}/0"


def recorded_mode(config: StackConfig) -> str:
    """The mode the last `up` wrote stack.env for (standalone when never started)."""
    return read_json(config.stack_dir / "stack.json").get("mode", STANDALONE)


def ensure_credentials(config: StackConfig) -> tuple[str, str]:
    """The S3 key pair of this stack dir: generated once into s3.json (mode 600), then reused."""
    path = config.stack_dir / "s3.json"
    if path.exists():
        try:
            credential = json.loads(path.read_text())["identities"][0]["credentials"][0]
            return credential["accessKey"], credential["secretKey"]
        except (ValueError, KeyError, IndexError) as exc:
            raise StackError(
                f"{path} is malformed ({exc!r}); delete it to generate a new one"
            ) from exc
    access_key = "TFOPT" + secrets.token_hex(8).upper()[:15]
    secret_key = secrets.token_urlsafe(30)
    template = string.Template((HERE / "s3.json.template").read_text())
    private_dir(config.stack_dir)
    write_private(path, template.substitute(access_key=access_key, secret_key=secret_key))
    return access_key, secret_key


def private_dir(path: Path) -> None:
    """Create `path` if needed and make it 0700, on every call (it holds credentials)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def write_private(path: Path, text: str) -> None:
    """Replace `path` by a new 0600 file holding `text` (an old file's mode is never kept)."""
    staging = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def ensure_cluster_secret(config: StackConfig) -> str:
    """The JWT secret every Airflow process of the cluster shares: generated once (mode 600)."""
    path = config.stack_dir / "airflow-jwt.secret"
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    private_dir(config.stack_dir)
    secret = secrets.token_urlsafe(48)
    write_private(path, secret + "\n")
    return secret


def stack_env(config: StackConfig, credentials: tuple[str, str]) -> dict[str, str]:
    """Every variable a client (Makefile, tests, `airflow dags test`) needs to use this stack."""
    access_key, secret_key = credentials
    home = config.airflow_home
    connection = {
        "conn_type": "aws",
        "login": access_key,
        "password": secret_key,
        "extra": {
            "endpoint_url": config.s3_url,
            "region_name": REGION,
            "config_kwargs": {"s3": {"addressing_style": "path"}},
        },
    }
    return {
        "TFOPT_STACK_DIR": str(config.stack_dir),
        "TFOPT_S3_ENDPOINT_URL": config.s3_url,
        "AWS_ENDPOINT_URL_S3": config.s3_url,
        "MLFLOW_S3_ENDPOINT_URL": config.s3_url,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": REGION,
        "TFOPT_BUCKET": config.bucket,
        "TFOPT_CACHE_DIR": str(config.stack_dir / "cache"),
        "MLFLOW_TRACKING_URI": config.mlflow_url,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__PARALLELISM": "4",
        # A task's supervisor notices its process has ended only when its wait for the next
        # heartbeat returns: at the default 5 s, every task held its executor slot ~5 s past its
        # end (a 0.4 s task took 5.5 s of a Celery slot). 1 s frees the slot within a second,
        # for one heartbeat per running task per second.
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{config.airflow_url}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(config.airflow_port),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(config.airflow_port + 1),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(config.airflow_port + 2),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW_CONN_TFOPT_S3": json.dumps(connection, separators=(",", ":")),
        "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps(
            {"conn_type": "http", "host": HOST, "port": config.mlflow_port, "schema": "http"},
            separators=(",", ":"),
        ),
    }


def cluster_env(
    config: StackConfig, credentials: tuple[str, str], jwt_secret: str
) -> dict[str, str]:
    """The standalone environment turned distributed: CeleryExecutor, PostgreSQL, Redis.

    Every Airflow process of the cluster (and every client) reads the same values; only the
    workers' log-server ports differ, per worker (see `cluster.worker_log_port`).
    """
    return {
        **stack_env(config, credentials),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": config.postgres_url,
        "AIRFLOW__CELERY__BROKER_URL": config.redis_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{config.postgres_url}",
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "default",
        "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
        "AIRFLOW__API__WORKERS": "1",
        # A worker killed mid-task: its task instance fails after this long and is retried.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
    }


def render_env(env: dict[str, str]) -> str:
    lines = ["# tfopt local stack: `source` this file to talk to it (written by stack.py up)"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    return "\n".join(lines) + "\n"


def write_env_file(config: StackConfig, env: dict[str, str]) -> None:
    private_dir(config.env_file.parent)
    write_private(config.env_file, render_env(env))


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a stack.env back into a dict (the inverse of `render_env`)."""
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            env[name] = shlex.split(value)[0] if value else ""
    return env
