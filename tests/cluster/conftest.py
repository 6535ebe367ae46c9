"""The distributed stack for the `cluster` tier: started once per session, stopped at its end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.airflow_rest import AirflowRest
from tests.cluster.cluster_stack import (
    CLUSTER_STACK,
    STACK_SCRIPT,
    START_TIMEOUT_S,
    TIMINGS,
    Cluster,
    record_timing,
)


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
    left = survivors(StackConfig.load(CLUSTER_STACK))
    assert result.returncode == 0 and not left, f"left running after down: {left}"


def pytest_terminal_summary(terminalreporter) -> None:
    """The wall times this session measured (also in test-artifacts/cluster-timings.json)."""
    if TIMINGS:
        terminalreporter.write_sep("-", "cluster wall times (s)")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {seconds}")
