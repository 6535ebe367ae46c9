"""The tfopt Airflow plugin: loading, the runs page over S3 (moto), and the MLflow extra links."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.dags

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
BUCKET = "tfopt"
MLFLOW = "http://mlflow.internal:5000"

RESULTS: dict[str, Any] = {
    "rows": [
        {
            "variant": "tf:fp32",
            "status": "OK",
            "reason": "",
            "metric": 0.9125,
            "metric_delta": 0.0,
            "p50_ms": 21.3,
            "p99_ms": 24.8,
            "throughput": 46.9,
            "size_bytes": 14_100_000,
            "conversion_s": 0.0,
            "speedup": 1.0,
        },
        {
            "variant": "tflite:int8",
            "status": "OK",
            "reason": "",
            "metric": 0.9075,
            "metric_delta": -0.005,
            "p50_ms": 3.1,
            "p99_ms": 3.9,
            "throughput": 322.6,
            "size_bytes": 4_270_000,
            "conversion_s": 14.2,
            "speedup": 6.87,
        },
        {
            "variant": "tftrt:fp16",
            "status": "SKIPPED",
            "reason": "<script>alert('x')</script> TensorFlow 2.21 has no TensorRT",
        },
    ],
    "chosen": "tflite:int8",
    "info": {"model": "mobilenet", "run_id": "manual__1", "objective": "latency"},
    "registration": {
        "model_version": "3",
        "mlflow_run_url": f"{MLFLOW}/#/experiments/1/runs/abc123",
        "model_version_url": "javascript:alert(1)",
    },
}
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def load_plugin_module() -> Any:
    """Import plugins/tfopt_plugin.py the way Airflow's plugin loader does (by file path)."""
    spec = importlib.util.spec_from_file_location("tfopt_plugin", PLUGINS / "tfopt_plugin.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def publish_report(
    s3: Any,
    model: str,
    run_id: str,
    results: dict[str, Any] | None = None,
    *,
    manifest: bool = True,
    plots: bool = True,
) -> None:
    """Put a report folder into S3 as the pipeline's report task does (manifest last)."""
    prefix = f"runs/{model}/{run_id}/reports/"
    files: dict[str, bytes] = {
        "results.json": json.dumps(results or RESULTS).encode(),
        "report.html": b"<!doctype html><title>report</title><table><tr><td>tf:fp32</td></tr>",
        "report.md": b"| variant |\n|---|\n| tf:fp32 |\n",
    }
    if plots:
        files.update({"latency.png": PNG, "accuracy_vs_latency.png": PNG})
    for name, body in files.items():
        s3.put_object(Bucket=BUCKET, Key=prefix + name, Body=body)
    if manifest:
        listing = {"schema": 1, "files": {name: "0" * 64 for name in files}, "metadata": {}}
        s3.put_object(Bucket=BUCKET, Key=prefix + "_MANIFEST.json", Body=json.dumps(listing))


def reset_moto(endpoint: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def plugin() -> Any:
    return load_plugin_module()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, plugin: Any) -> None:
    for name in (
        "TFOPT_S3_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL",
        "MLFLOW_S3_ENDPOINT_URL",
        "TFOPT_RUN_ROOT",
        "TFOPT_MLFLOW_UI_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("TFOPT_BUCKET", BUCKET)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", MLFLOW)
    plugin._clients.clear()
    plugin._results_cache.clear()


@pytest.fixture
def s3(s3_env: None) -> Any:
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def client(plugin: Any) -> Any:
    from fastapi.testclient import TestClient

    with TestClient(plugin.create_app(require_auth=False)) as test_client:
        yield test_client


# --- loading ------------------------------------------------------------------------------------

LOAD_CHECK = textwrap.dedent(
    """
    import json, sys
    from airflow import plugins_manager

    before = set(sys.modules)
    info = plugins_manager.get_plugin_info()
    loaded = set(sys.modules) - before
    heavy = ("boto3", "botocore", "mlflow", "tensorflow", "numpy", "fastapi", "jinja2")
    # The run listing rule is shared with the CLI; those modules use the standard library only.
    light_tasks = {"tasks", "tasks.errors", "tasks.runs", "tasks.storage"}
    print(json.dumps({
        "plugins": info,
        "errors": plugins_manager.get_import_errors(),
        "heavy": sorted(
            m for m in loaded
            if m.split(".")[0] in heavy or (m.startswith("tasks")
                and m not in light_tasks
                and not m.startswith("tasks.storage."))
        ),
    }, default=str))
    """
)


def airflow_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(PLUGINS),
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        **extra,
    )
    return env


def test_plugin_loads_through_airflow_plugins_manager(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_CHECK],
        env=airflow_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["errors"] == {}
    (tfopt,) = [p for p in report["plugins"] if p["name"] == "tfopt"]
    declared = " ".join(tfopt["global_operator_extra_links"])
    for link in ("MlflowRunLink", "ModelVersionLink", "OptimisationReportLink"):
        assert f"tfopt_plugin.{link} object" in declared
    assert [app["url_prefix"] for app in tfopt["fastapi_apps"]] == ["/tfopt"]
    (view,) = tfopt["external_views"]
    assert view["destination"] == "nav" and view["url_route"] == "tfopt"
    assert view["href"] == "/tfopt/"
    assert report["heavy"] == [], "the plugin module must import light"


def test_external_view_follows_api_base_url(plugin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/team-a")
    assert plugin.page_url() == "/team-a/tfopt/"
    assert plugin.page_url("m", "run 1") == "/team-a/tfopt/runs/m/run%201/"


# --- the runs page ------------------------------------------------------------------------------


def test_runs_list_shows_published_runs_newest_first(s3: Any, client: Any) -> None:
    publish_report(s3, "mobilenet", "manual__1")
    publish_report(s3, "resnet", "scheduled__2", {**RESULTS, "chosen": "tflite:fp16"})
    publish_report(s3, "mobilenet", "half_written", manifest=False)

    page = client.get("/")

    assert page.status_code == 200
    assert "manual__1" in page.text and "scheduled__2" in page.text
    assert "half_written" not in page.text, "a report folder without its manifest is incomplete"
    assert 'href="runs/mobilenet/manual__1/"' in page.text
    assert f'href="{MLFLOW}/#/experiments/1/runs/abc123"' in page.text
    assert "javascript:" not in page.text
    assert "v3" in page.text and "tflite:fp16" in page.text
    assert "Content-Security-Policy" in page.headers


def test_runs_are_listed_newest_first_and_limited(s3_env: None, plugin: Any) -> None:
    def obj(model: str, run_id: str, minute: int, name: str = "_MANIFEST.json") -> dict:
        key = f"runs/{model}/{run_id}/reports/{name}"
        return {"Key": key, "LastModified": datetime(2025, 1, 1, 0, minute, tzinfo=UTC)}

    pages = [
        {"KeyCount": 3, "Contents": [obj("a", "old", 1), obj("a", "old", 1, "results.json")]},
        {"KeyCount": 2, "Contents": [obj("b", "new", 9), obj("a", "mid", 5)]},
        {"KeyCount": 1, "Contents": [{"Key": "runs/a/x/variants/tf/_MANIFEST.json"}]},
    ]

    class Paginator:
        def paginate(self, **kwargs: Any) -> list[dict]:
            return pages

    store = plugin.ReportStore()
    store.client = type("Client", (), {"get_paginator": lambda self, name: Paginator()})()
    assert [e.run_id for e in store.list_runs()] == ["new", "mid", "old"]
    assert [e.run_id for e in store.list_runs(limit=1)] == ["new"]


def test_runs_list_filters_by_model(s3: Any, client: Any) -> None:
    publish_report(s3, "mobilenet", "manual__1")
    publish_report(s3, "resnet", "scheduled__2")

    page = client.get("/", params={"model": "resnet"})

    assert page.status_code == 200
    assert "scheduled__2" in page.text and "manual__1" not in page.text


def test_runs_list_empty_bucket_says_so(s3: Any, client: Any) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "No published optimisation report yet" in page.text


def test_run_page_shows_the_variant_table_and_plots(s3: Any, client: Any) -> None:
    publish_report(s3, "mobilenet", "manual__1")

    page = client.get("/runs/mobilenet/manual__1/")

    assert page.status_code == 200
    text = page.text
    for expected in ("tf:fp32", "tflite:int8", "tftrt:fp16", "90.75 %", "3.100 ms", "6.87×"):
        assert expected in text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in text, "reasons are escaped"
    assert "<script>alert" not in text
    assert '<tr class="chosen">' in text
    assert 'src="files/latency.png"' in text and 'src="files/accuracy_vs_latency.png"' in text
    assert f'href="{MLFLOW}/#/experiments/1/runs/abc123"' in text
    assert "javascript:" not in text, "only http(s) links are rendered"


def test_run_page_hides_plots_the_manifest_does_not_list(s3: Any, client: Any) -> None:
    publish_report(s3, "mobilenet", "manual__1", plots=False)
    text = client.get("/runs/mobilenet/manual__1/").text
    assert "files/latency.png" not in text and "This report has no plots" in text


def test_run_page_rewrites_mlflow_links_for_users(
    s3: Any, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TFOPT_MLFLOW_UI_URL", "https://mlflow.example.com")
    publish_report(s3, "mobilenet", "manual__1")
    text = client.get("/runs/mobilenet/manual__1/").text
    assert 'href="https://mlflow.example.com/#/experiments/1/runs/abc123"' in text


@pytest.mark.parametrize("path", ["/runs/mobilenet/nope/", "/runs/mobilenet/half_written/"])
def test_unknown_or_incomplete_run_is_404_with_a_message(s3: Any, client: Any, path: str) -> None:
    publish_report(s3, "mobilenet", "half_written", manifest=False)
    page = client.get(path)
    assert page.status_code == 404
    assert "No published report" in page.text


def test_report_files_are_streamed_from_s3(s3: Any, client: Any) -> None:
    publish_report(s3, "mobilenet", "manual__1")

    png = client.get("/runs/mobilenet/manual__1/files/latency.png")
    html = client.get("/runs/mobilenet/manual__1/files/report.html")

    assert png.status_code == 200 and png.content == PNG
    assert png.headers["content-type"] == "image/png"
    assert html.status_code == 200 and "tf:fp32" in html.text
    assert html.headers["content-security-policy"].startswith("sandbox")


@pytest.mark.parametrize(
    "name",
    ["_MANIFEST.json", "secret.txt", "..%2F..%2Fother%2Freports%2Fresults.json", "latency.png"],
)
def test_only_published_report_files_are_served(s3: Any, client: Any, name: str) -> None:
    publish_report(s3, "mobilenet", "manual__1", plots=False)
    s3.put_object(Bucket=BUCKET, Key="runs/mobilenet/manual__1/reports/latency.png", Body=PNG)
    s3.put_object(Bucket=BUCKET, Key="runs/mobilenet/manual__1/reports/secret.txt", Body=b"x")
    response = client.get(f"/runs/mobilenet/manual__1/files/{name}")
    assert response.status_code == 404


def test_unreachable_s3_shows_an_error_not_a_stack_trace(
    s3_env: None, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TFOPT_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")

    index = client.get("/")
    run = client.get("/runs/mobilenet/manual__1/")

    for page in (index, run):
        assert page.status_code == 503
        assert 'class="error"' in page.text and "Traceback" not in page.text
    assert "Cannot read the optimisation runs from S3" in index.text
    assert "Could not connect" in index.text


def test_missing_bucket_is_reported(s3: Any, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFOPT_BUCKET", "no-such-bucket")
    page = client.get("/")
    assert page.status_code == 503 and "NoSuchBucket" in page.text


def test_runs_root_can_be_moved(s3: Any, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFOPT_RUN_ROOT", f"s3://{BUCKET}/elsewhere/runs")
    s3.put_object(
        Bucket=BUCKET, Key="elsewhere/runs/m/r1/reports/_MANIFEST.json", Body=b'{"files": {}}'
    )
    s3.put_object(
        Bucket=BUCKET, Key="elsewhere/runs/m/r1/reports/results.json", Body=json.dumps(RESULTS)
    )
    page = client.get("/")
    assert "r1" in page.text and "s3://tfopt/elsewhere/runs/" in page.text


# --- extra links --------------------------------------------------------------------------------


class Key:
    dag_id, task_id, run_id, map_index = "optimize_model", "register", "manual__1", -1


REGISTER_RESULT = {
    "stage": "register",
    "status": "OK",
    "uris": {
        "model": "models:/mobilenet/3",
        "mlflow_run_url": f"{MLFLOW}/#/experiments/1/runs/abc123",
        "model_version_url": f"{MLFLOW}/#/models/mobilenet/versions/3",
    },
    "metrics": {"model_version": "3", "registered_model_name": "mobilenet"},
}


def links(plugin: Any) -> dict[str, Any]:
    return {link.name: link for link in plugin.TfoptPlugin.global_operator_extra_links}


@pytest.mark.parametrize(
    ("xcom", "expected_run", "expected_version"),
    [
        (
            REGISTER_RESULT,
            f"{MLFLOW}/#/experiments/1/runs/abc123",
            f"{MLFLOW}/#/models/mobilenet/versions/3",
        ),
        ({"mlflow_run_url": "https://mlflow.example.com/r"}, "https://mlflow.example.com/r", ""),
        (None, "", ""),
        (42, "", ""),
        ({"mlflow_run_url": "javascript:alert(1)"}, "", ""),
    ],
)
def test_links_come_from_the_task_result(
    plugin: Any,
    monkeypatch: pytest.MonkeyPatch,
    xcom: Any,
    expected_run: str,
    expected_version: str,
) -> None:
    monkeypatch.delenv("TFOPT_MLFLOW_UI_URL", raising=False)
    monkeypatch.setattr(plugin, "_task_return_value", lambda ti_key: xcom)
    by_name = links(plugin)
    assert by_name["MLflow run"].get_link(None, ti_key=Key()) == expected_run
    assert by_name["Model version"].get_link(None, ti_key=Key()) == expected_version


def test_links_use_the_public_mlflow_address(plugin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", MLFLOW)
    monkeypatch.setenv("TFOPT_MLFLOW_UI_URL", "https://mlflow.example.com/")
    monkeypatch.setattr(plugin, "_task_return_value", lambda ti_key: REGISTER_RESULT)
    link = links(plugin)["Model version"].get_link(None, ti_key=Key())
    assert link == "https://mlflow.example.com/#/models/mobilenet/versions/3"


def test_report_link_opens_the_plugin_page(plugin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    result = {"uris": {"report_uri": "s3://tfopt/runs/mobilenet/manual__1/reports"}}
    monkeypatch.setattr(plugin, "_task_return_value", lambda ti_key: result)
    assert links(plugin)["Optimisation report"].get_link(None, ti_key=Key()) == (
        "/plugin/tfopt/tfopt/runs/mobilenet/manual__1/"
    )


def test_link_is_hidden_when_xcom_cannot_be_read(
    plugin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(ti_key: Any) -> Any:
        raise RuntimeError("database is gone")

    monkeypatch.setattr(plugin, "_task_return_value", broken)
    assert links(plugin)["MLflow run"].get_link(None, ti_key=Key()) == ""


# --- inside a real Airflow ----------------------------------------------------------------------

LINK_DAG = textwrap.dedent(
    """
    import pendulum
    from airflow.sdk import DAG, task

    with DAG("optimize_model", schedule=None, start_date=pendulum.datetime(2025, 1, 1)) as dag:

        @task
        def register():
            return REGISTER_RESULT

        @task
        def benchmark():
            return {"status": "OK", "metrics": {"p50_ms": 3.1}}

        register() >> benchmark()
    """
)

AIRFLOW_CHECK = textwrap.dedent(
    """
    import json, os, runpy
    from airflow.utils.db import initdb

    initdb()
    dag = runpy.run_path(os.path.join(os.environ["AIRFLOW__CORE__DAGS_FOLDER"], "dag.py"))["dag"]
    run = dag.test()

    from fastapi.testclient import TestClient
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    client = TestClient(create_app())
    manager = get_auth_manager()
    viewer = manager.generate_jwt(SimpleAuthManagerUser(username="v", role="VIEWER"))
    nobody = manager.generate_jwt(SimpleAuthManagerUser(username="n", role=None))
    bearer = {"Authorization": f"Bearer {viewer}"}
    base = f"/api/v2/dags/optimize_model/dagRuns/{run.run_id}/taskInstances"
    out = {"state": str(run.state)}
    for task_id in ("register", "benchmark"):
        out[task_id] = client.get(f"{base}/{task_id}/links", headers=bearer).json()
    plugins = client.get("/api/v2/plugins", headers=bearer).json()["plugins"]
    out["views"] = [v for p in plugins if p["name"] == "tfopt" for v in p["external_views"]]
    out["anonymous"] = client.get("/tfopt/").status_code
    out["no_role"] = client.get("/tfopt/", cookies={"_token": nobody}).status_code
    page = client.get("/tfopt/", cookies={"_token": viewer})
    out["page"] = [page.status_code, page.text]
    out["icon"] = client.get("/tfopt/icon.svg").status_code
    print("RESULT " + json.dumps(out))
    """
)


def test_links_and_page_inside_airflow(tmp_path: Path) -> None:
    """A real task's XCom feeds the links (Airflow REST) and the API server serves the page."""
    from moto.server import ThreadedMotoServer

    (tmp_path / "dags").mkdir()
    dag_source = LINK_DAG.replace("REGISTER_RESULT", repr(REGISTER_RESULT))
    (tmp_path / "dags" / "dag.py").write_text(dag_source)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        import boto3

        reset_moto(endpoint)  # moto's state is per process: start clean, leave clean
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket=BUCKET)
        publish_report(s3, "mobilenet", "manual__1")
        env = airflow_env(
            tmp_path,
            TFOPT_S3_ENDPOINT_URL=endpoint,
            TFOPT_BUCKET=BUCKET,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            MLFLOW_TRACKING_URI=MLFLOW,
        )
        env.pop("TFOPT_MLFLOW_UI_URL", None)
        env.pop("TFOPT_RUN_ROOT", None)
        proc = subprocess.run(
            [sys.executable, "-c", AIRFLOW_CHECK],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        reset_moto(endpoint)
        server.stop()
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])

    assert out["state"] == "success"
    register, benchmark = out["register"]["extra_links"], out["benchmark"]["extra_links"]
    assert register["MLflow run"] == REGISTER_RESULT["uris"]["mlflow_run_url"]
    assert register["Model version"] == REGISTER_RESULT["uris"]["model_version_url"]
    assert not benchmark.get("MLflow run") and not benchmark.get("Model version")
    assert out["views"] and out["views"][0]["href"] == "/tfopt/"
    assert out["anonymous"] == 401 and out["no_role"] == 403
    status, text = out["page"]
    assert status == 200 and "manual__1" in text and "tflite:int8" in text
    assert out["icon"] == 200


def test_run_listing_time_is_recorded_in_utc(plugin: Any) -> None:
    entry = plugin.RunEntry("m", "r", datetime(2025, 1, 2, 3, 4, tzinfo=UTC))
    assert plugin._fmt_time(entry.published) == "2025-01-02 03:04 UTC"
