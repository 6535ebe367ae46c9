"""URIs: s3:// and local paths, joining, and safe relative names."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from tasks.errors import UserInputError

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


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


def is_under(uri: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """True when `uri` is `root` or lies below it (same scheme and bucket, whole segments).

    Malformed URIs and `..` segments never count as under anything.
    """
    uri, root = str(uri), str(root)
    try:
        if is_s3(uri) != is_s3(root):
            return False
        if is_s3(uri):
            (bucket, key), (root_bucket, root_key) = parse_s3_uri(uri), parse_s3_uri(root)
            if bucket != root_bucket:
                return False
            return not root_key or key == root_key or key.startswith(f"{root_key}/")
        path, base = _local_path(uri), _local_path(root)
    except UserInputError:
        return False
    if ".." in path.parts:
        return False
    path, base = path.resolve(), base.resolve()
    return path == base or base in path.parents


def allowed_prefixes(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """`TFOPT_ALLOWED_URI_PREFIXES` (comma-separated); empty means any URI is allowed."""
    env = os.environ if environ is None else environ
    value = env.get("TFOPT_ALLOWED_URI_PREFIXES", "")
    return tuple(part.strip() for part in value.split(",") if part.strip())


def check_allowed(uri: str | os.PathLike[str], *also: str) -> None:
    """Refuse a URI outside `TFOPT_ALLOWED_URI_PREFIXES` (and the extra roots `also`).

    Raises:
        UserInputError: the variable is set and `uri` lies under none of its prefixes.
    """
    prefixes = allowed_prefixes()
    if not prefixes:
        return
    if any(is_under(uri, prefix) for prefix in (*prefixes, *also)):
        return
    raise UserInputError(
        f"{uri} is outside the allowed locations (TFOPT_ALLOWED_URI_PREFIXES="
        f"{','.join(prefixes)}); use a URI under one of them or extend the list"
    )
