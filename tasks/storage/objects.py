"""Single objects and prefixes: JSON and file put/get, existence, listing, deletion."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.errors import UserInputError
from tasks.storage.manifest import MANIFEST_NAME
from tasks.storage.s3 import (
    _delete_keys,
    _list_relative,
    _list_with_times,
    _object_exists,
    _s3_errors,
    _transfer_config,
    s3_client,
)
from tasks.storage.uris import _key_join, _local_path, is_s3, parse_s3_uri

log = logging.getLogger(__name__)


def put_json(uri: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as JSON (sorted keys, indented) at `uri`."""
    _put_bytes(str(uri), json.dumps(obj, indent=2, sort_keys=True).encode(), "application/json")


def get_bytes(uri: str | os.PathLike[str]) -> bytes:
    """The content of the object (or file) at `uri`.

    Raises:
        UserInputError: it does not exist.
    """
    uri = str(uri)
    if is_s3(uri):
        bucket, key = parse_s3_uri(uri)
        with _s3_errors(uri, "read"):
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    path = _local_path(uri)
    if not path.is_file():
        raise UserInputError(f"file does not exist: {uri}; check the URI")
    return path.read_bytes()


def get_json(uri: str | os.PathLike[str]) -> Any:
    """Read the JSON document at `uri`.

    Raises:
        UserInputError: it does not exist or is not valid JSON.
    """
    raw = get_bytes(uri)
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise UserInputError(f"{uri} is not valid JSON: {exc}") from exc


def put_file(path: str | os.PathLike[str], uri: str | os.PathLike[str]) -> None:
    """Copy one local file to `uri` (an S3 object or a local path)."""
    source, uri = Path(path), str(uri)
    if not source.is_file():
        raise UserInputError(f"cannot upload {source}: not a file")
    if is_s3(uri):
        bucket, key = parse_s3_uri(uri)
        with _s3_errors(uri, "upload to"):
            s3_client().upload_file(str(source), bucket, key, Config=_transfer_config())
        return
    target = _local_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    shutil.copy2(source, staging)
    os.replace(staging, target)


def _put_bytes(uri: str, body: bytes, content_type: str) -> None:
    if is_s3(uri):
        bucket, key = parse_s3_uri(uri)
        with _s3_errors(uri, "write"):
            s3_client().put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
        return
    target = _local_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.write_bytes(body)
    os.replace(staging, target)


def exists(uri: str | os.PathLike[str]) -> bool:
    """True when `uri` is an existing object, or a prefix (folder) holding at least one object.

    Raises:
        UserInputError: the bucket does not exist or access is denied.
    """
    uri = str(uri)
    if not is_s3(uri):
        return _local_path(uri).exists()
    bucket, key = parse_s3_uri(uri)
    if key and _object_exists(bucket, key, uri):
        return True
    with _s3_errors(uri, "list"):
        response = s3_client().list_objects_v2(
            Bucket=bucket, Prefix=f"{key}/" if key else "", MaxKeys=1
        )
    return response.get("KeyCount", 0) > 0


def list_objects(uri: str | os.PathLike[str]) -> list[tuple[str, datetime | None]]:
    """(relative posix path, last modified) of every object (or file) under `uri`, sorted.

    `join_uri(uri, name)` gives back each object's URI. A missing prefix lists as empty.
    """
    uri = str(uri)
    if is_s3(uri):
        bucket, key = parse_s3_uri(uri)
        return _list_with_times(bucket, key, uri)
    path = _local_path(uri)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    base = path.parent if path.is_file() else path
    return [
        (p.relative_to(base).as_posix(), datetime.fromtimestamp(p.stat().st_mtime, UTC))
        for p in files
    ]


def list_keys(uri: str | os.PathLike[str]) -> list[str]:
    """Relative posix paths of every object (or file) under `uri`, sorted."""
    return [name for name, _ in list_objects(uri)]


def delete_tree(uri: str | os.PathLike[str]) -> None:
    """Delete everything under `uri` (manifest first, so readers stop trusting it at once)."""
    uri = str(uri)
    if not is_s3(uri):
        path = _local_path(uri)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        return
    bucket, prefix = parse_s3_uri(uri)
    if not prefix:
        raise UserInputError(f"refusing to delete a whole bucket: {uri}")
    names = _list_relative(bucket, prefix, uri)
    if MANIFEST_NAME in names:
        names.remove(MANIFEST_NAME)
        _delete_keys(bucket, [_key_join(prefix, MANIFEST_NAME)], uri)
    keys = [_key_join(prefix, rel) for rel in names]
    if _object_exists(bucket, prefix, uri):  # `uri` names a single object
        keys.append(prefix)
    _delete_keys(bucket, keys, uri)
    log.info("deleted %d objects under %s", len(keys), uri)
