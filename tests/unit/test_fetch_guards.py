"""What fetch_tree refuses before downloading: buckets, run trees, oversize and foreign URIs."""

from __future__ import annotations

import pytest
from moto import mock_aws

from tasks import storage
from tasks.errors import UserInputError

pytestmark = pytest.mark.unit

BUCKET = "guard-bucket"


@pytest.fixture
def s3(monkeypatch, tmp_path):
    for name in ("TFOPT_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "TFOPT_BUCKET": BUCKET,
        "TFOPT_CACHE_DIR": str(tmp_path / "cache"),
        "TFOPT_RUN_ROOT": f"s3://{BUCKET}/runs",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TFOPT_ALLOWED_URI_PREFIXES", raising=False)
    storage.s3._cached_client.cache_clear()
    with mock_aws():
        client = storage.s3_client()
        client.create_bucket(Bucket=BUCKET)
        for key in ("models/m/saved_model.pb", "runs/demo/r1/export/saved_model.pb"):
            client.put_object(Bucket=BUCKET, Key=key, Body=b"x" * 1000)
        yield client
    storage.s3._cached_client.cache_clear()


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (f"s3://{BUCKET}", "whole bucket"),
        (f"s3://{BUCKET}/runs", "run tree"),
        (f"s3://{BUCKET}/runs/demo/r1", "run tree"),
    ],
)
def test_a_model_uri_must_name_a_model(s3, tmp_path, uri, message):
    with pytest.raises(UserInputError, match=message):
        storage.fetch_tree(uri, tmp_path / "dl", require_manifest=False)
    assert not (tmp_path / "dl").exists()  # refused before a single download


def test_an_oversized_folder_is_refused_before_download(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("TFOPT_MAX_FETCH_GB", str(500 / 1024**3))
    with pytest.raises(UserInputError, match="TFOPT_MAX_FETCH_GB"):
        storage.fetch_tree(f"s3://{BUCKET}/models/m", tmp_path / "dl", require_manifest=False)
    with pytest.raises(UserInputError, match="TFOPT_MAX_FETCH_GB"):  # a single model file too
        storage.fetch_tree(
            f"s3://{BUCKET}/models/m/saved_model.pb", tmp_path / "dl", require_manifest=False
        )
    monkeypatch.setenv("TFOPT_MAX_FETCH_GB", "1")
    got = storage.fetch_tree(f"s3://{BUCKET}/models/m", tmp_path / "dl", require_manifest=False)
    assert (got / "saved_model.pb").stat().st_size == 1000


def test_allowed_prefixes_restrict_what_is_read(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("TFOPT_ALLOWED_URI_PREFIXES", f"s3://{BUCKET}/data, s3://{BUCKET}/mod")
    with pytest.raises(UserInputError, match="TFOPT_ALLOWED_URI_PREFIXES"):
        storage.fetch_tree(f"s3://{BUCKET}/models/m", tmp_path / "dl", require_manifest=False)
    with pytest.raises(UserInputError, match="TFOPT_ALLOWED_URI_PREFIXES"):
        storage.fetch_tree(str(tmp_path), tmp_path / "dl", require_manifest=False)
    monkeypatch.setenv("TFOPT_ALLOWED_URI_PREFIXES", f"s3://{BUCKET}/models")
    got = storage.fetch_tree(f"s3://{BUCKET}/models/m", tmp_path / "dl", require_manifest=False)
    assert got.is_dir()


def test_is_under_compares_whole_segments(tmp_path):
    assert storage.is_under("s3://bkt/runs/m/r1", "s3://bkt/runs")
    assert storage.is_under("s3://bkt/runs", "s3://bkt/runs/")
    assert not storage.is_under("s3://bkt/runs-other/x", "s3://bkt/runs")
    assert not storage.is_under("s3://other/runs/x", "s3://bkt/runs")
    assert not storage.is_under("s3://bkt/runs/../x", "s3://bkt/runs")
    assert storage.is_under(tmp_path / "a" / "b", tmp_path)
    assert not storage.is_under(f"{tmp_path}/a/../../x", tmp_path)
    assert not storage.is_under("s3://bkt/runs/x", str(tmp_path))
