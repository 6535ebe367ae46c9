"""A published run's results.json (format_version 2) as the UI pages show it.

The table's columns, cells, verdicts and header facts come from `tasks.report_table`, the same
code the pipeline's own reports use, so every surface shows the same verdict and reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

RESULTS_FORMAT_VERSION = 2


class OlderResultsError(ValueError):
    """results.json is not in the one shape this UI reads (published by an older tfopt)."""


@dataclass(frozen=True)
class RunView:
    """What a run's page shows: facts, the why line, the variant table, its legend."""

    run: Mapping[str, Any]
    selection: Mapping[str, Any]
    registration: Mapping[str, Any]
    facts: list[tuple[str, str]]
    why: str
    headers: list[tuple[str, bool]]
    rows: list[dict[str, Any]]
    note: str
    splits: list[tuple[str, str]] = field(default_factory=list)

    @property
    def chosen(self) -> str:
        return str(self.selection.get("chosen") or "")

    @property
    def metric_title(self) -> str:
        metric = self.run.get("metric") or {}
        return str(metric.get("title") or metric.get("name") or "")


def check_format(results: Mapping[str, Any]) -> None:
    """Raise OlderResultsError unless `results` is a format_version 2 document."""
    version = results.get("format_version")
    if version != RESULTS_FORMAT_VERSION:
        raise OlderResultsError(
            f"This run was published by an older tfopt (results.json format_version {version!r}, "
            f"this page reads {RESULTS_FORMAT_VERSION}). Its report files are still listed; "
            "re-run the DAG to see it here."
        )


def run_view(results: Mapping[str, Any]) -> RunView:
    """The page content of one run.

    Raises:
        OlderResultsError: results.json has another shape (published by an older tfopt).
    """
    from tasks.report_table import (
        MetricInfo,
        columns,
        header_items,
        is_chosen,
        split_lines,
        table_note,
        verdict_text,
        why_line,
    )
    from tasks.summary import VariantSummary

    check_format(results)
    run, selection = results.get("run") or {}, results.get("selection") or {}
    registration = results.get("registration") or {}
    summaries = [VariantSummary.from_dict(row) for row in results.get("variants") or []]
    metric = MetricInfo.from_run(run)
    cols = columns(metric, summaries)
    splits = split_lines(summaries)
    links = ("Model version", "MLflow run")  # shown as links above the facts
    facts = [(label, text) for label, text in header_items(run, registration) if label not in links]
    return RunView(
        run=run,
        selection=selection,
        registration=registration,
        facts=facts,
        why=why_line(selection),
        headers=[(column.header, column.numeric) for column in cols],
        rows=[
            {
                "variant": summary.variant,
                "chosen": is_chosen(summary),
                "verdict": verdict_text(summary),
                "cells": [(column.key, column.cell(summary), column.numeric) for column in cols],
            }
            for summary in summaries
        ],
        note=table_note(metric, split=bool(splits)),
        splits=splits,
    )


def run_summary(results: Mapping[str, Any]) -> dict[str, str]:
    """The runs list's cells of one run: chosen variant, version, metric, MLflow URLs."""
    check_format(results)
    selection = results.get("selection") or {}
    registration = results.get("registration") or {}
    metric = (results.get("run") or {}).get("metric") or {}
    return {
        "chosen": str(selection.get("chosen") or ""),
        "model_version": str(registration.get("model_version") or ""),
        "metric": str(metric.get("title") or metric.get("name") or ""),
        "mlflow_run_url": str(registration.get("mlflow_run_url") or ""),
        "model_version_url": str(registration.get("model_version_url") or ""),
    }
