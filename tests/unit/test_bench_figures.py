"""Unit tests of the bench's real-size figures: headline vs peers, efficiency vs peaks, targets."""

from __future__ import annotations

import numpy as np
import pytest

from bench import figures, peers, render
from bench.peers import headline
from bench.run import repeatability

pytestmark = pytest.mark.unit


def _row(kind: str, p50: float | None, passed: bool = True, status: str = "OK") -> dict:
    row = {"kind": kind, "status": status, "passed": passed}
    if p50 is not None:
        row["latency"] = {
            "p50_ms": p50,
            "p99_ms": p50 * 1.2,
            "round_p50_iqr_ms": 0.1,
            "round_p50_range_ms": [p50 * 0.9, p50 * 1.1],
            "rounds_kept": 5,
            "rounds_slow": 2,
        }
        row["fidelity"] = {"cosine": 0.999 if passed else 0.9, "agreement": 1.0}
    return row


ROWS = {
    "tf:fp32": _row("tfopt", 80.0),
    "tflite:fp32": _row("tfopt", 45.0),
    "tflite:int8": _row("tfopt", 12.0, passed=False),
    "openvino:bf16": _row("tfopt", 20.0),
    "openvino:int8": _row("tfopt", 13.0),
    "tftrt:fp32": {"kind": "tfopt", "status": "SKIPPED", "reason": "no GPU"},
    "peer:openvino-default": _row("peer", 21.0),
    "peer:nncf-int8-default": _row("peer", 12.5, passed=False),
    "peer:tf-as-exported": _row("peer", 80.0),
}


def test_headline_compares_the_fastest_passing_of_each_side() -> None:
    top = headline(ROWS)
    assert top["chosen"] == "openvino:int8"  # tflite:int8 is faster but fails the gate
    assert top["best_peer"] == "peer:openvino-default"
    assert top["speed_vs_best_peer"] == pytest.approx(21.0 / 13.0)


def test_headline_takes_the_median_of_the_per_round_ratios() -> None:
    rows = {
        "openvino:bf16": _row("tfopt", 2.6),
        "peer:openvino-default": _row("peer", 2.5),
    }
    # a slow stretch in rounds 2-3 hit the choice's p50 more than the peer's, but within each
    # round the two are within 2%
    rows["openvino:bf16"]["latency"]["round_p50_ms"] = [2.5, 2.52, 3.5, 3.4, 2.49]
    rows["peer:openvino-default"]["latency"]["round_p50_ms"] = [2.51, 2.5, 3.55, 3.45, 2.5]
    top = headline(rows)
    assert top["chosen"] == "openvino:bf16" and top["best_peer"] == "peer:openvino-default"
    assert top["speed_vs_best_peer"] == pytest.approx(2.5 / 2.49)  # not 2.5 / 2.6
    assert len(top["speed_vs_best_peer_rounds"]) == 5


def test_a_tie_is_a_ratio_below_one_whose_interval_reaches_one() -> None:
    rows = {
        "tflite:dynamic": _row("tfopt", 12.9),
        "peer:litert-dynamic-range": _row("peer", 12.8),
    }
    same = peers.outputs_digest([{"logits": np.array([[0.25, -1.5]], np.float32)}])
    rows["tflite:dynamic"]["outputs_sha256"] = same
    rows["peer:litert-dynamic-range"]["outputs_sha256"] = same

    def network(ratio: float, interval: list[float]) -> dict:
        return {
            "model": "mobilenet_v2",
            "gate": "fidelity cosine >= 0.99",
            **headline(rows),
            "speed_vs_best_peer": ratio,
            "speed_vs_best_peer_interval95": interval,
        }

    tie = figures.realsize_figures([network(0.97, [0.95, 1.01])])[0]
    assert tie.passed is True and "a tie" in tie.note and "0.950-1.010" in tie.note
    assert "same outputs bit for bit" in tie.note

    slower = figures.realsize_figures([network(0.97, [0.95, 0.99])])[0]
    assert slower.passed is False and "the peer measurably faster" in slower.note

    faster = figures.realsize_figures([network(1.04, [1.01, 1.06])])[0]
    assert faster.passed is True and "tie" not in faster.note

    rows["peer:litert-dynamic-range"]["outputs_sha256"] = "other"
    unlike = figures.realsize_figures([network(0.97, [0.95, 1.01])])[0]
    assert unlike.passed is True and "same outputs" not in unlike.note
    no_interval = figures.realsize_figures([network(0.99, [])])[0]
    assert no_interval.passed is False  # no head-to-head: the measured ratio alone


def test_median_interval_is_the_order_statistics_around_the_median() -> None:
    values = [1.0 + i / 100 for i in range(30)]  # 1.00 .. 1.29
    low, high = peers.median_interval(values)
    assert (low, high) == (values[9], values[20])  # k = floor((30 - 1.96 * 5.48) / 2) = 9
    assert peers.median_interval([0.9, 1.1, 1.0]) == (0.9, 1.1)


def test_headline_without_a_passing_side_has_no_ratio() -> None:
    rows = {"tf:fp32": _row("tfopt", 80.0), "peer:x": _row("peer", 10.0, passed=False)}
    top = headline(rows)
    assert top["best_peer"] is None and top["speed_vs_best_peer"] is None


def test_efficiency_judges_int8_against_the_int8_peak() -> None:
    network = {"flops": 8e9, "rows": ROWS}
    eff = figures.efficiency(network, fp32_peak=400.0, gemm={"int8_peak_gops": 1600.0})
    by = eff["by_variant"]
    assert by["tflite:fp32"]["gflops"] == pytest.approx(8e9 / 45.0 / 1e6)
    assert by["tflite:fp32"]["share"] == pytest.approx(8e9 / 45.0 / 1e6 / 400.0)
    assert by["openvino:int8"]["share"] == pytest.approx(8e9 / 13.0 / 1e6 / 1600.0)
    assert by["openvino:bf16"]["share"] is None  # no BF16 peak is measured
    assert "peer:openvino-default" not in by
    assert eff["best_fp32"]["variant"] == "tflite:fp32"
    assert eff["best_int8"]["variant"] == "tflite:int8"


def test_realsize_targets_and_table() -> None:
    network = {
        "model": "resnet50",
        "image_size": 224,
        "params": 25.6e6,
        "flops": 8e9,
        "threads": 2,
        "gate": "fidelity cosine >= 0.99 (drop <= 0.01)",
        "rows": ROWS,
        "rounds": {"rounds": 7, "spoiled": 2, "kept": [0, 1, 3, 4, 6]},
        **headline(ROWS),
    }
    network["efficiency"] = figures.efficiency(network, 400.0, {"int8_peak_gops": 1600.0})
    found = {f.name: f for f in figures.realsize_figures([network])}
    assert found["resnet50: tfopt / best peer"].passed is True
    fp32 = found["resnet50: FP32 efficiency"]
    assert fp32.value == pytest.approx(100 * 8e9 / 45.0 / 1e6 / 400.0)
    assert fp32.passed is False  # 44% < 50%
    assert found["resnet50: INT8 efficiency"].passed is None
    table = render.peers_table(network)
    assert "choice openvino:int8 13.0 ms vs best peer peer:openvino-default 21.0 ms" in table
    assert "SKIPPED: no GPU" in table
    assert "FAIL" in table.split("tflite:int8")[1].splitlines()[0]
    row = next(line for line in table.splitlines() if line.lstrip().startswith("openvino:int8"))
    assert " 5/7 " in row  # 5 of the 7 kept rounds at full speed


def test_a_failed_pipeline_on_the_real_size_network_is_reported_not_measured() -> None:
    failed = {"model": "mobilenet_v2", "error": "BenchError: dag run ended failed; log: x.log"}
    (figure,) = figures._realsize_overhead(failed)
    assert figure.value is None and figure.passed is None
    assert "dag run ended failed" in figure.note


def test_cluster_overhead_is_the_share_of_wall_time_with_no_task_running() -> None:
    from bench.cluster import busy_seconds, run_figures
    from bench.cluster import render as render_cluster
    from bench.orchestration import BenchError

    assert busy_seconds([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17
    assert busy_seconds([]) == 0
    run = {
        "dag_run_id": "manual__1",
        "queued_at": "2026-11-30T10:00:00+00:00",
        "start_date": "2026-11-30T10:00:01+00:00",
        "end_date": "2026-11-30T10:01:40+00:00",
    }
    ti = {"queue": "default", "hostname": "cpu@vm", "try_number": 1, "map_index": -1}
    instances = [
        {
            **ti,
            "task_id": "export",
            "state": "success",
            "queued_when": "2026-11-30T10:00:01+00:00",
            "start_date": "2026-11-30T10:00:02+00:00",
            "end_date": "2026-11-30T10:00:40+00:00",
        },
        {
            **ti,
            "task_id": "convert_validate_cpu",
            "map_index": 3,
            "state": "success",
            "queued_when": None,
            "start_date": "2026-11-30T10:00:30+00:00",
            "end_date": "2026-11-30T10:01:30+00:00",
        },
        # skipped before it started: no interval
        {**ti, "task_id": "variant_gpu", "state": "skipped", "start_date": None, "end_date": None},
    ]
    figures = run_figures(run, instances)
    assert figures["wall_s"] == 100  # from the trigger (queued_at), not from the run's start
    assert figures["dag_run_s"] == 99
    assert figures["busy_s"] == 88
    assert figures["task_duration_sum_s"] == 98
    assert figures["overhead_share"] == 0.12
    assert figures["overhead_passed"] is False
    assert figures["task_instances"] == 2
    first, second = figures["tasks"]
    assert (first["task"], first["start_s"], first["queued_to_start_s"]) == ("export", 2, 1)
    assert (second["task"], second["duration_s"]) == ("convert_validate_cpu[3]", 60)
    machine = {"cpu_model": "AMD EPYC", "usable_cores": 2, "flags": []}
    document = {"machine": machine, "model": "mobilenet_v2", "run_id": "manual__1"}
    text = render_cluster({**document, "state": "success", "load": "load1 max 1", **figures})
    assert "12.0% of the wall time (target <= 10%: MISS)" in text
    assert "convert_validate_cpu[3]" in text
    with pytest.raises(BenchError):
        run_figures({**run, "end_date": None}, instances)


def test_repeatability_note_says_when_the_runs_measured_at_different_machine_speeds() -> None:
    same = {"machine_probe_ms_run1": 0.560, "machine_probe_ms_run2": 0.575}
    assert figures._repeatability_note(same) == (
        "DAG run / CLI run; machine-speed probe 0.560 ms (CLI) vs 0.575 ms (DAG)"
    )
    slow = {"machine_probe_ms_run1": 0.560, "machine_probe_ms_run2": 0.760}
    assert figures._repeatability_note(slow).endswith(
        ": the runs measured at different machine speeds"
    )
    assert figures._repeatability_note(None) == "DAG run / CLI run"
    assert figures._repeatability_note({"machine_probe_ms_run1": None}) == "DAG run / CLI run"


def test_repeatability_holds_the_champion_measured_in_the_second_runs_rounds() -> None:
    cli = [{"variant": "tflite:int8", "status": "OK", "p50_ms": 0.116}]
    champion = {"variant": "tflite:int8", "version": "1", "p50_ms": 0.096}
    dag = [
        {"variant": "tflite:int8", "status": "OK", "p50_ms": 0.098, "champion_in_rounds": champion}
    ]
    (row,) = repeatability(cli, dag)
    assert row["ratio"] == pytest.approx(0.098 / 0.116)
    assert row["same_rounds_ratio"] == pytest.approx(0.098 / 0.096)
    assert figures._repeatability_note(row).endswith(
        "in the DAG run's rounds, its variant / the CLI run's registered copy 1.021x"
    )
    other = {**champion, "variant": "tflite:fp16"}  # another model: no same-rounds figure
    (row,) = repeatability(cli, [{**dag[0], "champion_in_rounds": other}])
    assert row["same_rounds_ratio"] is None
