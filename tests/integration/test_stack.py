"""The local stack for real: tasks.storage against SeaweedFS, signatures enforced, MLflow on S3."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tasks import storage
from tasks.errors import UserInputError

pytestmark = pytest.mark.integration


def _boto3_client(stack, **overrides):
    import boto3
    from botocore.config import Config

    params = {
        "aws_access_key_id": stack.env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": stack.env["AWS_SECRET_ACCESS_KEY"],
        **overrides,
    }
    return boto3.client(
        "s3",
        endpoint_url=stack.s3_endpoint_url,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        **params,
    )


@pytest.fixture
def prefix(local_stack):
    """A fresh `s3://<bucket>/it/<uuid>` prefix, deleted afterwards."""
    uri = f"s3://{local_stack.bucket}/it/{uuid.uuid4().hex[:12]}"
    yield uri
    storage.delete_tree(uri)


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_status_reports_healthy_services_and_up_is_idempotent(local_stack):
    before = json.loads(local_stack.run("status", "--json").stdout)["services"]
    rows = {row["service"]: row for row in before}
    assert rows["seaweedfs"]["healthy"] and rows["mlflow"]["healthy"]
    started = time.monotonic()
    result = local_stack.run("up")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30  # nothing restarted (MLflow alone needs ~13 s)
    assert "already running" in result.stdout
    after = {
        row["service"]: row
        for row in json.loads(local_stack.run("status", "--json").stdout)["services"]
    }
    assert after["seaweedfs"]["pid"] == rows["seaweedfs"]["pid"]
    assert after["mlflow"]["pid"] == rows["mlflow"]["pid"]


def test_a_taken_port_is_a_clear_error(local_stack, tmp_path):
    port = local_stack.s3_endpoint_url.rsplit(":", 1)[1]
    started = time.monotonic()
    result = local_stack.run("up", TFOPT_STACK_DIR=str(tmp_path / "other"), TFOPT_S3_PORT=port)
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "TFOPT_S3_PORT" in result.stderr
    assert time.monotonic() - started < 30
    assert not list((tmp_path / "other" / "run").glob("*.pid"))


def test_s3_put_get_list_delete(local_stack, prefix, tmp_path):
    storage.put_json(f"{prefix}/reports/summary.json", {"variant": "tflite:int8", "p50_ms": 3.1})
    (tmp_path / "plot.png").write_bytes(b"\x89PNG fake")
    storage.put_file(tmp_path / "plot.png", f"{prefix}/reports/plot.png")
    assert storage.get_json(f"{prefix}/reports/summary.json")["p50_ms"] == 3.1
    assert storage.list_keys(prefix) == ["reports/plot.png", "reports/summary.json"]
    assert storage.exists(f"{prefix}/reports") and not storage.exists(f"{prefix}/nothing")
    storage.delete_tree(f"{prefix}/reports")
    assert storage.list_keys(prefix) == []


def test_publish_and_fetch_through_the_real_server(local_stack, prefix, tmp_path):
    files = {
        "saved_model.pb": b"graph" * 1000,
        "variables/variables.index": b"index",
        "variables/variables.data-00000-of-00001": bytes(range(256)) * 4096,  # 1 MiB
    }
    tree = _tree(tmp_path / "export", files)
    uri = f"{prefix}/export"
    manifest = storage.publish_tree(tree, uri, {"stage": "export"})
    assert storage.publish_tree(tree, uri) == manifest  # idempotent retry
    with pytest.raises(storage.PublishConflictError):
        storage.publish_tree(_tree(tmp_path / "other", {"saved_model.pb": b"x"}), uri)
    fetched = storage.fetch_tree(uri, tmp_path / "dl")
    assert storage.digest_tree(fetched) == manifest.files
    assert storage.read_manifest(uri).metadata == {"stage": "export"}
    # A corrupt object on the server is caught by the manifest's sha256 (cache off: no reuse).
    client = _boto3_client(local_stack)
    bucket, key = storage.parse_s3_uri(f"{uri}/saved_model.pb")
    client.put_object(Bucket=bucket, Key=key, Body=b"tampered")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TFOPT_CACHE_DIR", "off")
        with pytest.raises(storage.IntegrityError, match="corrupt"):
            storage.fetch_tree(uri, tmp_path / "dl2")


def test_fetch_user_folder_and_single_object(local_stack, prefix, tmp_path):
    client = _boto3_client(local_stack)
    bucket, key = storage.parse_s3_uri(prefix)
    client.put_object(Bucket=bucket, Key=f"{key}/data/shard-0.npz", Body=b"0")
    client.put_object(Bucket=bucket, Key=f"{key}/data/shard-1.npz", Body=b"1")
    client.put_object(Bucket=bucket, Key=f"{key}/models/m.keras", Body=b"keras")
    folder = storage.fetch_tree(f"{prefix}/data", tmp_path / "data", require_manifest=False)
    assert sorted(p.name for p in folder.iterdir()) == ["shard-0.npz", "shard-1.npz"]
    single = storage.fetch_tree(f"{prefix}/models/m.keras", tmp_path / "m", require_manifest=False)
    assert single.read_bytes() == b"keras"
    with pytest.raises(UserInputError, match="does not exist"):
        storage.fetch_tree(f"{prefix}/missing", tmp_path / "x", require_manifest=False)


def test_signatures_are_enforced(local_stack, monkeypatch):
    from botocore.exceptions import ClientError

    bad = _boto3_client(local_stack, aws_secret_access_key="not-the-secret")
    with pytest.raises(ClientError) as info:
        bad.list_objects_v2(Bucket=local_stack.bucket)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(urllib.error.HTTPError) as anonymous:  # unsigned request
        urllib.request.urlopen(f"{local_stack.s3_endpoint_url}/{local_stack.bucket}", timeout=5)
    assert anonymous.value.code == 403
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(UserInputError, match="check the credentials"):
        storage.exists(f"s3://{local_stack.bucket}/anything")


def test_missing_bucket_is_a_user_error_and_not_created(local_stack):
    uri = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x.json"
    with pytest.raises(UserInputError, match="does not exist"):
        storage.put_json(uri, {"a": 1})
    with pytest.raises(UserInputError, match="does not exist"):
        storage.fetch_tree(uri.rsplit("/", 1)[0] + "/model", "/tmp/unused")
    buckets = [b["Name"] for b in _boto3_client(local_stack).list_buckets()["Buckets"]]
    assert not any(name.startswith("no-such-bucket-") for name in buckets)


def test_mlflow_artifacts_land_in_the_s3_bucket(local_stack, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(local_stack.mlflow_tracking_uri)
    experiment_id = mlflow.create_experiment(f"it-stack-{uuid.uuid4().hex[:8]}")
    try:
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_param("variant", "tflite:int8")
            mlflow.log_metric("p50_ms", 3.1)
            mlflow.log_text("variant,p50_ms\ntflite:int8,3.1\n", "reports/summary.csv")
        run_id = run.info.run_id
        keys = [
            item["Key"]
            for page in _boto3_client(local_stack)
            .get_paginator("list_objects_v2")
            .paginate(Bucket=local_stack.bucket, Prefix="mlflow/")
            for item in page.get("Contents", [])
        ]
        assert f"mlflow/{experiment_id}/{run_id}/artifacts/reports/summary.csv" in keys
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/reports/summary.csv")
        assert text.startswith("variant,p50_ms")
        assert mlflow.get_run(run_id).data.metrics["p50_ms"] == 3.1
    finally:
        mlflow.delete_experiment(experiment_id)


SERVICE_SCRIPT = """
setsid bash -c 'echo $$ > escapee.pid; exec sleep 300' &  # left its session: the /proc scan
set -m                                   # later background jobs get process groups of their own
sleep 300 & echo $! > task.pid           # like an Airflow task process: own group, same session
bash -c 'trap "" TERM; echo $$ > stubborn.pid; while true; do sleep 1; done' &
wait
"""
PID_FILES = ("escapee.pid", "task.pid", "stubborn.pid")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_down_kills_the_session_its_process_groups_and_escapees(tmp_path):
    """What a service spawned dies with it, wherever it moved; then nothing is left."""
    from infra.local.processes import kill_survivors, spawn, stop_service, survivors
    from infra.local.services import Service
    from infra.local.stack_config import StackConfig

    config = StackConfig(stack_dir=tmp_path)
    config.run_dir.mkdir()
    config.log_dir.mkdir()
    service = Service(
        name="fake",
        port=None,
        port_var="-",
        url="-",
        command=["bash", "-c", SERVICE_SCRIPT],
        healthy=lambda: True,
        start_timeout_s=5,
        stop_timeout_s=3,
    )
    leader = spawn(service, config, {}).pid
    deadline = time.monotonic() + 10
    while not all((tmp_path / name).exists() for name in PID_FILES):
        assert time.monotonic() < deadline, "the fake service did not start its children"
        time.sleep(0.1)
    time.sleep(0.2)  # the files are written; let the writers finish
    escapee, *in_session = (int((tmp_path / name).read_text()) for name in PID_FILES)
    assert all(_alive(pid) for pid in (escapee, *in_session))
    assert stop_service(service, config)
    assert not _alive(leader) and not any(_alive(pid) for pid in in_session)
    assert _alive(escapee), "the setsid escapee is outside the session"
    found = kill_survivors(config, grace_s=2)
    assert [pid for pid, _ in found] == [escapee]
    assert not _alive(escapee) and survivors(config) == []
