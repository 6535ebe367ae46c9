"""Storage: S3 (boto3) and local paths, atomic publish with a sha256 manifest, verified fetch."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from tasks.errors import TfoptError, TransientError, UserInputError

log = logging.getLogger(__name__)

MANIFEST_NAME = "_MANIFEST.json"
MANIFEST_SCHEMA = 1
DEFAULT_BUCKET = "tfopt"
DEFAULT_REGION = "us-east-1"
MAX_PARALLEL_TRANSFERS = 8  # files in flight at once
_MB = 1024 * 1024
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload"})
_DENIED_CODES = frozenset(
    {
        "403",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "AllAccessDisabled",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
    }
)


class PublishConflictError(UserInputError):
    """A different artifact is already published at the destination URI."""


class IntegrityError(UserInputError):
    """A downloaded file does not match the sha256 its manifest lists."""


# --------------------------------------------------------------------------- settings / client


@dataclass(frozen=True)
class S3Settings:
    """Where S3 is and how to sign requests; `endpoint_url=None` means AWS itself."""

    endpoint_url: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    region: str = DEFAULT_REGION
    bucket: str = DEFAULT_BUCKET

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> S3Settings:
        """Read `TFOPT_S3_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`), AWS keys.

        Missing keys are left to boto3's default credential chain (profile, instance role).
        """
        env = os.environ if environ is None else environ
        endpoint = (
            env.get("TFOPT_S3_ENDPOINT_URL")
            or env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL")
            or None
        )
        return cls(
            endpoint_url=endpoint,
            access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or DEFAULT_REGION,
            bucket=env.get("TFOPT_BUCKET") or DEFAULT_BUCKET,
        )


def s3_client(settings: S3Settings | None = None) -> Any:
    """A boto3 S3 client for `settings` (default: from the environment), cached per settings."""
    return _cached_client(settings or S3Settings.from_env())


@functools.lru_cache(maxsize=8)
def _cached_client(settings: S3Settings) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=4 * MAX_PARALLEL_TRANSFERS,
        signature_version="s3v4",
        # Path-style addressing for S3-compatible servers (SeaweedFS, MinIO) on a custom endpoint.
        s3={"addressing_style": "path"} if settings.endpoint_url else None,
        # Ask for checksums only where S3 requires them: works with every S3-compatible server;
        # integrity is checked end to end with the manifest's sha256 anyway.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        region_name=settings.region,
    )
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config)


# --------------------------------------------------------------------------- URIs


def is_s3(uri: str | os.PathLike[str]) -> bool:
    """True for `s3://...` URIs."""
    return str(uri).startswith("s3://")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/key` into `(bucket, key)`; the key has no trailing slash.

    Raises:
        UserInputError: the URI is not a well-formed `s3://bucket[/key]`.
    """
    text = str(uri)
    if not text.startswith("s3://"):
        raise UserInputError(f"not an S3 URI (expected s3://bucket/key): {text!r}")
    bucket, _, key = text[len("s3://") :].partition("/")
    if not _BUCKET_NAME.match(bucket) or ".." in bucket:
        raise UserInputError(
            f"malformed S3 URI {text!r}: bucket name {bucket!r} must be 3-63 characters of "
            "lowercase letters, digits, '.' and '-'"
        )
    key = key.strip("/")
    if "//" in key or any(part in (".", "..") for part in key.split("/")):
        raise UserInputError(f"malformed S3 URI {text!r}: empty, '.' or '..' path segment")
    return bucket, key


def join_uri(base: str | os.PathLike[str], *parts: str) -> str:
    """Join a base URI or path with relative parts using `/` (`s3://b/runs` + `x` -> ...)."""
    text = str(base).rstrip("/")
    tail = "/".join(part.strip("/") for part in parts if part.strip("/"))
    return f"{text}/{tail}" if tail else text


def default_run_root() -> str:
    """Where pipeline runs write their artifacts: `TFOPT_RUN_ROOT`, else s3://<TFOPT_BUCKET>/runs."""
    root = os.environ.get("TFOPT_RUN_ROOT") or f"s3://{S3Settings.from_env().bucket}/runs"
    return root.rstrip("/")


def _local_path(uri: str | os.PathLike[str]) -> Path:
    text = os.fspath(uri)
    if text.startswith("file://"):
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise UserInputError(f"file URI with a remote host is not supported: {text!r}")
        return Path(unquote(parsed.path))
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        raise UserInputError(
            f"unsupported URI scheme in {text!r}; use s3://bucket/key, file:///path or a path"
        )
    return Path(text).expanduser()


def _key_join(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def _safe_relpath(rel: str, uri: str) -> str:
    """Reject object names that would escape the destination folder."""
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or any(part in ("", ".", "..") for part in path.parts):
        raise UserInputError(f"refusing unsafe file name {rel!r} under {uri}")
    return path.as_posix()


# --------------------------------------------------------------------------- errors


def _map_client_error(exc: Exception, uri: str, action: str) -> TfoptError:
    """Translate a botocore ClientError into a user error or a transient error."""
    response = getattr(exc, "response", {}) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code == "NoSuchBucket":
        bucket = uri[len("s3://") :].partition("/")[0] if is_s3(uri) else "?"
        return UserInputError(
            f"cannot {action}: bucket {bucket!r} does not exist: {uri}; check the URI "
            "(and TFOPT_BUCKET / the S3 endpoint) or create the bucket"
        )
    if code in _NOT_FOUND_CODES or status == 404:
        return UserInputError(f"cannot {action}: it does not exist: {uri}; check the URI")
    if code in _DENIED_CODES or status == 403:
        return UserInputError(
            f"cannot {action}: access denied ({code or status}) to {uri}; check the credentials "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), the endpoint and the bucket policy"
        )
    if code in _TRANSIENT_CODES or status >= 500 or status in (408, 429):
        return TransientError(f"cannot {action} {uri}: S3 answered {code or status}; retry")
    if status == 412 or code == "PreconditionFailed":
        return TransientError(f"cannot {action} {uri}: a concurrent writer got there first")
    return UserInputError(f"cannot {action} {uri}: S3 refused the request ({code or status})")


@contextlib.contextmanager
def _s3_errors(uri: str, action: str) -> Iterator[None]:
    """Raise `UserInputError` / `TransientError` instead of boto3's exceptions."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    try:
        yield
    except TfoptError:
        raise
    except ClientError as exc:
        raise _map_client_error(exc, uri, action) from exc
    except S3UploadFailedError as exc:
        cause = exc.__context__
        if isinstance(cause, ClientError):
            raise _map_client_error(cause, uri, action) from exc
        raise TransientError(f"cannot {action} {uri}: {exc}") from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise UserInputError(
            f"cannot {action} {uri}: no S3 credentials; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or source the stack env: .stack/stack.env)"
        ) from exc
    except BotoCoreError as exc:  # connection refused/reset, timeouts, DNS
        raise TransientError(
            f"cannot {action} {uri}: S3 endpoint unreachable ({exc}); is the S3 server up "
            "(TFOPT_S3_ENDPOINT_URL)? retrying may help"
        ) from exc


def _is_missing(exc: Exception) -> bool:
    response = getattr(exc, "response", {}) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket")


# --------------------------------------------------------------------------- digests


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _tree_files(directory: Path) -> list[str]:
    names = []
    for path in directory.rglob("*"):
        if path.is_file():
            rel = path.relative_to(directory).as_posix()
            if rel != MANIFEST_NAME:
                names.append(rel)
    return sorted(names)


def digest_tree(directory: str | os.PathLike[str]) -> dict[str, str]:
    """`{relative posix path: sha256}` of every file under `directory`, sorted by path.

    The root `_MANIFEST.json` is not part of the tree it describes.
    """
    root = Path(directory)
    return {rel: sha256_file(root / rel) for rel in _tree_files(root)}


def tree_digest(files: dict[str, str]) -> str:
    """One sha256 over the sorted `(name, sha256)` pairs: the lineage digest of a tree."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Manifest:
    """What a published tree holds: files with sha256 and size, the tree digest, metadata."""

    files: dict[str, str]
    sizes: dict[str, int]
    digest: str
    created_at: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    @classmethod
    def build(cls, directory: str | os.PathLike[str], metadata: dict | None = None) -> Manifest:
        """Hash every file under `directory`."""
        root = Path(directory)
        files = digest_tree(root)
        return cls(
            files=files,
            sizes={rel: (root / rel).stat().st_size for rel in files},
            digest=tree_digest(files),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            metadata=dict(metadata or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": MANIFEST_SCHEMA,
            "digest": self.digest,
            "created_at": self.created_at,
            "files": dict(self.files),
            "sizes": dict(self.sizes),
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Parse and check a manifest (its digest must match its file list)."""
        try:
            files = {str(k): str(v) for k, v in dict(data["files"]).items()}
            manifest = cls(
                files=files,
                sizes={str(k): int(v) for k, v in dict(data.get("sizes", {})).items()},
                digest=str(data["digest"]),
                created_at=str(data.get("created_at", "")),
                metadata=dict(data.get("metadata") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserInputError(f"malformed {MANIFEST_NAME}: {exc!r}") from exc
        if tree_digest(files) != manifest.digest:
            raise UserInputError(f"{MANIFEST_NAME} digest does not match its file list")
        return manifest

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True).encode()


def _parse_manifest(raw: bytes, uri: str) -> Manifest:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise UserInputError(f"{join_uri(uri, MANIFEST_NAME)} is not valid JSON: {exc}") from exc
    try:
        return Manifest.from_dict(data)
    except UserInputError as exc:
        raise UserInputError(f"{uri}: {exc}; re-publish this artifact") from exc


def read_manifest(uri: str | os.PathLike[str]) -> Manifest | None:
    """The manifest published at `uri`, or None when nothing is published there."""
    uri = str(uri)
    if not is_s3(uri):
        path = _local_path(uri) / MANIFEST_NAME
        return _parse_manifest(path.read_bytes(), uri) if path.is_file() else None
    from botocore.exceptions import ClientError

    bucket, prefix = parse_s3_uri(uri)
    with _s3_errors(uri, "read the manifest of"):
        try:
            response = s3_client().get_object(Bucket=bucket, Key=_key_join(prefix, MANIFEST_NAME))
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        raw = response["Body"].read()
    return _parse_manifest(raw, uri)


# --------------------------------------------------------------------------- publish


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


def _parallel(function: Callable[[str], Any], items: Iterable[str]) -> list[Any]:
    items = list(items)
    if len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_TRANSFERS, len(items))) as pool:
        return list(pool.map(function, items))


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


# --------------------------------------------------------------------------- fetch


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
    if not is_s3(uri):
        return _check_local(uri, require_manifest)
    manifest = read_manifest(uri)
    if manifest is not None:
        return _fetch_published(uri, manifest, Path(local_dir))
    bucket, prefix = parse_s3_uri(uri)
    if prefix and _object_exists(bucket, prefix, uri):
        if require_manifest:
            raise UserInputError(
                f"{uri} is a single object, not a published tree; pass require_manifest=False "
                "to fetch a user-provided file"
            )
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
    return _download_prefix(bucket, prefix, names, Path(local_dir), uri)


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


def _verify_tree(root: Path, manifest: Manifest, uri: str) -> None:
    for rel, expected in manifest.files.items():
        _verify_file(root / _safe_relpath(rel, uri), expected, rel, uri)


def _verify_file(path: Path, expected: str, rel: str, uri: str) -> None:
    if not path.is_file():
        raise IntegrityError(f"{uri}: {rel} is listed in the manifest but missing; re-publish it")
    actual = sha256_file(path)
    if actual != expected:
        raise IntegrityError(
            f"{uri}: {rel} is corrupt (sha256 {actual[:12]}, manifest says {expected[:12]}); "
            "re-publish this artifact"
        )


def _object_exists(bucket: str, key: str, uri: str) -> bool:
    from botocore.exceptions import ClientError

    with _s3_errors(uri, "read"):
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                return False
            raise
    return True


def _list_relative(bucket: str, prefix: str, uri: str) -> list[str]:
    """Names of every object under `prefix/`, relative to it, sorted (no folder markers)."""
    return [name for name, _ in _list_with_times(bucket, prefix, uri)]


def _list_with_times(bucket: str, prefix: str, uri: str) -> list[tuple[str, datetime | None]]:
    """(name relative to `prefix/`, last modified) of every object under it (no folder markers)."""
    start = f"{prefix}/" if prefix else ""
    objects = []
    with _s3_errors(uri, "list"):
        paginator = s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=start):
            for item in page.get("Contents", []):
                rel = item["Key"][len(start) :]
                if rel and not rel.endswith("/"):
                    objects.append((rel, item.get("LastModified")))
    return sorted(objects)


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=64 * _MB, multipart_chunksize=16 * _MB, max_concurrency=4
    )


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


def cache_root() -> Path | None:
    """The download cache (`TFOPT_CACHE_DIR`, default `~/.cache/tfopt`); None when `off`."""
    value = os.environ.get("TFOPT_CACHE_DIR", "~/.cache/tfopt").strip()
    if value.lower() in ("", "0", "off", "none", "false"):
        return None
    return Path(value).expanduser() / "trees"


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


def _cached_entry(
    root: Path, bucket: str, prefix: str, manifest: Manifest, uri: str
) -> tuple[Path, str]:
    """A verified cache folder holding `manifest`'s tree, downloading it when needed."""
    entry = root / manifest.digest
    if entry.is_dir():
        try:
            _verify_tree(entry, manifest, uri)
            os.utime(entry)  # most recently used: evicted last
            return entry, "the local cache"
        except IntegrityError:
            log.warning("cache entry %s is damaged; downloading it again", entry)
            shutil.rmtree(entry, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{manifest.digest}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _download_verified(bucket, prefix, manifest, staging, uri)
        try:
            os.rename(staging, entry)
        except OSError:  # another process cached the same digest first: use theirs
            if not entry.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    evict_cache(root, keep=entry)
    return entry, "S3"


def _cache_limit_bytes() -> int:
    value = os.environ.get("TFOPT_CACHE_MAX_GB", "10")
    try:
        return int(float(value) * 1024**3)
    except ValueError as exc:
        raise UserInputError(f"TFOPT_CACHE_MAX_GB must be a number of GB, got {value!r}") from exc


def evict_cache(root: Path, *, keep: Path | None = None) -> list[Path]:
    """Delete least recently used cache entries until the cache fits `TFOPT_CACHE_MAX_GB`.

    Files already linked into a run's work dir stay there (hard links); only the cache copy goes.

    Returns:
        The entries deleted.
    """
    entries = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    sizes = {p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in entries}
    total, limit, evicted = sum(sizes.values()), _cache_limit_bytes(), []
    for entry in sorted(entries, key=lambda p: p.stat().st_mtime):
        if total <= limit:
            break
        if entry == keep:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        total -= sizes[entry]
        evicted.append(entry)
    if evicted:
        log.info("cache %s: evicted %d least recently used entries", root, len(evicted))
    return evicted


def _link_tree(entry: Path, dest: Path, manifest: Manifest) -> None:
    """Hard-link (or copy across file systems) a cache entry's files into `dest`."""
    for rel in manifest.files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        try:
            os.link(entry / rel, target)
        except OSError:
            shutil.copy2(entry / rel, target)


# --------------------------------------------------------------------------- single objects


def put_json(uri: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as JSON (sorted keys, indented) at `uri`."""
    _put_bytes(str(uri), json.dumps(obj, indent=2, sort_keys=True).encode(), "application/json")


def get_json(uri: str | os.PathLike[str]) -> Any:
    """Read the JSON document at `uri`.

    Raises:
        UserInputError: it does not exist or is not valid JSON.
    """
    uri = str(uri)
    if is_s3(uri):
        bucket, key = parse_s3_uri(uri)
        with _s3_errors(uri, "read"):
            raw = s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    else:
        path = _local_path(uri)
        if not path.is_file():
            raise UserInputError(f"file does not exist: {uri}; check the URI")
        raw = path.read_bytes()
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


def _delete_keys(bucket: str, keys: list[str], uri: str) -> None:
    client = s3_client()
    with _s3_errors(uri, "delete"):
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            response = client.delete_objects(
                Bucket=bucket, Delete={"Objects": batch, "Quiet": True}
            )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise TransientError(
                    f"could not delete {len(errors)} objects under {uri}, e.g. "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                )
