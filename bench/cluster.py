"""`make bench-cluster`: optimize_model on MobileNetV2 through the running `make cluster`, timed.

    make cluster && make bench-cluster        # then `make down`

Publishes MobileNetV2 1.0 at 224 px as `make bench` does (`bench.realsize_publish`, judged by the
`fidelity` metric, its gate opened with `accuracy_tolerance` 1.0 for the reason given in
`bench.run.orchestration_on_realsize`), triggers `optimize_model` through the cluster's REST API
as a user would, waits for it and reads every task instance's start and end.

The wall time runs from the moment the API created the run (its `queued_at`) to its end: what a
user who triggered it waits. The time in which at least one task instance ran is the union of
their (start, end) intervals; the orchestration overhead is the rest of the wall time, when no
task ran at all (the scheduler's loop, the Celery hand-off through Redis to a worker, a task
process's start before Airflow marks it running, the queues). Prints the figures and each task
instance's times, and writes them to bench/out/cluster.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.machine import LoadLog
from bench.orchestration import REPO, BenchError
from bench.run import run_json_module
from infra.local.airflow_rest import AirflowRest, AirflowRestError
from infra.local.stack_config import CLUSTER, StackConfig, recorded_mode
from tasks.hardware import describe_hardware, isa_label

logger = logging.getLogger("bench")

DAG_ID = "optimize_model"
MODEL = "mobilenet_v2"
RUN_TIMEOUT_S = 60 * 60
PUBLISH_TIMEOUT_S = 20 * 60
OVERHEAD_TARGET = 0.10
"""The README's target for the pipeline's orchestration overhead on MobileNetV2."""


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


def task_rows(instances: list[dict[str, Any]], origin: float) -> list[dict[str, Any]]:
    """Each task instance that ran: its start and end (s after `origin`), queue wait, host."""
    rows = []
    for ti in instances:
        start, end = _time(ti.get("start_date")), _time(ti.get("end_date"))
        if start is None or end is None or end < start:
            continue
        queued = _time(ti.get("queued_when"))
        index = ti.get("map_index", -1)
        rows.append(
            {
                "task": ti["task_id"] if index in (-1, None) else f"{ti['task_id']}[{index}]",
                "state": ti.get("state"),
                "queue": ti.get("queue"),
                "hostname": ti.get("hostname"),
                "try_number": ti.get("try_number"),
                "start_s": round(start - origin, 2),
                "end_s": round(end - origin, 2),
                "duration_s": round(end - start, 2),
                "queued_to_start_s": round(start - queued, 2) if queued is not None else None,
            }
        )
    return sorted(rows, key=lambda row: (row["start_s"], row["task"]))


def run_figures(run: dict[str, Any], instances: list[dict[str, Any]]) -> dict[str, Any]:
    """Wall time (from the run's creation to its end), task time, and the share of the wall
    time in which no task instance ran."""
    began = _time(run.get("queued_at")) or _time(run.get("start_date"))
    started, ended = _time(run.get("start_date")), _time(run.get("end_date"))
    if began is None or ended is None or ended <= began:
        raise BenchError(f"run {run.get('dag_run_id')} has no start and end: {run}")
    tasks = task_rows(instances, began)
    intervals = [(began + row["start_s"], began + row["end_s"]) for row in tasks]
    wall = ended - began
    busy = busy_seconds(intervals)
    return {
        "wall_s": round(wall, 2),
        "dag_run_s": round(ended - started, 2) if started is not None else None,
        "task_duration_sum_s": round(sum(row["duration_s"] for row in tasks), 2),
        "busy_s": round(busy, 2),
        "idle_s": round(wall - busy, 2),
        "overhead_share": round((wall - busy) / wall, 4),
        "overhead_target": OVERHEAD_TARGET,
        "overhead_passed": (wall - busy) / wall <= OVERHEAD_TARGET,
        "task_instances": len(tasks),
        "tasks": tasks,
    }


def render(document: dict[str, Any]) -> str:
    """The figures as the terminal shows them."""
    machine = document["machine"]
    verdict = "pass" if document["overhead_passed"] else "MISS"
    lines = [
        f"machine: {machine['cpu_model']}, {machine['usable_cores']} cores ({isa_label(machine)})",
        f"{document['model']} through the cluster (CeleryExecutor, PostgreSQL, Redis): "
        f"run {document['run_id']}, {document['state']}",
        f"  wall {document['wall_s']:.1f} s from the trigger to the run's end "
        f"(the run itself {document['dag_run_s']:.1f} s after the scheduler started it)",
        f"  {document['task_instances']} task instances ran, {document['task_duration_sum_s']:.1f}"
        f" s in all; at least one running during {document['busy_s']:.1f} s",
        f"  orchestration overhead (no task running): {document['idle_s']:.1f} s = "
        f"{document['overhead_share']:.1%} of the wall time (target <= "
        f"{document['overhead_target']:.0%}: {verdict})",
        f"  chosen: {document.get('selected') or '?'}",
        "",
        f"  {'task':<34} {'queue':<8} {'host':<10} {'start s':>8} {'took s':>8} {'wait s':>7}",
    ]
    for row in document["tasks"]:
        wait = row["queued_to_start_s"]
        lines.append(
            f"  {row['task']:<34} {row['queue'] or '':<8} {(row['hostname'] or '')[:10]:<10} "
            f"{row['start_s']:>8.1f} {row['duration_s']:>8.1f} "
            f"{'' if wait is None else f'{wait:.1f}':>7}"
            + ("" if row["state"] == "success" else f"  {row['state']}")
        )
    lines.append("  (wait: from queued to started)")
    lines.append(f"  machine load: {document['load']} (the cluster's processes count as other)")
    return "\n".join(lines)


def _client(config: StackConfig) -> AirflowRest:
    passwords = json.loads(
        (config.airflow_home / "simple_auth_manager_passwords.json.generated").read_text()
    )
    user = "admin" if "admin" in passwords else sorted(passwords)[0]
    api = AirflowRest(config.airflow_url, user, passwords[user])
    api.login()
    return api


def _selected(registered_model_name: str, run_id: str) -> str | None:
    """The variant the run chose, from its results.json (None when it cannot be read)."""
    from tasks import storage
    from tasks.config import RunContext

    try:
        ctx = RunContext.create(run_id, registered_model_name)
        return storage.get_json(ctx.uri("reports", "results.json"))["selection"]["chosen"]
    except Exception:  # noqa: BLE001 - the timing stands without it
        logger.warning("could not read the run's results.json", exc_info=True)
        return None


def measure(args: argparse.Namespace, config: StackConfig, load: LoadLog) -> dict[str, Any]:
    """Publish, trigger, wait; the run's figures (raises BenchError when it did not succeed)."""
    root = f"s3://{config.bucket}/bench/{MODEL}"
    with load.phase(f"{MODEL}: publish"):
        published = run_json_module(
            "bench.realsize_publish",
            MODEL,
            "--output-uri",
            root,
            "--if-missing",
            timeout=PUBLISH_TIMEOUT_S,
            log_path=args.out_dir / f"publish-{MODEL}.log",
        )
    conf = {
        **{k: published[k] for k in ("model_uri", "eval_data_uri", "calibration_data_uri")},
        "registered_model_name": args.registered_model_name,
        "batch_sizes": [1],
        "num_threads": args.threads,
        "metric": "fidelity",
        # timed, not judged: as in bench.run, the gate on random-init logits is opened
        "accuracy_tolerance": 1.0,
    }
    api = _client(config)
    api.wait_for_dag(DAG_ID)
    api.unpause(DAG_ID)
    for stale in api.fail_active_runs(DAG_ID):
        logger.warning("marked run %s, left active by an earlier stack, failed", stale)
    with load.phase(f"{MODEL}: optimize_model on the cluster"):
        triggered = time.monotonic()
        run_id = api.trigger(DAG_ID, conf)
        logger.info("triggered %s run %s on the cluster; waiting", DAG_ID, run_id)
        state = api.wait_finished(DAG_ID, run_id, args.timeout)
        polled = time.monotonic() - triggered
    run, instances = api.run(DAG_ID, run_id), api.task_instances(DAG_ID, run_id)
    document = {
        "model": MODEL,
        "conf": conf,
        "run_id": run_id,
        "state": state,
        "polled_s": round(polled, 1),
        **run_figures(run, instances),
    }
    if state != "success":
        failed = [ti["task_id"] for ti in instances if ti.get("state") == "failed"]
        raise BenchError(f"run {run_id} ended {state} (failed: {failed})", document)
    document["selected"] = _selected(conf["registered_model_name"], run_id)
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--registered-model-name", default=f"tfopt-bench-cluster-{MODEL}")
    parser.add_argument("--timeout", type=float, default=RUN_TIMEOUT_S, help="for the run, s")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s")
    config = StackConfig.load()
    if recorded_mode(config) != CLUSTER:
        print(f"bench.cluster: {config.stack_dir} is not the cluster; run `make cluster` first")
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / "cluster.json"
    load = LoadLog()
    head = {"created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    head["machine"] = describe_hardware()
    try:
        document = {**head, **measure(args, config, load)}
    except (BenchError, AirflowRestError) as exc:
        partial = exc.args[1] if len(exc.args) > 1 else {}
        failed = {**head, **partial, "error": str(exc.args[0]), "load_phases": load.phases}
        path.write_text(json.dumps(failed, indent=2, default=str))
        print(f"bench.cluster: failed: {exc.args[0]}\nJSON: {path}", file=sys.stderr)
        return 1
    document["load"] = load.summary()
    document["load_phases"] = load.phases
    path.write_text(json.dumps(document, indent=2, default=str))
    print(f"\n{render(document)}\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
