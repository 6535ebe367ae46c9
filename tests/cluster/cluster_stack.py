"""The cluster tier's shared settings: the cluster's ports, its handle, and the wall times."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from infra.local.airflow_rest import AirflowRest

REPO = Path(__file__).resolve().parents[2]
STACK_SCRIPT = REPO / "infra" / "local" / "stack.py"
ARTIFACTS = REPO / "test-artifacts"
# Ports of their own: clear of `make up` (8333/5000/8080) and of the integration test stacks
# (18333/15050/18080 plus offsets). TFOPT_TEST_PORT_OFFSET shifts them, and the folder with them.
_OFFSET = int(os.environ.get("TFOPT_TEST_PORT_OFFSET") or 0)
CLUSTER_STACK = {
    "TFOPT_STACK_DIR": str(REPO / f".stack-test-cluster{f'-{_OFFSET}' if _OFFSET else ''}"),
    "TFOPT_S3_PORT": str(28333 + _OFFSET),
    "TFOPT_MLFLOW_PORT": str(25050 + _OFFSET),
    "TFOPT_AIRFLOW_PORT": str(28080 + _OFFSET),
    "TFOPT_POSTGRES_PORT": str(25432 + _OFFSET),
    "TFOPT_REDIS_PORT": str(26379 + _OFFSET),
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
