"""Unit tests of the bench series table: targets of consecutive runs side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import series

pytestmark = pytest.mark.unit


def _target(name: str, value: float | None, passed: bool | None, unit: str = "x", target="x"):
    return {"name": name, "value": value, "unit": unit, "target": target, "passed": passed}


def _document(speedup_variant: str, repeat: float, repeat_ok: bool) -> dict:
    return {
        "created_at": "2026-12-01T12:00:00+00:00",
        "bench_wall_s": 2520.0,
        "machine": {"cpu_model": "AMD EPYC", "usable_cores": 2, "memory_gib": 23.5, "isa": {}},
        "targets": [
            _target(f"speed-up b1 ({speedup_variant})", 8.77, True, target=">= 5x"),
            _target(f"repeatability p50 ({speedup_variant})", repeat, repeat_ok, target="5%"),
            _target("orchestration overhead (DAG)", 14.6, True, "% wall", "<= 20%"),
            _target("orchestration overhead (DAG, mobilenet_v2)", 9.3, True, "% wall", "<= 10%"),
            _target("resnet50: INT8 efficiency", 126.0, None, "% peak", "no target"),
        ],
    }


def test_the_series_table_puts_each_target_on_one_row_across_runs() -> None:
    documents = [_document("tflite:fp16", 1.01, True), _document("tflite:fp32", 0.99, True)]
    table, held = series.series_table(documents)
    lines = table.splitlines()
    assert lines[0] == "| figure | run 1 | run 2 | target |"
    assert lines[2] == (
        "| speed-up b1 | 8.77x (pass, tflite:fp16) | 8.77x (pass, tflite:fp32) | >= 5x |"
    )
    # the two overhead figures are two rows: only a variant in parentheses is a qualifier
    assert lines[4].startswith("| orchestration overhead (DAG) | 14.6 % wall (pass) |")
    assert lines[5].startswith("| orchestration overhead (DAG, mobilenet_v2) | 9.3 % wall")
    assert lines[6] == (
        "| resnet50: INT8 efficiency | 126 % peak (-) | 126 % peak (-) | no target |"
    )
    assert held


def test_one_miss_in_any_run_means_the_series_did_not_hold() -> None:
    documents = [_document("tflite:fp16", 1.01, True), _document("tflite:fp16", 0.87, False)]
    table, held = series.series_table(documents)
    assert "0.87x (**miss**, tflite:fp16)" in table
    assert not held


def test_report_only_tables_the_saved_runs_and_exits_nonzero_on_a_miss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for number, (repeat, ok) in enumerate([(1.01, True), (0.87, False)], start=1):
        folder = tmp_path / f"run{number}"
        folder.mkdir()
        (folder / "bench.json").write_text(json.dumps(_document("tflite:fp16", repeat, ok)))
    code = series.main(["--report-only", "--runs", "3", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 3
    assert "not every target held in 3 consecutive runs (2 completed)" in out
    assert (tmp_path / "series.md").read_text() == out.rstrip("\n") + "\n"
    assert json.loads((tmp_path / "series.json").read_text())["held"] is False
