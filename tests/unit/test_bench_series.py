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


def test_the_peer_table_marks_the_choice_and_the_best_peer_and_says_what_was_skipped() -> None:
    latency = {"p50_ms": 13.6, "round_p50_range_ms": [12.6, 13.61], "rounds_kept": 3}
    network = {
        "model": "resnet50",
        "params": 25.6e6,
        "flops": 7.76e9,
        "chosen": "tflite:dynamic",
        "best_peer": "peer:litert-dynamic-range",
        "speed_vs_best_peer": 1.006,
        "speed_vs_best_peer_interval95": [0.98, 1.031],
        "same_outputs": True,
        "rounds": {"rounds": 7, "kept": [0, 3, 5]},
        "rows": {
            "tflite:dynamic": {
                "kind": "tfopt",
                "status": "OK",
                "latency": latency,
                "fidelity": {"cosine": 0.99181},
                "passed": True,
            },
            "openvino:bf16": {"kind": "tfopt", "status": "SKIPPED"},
            "peer:litert-dynamic-range": {
                "kind": "peer",
                "status": "OK",
                "latency": {**latency, "p50_ms": 14.2, "rounds_slow": 2},
                "fidelity": {"cosine": 0.99181},
                "passed": True,
            },
        },
    }
    lines = series.peers_markdown(network, 3).splitlines()
    assert lines[0] == (
        "resnet50 (25.6 M parameters, 7.76 GFLOP/image), run 3; tfopt's choice tflite:dynamic "
        "vs peer:litert-dynamic-range: 1.006x head to head (95% interval 0.980-1.031), the same "
        "outputs bit for bit; 3 of 7 rounds kept:"
    )
    assert (
        lines[4]
        == "| tflite:dynamic (tfopt's choice) | 13.6 | 12.6-13.6 | 3 of 3 | 0.9918 | pass |"
    )
    assert lines[5] == "| openvino:bf16 | SKIPPED | - | - | - | - |"
    assert lines[6].startswith(
        "| peer:litert-dynamic-range (best peer) | 14.2 | 12.6-13.6 | 3 of 5 |"
    )


def test_a_series_of_one_run_says_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "run1"
    folder.mkdir()
    (folder / "bench.json").write_text(json.dumps(_document("tflite:fp16", 1.01, True)))
    code = series.main(["--report-only", "--runs", "1", "--out-dir", str(tmp_path)])
    assert (code, capsys.readouterr().out.rstrip().splitlines()[-1]) == (
        0,
        "every target held in the run",
    )
