"""A small client of Airflow's REST API (v2), as a deployment's user drives it: log in, trigger
a run, wait for it, read its task instances. The cluster tests and `bench.cluster` use it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

FINISHED = {"success", "failed"}


class AirflowRestError(RuntimeError):
    """An API call failed: the method, path, status and the server's message."""


@dataclass
class AirflowRest:
    """Bearer-token calls to one Airflow API server (simple auth manager)."""

    base_url: str
    username: str
    password: str
    token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise AirflowRestError(f"an Airflow API URL is http(s)://, got {self.base_url!r}")

    def login(self) -> None:
        """POST /auth/token: a JWT for the later calls."""
        answer = self._call(
            "POST", "/auth/token", {"username": self.username, "password": self.password}
        )
        self.token = answer["access_token"]

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        url = f"{self.base_url}{path}"  # http(s) only, checked in __post_init__
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise AirflowRestError(f"{method} {path} -> {exc.code}: {detail}") from exc

    def wait_for_dag(self, dag_id: str, timeout_s: float = 180) -> dict[str, Any]:
        """The DAG once the dag-processor has serialised it."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self._call("GET", f"/api/v2/dags/{dag_id}")
            except AirflowRestError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def unpause(self, dag_id: str) -> None:
        answer = self._call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        if answer["is_paused"] is not False:
            raise AirflowRestError(f"{dag_id} is still paused: {answer}")

    def fail_active_runs(self, dag_id: str) -> list[str]:
        """Mark runs left queued or running (by an earlier session's `down`) failed; their ids."""
        path = f"/api/v2/dags/{dag_id}/dagRuns?state=queued&state=running&limit=100"
        runs = [run["dag_run_id"] for run in self._call("GET", path)["dag_runs"]]
        for run_id in runs:
            self._call("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", {"state": "failed"})
        return runs

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        """POST a DAG run with `conf`; its run id."""
        answer = self._call(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf}
        )
        return answer["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.run(dag_id, run_id)["state"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=200"
        return self._call("GET", path)["task_instances"]

    def wait_finished(self, dag_id: str, run_id: str, timeout_s: float) -> str:
        """Poll until the run succeeds or fails; its final state."""
        deadline = time.monotonic() + timeout_s
        while (state := self.run_state(dag_id, run_id)) not in FINISHED:
            if time.monotonic() > deadline:
                raise AirflowRestError(f"run {run_id} still {state} after {timeout_s:.0f} s")
            time.sleep(3)
        return state
