"""Fault suite fixtures: one prepared run on the real stack, a ledger and its summary table."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

LEDGER: list[dict[str, Any]] = []
COLUMNS = (
    ("case", "case"),
    ("faults", "faults injected"),
    ("survived", "runs survived"),
    ("duplicated", "versions duplicated"),
    ("moved", "champion wrongly moved"),
    ("trusted", "half-published trees trusted"),
)


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.faults)


@dataclass
class Outcome:
    """What one fault case did and what it found; every count is measured by the test."""

    case: str
    faults: int = 0
    survived: int = 0
    duplicated: int = 0
    moved: int = 0
    trusted: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def outcome(request) -> Outcome:
    """The current case's ledger row; recorded whether the test passes or fails."""
    row = Outcome(case=request.node.name.removeprefix("test_"))
    yield row
    LEDGER.append(row.__dict__)


def pytest_terminal_summary(terminalreporter):
    if not LEDGER:
        return
    widths = [max(len(title), 6) for _, title in COLUMNS]
    widths[0] = max(widths[0], *(len(str(row["case"])) for row in LEDGER))
    lines = [" | ".join(title.ljust(w) for (_, title), w in zip(COLUMNS, widths, strict=True))]
    lines.append("-|-".join("-" * w for w in widths))
    for row in LEDGER:
        cells = [str(row[key]) for key, _ in COLUMNS]
        lines.append(" | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    totals = ["total"] + [str(sum(int(r[key]) for r in LEDGER)) for key, _ in COLUMNS[1:]]
    lines.append(" | ".join(c.ljust(w) for c, w in zip(totals, widths, strict=True)))
    lines += [f"{row['case']}: {row['extra']}" for row in LEDGER if row["extra"]]
    terminalreporter.write_sep("=", "fault injection summary")
    for line in lines:
        terminalreporter.write_line(line)
    out = os.environ.get("TFOPT_FAULTS_SUMMARY")
    if out:
        Path(out).write_text("\n".join(lines) + "\n")


@dataclass(frozen=True)
class Prepared:
    """A run whose stages up to select are published: what register starts from."""

    config: Any
    ctx: Any
    export: Any
    data: Any
    rows: list[dict[str, Any]]
    selection: dict[str, Any]


@pytest.fixture(scope="session")
def prepared(local_stack, tiny_bundle, tmp_path_factory) -> Prepared:
    """Export, data and tf:fp32 + tflite:fp32 converted, validated and benchmarked, once."""
    from tasks import stages
    from tasks.config import PipelineConfig, RunContext

    os.environ["TFOPT_WORK_DIR"] = str(tmp_path_factory.mktemp("faults-work"))
    config = PipelineConfig.from_params(
        {
            "model_uri": str(tiny_bundle["model"]),
            "eval_data_uri": str(tiny_bundle["eval"]),
            "calibration_data_uri": str(tiny_bundle["calibration"]),
            "registered_model_name": f"faults-prep-{uuid.uuid4().hex[:8]}",
            "variants": "tf:fp32,tflite:fp32",
            "batch_sizes": "1",
        }
    )
    ctx = RunContext.create("prep", config.registered_model_name)
    export = stages.export_stage(config, ctx)
    data = stages.prepare_data_stage(config, ctx, export)
    conversions, validations = [], []
    for spec in config.variants:
        conversion = stages.convert_stage(config, ctx, spec.name, export, data)
        conversions.append(conversion)
        validations.append(stages.validate_stage(config, ctx, conversion, export, data))
    benchmarks = stages.benchmark_lanes(config, ctx, conversions, data)
    summaries = stages.collect_summaries(conversions, validations, benchmarks)
    selection, summaries = stages.select_stage(config, summaries)
    rows = [summary.to_dict() for summary in summaries]
    assert [row["status"] for row in rows] == ["OK", "OK"], rows
    return Prepared(config, ctx, export, data, rows, selection)
