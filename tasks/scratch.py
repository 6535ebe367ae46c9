"""Private local scratch space: per-user and per-run folders only their owner can enter."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

from tasks.errors import UserInputError

log = logging.getLogger(__name__)

PRIVATE_MODE = 0o700


def work_root() -> Path:
    """Where runs keep scratch: `TFOPT_WORK_DIR`, else `<tmp>/tfopt-<uid>` (private to the user)."""
    value = os.environ.get("TFOPT_WORK_DIR", "").strip()
    if value:
        return Path(value).expanduser()
    return Path(tempfile.gettempdir()) / f"tfopt-{os.getuid()}"


def private_dir(path: Path) -> Path:
    """Create `path` (mode 0700) or check an existing one: a real folder this user owns.

    An existing folder with group or other access is narrowed to 0700.

    Raises:
        UserInputError: `path` is a symlink, not a folder, or owned by another user.
    """
    try:
        path.mkdir(mode=PRIVATE_MODE)
    except FileExistsError:
        pass
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UserInputError(
            f"scratch folder {path} is not a plain folder (a symlink or a file); remove it or set "
            "TFOPT_WORK_DIR to a private folder"
        )
    if info.st_uid != os.getuid():
        raise UserInputError(
            f"scratch folder {path} belongs to another user (uid {info.st_uid}); set "
            "TFOPT_WORK_DIR to a folder of your own"
        )
    if stat.S_IMODE(info.st_mode) != PRIVATE_MODE:
        os.chmod(path, PRIVATE_MODE)
    return path


def private_tree(root: Path, *parts: str) -> Path:
    """`root/part/part...`, each level below `root` created or checked by `private_dir`."""
    root.mkdir(parents=True, exist_ok=True)
    path = root
    for part in parts:
        if part in ("", ".", "..") or "/" in part or os.sep in part:
            raise UserInputError(f"unsafe scratch folder name {part!r}")
        path = private_dir(path / part)
    return path
