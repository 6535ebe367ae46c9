"""Unit tests of the comparison report: tables, escaping, Pareto front, files written."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.report import (
    pareto_front,
    plot_accuracy_vs_latency,
    plot_latency_distribution,
    render_html,
    render_markdown,
    why_line,
    write_report,
)

pytestmark = pytest.mark.unit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert('pwned')</script> | & \"quoted\""
INFO = {
    "model_name": "demo-cnn",
    "run_id": "manual__2025-01-01",
    "hardware": "cpu:amd-epyc:2c",
    "objective": "latency",
    "accuracy_tolerance": 0.01,
    "latency_slo_ms": None,
}


def _rows() -> list[dict]:
    base = [4.8 + 0.01 * (i % 13) for i in range(300)]
    return [
        {
            "variant": "tf:fp32",
            "status": "OK",
            "metric": 0.913,
            "metric_delta": 0.0,
            "agreement": 1.0,
            "p50_ms": 4.86,
            "p99_ms": 4.92,
            "throughput": 800.0,
            "size_bytes": 9_400_000,
            "conversion_s": 0.0,
            "speedup": 1.0,
            "latencies_ms": base,
        },
        {
            "variant": "tflite:int8",
            "status": "OK",
            "metric": 0.909,
            "metric_delta": -0.004,
            "agreement": 0.98,
            "p50_ms": 0.61,
            "p99_ms": 0.9,
            "throughput": 3900.0,
            "size_bytes": 2_400_000,
            "conversion_s": 11.5,
            "speedup": 7.97,
            "latencies_ms": [v / 8 for v in base],
        },
        {
            "variant": "tflite:fp16",
            "status": "OK",
            "metric": 0.85,
            "metric_delta": -0.063,
            "p50_ms": 1.7,
            "rejections": ["top-1 drop 6.30 points > 1.00"],
        },
        {"variant": "tftrt:fp16", "status": "SKIPPED", "reason": "TensorFlow 2.21 has no TensorRT"},
        {"variant": "tftrt:int8", "status": "FAILED", "reason": EVIL, "metric": float("nan")},
    ]


def test_markdown_lists_every_variant_and_marks_the_chosen_one() -> None:
    text = render_markdown(_rows(), "tflite:int8", INFO)
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + len(_rows())  # header, alignment, one line per variant
    for row in _rows():
        assert any(row["variant"] in line for line in table[2:])
    chosen = [line for line in table if "★" in line]
    assert len(chosen) == 1 and "**★ tflite:int8**" in chosen[0]
    assert "91.30 %" in text and "-0.40" in text and "7.97×" in text and "3,900" in text
    assert "demo-cnn" in text and "cpu:amd-epyc:2c" in text and "**Why:**" in text
    assert "top-1 drop 6.30 points &gt; 1.00" in text  # rejections are listed
    assert "<script>" not in text and "\\|" in text  # escaped, table not broken
    assert all(line.count(" | ") == 11 for line in table)  # 12 cells on every line


def test_markdown_without_a_choice() -> None:
    text = render_markdown(_rows(), None, {})
    assert "**★" not in text and "| selected |" not in text
    assert "No variant was chosen." in text


def test_html_escapes_text_and_is_self_contained() -> None:
    info = {**INFO, "model_name": "<b>model</b>"}
    page = render_html(_rows(), "tflite:int8", info, {"latency": 'x"><script>.png'})
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page
    assert "&lt;b&gt;model&lt;/b&gt;" in page
    assert 'src="x&quot;&gt;&lt;script&gt;.png"' in page
    assert "http://" not in page and "https://" not in page  # no external assets
    assert 'class="chosen"' in page and "status-failed" in page and "status-skipped" in page


def test_html_inlines_images(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG_MAGIC + b"rest")
    images = {"latency": "a.png", "missing": "nope.png"}
    page = render_html(_rows(), None, INFO, images, inline_images=True, base_dir=tmp_path)
    assert 'src="data:image/png;base64,iVBORw0KGgpyZXN0"' in page
    assert 'src="nope.png"' in page  # cannot inline: falls back to the relative path


@pytest.mark.parametrize(
    ("points", "front"),
    [
        ([], []),
        ([(1.0, 0.9)], [(1.0, 0.9)]),
        (
            [(5.0, 0.95), (1.0, 0.80), (2.0, 0.90), (3.0, 0.85), (2.5, 0.90), (6.0, 0.95)],
            [(1.0, 0.80), (2.0, 0.90), (5.0, 0.95)],
        ),
        ([(2.0, 0.9), (2.0, 0.8), (2.0, 0.9)], [(2.0, 0.9)]),
        ([(1.0, 0.9), (2.0, 0.8), (None, 1.0), (float("nan"), 1.0)], [(1.0, 0.9)]),
    ],
)
def test_pareto_front(points: list, front: list) -> None:
    assert pareto_front(points) == front


def test_pareto_front_keeps_extra_items() -> None:
    points = [(2.0, 0.9, "b"), (1.0, 0.8, "a"), (3.0, 0.7, "c")]
    assert [name for _, _, name in pareto_front(points)] == ["a", "b"]


def test_why_line() -> None:
    rows = _rows()
    assert why_line(rows, "tflite:int8", INFO).startswith("tflite:int8 was selected")
    assert "7.97×" in why_line(rows, "tflite:int8", INFO)
    rows[1]["selected_reason"] = "fastest within tolerance"
    assert why_line(rows, "tflite:int8", INFO) == "tflite:int8: fastest within tolerance"
    assert why_line(rows, None, {"why": "all variants failed"}) == "all variants failed"


def _assert_png(path: Path, min_bytes: int = 5_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes


def test_write_report_writes_every_file(tmp_path: Path) -> None:
    rows = _rows()
    paths = write_report(rows, "tflite:int8", INFO, tmp_path / "out")
    expected = {"report.md", "report.html", "latency.png", "accuracy_vs_latency.png"}
    assert set(paths) == expected | {"results.json"}
    assert all(path.parent == tmp_path / "out" and path.is_file() for path in paths.values())
    _assert_png(paths["latency.png"])
    _assert_png(paths["accuracy_vs_latency.png"])
    html_text = paths["report.html"].read_text(encoding="utf-8")
    assert html_text.count('src="data:image/png;base64,') == 2
    results = json.loads(paths["results.json"].read_text(encoding="utf-8"))
    assert results["chosen"] == "tflite:int8"
    assert results["info"] == INFO
    assert results["rows"][4]["metric"] is None  # NaN is not JSON: stored as null
    rows[4]["metric"] = None
    assert results["rows"] == rows


def test_plots_without_data_still_write_png(tmp_path: Path) -> None:
    rows = [{"variant": "tftrt:fp16", "status": "SKIPPED", "reason": "no TensorRT"}]
    _assert_png(plot_latency_distribution(rows, tmp_path / "l.png"), 1_000)
    _assert_png(plot_accuracy_vs_latency(rows, None, tmp_path / "a.png"), 1_000)


def test_accuracy_plot_handles_ties_log_scale_and_missing_baseline(tmp_path: Path) -> None:
    rows = [
        {"variant": f"tflite:v{i}", "status": "OK", "metric": 0.9, "p50_ms": 0.5 * 3**i}
        for i in range(5)
    ]
    rows.append({"variant": "tflite:same", "status": "OK", "metric": 0.9, "p50_ms": 0.5})
    path = plot_accuracy_vs_latency(rows, "tflite:v0", tmp_path / "a.png", tolerance=0.01)
    _assert_png(path)
    assert math.isfinite(path.stat().st_size)


def test_importing_report_and_hardware_stays_light() -> None:
    code = (
        "import sys, tasks.report, tasks.hardware, tasks.benchmark\n"
        "heavy = {'matplotlib', 'tensorflow', 'mlflow', 'ai_edge_litert'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_policy_output_in_info_is_shown() -> None:
    """The select stage hands its reason and rejections (variant -> reason) in `info`."""
    info = {
        **INFO,
        "selection_reason": "kept the baseline tf:fp32: no other variant qualified",
        "rejections": {"tflite:int8": "accuracy: top-1 dropped 2.00 points, tolerance 1.00"},
    }
    text = render_markdown(_rows(), "tf:fp32", info)
    assert "**Why:** kept the baseline tf:fp32: no other variant qualified" in text
    assert "| accuracy: top-1 dropped 2.00 points, tolerance 1.00 |" in text
    assert "- tflite:int8: accuracy: top-1 dropped 2.00 points" in text
    page = render_html(_rows(), "tf:fp32", info)
    assert "<b>tflite:int8</b>: accuracy: top-1 dropped 2.00 points" in page


def test_metric_name_names_the_metric_column() -> None:
    rows = [{**row, "metric_name": "agreement"} for row in _rows()]
    text = render_markdown(rows, None, INFO)
    header = next(line for line in text.splitlines() if line.startswith("| variant"))
    assert "| agreement | Δ (points) | agreement |" in header and "top-1" not in header
    assert "Δ is agreement minus the baseline's" in text
