"""Digests and manifests: what a published tree holds, read and verified."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.errors import UserInputError
from tasks.storage.s3 import _is_missing, _s3_errors, s3_client
from tasks.storage.uris import _key_join, _local_path, _safe_relpath, is_s3, join_uri, parse_s3_uri

MANIFEST_NAME = "_MANIFEST.json"
MANIFEST_SCHEMA = 1


class PublishConflictError(UserInputError):
    """A different artifact is already published at the destination URI."""


class IntegrityError(UserInputError):
    """A downloaded file does not match the sha256 its manifest lists."""


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
