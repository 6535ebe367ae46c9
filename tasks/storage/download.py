"""Downloads from S3: single objects, whole prefixes and manifest-verified trees."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tasks.storage.manifest import MANIFEST_NAME, IntegrityError, Manifest, _verify_file
from tasks.storage.s3 import _parallel, _s3_errors, _transfer_config, s3_client
from tasks.storage.uris import _key_join, _safe_relpath

log = logging.getLogger(__name__)


def _download_object(bucket: str, key: str, target: Path, uri: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with _s3_errors(f"s3://{bucket}/{key}", f"download (part of {uri})"):
        s3_client().download_file(bucket, key, str(target), Config=_transfer_config())
    return target


def _download_prefix(bucket: str, prefix: str, names: list[str], dest: Path, uri: str) -> Path:
    started = time.monotonic()
    safe = [_safe_relpath(rel, uri) for rel in names]
    _parallel(lambda rel: _download_object(bucket, _key_join(prefix, rel), dest / rel, uri), safe)
    log.info(
        "fetched %d objects from %s into %s in %.1f s",
        len(safe),
        uri,
        dest,
        time.monotonic() - started,
    )
    return dest


def _download_verified(bucket: str, prefix: str, manifest: Manifest, dest: Path, uri: str) -> None:
    """Download every manifest file into `dest`, retrying a file once on a digest mismatch."""

    def fetch(rel: str) -> None:
        target = dest / _safe_relpath(rel, uri)
        for attempt in (1, 2):
            _download_object(bucket, _key_join(prefix, rel), target, uri)
            try:
                _verify_file(target, manifest.files[rel], rel, uri)
                return
            except IntegrityError:
                if attempt == 2:
                    raise
                log.warning("%s: %s failed its sha256 check; downloading it again", uri, rel)

    _parallel(fetch, manifest.files)
    (dest / MANIFEST_NAME).write_bytes(manifest.to_json())
