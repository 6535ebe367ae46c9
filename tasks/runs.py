"""Published pipeline runs: find the completed reports under the run root, newest first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks import storage

REPORTS = "reports"


@dataclass(frozen=True)
class PublishedRun:
    """A run whose report was published (its manifest exists): where it is and its results."""

    model: str
    run_id: str
    report_uri: str
    created_at: str

    def results(self) -> dict[str, Any]:
        return storage.get_json(storage.join_uri(self.report_uri, "results.json"))


def list_runs(
    model: str | None = None, *, root: str | None = None, limit: int = 20
) -> list[PublishedRun]:
    """Completed runs (report manifest published), newest first; optionally of one model."""
    base = root or storage.default_run_root()
    scope = storage.join_uri(base, model) if model else base
    suffix = f"/{REPORTS}/{storage.MANIFEST_NAME}"
    found = []
    for rel in storage.list_keys(scope):
        if not rel.endswith(suffix):
            continue
        run_path = rel[: -len(suffix)]
        parts = run_path.split("/")
        run_model, run_id = (model, parts[-1]) if model else (parts[0], parts[-1])
        report_uri = storage.join_uri(scope, run_path, REPORTS)
        manifest = storage.read_manifest(report_uri)
        if manifest is not None:
            found.append(PublishedRun(run_model, run_id, report_uri, manifest.created_at))
    found.sort(key=lambda run: run.created_at, reverse=True)
    return found[:limit]
