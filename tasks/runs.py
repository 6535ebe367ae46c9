"""Published pipeline runs: those whose report manifest exists under the run root."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tasks import storage

REPORTS = "reports"


@dataclass(frozen=True)
class PublishedRun:
    """A run whose report folder is published: `<root>/<model>/<run_id>/reports/`."""

    model: str
    run_id: str
    published: datetime | None

    def report_uri(self, root: str | None = None) -> str:
        return storage.join_uri(
            root or storage.default_run_root(), self.model, self.run_id, REPORTS
        )

    def results(self, root: str | None = None) -> dict[str, Any]:
        return storage.get_json(storage.join_uri(self.report_uri(root), "results.json"))


def runs_in_listing(objects: Iterable[tuple[str, datetime | None]]) -> list[PublishedRun]:
    """The published runs among `(key relative to the run root, last modified)` pairs.

    A run counts once its report manifest (`<model>/<run_id>/reports/_MANIFEST.json`, written
    last) exists; the manifest's time is the run's. Newest first.
    """
    runs = []
    for key, modified in objects:
        parts = key.split("/")
        if len(parts) == 4 and parts[2:] == [REPORTS, storage.MANIFEST_NAME] and all(parts[:2]):
            runs.append(PublishedRun(parts[0], parts[1], modified))
    runs.sort(key=lambda run: run.published.timestamp() if run.published else 0, reverse=True)
    return runs


def list_runs(model: str | None = None, *, limit: int = 20) -> list[PublishedRun]:
    """Published runs under the run root (`TFOPT_RUN_ROOT`), of one model or all; newest first."""
    root = storage.default_run_root()
    scope = f"{model}/" if model else ""
    listing = storage.list_objects(storage.join_uri(root, model) if model else root)
    return runs_in_listing((scope + key, modified) for key, modified in listing)[:limit]
