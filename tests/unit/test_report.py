"""Unit tests of the comparison report: Markdown, HTML, text, results.json and the files written."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from markdown_it import MarkdownIt

import tasks.report as report
from tasks.report import (
    markdown_escape,
    render_html,
    render_markdown,
    render_table_text,
    results_document,
    write_report,
)
from tasks.results import Status
from tasks.summary import RESULTS_FORMAT_VERSION, VariantSummary, Verdict

pytestmark = pytest.mark.unit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NASTY = "top-1 dropped 6.30 points (91.30% -> 85.00%) | <b>bold</b> & *not* `code` [x](y) a_b"
"""A verdict reason with characters special to Markdown and HTML."""
RUN = {
    "model": "demo-cnn",
    "run_id": "manual__2026-01-01",
    "hardware": "AMD EPYC 9B14 (cpu:x86_64:avx2:2c)",
    "objective": "latency",
    "latency_slo_ms": None,
    "metric": {
        "name": "top1",
        "title": "top-1 accuracy",
        "higher_is_better": True,
        "tolerance": 0.01,
        "tolerance_meaning": "max absolute drop vs the baseline's (0.01 = 1 point)",
        "output": {"class": "probabilities"},
    },
    "calibration": {
        "source": "held-out eval slice",
        "uri": "s3://tfopt/demo/eval",
        "num_samples": 64,
        "holdout": {"seed": 0, "count": 64},
    },
    "validation_samples": 448,
}
SELECTION = {
    "chosen": "tflite:int8",
    "objective": "latency",
    "reason": "lowest p50 at batch 1 (0.6 ms, 8.0x faster than tf:fp32)",
    "ranking": ["tflite:int8", "tf:fp32"],
    "rejections": {"tflite:fp16": NASTY},
    "baseline": "tf:fp32",
}
REGISTRATION = {
    "registered_model_name": "demo-cnn",
    "model_version": "3",
    "champion": True,
    "champion_reason": "no current champion: this version becomes champion",
    "model_version_url": "http://127.0.0.1:5000/#/models/demo-cnn/versions/3",
}


def _summaries() -> list[VariantSummary]:
    top1 = {"metric_name": "top1", "baseline_metric_value": 0.913}
    return [
        VariantSummary(
            "tf:fp32",
            Status.OK,
            verdict=Verdict.ELIGIBLE,
            verdict_reason="eligible, ranked 2 by latency",
            metric_value=0.913,
            metric_delta=0.0,
            p50_ms=4.86,
            p99_ms=4.92,
            throughput=800.0,
            speedup=1.0,
            size_bytes=9_400_000,
            **top1,
        ),
        VariantSummary(
            "tflite:int8",
            Status.OK,
            verdict=Verdict.CHOSEN,
            verdict_reason=SELECTION["reason"],
            metric_value=0.909,
            metric_delta=-0.004,
            p50_ms=0.61,
            p99_ms=0.9,
            throughput=3900.0,
            speedup=7.97,
            size_bytes=2_400_000,
            conversion_s=11.5,
            split={
                "tf_ops": ["DecodeBase64", "DecodeJpeg"],
                "boundary": "map/Stack",
                "prefix_share": 0.31,
            },
            **top1,
        ),
        VariantSummary(
            "tflite:fp16",
            Status.OK,
            verdict=Verdict.REJECTED,
            verdict_reason=NASTY,
            metric_value=0.85,
            metric_delta=-0.063,
            p50_ms=1.7,
            **top1,
        ),
        VariantSummary(
            "tftrt:fp16",
            Status.SKIPPED,
            reason="convert: TensorFlow 2.21 has no TensorRT",
            verdict=Verdict.SKIPPED,
            verdict_reason="convert: TensorFlow 2.21 has no TensorRT",
        ),
        VariantSummary(
            "openvino:int8",
            Status.FAILED,
            reason="validate: ValueError: shapes differ",
            verdict=Verdict.FAILED,
            verdict_reason="validate: ValueError: shapes differ",
            metric_value=float("nan"),
            p50_ms=float("inf"),
        ),
    ]


def _latencies() -> dict[str, list[float]]:
    base = [4.8 + 0.01 * (i % 13) for i in range(300)]
    return {
        "tf:fp32": base,
        "tflite:int8": [v / 8 for v in base],
        "openvino:int8": [1.0] * 300,  # FAILED: must not be plotted
    }


class _Cells(HTMLParser):
    """The text of every <td>/<th>, as a browser would show it (entities decoded once)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cells: list[str] = []
        self.tags: list[str] = []
        self._open = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        if tag in ("td", "th"):
            self._open = True
            self.cells.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._open = False

    def handle_data(self, data: str) -> None:
        if self._open:
            self.cells[-1] += data


def _cells(page: str) -> _Cells:
    parser = _Cells()
    parser.feed(page)
    return parser


def _table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ")]


def test_markdown_shows_every_variant_with_its_verdict_and_reason() -> None:
    text = render_markdown(_summaries(), RUN, SELECTION, REGISTRATION)
    table = _table_lines(text)
    assert len(table) == 2 + len(_summaries())  # header, alignment, one line per variant
    assert table[0].startswith(
        "| variant | verdict | reason | top-1 accuracy | baseline | Δ (points)"
    )
    for summary, line in zip(_summaries(), table[2:], strict=True):
        assert summary.variant in line and f"| {summary.verdict.value} |" in line
    assert "**★ tflite:int8**" in table[3] and "8.0x faster" in table[3]
    assert "| 90.90 % | 91.30 % | -0.40 |" in table[3] and "7.97×" in table[3]
    assert "TensorFlow 2.21 has no TensorRT" in table[5]
    assert "**Why:** tflite:int8: lowest p50 at batch 1" in text


def test_markdown_header_states_metric_gate_calibration_and_version() -> None:
    text = render_markdown(_summaries(), RUN, SELECTION, REGISTRATION)
    assert "- **Metric**: top-1 accuracy (top1), higher is better" in text
    assert "max absolute drop vs the baseline's (0.01 = 1 point)" in text
    assert "1.00 points below the baseline's top-1 accuracy" in text
    assert "held-out eval slice: 64 samples of s3://tfopt/demo/eval (seed 0)" in text
    assert "demo-cnn version 3 (champion: no current champion" in text
    assert "## Ops kept in TensorFlow" in text
    assert "DecodeBase64, DecodeJpeg stayed in TensorFlow" in text and "31.0 %" in text


def test_markdown_escapes_for_markdown_only_and_renders_the_reason_literally() -> None:
    text = render_markdown(_summaries(), RUN, SELECTION, REGISTRATION)
    for entity in ("&gt;", "&lt;", "&amp;", "&quot;", "&#"):
        assert entity not in text
    assert "->" in text  # nothing to escape in an arrow
    table = _table_lines(text)
    assert all(line.count(" | ") == table[0].count(" | ") for line in table)  # no broken row
    page = MarkdownIt("commonmark").enable("table").render(text)
    parsed = _cells(page)
    assert NASTY in parsed.cells
    assert "b" not in parsed.tags and "code" not in parsed.tags and "a" not in parsed.tags
    assert "em" not in parsed.tags


def test_markdown_escape() -> None:
    assert markdown_escape("a | b") == "a \\| b"
    assert markdown_escape("x -> y\n  z") == "x -> y z"
    assert markdown_escape("<i>&") == "\\<i>\\&"
    assert markdown_escape("") == ""


def test_html_is_escaped_exactly_once_and_self_contained(tmp_path: Path) -> None:
    (tmp_path / "latency.png").write_bytes(PNG_MAGIC + b"rest")
    run = {**RUN, "model": "<b>model</b>"}
    page = render_html(
        _summaries(), run, SELECTION, REGISTRATION, {"latency": tmp_path / "latency.png"}
    )
    parsed = _cells(page)
    assert NASTY in parsed.cells  # the browser shows the reason as written
    assert "&amp;lt;" not in page and "&amp;gt;" not in page  # not escaped twice
    assert "<b>bold</b>" not in page and "<b>model</b>" not in page
    assert "&lt;b&gt;model&lt;/b&gt;" in page
    assert "-&gt; 85.00%" in page
    assert "script" not in parsed.tags
    assert 'src="data:image/png;base64,iVBORw0KGgpyZXN0"' in page
    assert '<a href="http://127.0.0.1:5000/#/models/demo-cnn/versions/3">' in page
    assert page.count('class="chosen"') == 1
    for verdict in Verdict:
        assert f"verdict-{verdict.value}" in page
    assert "top-1 accuracy" in parsed.cells and "Δ (points)" in parsed.cells


def test_html_leaves_out_unreadable_images(tmp_path: Path) -> None:
    page = render_html(
        _summaries(), RUN, SELECTION, REGISTRATION, {"latency": tmp_path / "absent.png"}
    )
    assert "<img" not in page


def test_text_table_has_no_escapes_and_shows_verdicts() -> None:
    text = render_table_text(_summaries(), RUN)
    assert f"tflite:fp16 (rejected): {NASTY}" in text
    assert "&gt;" not in text and "\\|" not in text and "**" not in text
    assert "metric: top-1 accuracy (top1), higher is better" in text
    assert "calibration: held-out eval slice" in text
    header = next(line for line in text.splitlines() if line.startswith("variant"))
    assert "top-1 accuracy" in header and "Δ (points)" in header and "reason" not in header
    chosen = next(line for line in text.splitlines() if line.startswith("★"))
    assert "tflite:int8" in chosen and "chosen" in chosen and "90.90 %" in chosen
    skipped = next(line for line in text.splitlines() if line.startswith("  tftrt:fp16"))
    assert "skipped" in skipped
    assert "tflite:int8: DecodeBase64, DecodeJpeg stayed in TensorFlow" in text


def test_error_metric_report_uses_its_units() -> None:
    run = {
        **RUN,
        "metric": {
            "name": "rmse",
            "title": "root mean squared error",
            "higher_is_better": False,
            "tolerance": 0.05,
            "tolerance_meaning": "max relative increase of the error vs the baseline's",
        },
    }
    rows = [
        VariantSummary("tf:fp32", Status.OK, metric_value=0.2, baseline_metric_value=0.2,
                       metric_delta=0.0, verdict=Verdict.ELIGIBLE),
        VariantSummary("tflite:int8", Status.OK, metric_value=0.21, baseline_metric_value=0.2,
                       metric_delta=0.01, verdict=Verdict.CHOSEN, verdict_reason="fastest"),
    ]  # fmt: skip
    table = _table_lines(render_markdown(rows, run, SELECTION, REGISTRATION))
    assert "| root mean squared error | baseline | Δ (relative %) |" in table[0]
    assert "| 0.2100 | 0.2000 | +5.0 % |" in table[3]
    assert "lower is better" in render_table_text(rows, run)


def _strict_json(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_results_json_is_format_version_2(tmp_path: Path) -> None:
    paths = write_report(_summaries(), RUN, SELECTION, REGISTRATION, _latencies(), tmp_path / "out")
    results = _strict_json(paths["results.json"].read_text(encoding="utf-8"))
    assert list(results) == ["format_version", "run", "selection", "registration", "variants"]
    assert results["format_version"] == RESULTS_FORMAT_VERSION == 2
    assert (results["run"], results["selection"]) == (RUN, SELECTION)
    assert results["registration"] == REGISTRATION
    failed = results["variants"][4]
    assert failed["metric_value"] is None and failed["p50_ms"] is None  # NaN / Inf stored as null
    assert failed["verdict"] == "failed" and failed["status"] == "FAILED"
    back = [VariantSummary.from_dict(row) for row in results["variants"]]
    assert back[:4] == _summaries()[:4]
    assert back[4].verdict is Verdict.FAILED and back[4].metric_value is None


def test_results_document_converts_numpy_values() -> None:
    run = {**RUN, "validation_samples": np.int64(448), "extra": np.array([1.5, np.nan])}
    document = results_document(_summaries()[:1], run, SELECTION, REGISTRATION)
    assert document["run"]["validation_samples"] == 448
    assert document["run"]["extra"] == [1.5, None]
    json.dumps(document, allow_nan=False)


def test_write_report_writes_every_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    paths = write_report(_summaries(), RUN, SELECTION, REGISTRATION, _latencies(), out)
    expected = {"report.md", "report.html", "latency.png", "accuracy_vs_latency.png"}
    assert set(paths) == expected | {"results.json"}
    assert all(path.parent == out and path.is_file() for path in paths.values())
    for name in ("latency.png", "accuracy_vs_latency.png"):
        data = paths[name].read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5_000
    page = paths["report.html"].read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 2
    assert paths["report.md"].read_text(encoding="utf-8") == render_markdown(
        _summaries(), RUN, SELECTION, REGISTRATION
    )


def test_write_report_plots_only_ok_variants(tmp_path: Path, monkeypatch) -> None:
    drawn: dict[str, list[str]] = {}

    def latency(latencies, path, chosen=None):
        drawn["latency"] = list(latencies)
        path.write_bytes(PNG_MAGIC)
        return path

    monkeypatch.setattr(report, "plot_latency_distribution", latency)
    write_report(_summaries(), RUN, SELECTION, REGISTRATION, _latencies(), tmp_path)
    assert drawn["latency"] == ["tf:fp32", "tflite:int8"]


def test_a_failing_plot_leaves_the_tables(tmp_path: Path, monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(report, "plot_accuracy_vs_latency", broken)
    paths = write_report(_summaries(), RUN, SELECTION, REGISTRATION, _latencies(), tmp_path)
    assert "accuracy_vs_latency.png" not in paths and "latency.png" in paths
    assert {"report.md", "report.html", "results.json"} <= set(paths)
    assert "could not draw the accuracy_vs_latency plot" in caplog.text
    assert paths["report.html"].read_text(encoding="utf-8").count("<img") == 1


def test_write_report_needs_the_metric_in_the_run_block(tmp_path: Path) -> None:
    run = {key: value for key, value in RUN.items() if key != "metric"}
    with pytest.raises(ValueError, match='"metric"'):
        write_report(_summaries(), run, SELECTION, REGISTRATION, {}, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_importing_report_stays_light() -> None:
    code = (
        "import sys, tasks.report, tasks.hardware, tasks.benchmark\n"
        "heavy = {'matplotlib', 'tensorflow', 'mlflow', 'ai_edge_litert', 'jinja2'}\n"
        "loaded = heavy & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_the_measurement_line_says_rounds_spread_and_champion() -> None:
    from tasks.stages.report import measurement_text

    champion = {"version": "3", "variant": "tflite:int8", "p50_ms": 1.234}
    rows = [
        VariantSummary(
            "tf:fp32", Status.OK, p50_ms=10.0, round_p50_iqr_ms=0.5, rounds_kept=6, rounds_spoiled=1
        ),
        VariantSummary(
            "tflite:int8",
            Status.OK,
            p50_ms=2.0,
            round_p50_iqr_ms=0.2,
            rounds_kept=4,
            rounds_spoiled=1,
            rounds_slow=2,
            machine_probe_ms=0.5612,
            champion_in_rounds=champion,
        ),
        VariantSummary("openvino:bf16", Status.SKIPPED, reason="no BF16"),
    ]
    assert measurement_text(rows) == (
        "one interleaved benchmark per lane, 6 rounds kept, "
        "1 spoiled by CPU steal, load or the machine's slow state; "
        "up to 2 more left out of a variant's figures as it ran over 5% slower than its "
        "fastest round; round-to-round spread (IQR of the round p50s) up to 10% of p50; "
        "machine-speed probe 0.561 ms over the kept rounds; "
        "champion v3 (tflite:int8) in the same rounds: p50 1.23 ms"
    )
    assert measurement_text(rows[2:]) == ""


def _segmentation_summaries(classes: int) -> list[VariantSummary]:
    """A segmentation run: the baseline and the chosen variant with an IoU per class; the
    chosen variant lost most on class 3, then on 1, and gained on 0."""
    moved = {0: 0.02, 1: -0.03, 3: -0.08}
    base = {f"iou/{c}": 0.5 + c / 100 for c in range(classes)}
    chosen = {k: v + moved.get(int(k.removeprefix("iou/")), 0.0) for k, v in base.items()}
    common = {"metric_name": "miou", "metric_value": 0.6}
    return [
        VariantSummary(
            "tf:fp32", Status.OK, metric_details={**base, "pixel_accuracy": 0.9}, **common
        ),
        VariantSummary("tflite:int8", Status.OK, metric_details=chosen, **common),
        VariantSummary("tflite:fp16", Status.OK, **common),
    ]


def test_a_segmentation_report_lists_the_classes_the_chosen_variant_moved_most() -> None:
    text = render_markdown(_segmentation_summaries(4), RUN, SELECTION, REGISTRATION)
    assert "## Per-class IoU: tflite:int8 against tf:fp32" in text
    rows = [line for line in _table_lines(text) if line.startswith("| 3 ") or line[2:3].isdigit()]
    assert rows == [
        "| 3 | 0.530 | 0.450 | -0.080 |",
        "| 1 | 0.510 | 0.480 | -0.030 |",
        "| 2 | 0.520 | 0.520 | +0.000 |",
        "| 0 | 0.500 | 0.520 | +0.020 |",
    ]
    assert "The 4 of 4 scored classes, the largest loss of IoU first." in text

    page = render_html(_segmentation_summaries(4), RUN, SELECTION, REGISTRATION)
    cells = _cells(page).cells
    start = cells.index("class")
    assert cells[start : start + 8] == ["class", "baseline", "chosen", "change"] + [
        "3",
        "0.530",
        "0.450",
        "-0.080",
    ]


def test_the_per_class_table_shows_ten_classes_and_says_where_the_rest_are() -> None:
    text = render_markdown(_segmentation_summaries(30), RUN, SELECTION, REGISTRATION)
    assert "The 10 of 30 scored classes whose IoU tflite:int8 changed most" in text
    assert "results.json" in text


def test_no_per_class_table_without_per_class_figures_or_a_distinct_choice() -> None:
    assert "Per-class" not in render_markdown(_summaries(), RUN, SELECTION, REGISTRATION)
    baseline_chosen = {**SELECTION, "chosen": "tf:fp32"}
    text = render_markdown(_segmentation_summaries(4), RUN, baseline_chosen, REGISTRATION)
    assert "Per-class" not in text
