"""A real `airflow standalone` for tests: its own home and DAGs folder, the test stack behind it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 90
REQUEST_ATTEMPTS = 3
DAG_FILES = ("optimize_model.py", "tfopt_airflow.py", "tfopt_models.py")
"""The repository's DAG files the test server loads (not retrain_model: it would train at once)."""


class AirflowError(AssertionError):
    """The test Airflow did something the test did not expect; the message has its log tail."""


@dataclass
class AirflowServer:
    """A running `airflow standalone` and a small REST client for it."""

    url: str
    home: Path
    log_path: Path
    user: str = "admin"
    password: str = field(default="", repr=False)
    _token: str = field(default="", repr=False)

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def token(self) -> str:
        if not self._token:
            body = {"username": self.user, "password": self.password}
            self._token = self._request("POST", "/auth/token", body, auth=False)["access_token"]
        return self._token

    def _request(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        attempt = 0
        while True:
            attempt += 1
            try:
                with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:  # noqa: S310
                    return json.loads(response.read() or b"null")
            except urllib.error.HTTPError as exc:
                raise AirflowError(f"{method} {path}: {exc.code} {exc.read()[:2000]!r}") from exc
            except (TimeoutError, urllib.error.URLError):
                # A busy 2-core machine can stall the API server; reads are safe to repeat.
                if method != "GET" or attempt >= REQUEST_ATTEMPTS:
                    raise
                time.sleep(5)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """Call `/api/v2<path>` with the admin's token."""
        return self._request(method, f"/api/v2{path}", body)

    def wait_for_dags(self, dag_ids: set[str], timeout_s: float = 180) -> None:
        """Until the DAG processor has parsed `dag_ids` (import errors fail at once)."""
        deadline = time.monotonic() + timeout_s
        while True:
            errors = self.api("GET", "/importErrors")["import_errors"]
            if errors:
                raise AirflowError(f"DAG import errors: {errors}")
            known = {dag["dag_id"] for dag in self.api("GET", "/dags?limit=100")["dags"]}
            if dag_ids <= known:
                return
            if time.monotonic() > deadline:
                raise AirflowError(f"DAGs {sorted(dag_ids - known)} not parsed in {timeout_s} s")
            time.sleep(2)

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        body = {"logical_date": None, "conf": conf or {}}
        return self.api("POST", f"/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns?order_by=start_date")["dag_runs"]

    def wait_for_run(self, dag_id: str, run_id: str | None = None, timeout_s: float = 600) -> dict:
        """The run (the first one when `run_id` is None) once it is finished."""
        deadline = time.monotonic() + timeout_s
        while True:
            runs = [r for r in self.runs(dag_id) if run_id in (None, r["dag_run_id"])]
            if runs and runs[0]["state"] in ("success", "failed"):
                return runs[0]
            if time.monotonic() > deadline:
                states = [(r["dag_run_id"], r["state"]) for r in runs]
                raise AirflowError(f"{dag_id} runs {states} not finished in {timeout_s} s")
            time.sleep(3)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        """`task_id[map index label]` -> state of every task instance of a run."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=200"
        instances = self.api("GET", path)["task_instances"]
        return {
            f"{ti['task_id']}[{ti.get('rendered_map_index') or ti['map_index']}]": ti["state"]
            for ti in instances
        }


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=3) as response:  # noqa: S310
            health = json.loads(response.read())
    except (OSError, ValueError):
        return False
    components = ("scheduler", "dag_processor", "triggerer")
    return all((health.get(name) or {}).get("status") == "healthy" for name in components)


def prepare_dags_folder(folder: Path, extra_files: dict[str, str]) -> None:
    """The repository's optimise DAG files (linked) plus the test's own DAG files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in DAG_FILES:
        (folder / name).symlink_to(REPO / "dags" / name)
    for name, source in extra_files.items():
        (folder / name).write_text(source)


@contextmanager
def airflow_standalone(
    stack_env: dict[str, str], home: Path, port: int, dags_folder: Path, models_file: Path
) -> Iterator[AirflowServer]:
    """Run `airflow standalone` on the stack's S3 and MLflow (connections from stack.env).

    Its database gets the benchmark pool first; the whole process group is stopped at the end.
    """
    from infra.local.bootstrap import migrate_airflow_db
    from infra.local.processes import port_free

    taken = [p for p in (port, port + 1, port + 2) if not port_free(p)]
    if taken:  # else the server dies on bind and the wait below times out after minutes
        raise AirflowError(
            f"port(s) {taken} on 127.0.0.1 are taken (an Airflow left by an interrupted test "
            "run?): stop it, or set TFOPT_TEST_PORT_OFFSET to use other ports"
        )
    home.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        **stack_env,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(port + 1),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(port + 2),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        # Task processes report to the API server; on a busy 2-core machine 5 s is not enough.
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
        "TFOPT_MODELS_CONFIG": str(models_file),
        "TFOPT_WORK_DIR": str(home / "work"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log_path = home / "standalone.log"
    migrate_airflow_db(
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], home / "migrated", env, home / "migrate.log"
    )
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [str(BIN / "airflow"), "standalone"],
            cwd=home,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = AirflowServer(url=url, home=home, log_path=log_path)
    try:
        _wait_healthy(server, process)
        passwords = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())
        server.password = passwords[server.user]
        yield server
    finally:
        _stop(process, home)


def _wait_healthy(server: AirflowServer, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _healthy(server.url):
        if process.poll() is not None:
            raise AirflowError(
                f"airflow standalone exited {process.returncode}:\n{server.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise AirflowError(
                f"airflow standalone not healthy in {START_TIMEOUT_S} s:\n{server.log_tail()}"
            )
        time.sleep(2)


def _stop(process: subprocess.Popen, home: Path) -> None:
    """SIGTERM the standalone's process group (it does not stop its children), then SIGKILL;
    then any task process it started in a group of its own (found by its AIRFLOW_HOME)."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    marker = f"AIRFLOW_HOME={home}".encode()
    for pid in _pids_with_environ(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def _pids_with_environ(marker: bytes) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environ:
                pids.append(int(entry.name))
    return pids
