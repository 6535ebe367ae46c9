"""The cluster tier's shared settings: the cluster's ports, its handle, and the wall times."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

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
