"""Atomic publish of a tree: files first, manifest last, idempotent per digest."""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from tasks.errors import UserInputError
from tasks.storage.manifest import MANIFEST_NAME, Manifest, PublishConflictError, read_manifest
from tasks.storage.s3 import (
    _delete_keys,
    _list_relative,
    _parallel,
    _s3_errors,
    _transfer_config,
    s3_client,
)
from tasks.storage.uris import _key_join, _local_path, is_s3, parse_s3_uri

log = logging.getLogger(__name__)


def publish_tree(
    local_dir: str | os.PathLike[str],
    uri: str | os.PathLike[str],
    metadata: dict[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> Manifest:
    """Publish every file under `local_dir` at `uri`, then its manifest last (atomic publish).

    Idempotent: when `uri` already holds a manifest with the same digest, nothing is written and
    that manifest is returned (a retried task does not redo its upload).

    Raises:
        PublishConflictError: `uri` holds a different published tree and `overwrite` is False.
        UserInputError: `local_dir` is not a directory, or the destination is unusable.
        TransientError: S3 failed in a way a retry may fix.
    """
    source = Path(local_dir)
    if not source.is_dir():
        raise UserInputError(f"cannot publish {source}: not a directory")
    uri = str(uri)
    manifest = Manifest.build(source, metadata)
    existing = read_manifest(uri)
    if existing is not None and _same_or_conflict(existing, manifest, uri, overwrite):
        log.info("already published at %s (digest %s); nothing to do", uri, existing.digest[:12])
        return existing
    started = time.monotonic()
    if is_s3(uri):
        _publish_s3(source, uri, manifest, replacing=existing is not None)
    else:
        _publish_local(source, _local_path(uri), manifest, overwrite=overwrite)
    log.info(
        "published %d files (%d bytes) at %s, digest %s, in %.1f s",
        len(manifest.files),
        manifest.total_bytes,
        uri,
        manifest.digest[:12],
        time.monotonic() - started,
    )
    return manifest


def _same_or_conflict(existing: Manifest, new: Manifest, uri: str, overwrite: bool) -> bool:
    """True when `existing` already is `new`; raise on a conflict unless overwriting."""
    if existing.digest == new.digest:
        return True
    if not overwrite:
        raise PublishConflictError(
            f"{uri} already holds a published artifact with digest {existing.digest[:12]} "
            f"(created {existing.created_at}); refusing to replace it with digest "
            f"{new.digest[:12]}. Publish to a new URI, or pass overwrite=True"
        )
    log.warning("overwriting %s: digest %s -> %s", uri, existing.digest[:12], new.digest[:12])
    return False


def _publish_s3(source: Path, uri: str, manifest: Manifest, *, replacing: bool) -> None:
    bucket, prefix = parse_s3_uri(uri)
    client = s3_client()
    manifest_key = _key_join(prefix, MANIFEST_NAME)
    with _s3_errors(uri, "publish to"):
        if replacing:  # readers must stop trusting the old tree before it changes
            client.delete_object(Bucket=bucket, Key=manifest_key)

        def upload(rel: str) -> None:
            key = _key_join(prefix, rel)
            client.upload_file(str(source / rel), bucket, key, Config=_transfer_config())

        _parallel(upload, manifest.files)
        if replacing:
            stale = [k for k in _list_relative(bucket, prefix, uri) if k not in manifest.files]
            _delete_keys(bucket, [_key_join(prefix, rel) for rel in stale], uri)
        _put_manifest(client, bucket, manifest_key, manifest, uri, exclusive=not replacing)


def _put_manifest(
    client: Any, bucket: str, key: str, manifest: Manifest, uri: str, *, exclusive: bool
) -> None:
    """Write the manifest; `exclusive` makes a concurrent publisher lose cleanly (412)."""
    from botocore.exceptions import ClientError

    extra = {"IfNoneMatch": "*"} if exclusive else {}
    try:
        client.put_object(
            Bucket=bucket,
            Key=key,
            Body=manifest.to_json(),
            ContentType="application/json",
            **extra,
        )
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code not in ("PreconditionFailed", "412"):
            raise
        winner = read_manifest(uri)
        if winner is None or winner.digest != manifest.digest:
            raise PublishConflictError(
                f"{uri} was published concurrently with a different digest; refusing to "
                "overwrite it. Publish to a new URI, or pass overwrite=True"
            ) from exc
        log.info("%s was published concurrently with the same digest", uri)


def _publish_local(source: Path, dest: Path, manifest: Manifest, *, overwrite: bool) -> None:
    """Copy into a temporary sibling folder, write the manifest, then rename into place."""
    source, dest = source.resolve(), dest.expanduser().resolve()
    if dest != source and source in dest.parents:
        raise UserInputError(f"cannot publish {source} into its own subfolder {dest}")
    occupied = dest.is_file() or (dest.is_dir() and any(dest.iterdir()))
    if dest != source and occupied and not overwrite:
        raise PublishConflictError(
            f"{dest} exists and is not a published tfopt artifact (no {MANIFEST_NAME}); "
            "refusing to replace it. Publish to a new path, or pass overwrite=True"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.publish-{uuid.uuid4().hex[:8]}"
    trash = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        for rel in manifest.files:
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, target)
        (staging / MANIFEST_NAME).write_bytes(manifest.to_json())
        if dest.exists():
            os.replace(dest, trash)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if trash.is_dir():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink(missing_ok=True)
