"""Fetch a tree or object to local disk, verified against its manifest when published."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path, PurePosixPath

from tasks.errors import UserInputError
from tasks.storage.cache import _cached_entry, _link_tree, cache_root
from tasks.storage.download import _download_object, _download_prefix, _download_verified
from tasks.storage.manifest import MANIFEST_NAME, Manifest, _verify_tree, read_manifest
from tasks.storage.s3 import (
    _list_relative,
    _object_bytes,
    _object_exists,
    _total_bytes,
    default_run_root,
)
from tasks.storage.uris import _local_path, check_allowed, is_s3, is_under, parse_s3_uri

log = logging.getLogger(__name__)


def fetch_tree(
    uri: str | os.PathLike[str],
    local_dir: str | os.PathLike[str],
    *,
    require_manifest: bool = True,
) -> Path:
    """Make the tree (or single object) at `uri` available locally and return its path.

    - A local path (plain or `file://`) is returned as is, without a copy.
    - A published S3 tree is downloaded into `local_dir` and every file is checked against
      the manifest's sha256; copies are shared through the cache (`TFOPT_CACHE_DIR`).
    - With `require_manifest=False` (user-provided folders), every object under the prefix is
      downloaded; a single object (`s3://b/models/m.keras`) is downloaded into `local_dir` and
      the file's path is returned.

    Raises:
        UserInputError: the URI does not exist, is not published, or its files are corrupt.
        TransientError: S3 failed in a way a retry may fix.
    """
    uri = str(uri)
    check_allowed(uri, default_run_root())
    if not is_s3(uri):
        return _check_local(uri, require_manifest)
    manifest = read_manifest(uri)
    if manifest is not None:
        return _fetch_published(uri, manifest, Path(local_dir))
    bucket, prefix = parse_s3_uri(uri)
    if not require_manifest:
        _refuse_containers(uri, prefix)
    if prefix and _object_exists(bucket, prefix, uri):
        if require_manifest:
            raise UserInputError(
                f"{uri} is a single object, not a published tree; pass require_manifest=False "
                "to fetch a user-provided file"
            )
        _check_size(_object_bytes(bucket, prefix, uri), uri)
        return _download_object(bucket, prefix, Path(local_dir) / PurePosixPath(prefix).name, uri)
    names = _list_relative(bucket, prefix, uri)
    if not names:
        raise UserInputError(f"{uri} does not exist: {uri}; check the URI (no object under it)")
    if require_manifest:
        raise UserInputError(
            f"{uri} has no {MANIFEST_NAME}: it was never published completely (the stage that "
            "writes it failed or is still running). For a user-provided folder pass "
            "require_manifest=False"
        )
    _check_size(_total_bytes(bucket, prefix, uri), uri)
    return _download_prefix(bucket, prefix, names, Path(local_dir), uri)


def max_fetch_bytes() -> int:
    """The most an unpublished folder may hold to be fetched (`TFOPT_MAX_FETCH_GB`, default 20)."""
    value = os.environ.get("TFOPT_MAX_FETCH_GB", "20")
    try:
        return int(float(value) * 1024**3)
    except ValueError as exc:
        raise UserInputError(f"TFOPT_MAX_FETCH_GB must be a number of GB, got {value!r}") from exc


def _check_size(total: int, uri: str) -> None:
    limit = max_fetch_bytes()
    if total > limit:
        raise UserInputError(
            f"{uri} holds {total / 1024**3:.2f} GB, more than TFOPT_MAX_FETCH_GB "
            f"({limit / 1024**3:.2f} GB); point the URI at the model or data folder itself, "
            "or raise the limit"
        )


def _refuse_containers(uri: str, prefix: str) -> None:
    """A user-provided URI must name a model or data folder, not a bucket or a run tree."""
    if not prefix:
        raise UserInputError(
            f"{uri} is a whole bucket; point the URI at the model file or folder inside it"
        )
    run_root = default_run_root()
    if is_under(run_root, uri) or is_under(uri, run_root):
        raise UserInputError(
            f"{uri} lies in tfopt's run tree ({run_root}) and is not a published artifact; "
            "point the URI at a model or data folder (or a published stage such as .../export)"
        )


def _check_local(uri: str, require_manifest: bool) -> Path:
    path = _local_path(uri)
    if not path.exists():
        raise UserInputError(f"local path does not exist: {uri}; check the URI or the path")
    if require_manifest and path.is_dir():
        manifest = read_manifest(path)
        if manifest is None:
            raise UserInputError(
                f"{uri} has no {MANIFEST_NAME}: it was never published completely. For a "
                "user-provided folder pass require_manifest=False"
            )
        _verify_tree(path, manifest, uri)
    return path


def _fetch_published(uri: str, manifest: Manifest, dest: Path) -> Path:
    bucket, prefix = parse_s3_uri(uri)
    started = time.monotonic()
    root = cache_root()
    if root is None:
        _download_verified(bucket, prefix, manifest, dest, uri)
        source = "S3"
    else:
        entry, source = _cached_entry(root, bucket, prefix, manifest, uri)
        _link_tree(entry, dest, manifest)
        (dest / MANIFEST_NAME).write_bytes(manifest.to_json())
    log.info(
        "fetched %s (%d files, %d bytes, digest %s) from %s in %.1f s",
        uri,
        len(manifest.files),
        manifest.total_bytes,
        manifest.digest[:12],
        source,
        time.monotonic() - started,
    )
    return dest
