"""The S3 client (boto3), its settings, error mapping and low-level object operations."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tasks.errors import TfoptError, TransientError, UserInputError
from tasks.storage.uris import is_s3

DEFAULT_BUCKET = "tfopt"
DEFAULT_REGION = "us-east-1"
MAX_PARALLEL_TRANSFERS = 8  # files in flight at once
_MB = 1024 * 1024
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload"})
_DENIED_CODES = frozenset({"403", "AccessDenied", "AllAccessDisabled"})
_BAD_CREDENTIALS_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"})
_EXPIRED_CODES = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired"})
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


_CREDENTIAL_FIELD = re.compile(r"(Credential=|X-Amz-Credential=|AWSAccessKeyId=)[^/&,\s'\"]+")
_BOTOCORE_LOGGERS = (
    "botocore.endpoint",
    "botocore.auth",
    "botocore.httpsession",
    "botocore.parsers",
    "botocore.hooks",
    "botocore.retryhandler",
    "botocore.awsrequest",
)


class MaskCredentials(logging.Filter):
    """Mask access key ids in botocore's debug records (request headers, signing steps)."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        masked = _CREDENTIAL_FIELD.sub(r"\1***", text)
        for secret in self.secrets:
            masked = masked.replace(secret, "***")
        if masked != text:
            record.msg, record.args = masked, ()
        return True


def _mask_botocore_logs(settings: S3Settings) -> None:
    mask = MaskCredentials((settings.access_key_id or "", settings.secret_access_key or ""))
    for name in _BOTOCORE_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, MaskCredentials)]:
            logger.removeFilter(old)
        logger.addFilter(mask)


_configured_s3: S3Settings | None = None


def configure_s3(settings: S3Settings | None) -> S3Settings | None:
    """Make `settings` this process's S3 (None: the environment again); returns the previous.

    Airflow tasks and the UI plugin pass the settings of an Airflow connection here; the CLI
    leaves it unset and reads the environment.
    """
    global _configured_s3
    previous, _configured_s3 = _configured_s3, settings
    return previous


@contextlib.contextmanager
def using_s3(settings: S3Settings) -> Iterator[S3Settings]:
    """`configure_s3(settings)` for the block, then the previous settings again."""
    previous = configure_s3(settings)
    try:
        yield settings
    finally:
        configure_s3(previous)


def current_s3_settings() -> S3Settings:
    """The S3 this process uses: the configured settings, else the environment's."""
    return _configured_s3 or S3Settings.from_env()


def s3_client(settings: S3Settings | None = None) -> Any:
    """A boto3 S3 client for `settings` (default: `current_s3_settings()`), cached per settings."""
    return _cached_client(settings or current_s3_settings())


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
    _mask_botocore_logs(settings)
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        region_name=settings.region,
    )
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config)


def default_run_root() -> str:
    """Where pipeline runs write their artifacts: `TFOPT_RUN_ROOT`, else s3://<TFOPT_BUCKET>/runs."""
    root = os.environ.get("TFOPT_RUN_ROOT") or f"s3://{current_s3_settings().bucket}/runs"
    return root.rstrip("/")


def credentials_source(environ: dict[str, str] | None = None) -> str:
    """Where the S3 credentials in use come from, for error messages (never their values)."""
    env = os.environ if environ is None else environ
    if environ is None and _configured_s3 is not None:
        return "the S3 settings this process was given (an Airflow connection)"
    if env.get("AWS_ACCESS_KEY_ID"):
        return "the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    if env.get("AWS_PROFILE"):
        return f"the AWS profile {env['AWS_PROFILE']!r} (AWS_PROFILE)"
    return "boto3's default chain (shared credentials file, instance or pod role)"


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
    if code in _EXPIRED_CODES:
        return TransientError(
            f"cannot {action} {uri}: the S3 credentials have expired ({code}); they come from "
            f"{credentials_source()}: refresh them (a retry picks up refreshed credentials)"
        )
    if code in _BAD_CREDENTIALS_CODES:
        return UserInputError(
            f"cannot {action} {uri}: S3 rejected the credentials ({code}); they come from "
            f"{credentials_source()}: fix them for the endpoint "
            f"{current_s3_settings().endpoint_url or 'AWS S3'}"
        )
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
        ParamValidationError,
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
    except ParamValidationError as exc:
        raise UserInputError(f"cannot {action} {uri}: invalid request parameters: {exc}") from exc
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


def _parallel(function: Callable[[str], Any], items: Iterable[str]) -> list[Any]:
    items = list(items)
    if len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_TRANSFERS, len(items))) as pool:
        return list(pool.map(function, items))


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


def _object_bytes(bucket: str, key: str, uri: str) -> int:
    """The size of one object."""
    with _s3_errors(uri, "read"):
        return int(s3_client().head_object(Bucket=bucket, Key=key).get("ContentLength", 0))


def _total_bytes(bucket: str, prefix: str, uri: str) -> int:
    """The summed size of every object under `prefix/`."""
    total = 0
    with _s3_errors(uri, "list"):
        paginator = s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""):
            total += sum(int(item.get("Size", 0)) for item in page.get("Contents", []))
    return total


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=64 * _MB, multipart_chunksize=16 * _MB, max_concurrency=4
    )


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
