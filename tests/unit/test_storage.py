"""Unit tests of tasks.storage against moto's in-memory S3 and local folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError
from moto import mock_aws

from tasks import storage
from tasks.errors import TransientError, UserInputError

pytestmark = pytest.mark.unit

BUCKET = "unit-bucket"


@pytest.fixture
def s3(monkeypatch, tmp_path):
    """A moto S3 with one bucket; the environment points tasks.storage at it."""
    for name in ("TFOPT_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("TFOPT_BUCKET", BUCKET)
    monkeypatch.setenv("TFOPT_CACHE_DIR", str(tmp_path / "cache"))
    storage.s3._cached_client.cache_clear()
    with mock_aws():
        client = storage.s3_client()
        client.create_bucket(Bucket=BUCKET)
        yield client
    storage.s3._cached_client.cache_clear()


def make_tree(root: Path, files: dict[str, bytes] | None = None) -> Path:
    files = files or {
        "saved_model.pb": b"graph",
        "variables/variables.index": b"index",
        "variables/variables.data-00000-of-00001": b"\x00" * 1000,
        "assets/vocab.txt": b"a\nb\n",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


# ----------------------------------------------------------------------------- pure functions


def test_parse_s3_uri():
    assert storage.parse_s3_uri("s3://tfopt/runs/m/1/") == ("tfopt", "runs/m/1")
    assert storage.parse_s3_uri("s3://tfopt") == ("tfopt", "")
    for bad in (
        "s3://",
        "s3:///key",
        "s3://Bad_Bucket/k",
        "http://x/y",
        "s3://b/a//c",
        "s3://ab/x",
    ):
        with pytest.raises(UserInputError):
            storage.parse_s3_uri(bad)


def test_is_s3_join_and_run_root(monkeypatch):
    monkeypatch.setenv("TFOPT_BUCKET", "my-bucket")
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/tmp/x")
    assert storage.join_uri("s3://b/runs/", "m", "/v/") == "s3://b/runs/m/v"
    assert storage.default_run_root() == "s3://my-bucket/runs"


def test_settings_from_env_precedence():
    env = {"AWS_ENDPOINT_URL": "http://generic", "AWS_ENDPOINT_URL_S3": "http://s3"}
    assert storage.S3Settings.from_env(env).endpoint_url == "http://s3"
    env["TFOPT_S3_ENDPOINT_URL"] = "http://tfopt"
    settings = storage.S3Settings.from_env(env)
    assert (settings.endpoint_url, settings.region, settings.bucket) == (
        "http://tfopt",
        "us-east-1",
        "tfopt",
    )
    assert storage.S3Settings.from_env({}).endpoint_url is None
    assert "secret" not in repr(storage.S3Settings(secret_access_key="secret"))


def test_s3_client_is_cached_per_settings():
    one = storage.S3Settings(endpoint_url="http://127.0.0.1:1", access_key_id="a")
    two = storage.S3Settings(endpoint_url="http://127.0.0.1:2", access_key_id="a")
    assert storage.s3_client(one) is storage.s3_client(one)
    assert storage.s3_client(one) is not storage.s3_client(two)
    assert storage.s3_client(one).meta.config.s3["addressing_style"] == "path"


def test_digests_are_stable_and_content_addressed(tmp_path):
    one = make_tree(tmp_path / "one")
    two = make_tree(tmp_path / "two")
    files = storage.digest_tree(one)
    assert list(files) == sorted(files)
    assert files == storage.digest_tree(two)
    assert storage.tree_digest(files) == storage.tree_digest(dict(reversed(files.items())))
    assert files["saved_model.pb"] == storage.sha256_file(one / "saved_model.pb")
    # A manifest next to the files is not part of what it describes.
    (one / storage.MANIFEST_NAME).write_text("{}")
    assert storage.digest_tree(one) == files
    (two / "assets/vocab.txt").write_bytes(b"a\nc\n")
    assert storage.tree_digest(storage.digest_tree(two)) != storage.tree_digest(files)
    (two / "assets/vocab.txt").rename(two / "assets/renamed.txt")
    assert storage.tree_digest(storage.digest_tree(two)) != storage.tree_digest(files)


def test_manifest_round_trip_and_tamper_check(tmp_path):
    manifest = storage.Manifest.build(make_tree(tmp_path / "t"), {"stage": "export"})
    assert storage.Manifest.from_dict(json.loads(manifest.to_json())) == manifest
    assert manifest.total_bytes == sum(manifest.sizes.values()) > 1000
    tampered = manifest.to_dict()
    tampered["files"]["saved_model.pb"] = "0" * 64
    with pytest.raises(UserInputError, match="digest"):
        storage.Manifest.from_dict(tampered)
    with pytest.raises(UserInputError, match="malformed"):
        storage.Manifest.from_dict({"files": {}})


def test_error_mapping(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSECRETVALUE")

    def client_error(code: str, status: int) -> ClientError:
        response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return ClientError(response, "GetObject")

    cases = [
        (client_error("NoSuchBucket", 404), UserInputError, "bucket 'bkt' does not exist"),
        (client_error("NoSuchKey", 404), UserInputError, "does not exist: s3://bkt/k"),
        (client_error("AccessDenied", 403), UserInputError, "check the credentials"),
        (client_error("SignatureDoesNotMatch", 403), UserInputError, "rejected the credentials"),
        (client_error("InvalidAccessKeyId", 403), UserInputError, r"AWS_ACCESS_KEY_ID"),
        (client_error("ExpiredToken", 400), TransientError, "credentials have expired"),
        (ParamValidationError(report="Invalid bucket name"), UserInputError, "invalid request"),
        (client_error("SlowDown", 503), TransientError, "retry"),
        (client_error("InternalError", 500), TransientError, "retry"),
        (EndpointConnectionError(endpoint_url="http://x"), TransientError, "unreachable"),
    ]
    for raised, expected, message in cases:
        with pytest.raises(expected, match=message):
            with storage.s3._s3_errors("s3://bkt/k", "read"):
                raise raised
    with pytest.raises(UserInputError) as info:
        with storage.s3._s3_errors("s3://bkt/k", "read"):
            raise client_error("InvalidAccessKeyId", 403)
    assert "AKIDSECRETVALUE" not in str(info.value)


# ----------------------------------------------------------------------------- S3 publish


def test_publish_then_read_manifest(s3, tmp_path):
    tree = make_tree(tmp_path / "model")
    uri = f"s3://{BUCKET}/runs/m/1/export"
    assert storage.read_manifest(uri) is None
    manifest = storage.publish_tree(tree, uri, {"stage": "export"})
    assert storage.read_manifest(uri) == manifest
    assert manifest.metadata == {"stage": "export"}
    assert manifest.digest == storage.tree_digest(storage.digest_tree(tree))
    assert storage.list_keys(uri) == sorted([*manifest.files, storage.MANIFEST_NAME])


def test_manifest_is_written_last(s3, tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "model")
    uri = f"s3://{BUCKET}/runs/m/1/export"
    order: list[str] = []
    upload, put = s3.upload_file, s3.put_object
    monkeypatch.setattr(
        s3, "upload_file", lambda f, b, k, **kw: (order.append(k), upload(f, b, k))[1]
    )
    monkeypatch.setattr(s3, "put_object", lambda **kw: (order.append(kw["Key"]), put(**kw))[1])
    storage.publish_tree(tree, uri)
    assert order[-1].endswith(storage.MANIFEST_NAME)
    assert sum(key.endswith(storage.MANIFEST_NAME) for key in order) == 1
    assert len(set(order)) == 5


def test_republish_same_tree_is_a_no_op(s3, tmp_path, monkeypatch):
    uri = f"s3://{BUCKET}/runs/m/1/export"
    first = storage.publish_tree(make_tree(tmp_path / "a"), uri, {"attempt": 1})

    def no_upload(*args, **kwargs):
        raise AssertionError("a retry must not upload again")

    monkeypatch.setattr(s3, "upload_file", no_upload)
    again = storage.publish_tree(make_tree(tmp_path / "b"), uri, {"attempt": 2})
    assert again == first  # the published manifest, metadata of the first attempt included


def test_refuses_to_overwrite_a_different_tree(s3, tmp_path):
    uri = f"s3://{BUCKET}/runs/m/1/export"
    first = storage.publish_tree(make_tree(tmp_path / "a"), uri)
    other = make_tree(tmp_path / "b", {"saved_model.pb": b"other graph"})
    with pytest.raises(storage.PublishConflictError, match="refusing"):
        storage.publish_tree(other, uri)
    assert storage.read_manifest(uri) == first
    replaced = storage.publish_tree(other, uri, overwrite=True)
    assert storage.read_manifest(uri) == replaced
    assert storage.list_keys(uri) == [storage.MANIFEST_NAME, "saved_model.pb"]  # stale files gone


def test_concurrent_publisher_with_other_digest_loses(s3, tmp_path, monkeypatch):
    uri = f"s3://{BUCKET}/runs/m/1/export"
    theirs = storage.Manifest.build(make_tree(tmp_path / "theirs", {"x": b"theirs"}))
    put = s3.put_object

    def racing_put(**kwargs):
        if kwargs["Key"].endswith(storage.MANIFEST_NAME):  # the other writer wins the race
            put(Bucket=BUCKET, Key=kwargs["Key"], Body=theirs.to_json())
        return put(**kwargs)

    monkeypatch.setattr(s3, "put_object", racing_put)
    with pytest.raises(storage.PublishConflictError, match="concurrently"):
        storage.publish_tree(make_tree(tmp_path / "mine"), uri)
    assert storage.read_manifest(uri) == theirs


# ----------------------------------------------------------------------------- S3 fetch


def test_fetch_verifies_and_uses_the_cache(s3, tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "model")
    uri = f"s3://{BUCKET}/runs/m/1/export"
    manifest = storage.publish_tree(tree, uri)
    first = storage.fetch_tree(uri, tmp_path / "dl1")
    assert first == tmp_path / "dl1"
    assert storage.digest_tree(first) == manifest.files
    assert storage.read_manifest(first) == manifest

    def no_download(*args, **kwargs):
        raise AssertionError("a cached tree must not be downloaded again")

    monkeypatch.setattr(s3, "download_file", no_download)
    second = storage.fetch_tree(uri, tmp_path / "dl2")
    assert storage.digest_tree(second) == manifest.files


@pytest.mark.parametrize("cache", ["on", "off"])
def test_fetch_rejects_a_corrupt_object(s3, tmp_path, monkeypatch, cache):
    if cache == "off":
        monkeypatch.setenv("TFOPT_CACHE_DIR", "off")
    uri = f"s3://{BUCKET}/runs/m/1/export"
    storage.publish_tree(make_tree(tmp_path / "model"), uri)
    s3.put_object(Bucket=BUCKET, Key="runs/m/1/export/saved_model.pb", Body=b"tampered")
    with pytest.raises(storage.IntegrityError, match="saved_model.pb is corrupt"):
        storage.fetch_tree(uri, tmp_path / "dl")
    assert not list((tmp_path / "cache").rglob("saved_model.pb"))  # nothing corrupt is cached


def test_damaged_cache_entry_is_downloaded_again(s3, tmp_path):
    uri = f"s3://{BUCKET}/runs/m/1/export"
    manifest = storage.publish_tree(make_tree(tmp_path / "model"), uri)
    storage.fetch_tree(uri, tmp_path / "dl1")
    # Hard links share bytes with the cache: a consumer writing in place damages the entry.
    (tmp_path / "dl1" / "saved_model.pb").write_bytes(b"edited in place")
    fetched = storage.fetch_tree(uri, tmp_path / "dl2")
    assert storage.digest_tree(fetched) == manifest.files


def test_cache_evicts_least_recently_used_entries_beyond_its_limit(s3, tmp_path, monkeypatch):
    manifests = {}
    for name in ("old", "used", "new"):
        tree = make_tree(tmp_path / name, {"blob.bin": name.encode() * 400})
        manifests[name] = storage.publish_tree(tree, f"s3://{BUCKET}/runs/m/{name}/export")
    monkeypatch.setenv("TFOPT_CACHE_MAX_GB", str(3600 / 1024**3))  # ~1.6 kB an entry: room for 2
    for name in ("old", "used"):
        storage.fetch_tree(f"s3://{BUCKET}/runs/m/{name}/export", tmp_path / f"dl-{name}")
    root = storage.cache_root()
    os.utime(root / manifests["old"].digest, (2, 2))
    os.utime(root / manifests["used"].digest, (1, 1))  # cached first, but used again below
    storage.fetch_tree(f"s3://{BUCKET}/runs/m/used/export", tmp_path / "dl-used-again")  # a hit
    storage.fetch_tree(f"s3://{BUCKET}/runs/m/new/export", tmp_path / "dl-new")
    cached = {p.name for p in root.iterdir() if not p.name.startswith(".")}
    assert cached == {manifests["used"].digest, manifests["new"].digest}
    assert (tmp_path / "dl-old" / "blob.bin").read_bytes() == b"old" * 400  # links survive


def test_fetch_missing_or_unpublished(s3, tmp_path):
    with pytest.raises(UserInputError, match="does not exist: s3://unit-bucket/nothing/here"):
        storage.fetch_tree(f"s3://{BUCKET}/nothing/here", tmp_path / "dl")
    with pytest.raises(UserInputError, match="bucket 'no-such-bucket' does not exist"):
        storage.fetch_tree("s3://no-such-bucket/x", tmp_path / "dl")
    s3.put_object(Bucket=BUCKET, Key="partial/a.bin", Body=b"a")
    with pytest.raises(UserInputError, match="never published"):
        storage.fetch_tree(f"s3://{BUCKET}/partial", tmp_path / "dl")


def test_fetch_without_manifest_and_single_object(s3, tmp_path):
    s3.put_object(Bucket=BUCKET, Key="data/eval/shard-0.npz", Body=b"0")
    s3.put_object(Bucket=BUCKET, Key="data/eval/sub/shard-1.npz", Body=b"1")
    s3.put_object(Bucket=BUCKET, Key="data/eval/", Body=b"")  # a console-made folder marker
    s3.put_object(Bucket=BUCKET, Key="data/evaluation.txt", Body=b"not under the prefix")
    folder = storage.fetch_tree(f"s3://{BUCKET}/data/eval", tmp_path / "d", require_manifest=False)
    assert storage.list_keys(folder) == ["shard-0.npz", "sub/shard-1.npz"]
    s3.put_object(Bucket=BUCKET, Key="models/m.keras", Body=b"keras")
    uri = f"s3://{BUCKET}/models/m.keras"
    path = storage.fetch_tree(uri, tmp_path / "m", require_manifest=False)
    assert path == tmp_path / "m" / "m.keras" and path.read_bytes() == b"keras"
    with pytest.raises(UserInputError, match="single object"):
        storage.fetch_tree(uri, tmp_path / "m2")


def test_fetch_refuses_keys_escaping_the_folder(s3, tmp_path):
    s3.put_object(Bucket=BUCKET, Key="evil/../../x", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key="evil/ok", Body=b"x")
    with pytest.raises(UserInputError, match="unsafe"):
        storage.fetch_tree(f"s3://{BUCKET}/evil", tmp_path / "dl", require_manifest=False)


# ----------------------------------------------------------------------------- single objects


def test_json_file_exists_list_delete(s3, tmp_path):
    uri = f"s3://{BUCKET}/runs/m/1/reports/summary.json"
    storage.put_json(uri, {"b": 1, "a": [1, 2]})
    assert storage.get_json(uri) == {"a": [1, 2], "b": 1}
    (tmp_path / "plot.png").write_bytes(b"png")
    storage.put_file(tmp_path / "plot.png", f"s3://{BUCKET}/runs/m/1/reports/plot.png")
    assert storage.exists(uri) and storage.exists(f"s3://{BUCKET}/runs/m")
    assert not storage.exists(f"s3://{BUCKET}/runs/m/1/rep")  # a prefix is a folder, not a stem
    assert storage.list_keys(f"s3://{BUCKET}/runs/m/1") == [
        "reports/plot.png",
        "reports/summary.json",
    ]
    storage.delete_tree(f"s3://{BUCKET}/runs/m")
    assert storage.list_keys(f"s3://{BUCKET}/runs") == []
    storage.delete_tree(f"s3://{BUCKET}/runs/m")  # already gone: no error
    with pytest.raises(UserInputError, match="does not exist"):
        storage.get_json(uri)
    with pytest.raises(UserInputError, match="whole bucket"):
        storage.delete_tree(f"s3://{BUCKET}")


# ----------------------------------------------------------------------------- local paths


def test_local_publish_and_fetch(tmp_path):
    tree = make_tree(tmp_path / "model")
    dest = tmp_path / "published" / "export"
    manifest = storage.publish_tree(tree, dest)
    assert storage.read_manifest(dest) == manifest
    assert storage.publish_tree(tree, f"file://{dest}") == manifest  # idempotent
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no staging left
    fetched = storage.fetch_tree(f"file://{dest}", tmp_path / "unused")
    assert fetched == dest and not (tmp_path / "unused").exists()  # no copy
    with pytest.raises(storage.PublishConflictError):
        storage.publish_tree(make_tree(tmp_path / "other", {"x": b"y"}), dest)
    (dest / "saved_model.pb").write_bytes(b"corrupt")
    with pytest.raises(storage.IntegrityError):
        storage.fetch_tree(dest, tmp_path / "unused")


def test_local_user_folder_and_missing_path(tmp_path):
    user = make_tree(tmp_path / "user_model")
    assert storage.fetch_tree(user, tmp_path / "x", require_manifest=False) == user
    with pytest.raises(UserInputError, match="never published"):
        storage.fetch_tree(user, tmp_path / "x")
    with pytest.raises(UserInputError, match="does not exist"):
        storage.fetch_tree(tmp_path / "missing", tmp_path / "x", require_manifest=False)
    with pytest.raises(UserInputError, match="unsupported URI scheme"):
        storage.fetch_tree("gs://bucket/model", tmp_path / "x")
    with pytest.raises(storage.PublishConflictError, match="not a published"):
        storage.publish_tree(make_tree(tmp_path / "src", {"a": b"a"}), user)


def test_local_json_and_delete(tmp_path):
    uri = f"file://{tmp_path}/reports/summary.json"
    storage.put_json(uri, {"ok": True})
    assert storage.get_json(uri) == {"ok": True}
    assert storage.exists(uri) and storage.list_keys(tmp_path / "reports") == ["summary.json"]
    storage.delete_tree(tmp_path / "reports")
    assert not storage.exists(uri)


def test_botocore_debug_logs_never_show_the_access_key(s3, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="botocore")  # the CLI turns it down to WARNING
    storage.exists(f"s3://{BUCKET}/anything")
    assert "Credential=***" in caplog.text
    assert "testing/" not in caplog.text  # the key id in the Authorization header
