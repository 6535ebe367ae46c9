"""The distributed stack for the `cluster` tier: started once per session, stopped at its end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.cluster.airflow_rest import AirflowRest

REPO = Path(__file__).resolve().parents[2]
STACK_SCRIPT = REPO / "infra" / "local" / "stack.py"
ARTIFACTS = REPO / "test-artifacts"
# Ports of their own: clear of `make up` (8333/5000/8080) and of the integration test stacks
# (18333/15050/18080 plus offsets up to 700).
CLUSTER_STACK = {
    "TFOPT_STACK_DIR": str(REPO / ".stack-test-cluster"),
    "TFOPT_S3_PORT": "28333",
    "TFOPT_MLFLOW_PORT": "25050",
    "TFOPT_AIRFLOW_PORT": "28080",
    "TFOPT_POSTGRES_PORT": "25432",
    "TFOPT_REDIS_PORT": "26379",
    "TFOPT_BUCKET": "tfopt",
}
START_TIMEOUT_S = 600
TIMINGS: dict[str, float] = {}


@dataclass
class Cluster:
    """The running cluster: its folder, client environment and an API client."""

    stack_dir: Path
    env: dict[str, str] = field(repr=False)
    api: AirflowRest

    def stack(self, *args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess:
        """Run `stack.py <args>` against this cluster."""
        return subprocess.run(
            [sys.executable, str(STACK_SCRIPT), *args],
            env={**os.environ, **CLUSTER_STACK},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def record_timing(name: str, seconds: float) -> None:
    """Keep a wall time for the session summary and test-artifacts/cluster-timings.json."""
    TIMINGS[name] = round(seconds, 1)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "cluster-timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")


def _login(stack_dir: Path) -> tuple[str, str]:
    passwords = json.loads(
        (stack_dir / "airflow" / "simple_auth_manager_passwords.json.generated").read_text()
    )
    user = "admin" if "admin" in passwords else sorted(passwords)[0]
    return user, passwords[user]


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """`stack.py up --cluster` for the session; `stack.py down` afterwards, proven complete."""
    from infra.local.stack_config import read_env_file

    stack_dir = Path(CLUSTER_STACK["TFOPT_STACK_DIR"])
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(STACK_SCRIPT), "up", "--cluster"],
        env={**os.environ, **CLUSTER_STACK},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    record_timing("cluster_up_s", time.monotonic() - started)
    env = read_env_file(stack_dir / "stack.env") if result.returncode == 0 else {}
    user, password = _login(stack_dir) if env else ("", "")
    api = AirflowRest(f"http://127.0.0.1:{CLUSTER_STACK['TFOPT_AIRFLOW_PORT']}", user, password)
    handle = Cluster(stack_dir=stack_dir, env=env, api=api)
    saved = {name: os.environ.get(name) for name in env}
    try:
        if result.returncode != 0:
            pytest.fail(
                f"stack.py up --cluster exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}",
                pytrace=False,
            )
        os.environ.update(env)
        api.login()
        yield handle
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _down_and_check(handle)


def _down_and_check(handle: Cluster) -> None:
    from infra.local.processes import survivors
    from infra.local.stack_config import StackConfig

    started = time.monotonic()
    result = handle.stack("down", timeout=300)
    record_timing("cluster_down_s", time.monotonic() - started)
    sys.stderr.write(f"\nstack.py down:\n{result.stdout}{result.stderr}")
    sys.stderr.write(f"cluster wall times (s): {json.dumps(TIMINGS)}\n")
    left = survivors(StackConfig.load(CLUSTER_STACK))
    assert result.returncode == 0 and not left, f"left running after down: {left}"
