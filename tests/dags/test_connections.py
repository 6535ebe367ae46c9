"""Airflow connections into tfopt's settings: S3 (amazon provider conventions) and MLflow (http)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import mlflow
import pytest

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
sys.path.insert(0, str(PLUGINS))

from tfopt_connections import mlflow_settings, s3_settings, tracking_uri  # noqa: E402

from tasks import storage  # noqa: E402
from tasks.errors import UserInputError  # noqa: E402
from tasks.tracking import MlflowSettings, use_mlflow  # noqa: E402


@pytest.mark.unit
@pytest.mark.parametrize(
    ("host", "schema", "port", "path", "expected"),
    [
        ("mlflow", "http", 5000, None, "http://mlflow:5000"),
        ("mlflow.example.com", "https", None, "team-a/", "https://mlflow.example.com/team-a"),
        ("http://127.0.0.1:5000", None, 5000, None, "http://127.0.0.1:5000"),
        ("https://mlflow", "http", 8443, None, "https://mlflow:8443"),
        ("mlflow", None, None, None, "http://mlflow"),
    ],
)
def test_tracking_uri_from_connection_parts(host, schema, port, path, expected):
    assert tracking_uri(host, schema, port, path) == expected


@pytest.mark.unit
def test_a_connection_without_host_says_what_to_set():
    with pytest.raises(UserInputError, match="has no host"):
        tracking_uri(None, "http", 5000, None)


@pytest.mark.unit
def test_use_mlflow_sets_and_restores_the_client_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://before:5000")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    settings = MlflowSettings("http://after:5000", username="u", password="secret-pw")
    with use_mlflow(settings):
        assert os.environ["MLFLOW_TRACKING_URI"] == "http://after:5000"
        assert os.environ["MLFLOW_TRACKING_USERNAME"] == "u"
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://before:5000"
    assert "MLFLOW_TRACKING_USERNAME" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://next:5000")
    assert mlflow.get_tracking_uri() == "http://next:5000"  # nothing in-process outlives it
    assert "secret-pw" not in repr(settings)


@pytest.mark.unit
def test_using_s3_is_the_process_default_for_the_block(monkeypatch):
    monkeypatch.setenv("TFOPT_S3_ENDPOINT_URL", "http://env:8333")
    configured = storage.S3Settings(endpoint_url="http://conn:9000", bucket="team-a")
    with storage.using_s3(configured):
        assert storage.current_s3_settings() == configured
        assert storage.default_run_root() == "s3://team-a/runs"
    assert storage.current_s3_settings().endpoint_url == "http://env:8333"


@pytest.fixture
def airflow_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


@pytest.mark.dags
def test_s3_settings_follow_the_amazon_provider_conventions(airflow_home, monkeypatch):
    connection = {
        "conn_type": "aws",
        "login": "AKIATEAM",
        "password": "team-secret",
        "extra": {
            "region_name": "eu-west-1",
            "endpoint_url": "http://global:1",
            "service_config": {"s3": {"endpoint_url": "http://s3:9000", "bucket_name": "team"}},
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_TEAM_S3", json.dumps(connection))

    settings = s3_settings("team_s3")

    assert settings.endpoint_url == "http://s3:9000"
    assert (settings.access_key_id, settings.secret_access_key) == ("AKIATEAM", "team-secret")
    assert (settings.region, settings.bucket) == ("eu-west-1", "team")
    assert "team-secret" not in repr(settings)


@pytest.mark.dags
def test_mlflow_settings_from_an_http_connection(airflow_home, monkeypatch):
    connection = {
        "conn_type": "http",
        "host": "mlflow.internal",
        "schema": "https",
        "port": 8443,
        "login": "svc",
        "password": "pw",
    }
    monkeypatch.setenv("AIRFLOW_CONN_TEAM_MLFLOW", json.dumps(connection))

    settings = mlflow_settings("team_mlflow")

    assert settings.tracking_uri == "https://mlflow.internal:8443"
    assert (settings.username, settings.password) == ("svc", "pw")


@pytest.mark.dags
def test_undefined_connections_fall_back_to_the_environment(airflow_home, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NOT_DEFINED", raising=False)
    monkeypatch.setenv("TFOPT_S3_ENDPOINT_URL", "http://env-s3:8333")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env-mlflow:5000")

    assert s3_settings("not_defined").endpoint_url == "http://env-s3:8333"
    assert mlflow_settings("not_defined").tracking_uri == "http://env-mlflow:5000"
