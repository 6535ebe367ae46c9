"""The tfopt runs page in real headless Chromium, served by uvicorn over moto's S3 server."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.dags

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path(os.environ.get("TFOPT_CHROMIUM", "/usr/bin/chromium"))
BUCKET = "tfopt"
MODEL, RUN_ID = "mobilenet_v2", "manual__2025-11-26T10_00_00_00_00"

ROWS = [
    ("tf:fp32", "OK", "", 0.9125, 0.0, 21.3, 24.9, 46.9, 14_100_000, 0.0, 1.0),
    ("tflite:fp32", "OK", "", 0.9125, 0.0, 3.1, 3.6, 322.6, 14_000_000, 9.8, 6.87),
    ("tflite:fp16", "OK", "", 0.9125, 0.0, 3.6, 4.2, 277.8, 7_000_000, 10.4, 5.92),
    ("tflite:int8", "OK", "", 0.9075, -0.005, 3.1, 3.5, 325.1, 4_270_000, 14.2, 6.94),
    ("tftrt:fp16", "SKIPPED", "TensorFlow 2.21 has no TensorRT", *[None] * 8),
]
KEYS = (
    "variant status reason metric metric_delta p50_ms p99_ms throughput size_bytes "
    "conversion_s speedup"
).split()


REPORT_HTML = (
    b'<!doctype html><html><head><meta charset="utf-8"><style>body{font-family:sans-serif}'
    b"</style></head><body><h1>Report</h1><table><tr><td>tflite:int8</td></tr></table>"
    b'<img src="latency.png" alt="latency"><script>document.title = "scripted"</script>'
    b"</body></html>"
)


def _results() -> dict[str, Any]:
    return {
        "rows": [dict(zip(KEYS, row, strict=True)) for row in ROWS],
        "chosen": "tflite:int8",
        "info": {
            "model": MODEL,
            "run_id": RUN_ID,
            "hardware": "AMD EPYC 7B13 (2 vCPU, AVX2)",
            "objective": "latency",
            "accuracy_tolerance": 0.01,
            "latency_slo_ms": None,
            "selection_reason": "lowest p50 at batch 1 within 1.00 points of the baseline",
        },
        "registration": {
            "model_version": "3",
            "mlflow_run_url": "http://127.0.0.1:5000/#/experiments/1/runs/0f3c",
            "model_version_url": f"http://127.0.0.1:5000/#/models/{MODEL}/versions/3",
            "champion_reason": "v3 beats champion v2 (p50 3.1 ms vs 21.3 ms)",
        },
    }


def _plots() -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    measured = [row for row in ROWS if row[1] == "OK"]
    names = [row[0] for row in measured]
    out = {}
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    ax.barh(names, [row[5] for row in measured], color="#4c72b0")
    ax.set_xlabel("p50 latency at batch 1 (ms)")
    fig.tight_layout()
    out["latency.png"] = _png(fig)
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    ax.scatter([row[5] for row in measured], [row[3] * 100 for row in measured], color="#dd8452")
    for row in measured:
        ax.annotate(row[0], (row[5], row[3] * 100), fontsize=8)
    ax.set_xlabel("p50 latency (ms)")
    ax.set_ylabel("top-1 (%)")
    fig.tight_layout()
    out["accuracy_vs_latency.png"] = _png(fig)
    plt.close("all")
    return out


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Headless Chromium; missing is a skip on a laptop and a failure in CI (CI=true)."""
    if CHROMIUM.exists():
        return CHROMIUM
    message = f"{CHROMIUM} is missing: run infra/local/install-browser.sh"
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server with one published report (manifest last) and one half-written one."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _reset_moto(endpoint)  # moto's state is per process: start clean, leave clean
        _publish(endpoint)
        yield endpoint
    finally:
        _reset_moto(endpoint)
        server.stop()


def _reset_moto(endpoint: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


def _publish(endpoint: str) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket=BUCKET)
    files = {
        "results.json": json.dumps(_results()).encode(),
        "report.md": b"# report\n",
        "report.html": REPORT_HTML,
        **_plots(),
    }
    prefix = f"runs/{MODEL}/{RUN_ID}/reports/"
    for name, body in files.items():
        s3.put_object(Bucket=BUCKET, Key=prefix + name, Body=body)
    manifest = {"schema": 1, "files": dict.fromkeys(files, "0" * 64), "metadata": {}}
    s3.put_object(Bucket=BUCKET, Key=prefix + "_MANIFEST.json", Body=json.dumps(manifest))
    s3.put_object(Bucket=BUCKET, Key=f"runs/{MODEL}/half_written/reports/results.json", Body=b"{}")


class RequestLog:
    """ASGI wrapper recording (path, status) of every response."""

    def __init__(self, app: Any) -> None:
        self.app, self.seen = app, []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def record(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.seen.append((scope["path"], message["status"]))
            await send(message)

        await self.app(scope, receive, record)


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Serve the plugin app under /tfopt/ (as Airflow mounts it) with uvicorn on 127.0.0.1."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount

    for name in ("TFOPT_RUN_ROOT", "TFOPT_MLFLOW_UI_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("TFOPT_BUCKET", BUCKET)
    spec = importlib.util.spec_from_file_location("tfopt_plugin", REPO / "plugins/tfopt_plugin.py")
    plugin = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = plugin
    spec.loader.exec_module(plugin)
    servers = []

    def start(s3_endpoint: str) -> tuple[str, RequestLog]:
        monkeypatch.setenv("TFOPT_S3_ENDPOINT_URL", s3_endpoint)
        app = plugin.create_app(require_auth=False)
        log = RequestLog(Starlette(routes=[Mount("/tfopt", app)]))
        port = _free_port()
        config = uvicorn.Config(log, host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}/tfopt/", log

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def _chromium(browser: Path, tmp_path: Path, *args: str) -> str:
    command = [
        str(browser),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1400,1000",
        *args,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _screenshot(browser: Path, tmp_path: Path, url: str, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.unlink(missing_ok=True)
    _chromium(browser, tmp_path, f"--screenshot={path}", url)
    assert path.exists(), f"chromium wrote no screenshot for {url}"
    from PIL import Image

    with Image.open(path) as image:
        assert image.size == (1400, 1000)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000) or []
    assert path.stat().st_size > 20_000 and len(colours) > 50, f"{path} looks blank"
    return path


def test_runs_list_renders_in_chromium(
    chromium: Path, s3_endpoint: str, serve: Any, tmp_path: Path
) -> None:
    url, _ = serve(s3_endpoint)

    dom = _chromium(chromium, tmp_path, "--dump-dom", url)
    _screenshot(chromium, tmp_path, url, "plugin-runs.png")

    assert "Model optimisation runs" in dom
    assert RUN_ID in dom and "tflite:int8" in dom and "v3" in dom
    assert "half_written" not in dom


def test_run_report_renders_table_and_plots_in_chromium(
    chromium: Path, s3_endpoint: str, serve: Any, tmp_path: Path
) -> None:
    base, log = serve(s3_endpoint)
    url = f"{base}runs/{MODEL}/{RUN_ID}/"

    dom = _chromium(chromium, tmp_path, "--dump-dom", url)
    _screenshot(chromium, tmp_path, url, "plugin-run.png")

    for text in ("tf:fp32", "tflite:int8", "tftrt:fp16", "TensorFlow 2.21 has no TensorRT"):
        assert text in dom
    assert "90.75 %" in dom and "3.100 ms" in dom and "6.94×" in dom
    assert 'id="variants"' in dom
    plots = f"/tfopt/runs/{MODEL}/{RUN_ID}/files/"
    assert (plots + "latency.png", 200) in log.seen
    assert (plots + "accuracy_vs_latency.png", 200) in log.seen


def test_s3_outage_is_a_readable_page_in_chromium(
    chromium: Path, serve: Any, tmp_path: Path
) -> None:
    url, _ = serve(f"http://127.0.0.1:{_free_port()}")

    dom = _chromium(chromium, tmp_path, "--dump-dom", url)
    _screenshot(chromium, tmp_path, url, "plugin-s3-down.png")

    assert "Cannot read the optimisation runs from S3" in dom
    assert "Traceback" not in dom


def test_pipeline_report_page_is_sandboxed_but_shows_its_plots(
    chromium: Path, s3_endpoint: str, serve: Any, tmp_path: Path
) -> None:
    base, log = serve(s3_endpoint)
    files = f"{base}runs/{MODEL}/{RUN_ID}/files/"

    dom = _chromium(chromium, tmp_path, "--dump-dom", files + "report.html")

    assert "tflite:int8" in dom
    assert "<title>scripted</title>" not in dom, "the pipeline HTML must run no script"
    assert (f"/tfopt/runs/{MODEL}/{RUN_ID}/files/latency.png", 200) in log.seen
