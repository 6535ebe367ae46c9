"""optimize_model on the distributed stack: Celery queues, the GPU lane, a killed worker."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.cluster.cluster_stack import CLUSTER_STACK, Cluster, record_timing

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

DAG_ID = "optimize_model"
VARIANTS = ["tf:fp32", "tflite:int8", "tftrt:fp16"]
RUN_TIMEOUT_S = 900
CPU_NODE, GPU_NODE = "cpu@", "gpu@"


@pytest.fixture(scope="module")
def published_model(cluster: Cluster, tiny_bundle) -> dict[str, str]:
    """The tiny trained model and its eval/calibration shards, uploaded to the cluster's S3."""
    from tasks import storage

    root = f"s3://{cluster.env['TFOPT_BUCKET']}/cluster-test/{uuid.uuid4().hex[:8]}"
    model = Path(tiny_bundle["model"])
    storage.put_file(model, f"{root}/model/{model.name}")
    for name in ("eval", "calibration"):
        for shard in sorted(Path(tiny_bundle[name]).iterdir()):
            storage.put_file(shard, f"{root}/{name}/{shard.name}")
    return {
        "model_uri": f"{root}/model/{model.name}",
        "eval_data_uri": f"{root}/eval",
        "calibration_data_uri": f"{root}/calibration",
    }


@pytest.fixture(scope="module")
def dag_ready(cluster: Cluster) -> None:
    cluster.api.wait_for_dag(DAG_ID)
    cluster.api.fail_active_runs(DAG_ID)  # max_active_runs=1: a leftover run would block ours
    cluster.api.unpause(DAG_ID)


def _conf(model: dict[str, str], name: str) -> dict:
    return {
        **model,
        "registered_model_name": name,
        "variants": VARIANTS,
        "batch_sizes": [1],
        "num_threads": 1,
        "accuracy_tolerance": 0.05,
    }


def _versions(cluster: Cluster, name: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=cluster.env["MLFLOW_TRACKING_URI"])
    return client.search_model_versions(f"name = '{name}'")


def _is_gpu_lane(task_id: str) -> bool:
    return task_id.endswith("_gpu")


def test_tasks_run_on_their_queues_workers_and_a_version_is_registered(
    cluster, dag_ready, published_model
):
    name = f"cluster-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    run_id = cluster.api.trigger(DAG_ID, _conf(published_model, name))
    state = cluster.api.wait_finished(DAG_ID, run_id, RUN_TIMEOUT_S)
    record_timing("optimize_run_s", time.monotonic() - started)
    instances = cluster.api.task_instances(DAG_ID, run_id)
    assert state == "success", [(ti["task_id"], ti["state"]) for ti in instances]

    bookkeeping = {"gpu_variants", "variant_gpu"}  # list / report the lane; any worker will do
    gpu = [
        ti for ti in instances if _is_gpu_lane(ti["task_id"]) and ti["task_id"] not in bookkeeping
    ]
    cpu = [ti for ti in instances if ti not in gpu]
    assert {ti["task_id"] for ti in gpu} == {"convert_validate_gpu", "benchmark_gpu"}
    for ti in gpu:  # TF-TRT: routed to the gpu worker, which reports it SKIPPED here
        assert ti["queue"] == "gpu", ti
        if ti["task_id"] == "convert_validate_gpu":
            assert ti["hostname"].startswith(GPU_NODE), ti
            assert ti["state"] == "skipped", ti
    ran_cpu = [ti for ti in cpu if ti["state"] == "success"]
    assert {"export", "convert_validate_cpu", "benchmark_cpu", "register", "report"} <= {
        ti["task_id"] for ti in ran_cpu
    }
    for ti in ran_cpu:
        assert ti["queue"] == "default", ti
        assert ti["hostname"].startswith(CPU_NODE), ti
    assert len(_versions(cluster, name)) == 1


def _kill_worker(cluster: Cluster, name: str) -> int:
    """SIGKILL the worker's whole session (its task processes with it); the leader's pid."""
    from infra.local.processes import members, running_pid, signal_session
    from infra.local.stack_config import StackConfig

    config = StackConfig.load(CLUSTER_STACK)
    leader = running_pid(config, name)
    assert leader is not None, f"{name} does not run"
    signal_session(leader, config, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while members(leader, config) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not members(leader, config), "the killed worker's session is still alive"
    return leader


def _wait_running_on_cpu(cluster: Cluster, run_id: str, timeout_s: float = 600) -> dict:
    """The first retryable task instance seen running on the default worker."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for ti in cluster.api.task_instances(DAG_ID, run_id):
            if (
                ti["state"] == "running"
                and ti["task_id"] in ("export", "prepare_data", "convert_validate_cpu")
                and (ti.get("hostname") or "").startswith(CPU_NODE)
            ):
                return ti
        time.sleep(0.5)
    raise AssertionError(f"no CPU-lane task ran within {timeout_s:.0f} s")


def test_a_worker_killed_mid_task_is_replaced_and_the_task_retried(
    cluster, dag_ready, published_model
):
    name = f"cluster-kill-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    run_id = cluster.api.trigger(DAG_ID, _conf(published_model, name))
    victim = _wait_running_on_cpu(cluster, run_id)
    _kill_worker(cluster, "worker-default")
    killed_at = time.monotonic()
    restart = cluster.stack("up", "--cluster")
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert "worker-default: started" in restart.stdout
    record_timing("worker_restart_s", time.monotonic() - killed_at)

    state = cluster.api.wait_finished(DAG_ID, run_id, RUN_TIMEOUT_S)
    record_timing("run_with_killed_worker_s", time.monotonic() - started)
    instances = cluster.api.task_instances(DAG_ID, run_id)
    assert state == "success", [(ti["task_id"], ti["state"]) for ti in instances]
    retried = next(
        ti
        for ti in instances
        if ti["task_id"] == victim["task_id"] and ti["map_index"] == victim["map_index"]
    )
    assert retried["state"] == "success" and retried["try_number"] > victim["try_number"], retried
    assert retried["hostname"].startswith(CPU_NODE)
    assert len(_versions(cluster, name)) == 1


def _task_processes(config) -> list[int]:
    """Live task processes of this cluster (Airflow titles them `airflow worker -- <ti id>`)."""
    from infra.local.processes import all_processes, command_line, spawned_by

    return [
        info.pid
        for info in all_processes()
        if info.alive
        and command_line(info.pid).startswith("airflow worker --")
        and spawned_by(info.pid, config)
    ]


def test_down_mid_task_leaves_no_process(cluster, dag_ready, published_model):
    """Runs last: `stack.py down` while a task runs stops the task process too."""
    from infra.local.processes import proc_info, survivors
    from infra.local.stack_config import StackConfig

    config = StackConfig.load(CLUSTER_STACK)
    run_id = cluster.api.trigger(
        DAG_ID, _conf(published_model, f"cluster-down-{uuid.uuid4().hex[:8]}")
    )
    deadline = time.monotonic() + 600
    while not (tasks := _task_processes(config)):
        assert time.monotonic() < deadline, f"no task process of run {run_id} seen in 600 s"
        time.sleep(0.3)
    started = time.monotonic()
    result = cluster.stack("down", timeout=300)
    record_timing("down_mid_task_s", time.monotonic() - started)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no process spawned by" in result.stdout
    still_alive = [pid for pid in tasks if (info := proc_info(pid)) and info.alive]
    assert not still_alive and not _task_processes(config) and survivors(config) == []
