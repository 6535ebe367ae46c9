"""The local download cache of published trees, keyed by digest, LRU-evicted."""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from tasks.errors import UserInputError
from tasks.storage.download import _download_verified
from tasks.storage.manifest import IntegrityError, Manifest, _verify_tree

log = logging.getLogger(__name__)

LEFTOVER_MAX_AGE_S = 24 * 3600.0


def cache_root() -> Path | None:
    """The download cache (`TFOPT_CACHE_DIR`, default `~/.cache/tfopt`); None when `off`."""
    value = os.environ.get("TFOPT_CACHE_DIR", "~/.cache/tfopt").strip()
    if value.lower() in ("", "0", "off", "none", "false"):
        return None
    return Path(value).expanduser() / "trees"


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
    clean_leftovers(root)
    staging = root / f".{manifest.digest}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_leftovers(root: Path, *, max_age_s: float = LEFTOVER_MAX_AGE_S) -> int:
    """Remove download folders a killed process left in the cache; returns how many.

    A staging folder (`.<digest>.tmp-<pid>-<random>`) is a leftover when its process is gone or
    it is older than `max_age_s`.
    """
    removed = 0
    now = time.time()
    for path in root.glob(".*.tmp-*"):
        pid_text = path.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        dead = not pid_text.isdigit() or not _alive(int(pid_text))
        try:
            old = now - path.lstat().st_mtime > max_age_s
        except FileNotFoundError:
            continue
        if dead or old:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    if removed:
        log.warning(
            "cache %s: removed %d download leftovers of interrupted processes", root, removed
        )
    return removed


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
