"""The stack folder is private and every credential file is 0600, on every write."""

from __future__ import annotations

import stat

import pytest

from infra.local import stack

pytestmark = pytest.mark.unit


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_rewritten_credential_files_are_0600_and_the_folder_0700(tmp_path):
    config = stack.StackConfig(stack_dir=tmp_path / ".stack")
    config.stack_dir.mkdir(mode=0o755)
    config.env_file.write_text("old")
    config.env_file.chmod(0o644)  # left readable by an older version
    stack.write_env_file(config, {"AWS_SECRET_ACCESS_KEY": "fresh"})
    assert _mode(config.env_file) == 0o600
    assert _mode(config.stack_dir) == 0o700
    assert "fresh" in config.env_file.read_text()
    stack.ensure_credentials(config)
    assert _mode(config.stack_dir / "s3.json") == 0o600
    assert not list(config.stack_dir.glob(".*"))  # no staging file left behind
