"""S3 stopped mid-publish and corrupted files in the cache and in S3, on the real stack."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from tasks import storage
from tasks.errors import TransientError
from tests.faults.readers import half_published_trusted

pytestmark = pytest.mark.faults


def _tree(root: Path, files: int = 24, size: int = 64 * 1024) -> Path:
    rng = np.random.default_rng(7)
    for index in range(files):
        path = root / f"part-{index // 8}" / f"blob-{index:02d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.bytes(size))
    return root


def test_s3_stopped_mid_publish(local_stack, outcome, tmp_path, monkeypatch):
    tree = _tree(tmp_path / "tree")
    base = f"s3://{local_stack.bucket}/faults/{uuid.uuid4().hex[:8]}"
    uri, clean_uri = f"{base}/variant", f"{base}/clean"
    client = storage.s3_client()
    original = client.upload_file
    calls, guard = [0], threading.Lock()

    def upload(*args, **kwargs):
        with guard:
            calls[0] += 1
            stop_now = calls[0] == 4
        if stop_now:
            assert local_stack.run("down", "seaweedfs", timeout=180).returncode == 0
            outcome.faults += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(client, "upload_file", upload)
    try:
        with pytest.raises(TransientError, match="S3"):
            storage.publish_tree(tree, uri)
    finally:
        started = local_stack.run("up", timeout=420)
    assert started.returncode == 0, started.stdout + started.stderr
    monkeypatch.setattr(client, "upload_file", original)
    assert 0 < len(storage.list_keys(uri)) < 24  # a partial tree is really there
    outcome.trusted = half_published_trusted(uri, tmp_path / "reader")
    assert outcome.trusted == 0

    manifest = storage.publish_tree(tree, uri)  # the retry
    outcome.survived = 1
    clean = storage.publish_tree(tree, clean_uri)
    assert manifest.digest == clean.digest
    assert storage.list_keys(uri) == storage.list_keys(clean_uri)
    fetched = storage.fetch_tree(uri, tmp_path / "fetched")
    assert storage.digest_tree(fetched) == storage.digest_tree(tree)


def test_corrupted_files_in_the_cache_and_in_s3(local_stack, outcome, tmp_path, monkeypatch):
    tree = _tree(tmp_path / "tree", files=4)
    uri = f"s3://{local_stack.bucket}/faults/{uuid.uuid4().hex[:8]}/model"
    manifest = storage.publish_tree(tree, uri)
    monkeypatch.setenv("TFOPT_CACHE_DIR", str(tmp_path / "cache"))
    storage.fetch_tree(uri, tmp_path / "first")
    cached = tmp_path / "cache" / "trees" / manifest.digest / "part-0" / "blob-00.bin"
    cached.write_bytes(b"bit rot")
    outcome.faults += 1
    again = storage.fetch_tree(uri, tmp_path / "second")  # detected by digest, fetched again
    assert storage.digest_tree(again) == manifest.files
    assert storage.sha256_file(cached) == manifest.files["part-0/blob-00.bin"]

    bucket, key = storage.parse_s3_uri(uri)
    storage.s3_client().put_object(Bucket=bucket, Key=f"{key}/part-0/blob-01.bin", Body=b"evil")
    outcome.faults += 1
    monkeypatch.setenv("TFOPT_CACHE_DIR", "off")
    with pytest.raises(storage.IntegrityError, match="corrupt"):
        storage.fetch_tree(uri, tmp_path / "third")  # refused, never handed to a stage
    outcome.survived = 1
