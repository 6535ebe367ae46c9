"""A lease lock: an S3 object written with a conditional put, or a locked file on a local disk."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tasks.errors import TransientError, UserInputError
from tasks.storage.s3 import _is_missing, _s3_errors, s3_client
from tasks.storage.uris import _local_path, is_s3, parse_s3_uri

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 300.0
DEFAULT_WAIT_S = 120.0
POLL_S = 0.5
RENEW_MARGIN_S = 5.0
"""A holder whose lease ends within this many seconds no longer counts as holding it."""


class LockTimeoutError(TransientError):
    """The lock stayed held by another owner for longer than the caller would wait."""


class LockLostError(TransientError):
    """The lease expired (or was taken over) before the holder finished."""


@dataclass
class Lease:
    """One acquisition of a lock: who holds it, until when, and the object's version (ETag)."""

    uri: str
    owner: str
    token: str
    expires_at: float
    etag: str | None = None
    handle: Any = field(default=None, repr=False)

    def body(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "token": self.token,
                "expires_at": self.expires_at,
                "expires": datetime.fromtimestamp(self.expires_at, UTC).isoformat(),
            },
            sort_keys=True,
        ).encode()


def _seconds(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    if not value.strip():
        return default
    try:
        seconds = float(value)
    except ValueError as exc:
        raise UserInputError(f"{name} must be a number of seconds, got {value!r}") from exc
    if seconds <= 0:
        raise UserInputError(f"{name} must be > 0, got {value!r}")
    return seconds


def lease_seconds() -> float:
    """How long a lock holder may keep the lock (`TFOPT_LOCK_LEASE_S`, default 300)."""
    return _seconds("TFOPT_LOCK_LEASE_S", DEFAULT_LEASE_S)


def wait_seconds() -> float:
    """How long to wait for a lock held by someone else (`TFOPT_LOCK_WAIT_S`, default 120)."""
    return _seconds("TFOPT_LOCK_WAIT_S", DEFAULT_WAIT_S)


@contextlib.contextmanager
def held(uri: str, owner: str) -> Iterator[Lease]:
    """Hold the lock at `uri` for the block; released on exit, also on error.

    Raises:
        LockTimeoutError: another owner kept it for longer than `wait_seconds()`.
    """
    lease = acquire(uri, owner, lease_s=lease_seconds(), wait_s=wait_seconds())
    try:
        yield lease
    finally:
        release(lease)


def acquire(uri: str, owner: str, *, lease_s: float, wait_s: float) -> Lease:
    """Take the lock at `uri`, waiting up to `wait_s`; a lease expired by its owner is taken over.

    Raises:
        LockTimeoutError: another owner held it (unexpired) for the whole wait.
    """
    deadline = time.monotonic() + wait_s
    while True:
        lease = Lease(uri, owner, secrets.token_hex(8), time.time() + lease_s)
        holder = _try_s3(lease) if is_s3(uri) else _try_local(lease)
        if holder is None:
            log.info("lock %s taken by %s until %s", uri, owner, _when(lease.expires_at))
            return lease
        if time.monotonic() >= deadline:
            raise LockTimeoutError(
                f"could not take the lock {uri} within {wait_s:.0f} s: held by "
                f"{holder.get('owner', '?')} until {_when(holder.get('expires_at'))}; "
                "retry later (nothing was changed)"
            )
        time.sleep(POLL_S)


def check_held(lease: Lease) -> None:
    """Raise `LockLostError` unless `lease` still holds its lock with time to spare."""
    if time.time() > lease.expires_at - RENEW_MARGIN_S:
        raise LockLostError(f"the lease on {lease.uri} ran out before the work was done; retry")
    if is_s3(lease.uri):
        current = _read_s3(lease.uri)
        if current is None or current[1] != lease.etag:
            raise LockLostError(f"the lock {lease.uri} was taken over by another owner; retry")


def release(lease: Lease) -> None:
    """Give the lock back; a lock already taken over by someone else is left alone."""
    if not is_s3(lease.uri):
        _release_local(lease)
        return
    from botocore.exceptions import ClientError

    bucket, key = parse_s3_uri(lease.uri)
    with _s3_errors(lease.uri, "release the lock"):
        try:
            s3_client().delete_object(Bucket=bucket, Key=key, IfMatch=lease.etag)
        except ClientError as exc:
            if not (_is_missing(exc) or _precondition_failed(exc)):
                raise
            log.warning("lock %s was no longer ours when released", lease.uri)
            return
    log.info("lock %s released by %s", lease.uri, lease.owner)


def _when(timestamp: Any) -> str:
    try:
        return datetime.fromtimestamp(float(timestamp), UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError):
        return "?"


def _precondition_failed(exc: Exception) -> bool:
    response = getattr(exc, "response", {}) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code in ("PreconditionFailed", "412") or status == 412


def _read_s3(uri: str) -> tuple[dict[str, Any], str] | None:
    """The lock's body and ETag, or None when nobody holds it."""
    from botocore.exceptions import ClientError

    bucket, key = parse_s3_uri(uri)
    with _s3_errors(uri, "read the lock"):
        try:
            response = s3_client().get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        raw = response["Body"].read()
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    return (body if isinstance(body, dict) else {}), response["ETag"]


def _put_s3(lease: Lease, **condition: str) -> bool:
    """Write the lease under `condition` (IfNoneMatch / IfMatch); False when it did not hold."""
    from botocore.exceptions import ClientError

    bucket, key = parse_s3_uri(lease.uri)
    with _s3_errors(lease.uri, "take the lock"):
        try:
            response = s3_client().put_object(
                Bucket=bucket,
                Key=key,
                Body=lease.body(),
                ContentType="application/json",
                **condition,
            )
        except ClientError as exc:
            if _precondition_failed(exc):
                return False
            raise
    lease.etag = response["ETag"]
    return True


def _try_s3(lease: Lease) -> dict[str, Any] | None:
    """None when `lease` now holds the lock, else the current holder's body."""
    if _put_s3(lease, IfNoneMatch="*"):
        return None
    current = _read_s3(lease.uri)
    if current is None:  # released between our put and our read: try again at once
        return {} if not _put_s3(lease, IfNoneMatch="*") else None
    body, etag = current
    try:
        expired = float(body.get("expires_at", 0)) < time.time()
    except (TypeError, ValueError):
        expired = True  # an unreadable lock body is treated as stale
    if not expired:
        return body
    if _put_s3(lease, IfMatch=etag):
        log.warning(
            "took over the stale lock %s from %s (its lease ended %s)",
            lease.uri,
            body.get("owner", "?"),
            _when(body.get("expires_at")),
        )
        return None
    return body


def _try_local(lease: Lease) -> dict[str, Any] | None:
    """Lock a local file (flock: released by the kernel if the holder dies)."""
    import fcntl

    path = _local_path(lease.uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            body = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            body = {}
        os.close(fd)
        return body if isinstance(body, dict) else {}
    os.ftruncate(fd, 0)
    os.pwrite(fd, lease.body(), 0)
    lease.handle = fd
    return None


def _release_local(lease: Lease) -> None:
    import fcntl

    if lease.handle is None:
        return
    os.ftruncate(lease.handle, 0)
    fcntl.flock(lease.handle, fcntl.LOCK_UN)
    os.close(lease.handle)
    lease.handle = None
