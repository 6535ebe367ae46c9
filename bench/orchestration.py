"""The two ways to run the chain, timed: `tfopt optimize` and `airflow dags test optimize_model`.

Each run is a subprocess, so its wall time includes process start-up and imports. The stages'
own time comes from the CLI's progress lines and from the task instances in Airflow's database;
the rest of the wall time is orchestration overhead.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tasks import storage
from tasks.config import RunContext

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAG_ID = "optimize_model"
DB_ENV = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
RUN_TIMEOUT_S = 40 * 60
_PROGRESS = re.compile(r"^\[\s*(\d+)/(\d+)\] (.+): (\w+) \(([\d.]+) s\)")
_LOG_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\dT[\d:.]+Z) \[.*?(Task started|Task instance state updated)"
)
_TI_ID = re.compile(r"\bti_id=([0-9a-f-]+)")


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says where its log is."""


def child_env() -> dict[str, str]:
    """This environment with the venv's bin first on PATH and TensorFlow's C++ logs quiet."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_logged(
    cmd: list[str],
    log_path: Path,
    *,
    keep_stdout: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = RUN_TIMEOUT_S,
) -> tuple[str, float]:
    """Run `cmd` with stderr (and stdout unless `keep_stdout`) to `log_path`; (stdout, wall s)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        started = time.perf_counter()
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE if keep_stdout else log,
            stderr=log,
            text=True,
            env={**child_env(), **(env or {})},
            timeout=timeout,
        )
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd[:3])} exited with {proc.returncode}; log: {log_path}")
    return proc.stdout, wall


def parse_progress(stderr: str) -> list[dict[str, Any]]:
    """The CLI's finished-step lines `[ 3/26] tflite:int8 convert: OK (12.3 s)`."""
    steps = []
    for line in stderr.splitlines():
        match = _PROGRESS.match(line.strip())
        if match:
            steps.append({"label": match[3], "status": match[4], "seconds": float(match[5])})
    return steps


def run_cli(params: dict[str, Any], log_path: Path) -> dict[str, Any]:
    """`tfopt optimize ... --json` in a subprocess: results, wall time, per-stage seconds."""
    cmd = [str(BIN / "tfopt"), "optimize", "--json"]
    for key in ("model_uri", "eval_data_uri", "calibration_data_uri", "registered_model_name"):
        cmd += [f"--{key.replace('_', '-')}", str(params[key])]
    cmd += ["--batch-sizes", ",".join(map(str, params["batch_sizes"]))]
    cmd += ["--num-threads", str(params["num_threads"])]
    if params.get("metric"):
        cmd += ["--metric", str(params["metric"])]
    if params.get("accuracy_tolerance") is not None:
        cmd += ["--accuracy-tolerance", str(params["accuracy_tolerance"])]
    stdout, wall = run_logged(cmd, log_path)
    log_path.with_suffix(".json").write_text(stdout)
    results = json.loads(stdout)
    steps = parse_progress(log_path.read_text())
    stage_sum = sum(step["seconds"] for step in steps)
    return {
        "results": results,
        "wall_s": round(wall, 2),
        "in_process_s": results.get("wall_s"),
        "stage_sum_s": round(stage_sum, 2),
        "stages": steps,
        "log": str(log_path),
    }


def private_airflow_db() -> Path:
    """The stack's own database for `airflow dags test` (see infra/local/stack.py)."""
    from infra.local.stack import StackConfig, dags_test_db

    return Path(dags_test_db(StackConfig.load()).removeprefix("sqlite:///"))


def _seconds(start: str | None, end: str | None) -> float:
    if not start or not end:
        return 0.0
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _find_run(db: sqlite3.Connection, after_id: int, conf: dict[str, Any]) -> tuple:
    """Our run: newer than `after_id`, triggered with exactly `conf` (others share the DB)."""
    rows = db.execute(
        "SELECT id, run_id, start_date, end_date, state, conf FROM dag_run "
        "WHERE dag_id = ? AND id > ? ORDER BY id",
        (DAG_ID, after_id),
    ).fetchall()
    for row in rows:
        try:
            if json.loads(row[5] or "{}") == conf:
                return row
        except ValueError:
            continue
    raise BenchError("airflow dags test left no dag run with our conf in the Airflow database")


def dag_run_tasks(db_path: Path, after_id: int, conf: dict[str, Any]) -> dict[str, Any]:
    """Our `optimize_model` run (id > `after_id`, triggered with `conf`) and its tasks' times."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        row = _find_run(db, after_id, conf)
        tasks = db.execute(
            "SELECT task_id, map_index, id, duration, state, queued_by_job_id "
            "FROM task_instance WHERE dag_id = ? AND run_id = ? ORDER BY start_date",
            (DAG_ID, row[1]),
        ).fetchall()
    return {
        "run_id": row[1],
        "state": row[4],
        "dag_run_s": round(_seconds(row[2], row[3]), 2),
        "queued_by_scheduler": sum(1 for task in tasks if task[5] is not None),
        "tasks": [
            {
                "task": task if index < 0 else f"{task}[{index}]",
                "ti_id": str(ti_id).replace("-", ""),
                "seconds": round(duration or 0.0, 3),
                "state": state,
            }
            for task, index, ti_id, duration, state, _ in tasks
        ],
    }


def last_dag_run_id(db_path: Path) -> int:
    """The id of the newest dag run of `optimize_model` (0 when there is none)."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        row = db.execute("SELECT MAX(id) FROM dag_run WHERE dag_id = ?", (DAG_ID,)).fetchone()
    return int(row[0] or 0)


def task_bodies(log_text: str) -> dict[str, float]:
    """Seconds each task instance's own code ran: from the execution API's "Task started" to
    its final "Task instance state updated", read from `airflow dags test`'s log (by ti_id)."""
    started: dict[str, datetime] = {}
    ended: dict[str, datetime] = {}
    for line in log_text.splitlines():
        match, ti = _LOG_LINE.match(line), _TI_ID.search(line)
        if not match or not ti:
            continue
        stamp = datetime.fromisoformat(match[1].replace("Z", "+00:00"))
        if match[2] == "Task started":
            started.setdefault(ti[1], stamp)
        elif ti[1] in started:
            ended[ti[1]] = stamp
    return {
        ti.replace("-", ""): (ended[ti] - started[ti]).total_seconds()
        for ti in started
        if ti in ended
    }


def run_dag(params: dict[str, Any], log_path: Path, db_path: Path) -> dict[str, Any]:
    """`airflow dags test optimize_model -c <conf>` on the metadata DB `db_path`: results.json,
    wall time, task times."""
    before = last_dag_run_id(db_path)
    cmd = [str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(params)]
    env = {DB_ENV: f"sqlite:///{db_path}"}
    _, wall = run_logged(cmd, log_path, keep_stdout=False, env=env)
    run = dag_run_tasks(db_path, before, params)
    if run["state"] != "success":
        raise BenchError(f"dag run {run['run_id']} ended {run['state']}; log: {log_path}")
    ctx = RunContext.create(run["run_id"], params["registered_model_name"])
    results = storage.get_json(ctx.uri("reports", "results.json"))
    bodies = task_bodies(log_path.read_text())
    for task in run["tasks"]:
        task["body_s"] = round(bodies[task["ti_id"]], 3) if task["ti_id"] in bodies else None
    task_sum = sum(task["seconds"] for task in run["tasks"])
    return {
        "results": {"run_id": ctx.run_id, "root_uri": ctx.root_uri, **results},
        "wall_s": round(wall, 2),
        "dag_run_s": run["dag_run_s"],
        "queued_by_scheduler": run["queued_by_scheduler"],
        "task_duration_sum_s": round(task_sum, 2),
        "stage_sum_s": round(sum(bodies.values()), 2) if bodies else round(task_sum, 2),
        "stage_source": "task bodies (dags test log)" if bodies else "task durations (DB)",
        "task_bodies_found": len(bodies),
        "stages": run["tasks"],
        "log": str(log_path),
    }


_PARSE_SNIPPET = """
import runpy, sys, time
import airflow.sdk
sys.path.insert(0, sys.argv[2])
started = time.perf_counter()
runpy.run_path(sys.argv[1], run_name="dag_parse")
print(time.perf_counter() - started)
"""


def dag_parse_seconds(dag_file: Path, repeats: int = 5) -> dict[str, Any]:
    """Seconds to run the DAG file after `import airflow.sdk`, each time in a fresh process."""
    times = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", _PARSE_SNIPPET, str(dag_file), str(dag_file.parent)],
            capture_output=True,
            text=True,
            env=child_env(),
            check=True,
            timeout=120,
        ).stdout
        times.append(float(out.strip().splitlines()[-1]))
    return {"file": str(dag_file.relative_to(REPO)), "best_s": min(times), "all_s": times}
