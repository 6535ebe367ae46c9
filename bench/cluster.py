"""`make bench-cluster`: optimize_model on MobileNetV2 through the running `make cluster`, timed.

    make cluster && make bench-cluster        # then `make down`

Publishes MobileNetV2 1.0 at 224 px (`bench.realsize_publish`, judged by the `fidelity` metric),
triggers `optimize_model` through the REST API as a user would, waits for it, and reads every
task instance's start and end. Prints the run's wall time, the sum of the task instances'
durations, the time in which at least one task ran (the union of their intervals) and the
orchestration overhead: the share of the run's wall time in which no task ran at all (the
scheduler, the Celery hand-off to a worker, the queues). Writes bench/out/cluster.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.orchestration import REPO, BenchError
from bench.run import run_json_module
from infra.local.airflow_rest import AirflowRest
from tasks.hardware import describe_hardware, isa_label

logger = logging.getLogger("bench")

DAG_ID = "optimize_model"
MODEL = "mobilenet_v2"
RUN_TIMEOUT_S = 60 * 60


def _time(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp).timestamp() if stamp else None


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one of the (start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def run_figures(run: dict[str, Any], instances: list[dict[str, Any]]) -> dict[str, Any]:
    """Wall time, task time and the share of the wall time in which no task ran."""
    began, ended = _time(run.get("start_date")), _time(run.get("end_date"))
    if began is None or ended is None or ended <= began:
        raise BenchError(f"run {run.get('dag_run_id')} has no start and end: {run}")
    intervals = []
    for ti in instances:
        start, end = _time(ti.get("start_date")), _time(ti.get("end_date"))
        if start is not None and end is not None and end >= start:
            intervals.append((start, end))
    wall = ended - began
    busy = busy_seconds(intervals)
    return {
        "wall_s": round(wall, 2),
        "task_duration_sum_s": round(sum(end - start for start, end in intervals), 2),
        "busy_s": round(busy, 2),
        "idle_s": round(wall - busy, 2),
        "overhead_share": round((wall - busy) / wall, 4),
        "task_instances": len(intervals),
    }


def _client(stack_dir: Path) -> AirflowRest:
    passwords = json.loads(
        (stack_dir / "airflow" / "simple_auth_manager_passwords.json.generated").read_text()
    )
    user = "admin" if "admin" in passwords else sorted(passwords)[0]
    port = os.environ.get("AIRFLOW__API__PORT", "8080")
    api = AirflowRest(f"http://127.0.0.1:{port}", user, passwords[user])
    api.login()
    return api


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s")
    stack_dir = Path(os.environ.get("TFOPT_STACK_DIR") or REPO / ".stack")
    if "CeleryExecutor" not in (stack_dir / "stack.env").read_text():
        print(
            "bench.cluster: the stack is not the cluster; run `make cluster` first", file=sys.stderr
        )
        return 2
    root = f"s3://{os.environ.get('TFOPT_BUCKET', 'tfopt')}/bench/{MODEL}"
    try:
        published = run_json_module(
            "bench.realsize_publish", MODEL, "--output-uri", root, "--if-missing"
        )
    except BenchError as exc:
        print(f"bench.cluster: failed: {exc}", file=sys.stderr)
        return 1
    conf = {
        **{k: published[k] for k in ("model_uri", "eval_data_uri", "calibration_data_uri")},
        "registered_model_name": f"tfopt-bench-cluster-{MODEL}",
        "batch_sizes": [1],
        "num_threads": args.threads,
        "metric": "fidelity",
    }
    api = _client(stack_dir)
    api.wait_for_dag(DAG_ID)
    api.unpause(DAG_ID)
    run_id = api.trigger(DAG_ID, conf)
    logger.info("triggered %s run %s on the cluster; waiting", DAG_ID, run_id)
    started = time.monotonic()
    state = api.wait_finished(DAG_ID, run_id, RUN_TIMEOUT_S)
    instances = api.task_instances(DAG_ID, run_id)
    if state != "success":
        failed = [ti["task_id"] for ti in instances if ti["state"] == "failed"]
        print(f"bench.cluster: run {run_id} ended {state} (failed: {failed})", file=sys.stderr)
        return 1
    figures = run_figures(api.run(DAG_ID, run_id), instances)
    machine = describe_hardware()
    document = {
        "machine": machine,
        "model": MODEL,
        "conf": conf,
        "run_id": run_id,
        "polled_s": round(time.monotonic() - started, 1),
        **figures,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / "cluster.json"
    path.write_text(json.dumps(document, indent=2, default=str))
    print(
        f"\nmachine: {machine['cpu_model']}, {machine['usable_cores']} cores ({isa_label(machine)})"
        f"\n{MODEL} through the cluster (CeleryExecutor, PostgreSQL, Redis): run {run_id}"
        f"\n  wall {figures['wall_s']:.1f} s; {figures['task_instances']} task instances, "
        f"{figures['task_duration_sum_s']:.1f} s in all; some task running {figures['busy_s']:.1f}"
        f" s\n  overhead (no task running): {figures['idle_s']:.1f} s = "
        f"{figures['overhead_share']:.1%} of the wall time (target <= 10%)\nJSON: {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
