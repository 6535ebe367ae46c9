"""The comparison report: Markdown, HTML and plain-text tables, the plots and results.json."""

from __future__ import annotations

import base64
import functools
import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks.config import BASELINE
from tasks.metrics.segmentation import CLASS_IOU_PREFIX
from tasks.report_plots import IMAGE_CAPTIONS, plot_accuracy_vs_latency, plot_latency_distribution
from tasks.report_table import (
    MISSING,
    STAR,
    MetricInfo,
    PerClassTable,
    batch_1_variants,
    columns,
    header_items,
    is_chosen,
    is_plotted,
    per_class_table,
    reason_text,
    split_lines,
    table_note,
    verdict_text,
    why_line,
)
from tasks.summary import RESULTS_FORMAT_VERSION, VariantSummary

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<|&~])")
"""Characters that could start Markdown or HTML syntax inside a table cell or list item."""

__all__ = [
    "render_html",
    "render_markdown",
    "render_table_text",
    "results_document",
    "why_line",
    "write_report",
]


# --- Markdown ---------------------------------------------------------------------------------


def markdown_escape(text: Any) -> str:
    """Text that renders literally in a Markdown table cell: one line, syntax backslash-escaped."""
    flat = " ".join(str(text).split())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", flat) if flat else ""


def _markdown_table(metric: MetricInfo, summaries: Sequence[VariantSummary]) -> list[str]:
    cols = columns(metric, summaries)
    lines = [
        "| " + " | ".join(markdown_escape(c.header) for c in cols) + " |",
        "| " + " | ".join("--:" if c.numeric else ":--" for c in cols) + " |",
    ]
    for summary in summaries:
        cells = [markdown_escape(c.cell(summary)) or MISSING for c in cols]
        if is_chosen(summary):
            cells[0] = f"**{STAR} {cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(
    summaries: Sequence[VariantSummary],
    run: Mapping[str, Any],
    selection: Mapping[str, Any],
    registration: Mapping[str, Any],
) -> str:
    """The comparison as Markdown: run facts, why, the table with verdicts, split variants."""
    metric = MetricInfo.from_run(run)
    lines = [f"# tfopt report: {markdown_escape(run.get('model') or 'model')}", ""]
    lines += [
        f"- **{label}**: {markdown_escape(text)}" for label, text in header_items(run, registration)
    ]
    lines += ["", f"**Why:** {markdown_escape(why_line(selection))}", ""]
    lines += _markdown_table(metric, summaries)
    splits = split_lines(summaries)
    note = table_note(metric, split=bool(splits), batch_1=batch_1_variants(summaries))
    lines += ["", markdown_escape(note)]
    per_class = _per_class(summaries, selection)
    if per_class:
        lines += _markdown_per_class(per_class)
    if splits:
        lines += ["", "## Ops kept in TensorFlow", ""]
        lines += [f"- {markdown_escape(name)}: {markdown_escape(text)}" for name, text in splits]
    return "\n".join(lines) + "\n"


def _per_class(
    summaries: Sequence[VariantSummary], selection: Mapping[str, Any]
) -> PerClassTable | None:
    """The per-class IoU table of a segmentation run (None for other metrics)."""
    return per_class_table(
        summaries,
        selection.get("chosen"),
        selection.get("baseline") or BASELINE,
        CLASS_IOU_PREFIX,
        "IoU",
    )


def _markdown_per_class(table: PerClassTable) -> list[str]:
    lines = ["", f"## {markdown_escape(table.title)}", ""]
    lines += ["| class | baseline | chosen | change |", "| :-- | --: | --: | --: |"]
    lines += ["| " + " | ".join(markdown_escape(cell) for cell in row) + " |" for row in table.rows]
    return [*lines, "", markdown_escape(table.note)]


# --- plain text (CLI) -------------------------------------------------------------------------


def _aligned(rows: list[list[str]], numeric: list[bool]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(numeric))]
    return [
        "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ).rstrip()
        for row in rows
    ]


def render_table_text(summaries: Sequence[VariantSummary], run: Mapping[str, Any]) -> str:
    """A plain-text table for a terminal: metric and gate, one line per variant, the reasons."""
    metric = MetricInfo.from_run(run)
    facts = dict(header_items(run, {}))
    lines = [f"{label.lower()}: {facts[label]}" for label in ("Metric", "Accuracy gate")]
    lines += [f"calibration: {facts['Calibration']}", ""]
    cols = [c for c in columns(metric, summaries) if c.key != "reason"]
    rows = [[c.header for c in cols]]
    for summary in summaries:
        cells = [c.cell(summary) for c in cols]
        cells[0] = f"{STAR} {cells[0]}" if is_chosen(summary) else f"  {cells[0]}"
        rows.append(cells)
    lines += _aligned(rows, [c.numeric for c in cols])
    split = any(s.split for s in summaries)
    lines += ["", table_note(metric, split=split, batch_1=batch_1_variants(summaries)), ""]
    lines += [
        f"{summary.variant} ({verdict_text(summary)}): {' '.join(reason_text(summary).split())}"
        for summary in summaries
        if reason_text(summary)
    ]
    lines += [f"{name}: {text}" for name, text in split_lines(summaries)]
    return "\n".join(lines).rstrip() + "\n"


# --- HTML -------------------------------------------------------------------------------------


@functools.cache
def _templates() -> Any:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _data_uri(path: Path) -> str | None:
    try:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        logger.warning("cannot read %s; the page goes without it", path)
        return None


def _html_rows(metric: MetricInfo, summaries: Sequence[VariantSummary]) -> list[dict[str, Any]]:
    cols = columns(metric, summaries)
    return [
        {
            "chosen": is_chosen(summary),
            "verdict": verdict_text(summary),
            "cells": [(c.key, c.cell(summary) or MISSING, c.numeric) for c in cols],
        }
        for summary in summaries
    ]


def render_html(
    summaries: Sequence[VariantSummary],
    run: Mapping[str, Any],
    selection: Mapping[str, Any],
    registration: Mapping[str, Any],
    images: Mapping[str, Path] | None = None,
) -> str:
    """A self-contained HTML page (inline CSS, PNGs as data URIs), autoescaped by Jinja2.

    Args:
        summaries: the per-variant records, with verdicts.
        run: results.json's run block.
        selection: the selection (`Selection.to_dict()`).
        registration: model version, champion and its reason, URLs.
        images: plot name -> PNG file, embedded in the page; unreadable ones are left out.
    """
    metric = MetricInfo.from_run(run)
    figures = []
    for name, path in (images or {}).items():
        src = _data_uri(Path(path))
        if src is not None:
            figures.append({"src": src, "caption": IMAGE_CAPTIONS.get(name, name)})
    splits = split_lines(summaries)
    return (
        _templates()
        .get_template("report.html")
        .render(
            title=run.get("model") or "model",
            items=header_items(run, registration),
            why=why_line(selection),
            columns=columns(metric, summaries),
            rows=_html_rows(metric, summaries),
            note=table_note(metric, split=bool(splits), batch_1=batch_1_variants(summaries)),
            splits=splits,
            per_class=_per_class(summaries, selection),
            figures=figures,
        )
    )


# --- results.json and the whole report --------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays to Python, NaN/Inf to None, others to str."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, str | bool) or value is None:
        return value
    if hasattr(value, "tolist"):
        return _json_safe(value.tolist())
    if isinstance(value, list | tuple | set):
        return [_json_safe(v) for v in value]
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def results_document(
    summaries: Sequence[VariantSummary],
    run: Mapping[str, Any],
    selection: Mapping[str, Any],
    registration: Mapping[str, Any],
) -> dict[str, Any]:
    """results.json (format_version 2, see tasks.summary), JSON-safe: NaN and Inf become null."""
    return _json_safe(
        {
            "format_version": RESULTS_FORMAT_VERSION,
            "run": run,
            "selection": selection,
            "registration": registration,
            "variants": [summary.to_dict() for summary in summaries],
        }
    )


def _draw_plots(plots: Mapping[str, Callable[[Path], Path]], out: Path) -> dict[str, Path]:
    """Plot name -> PNG written; a plot that fails is logged and left out."""
    drawn = {}
    for name, plot in plots.items():
        try:
            drawn[name] = plot(out / f"{name}.png")
        except Exception:  # a plot never costs the tables
            logger.exception("could not draw the %s plot; the report goes without it", name)
    return drawn


def write_report(
    summaries: Sequence[VariantSummary],
    run: Mapping[str, Any],
    selection: Mapping[str, Any],
    registration: Mapping[str, Any],
    latencies_ms: Mapping[str, Sequence[float]],
    out_dir: Path,
) -> dict[str, Path]:
    """Write report.md, report.html, latency.png, accuracy_vs_latency.png and results.json.

    Args:
        summaries: the per-variant records, with verdicts set by the selection.
        run: results.json's run block (model, run_id, hardware, objective, metric, calibration).
        selection: `Selection.to_dict()`.
        registration: model_version, champion, champion_reason, URLs.
        latencies_ms: variant -> batch-1 latency samples; only OK variants are plotted.
        out_dir: where the files go (created).

    Returns:
        File name -> path of each file written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metric = MetricInfo.from_run(run)
    chosen = selection.get("chosen")
    plotted = [s.variant for s in summaries if is_plotted(s)]
    latencies = {name: latencies_ms[name] for name in plotted if name in latencies_ms}
    images = _draw_plots(
        {
            "latency": lambda p: plot_latency_distribution(latencies, p, chosen),
            "accuracy_vs_latency": lambda p: plot_accuracy_vs_latency(
                summaries, metric, p, chosen=chosen, baseline=selection.get("baseline") or BASELINE
            ),
        },
        out,
    )
    document = results_document(summaries, run, selection, registration)
    texts = {
        "report.md": render_markdown(summaries, run, selection, registration),
        "report.html": render_html(summaries, run, selection, registration, images),
        "results.json": json.dumps(document, indent=2, allow_nan=False, ensure_ascii=False),
    }
    written = {path.name: path for path in images.values()}
    for file_name, text in texts.items():
        written[file_name] = out / file_name
        written[file_name].write_text(text, encoding="utf-8")
    logger.info("report for %d variant(s) written to %s", len(summaries), out)
    return written
