"""Run one stage in a process that SIGKILLs itself at a chosen point (run as a script).

Usage: python killed_worker.py <spec.json>; the spec names the stage ("convert" or "register"),
the point to die at, and the stage's inputs.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _after(owner, name: str, count: int = 1) -> None:
    """Replace `owner.name` by a wrapper that dies right after its `count`-th call returns."""
    original = getattr(owner, name)
    calls = [0]

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] >= count:
            _die()
        return result

    setattr(owner, name, wrapper)


def main(spec_path: str) -> None:
    from tasks import registry, stages, storage
    from tasks.config import PipelineConfig, RunContext
    from tasks.results import StageResult

    spec = json.loads(Path(spec_path).read_text())
    config = PipelineConfig.from_params(spec["config"])
    ctx = RunContext.create(spec["run_id"], config.registered_model_name)
    export = StageResult.from_dict(spec["export"])
    data = StageResult.from_dict(spec["data"])
    point = spec["die"]
    if point == "mid-upload":
        _after(storage.s3_client(), "upload_file")
    elif point == "after-parent-run-created":
        client = registry.client()
        _after(client, "create_run")
        registry.client = lambda: client
    elif point == "after-version-registered":
        _after(registry, "register_version")
    if spec["stage"] == "convert":
        stages.convert_stage(config, ctx, spec["variant"], export, data)
    else:
        stages.register_stage(config, ctx, export, data, spec["rows"], spec["selection"])
    sys.exit(3)  # reaching this point means the fault was never injected


if __name__ == "__main__":
    main(sys.argv[1])
