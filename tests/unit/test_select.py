"""Unit tests of tasks.select: the selection policy and the champion decision."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

from tasks.config import AccuracyGate, LatencySLO
from tasks.errors import TfoptError, UserInputError
from tasks.results import Status
from tasks.select import (
    BaselineUnavailableError,
    Candidate,
    Selection,
    beats_champion,
    rejection_reason,
    select,
    with_verdicts,
)

pytestmark = pytest.mark.unit

GATE = AccuracyGate(0.01)
NO_SLO = LatencySLO()


def ok(variant, p50, p99=None, throughput=None, delta=0.0, **changes) -> Candidate:
    fields = dict(
        variant=variant,
        status=Status.OK,
        validation_passed=True,
        metric_delta=delta,
        p50_ms=p50,
        p99_ms=p50 * 1.5 if p99 is None and p50 is not None else p99,
        throughput=throughput if throughput is not None else (1000 / p50 if p50 else None),
        metric_name="top1",
    )
    fields.update(changes)
    if isinstance(fields["status"], str):
        fields["status"] = Status(fields["status"].upper())
    return Candidate(**fields)


def not_run(variant, status, reason) -> Candidate:
    return Candidate(variant=variant, status=Status(str(status).upper()), reason=reason)


def assert_complete(selection: Selection, candidates) -> None:
    """Every candidate is either ranked or rejected with a reason, never both."""
    names = {c.variant for c in candidates}
    assert set(selection.ranking) | set(selection.rejections) == names
    assert not set(selection.ranking) & set(selection.rejections)
    assert all(reason.strip() for reason in selection.rejections.values())
    assert selection.chosen == selection.ranking[0]


# --- objective ---------------------------------------------------------------------------------

FIELD = [
    ok("tf:fp32", 21.4, throughput=80.0),
    ok("tflite:fp32", 9.0, throughput=150.0),
    ok("tflite:fp16", 3.1, throughput=300.0),
    ok("tflite:int8", 4.0, throughput=450.0),
]


@pytest.mark.parametrize(
    ("objective", "chosen", "ranking"),
    [
        ("latency", "tflite:fp16", ("tflite:fp16", "tflite:int8", "tflite:fp32", "tf:fp32")),
        ("throughput", "tflite:int8", ("tflite:int8", "tflite:fp16", "tflite:fp32", "tf:fp32")),
    ],
)
def test_objective_decides_the_order(objective, chosen, ranking):
    selection = select(FIELD, objective=objective, gate=GATE, slo=NO_SLO)
    assert selection.chosen == chosen
    assert selection.ranking == ranking
    assert selection.objective == objective
    assert selection.rejections == {}
    assert not selection.kept_baseline
    assert_complete(selection, FIELD)


def test_latency_reason_names_the_numbers():
    selection = select(FIELD[:3], objective="latency", gate=GATE, slo=NO_SLO)
    assert selection.reason == (
        "lowest p50 at batch 1 (3.1 ms, 6.9x faster than tf:fp32) among 3 eligible variants "
        "that passed the top1 gate (tolerance 0.01)"
    )


def test_throughput_reason_names_the_numbers():
    selection = select(FIELD, objective="throughput", gate=GATE, slo=LatencySLO(50.0))
    assert selection.reason == (
        "highest throughput (450.0 samples/s, 5.6x the throughput of tf:fp32) among 4 eligible "
        "variants that passed the top1 gate (tolerance 0.01) and the 50.0 ms p99 budget"
    )


def test_the_metric_is_named_by_its_own_name():
    field = [dataclasses.replace(c, metric_name="rmse") for c in FIELD]
    selection = select(field, objective="latency", gate=GATE, slo=NO_SLO)
    assert selection.reason.endswith("that passed the rmse gate (tolerance 0.01)")


# --- rejections --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "slo", "reason"),
    [
        (
            not_run("tftrt:fp16", "SKIPPED", "TensorFlow 2.21 has no TensorRT"),
            NO_SLO,
            "SKIPPED: TensorFlow 2.21 has no TensorRT",
        ),
        (
            not_run("tflite:int8", "FAILED", "converter crashed"),
            NO_SLO,
            "FAILED: converter crashed",
        ),
        (not_run("tflite:int8", "FAILED", ""), NO_SLO, "FAILED: no reason given"),
        (
            ok(
                "tflite:int8",
                2.0,
                validation_passed=False,
                validation_reasons=(
                    "top-1 dropped 2.40 points (91.20% -> 88.80%), tolerance 1.00",
                ),
                delta=-0.024,
            ),
            NO_SLO,
            "accuracy: top-1 dropped 2.40 points (91.20% -> 88.80%), tolerance 1.00",
        ),
        (
            ok("tflite:int8", 2.0, validation_passed=False, validation_reasons=()),
            NO_SLO,
            "accuracy: validation failed",
        ),
        (
            ok("tflite:int8", 2.0, validation_passed=None),
            NO_SLO,
            "accuracy: not validated",
        ),
        (
            ok(
                "tflite:int8",
                2.0,
                delta=-0.015,
                validation_passed=False,
                validation_reasons=("top-1 accuracy dropped 1.50 points",),
            ),
            NO_SLO,
            "accuracy: top-1 accuracy dropped 1.50 points",
        ),
        (
            ok(
                "tflite:fp16",
                2.0,
                has_nan_or_inf=True,
                validation_passed=False,
                validation_reasons=("outputs contain NaN: 'logits' has 3 NaN values",),
            ),
            NO_SLO,
            "outputs contain NaN: 'logits' has 3 NaN values",
        ),
        (ok("tflite:fp16", 2.0, has_nan_or_inf=True), NO_SLO, "outputs contain NaN or Inf"),
        (
            ok("tflite:fp32", 8.0, p99=12.3),
            LatencySLO(10.0),
            "p99 12.3 ms exceeds the 10.0 ms budget",
        ),
        (ok("tflite:fp32", None), NO_SLO, "no latency measured"),
        (
            ok("tflite:fp32", 8.0, p99=None, p99_ms=None),
            LatencySLO(10.0),
            "no latency measured (p99 needed for the 10.0 ms budget)",
        ),
    ],
)
def test_rejection_reasons_are_specific(candidate, slo, reason):
    candidates = [ok("tf:fp32", 20.0, p99=25.0), candidate]
    selection = select(candidates, objective="latency", gate=GATE, slo=slo)
    assert selection.rejections == {candidate.variant: reason}
    assert selection.chosen == "tf:fp32"
    assert_complete(selection, candidates)


def test_no_throughput_measured_under_the_throughput_objective():
    candidate = ok("tflite:int8", 2.0)
    candidate = dataclasses.replace(candidate, throughput=None)
    why = rejection_reason(candidate, objective="throughput", gate=GATE, slo=NO_SLO)
    assert why == "no throughput measured"


@pytest.mark.parametrize("passed", [True, False])
def test_validation_verdict_decides_accuracy(passed):
    """The metric's gate is applied once, in validation, in the metric's own terms."""
    candidates = [ok("tf:fp32", 20.0), ok("tflite:int8", 2.0, delta=-0.5, validation_passed=passed)]
    selection = select(candidates, objective="latency", gate=GATE, slo=NO_SLO)
    assert (selection.chosen == "tflite:int8") is passed


@pytest.mark.parametrize(("p99", "eligible"), [(9.99, True), (10.0, True), (10.01, False)])
def test_slo_boundary(p99, eligible):
    candidates = [ok("tf:fp32", 20.0), ok("tflite:int8", 2.0, p99=p99)]
    selection = select(candidates, objective="latency", gate=GATE, slo=LatencySLO(10.0))
    assert (selection.chosen == "tflite:int8") is eligible


def test_slo_rejects_a_faster_variant_in_favour_of_a_compliant_one():
    candidates = [
        ok("tf:fp32", 20.0, p99=25.0),
        ok("tflite:fp16", 2.0, p99=14.0),  # fast median, long tail
        ok("tflite:int8", 4.0, p99=6.0),
    ]
    selection = select(candidates, objective="latency", gate=GATE, slo=LatencySLO(10.0))
    assert selection.chosen == "tflite:int8"
    assert selection.rejections == {"tflite:fp16": "p99 14.0 ms exceeds the 10.0 ms budget"}
    assert selection.ranking == ("tflite:int8", "tf:fp32")  # the baseline stays, over the SLO


def test_sub_millisecond_latencies_keep_their_digits():
    candidates = [ok("tf:fp32", 0.5), ok("tflite:int8", 0.052, p99=0.31)]
    selection = select(candidates, objective="latency", gate=GATE, slo=LatencySLO(0.25))
    assert selection.rejections["tflite:int8"] == "p99 0.310 ms exceeds the 0.250 ms budget"


# --- the baseline ------------------------------------------------------------------------------


def test_baseline_kept_when_every_other_variant_fails():
    candidates = [
        ok("tf:fp32", 20.0, p99=25.0),
        not_run("tftrt:fp16", "SKIPPED", "TensorFlow 2.21 has no TensorRT"),
        ok("tflite:int8", 2.0, validation_passed=False, validation_reasons=("top-1 dropped",)),
        ok("tflite:fp32", 15.0, p99=30.0),
    ]
    selection = select(candidates, objective="latency", gate=GATE, slo=LatencySLO(10.0))
    assert selection.chosen == "tf:fp32" and selection.kept_baseline
    assert selection.ranking == ("tf:fp32",)
    assert selection.reason == (
        "kept the baseline tf:fp32: no other variant qualified: "
        "tftrt:fp16 (SKIPPED: TensorFlow 2.21 has no TensorRT); "
        "tflite:int8 (accuracy: top-1 dropped); "
        "tflite:fp32 (p99 30.0 ms exceeds the 10.0 ms budget)"
        "; note: the baseline's own p99 25.0 ms exceeds the 10.0 ms budget"
    )
    assert_complete(selection, candidates)


def test_baseline_alone():
    selection = select([ok("tf:fp32", 20.0)], objective="throughput", gate=GATE, slo=NO_SLO)
    assert selection.chosen == "tf:fp32"
    assert selection.reason == "kept the baseline tf:fp32: it is the only variant in this run"


def test_baseline_wins_when_others_are_eligible_but_slower():
    candidates = [ok("tf:fp32", 2.0, p99=12.0), ok("tflite:fp32", 3.0, p99=4.0)]
    selection = select(candidates, objective="latency", gate=GATE, slo=LatencySLO(20.0))
    assert selection.chosen == "tf:fp32"
    assert selection.ranking == ("tf:fp32", "tflite:fp32")
    assert selection.reason.startswith("lowest p50 at batch 1 (2.0 ms) among 2 eligible")
    assert selection.reason.endswith("; no variant beat the baseline")


@pytest.mark.parametrize(
    "baseline",
    [
        ok("tf:fp32", 20.0, p99=99.0),
        ok("tf:fp32", None, p99=None),
        ok("tf:fp32", 20.0, validation_passed=False, has_nan_or_inf=True),
        ok("tf:fp32", 20.0, validation_passed=None),
    ],
)
def test_baseline_is_a_candidate_whenever_it_is_ok(baseline):
    selection = select([baseline], objective="latency", gate=GATE, slo=LatencySLO(10.0))
    assert selection.chosen == "tf:fp32"
    assert selection.rejections == {}


@pytest.mark.parametrize(
    ("baseline", "message"),
    [
        (not_run("tf:fp32", "FAILED", "corrupt SavedModel"), "tf:fp32 is FAILED: corrupt"),
        (not_run("tf:fp32", "SKIPPED", "no eval data"), "tf:fp32 is SKIPPED: no eval data"),
        (None, "tf:fp32 is missing"),
    ],
)
def test_baseline_not_ok_raises(baseline, message):
    candidates = [ok("tflite:int8", 2.0)] + ([baseline] if baseline else [])
    with pytest.raises(BaselineUnavailableError, match=message) as info:
        select(candidates, objective="latency", gate=GATE, slo=NO_SLO)
    assert isinstance(info.value, UserInputError) and isinstance(info.value, TfoptError)
    assert "nothing safe to register" in str(info.value)


def test_baseline_name_is_configurable():
    candidates = [ok("onnx:fp32", 5.0), ok("tf:fp32", 2.0)]
    selection = select(candidates, objective="latency", gate=GATE, slo=NO_SLO, baseline="onnx:fp32")
    assert selection.chosen == "tf:fp32"
    assert "faster than onnx:fp32" in selection.reason


# --- ties and determinism ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("objective", "candidates", "chosen"),
    [
        ("latency", [ok("b", 3.0, throughput=100.0), ok("a", 3.0, throughput=200.0)], "a"),
        ("latency", [ok("a", 3.0, throughput=100.0), ok("b", 3.0, throughput=200.0)], "b"),
        ("latency", [ok("b", 3.0, throughput=100.0), ok("a", 3.0, throughput=100.0)], "a"),
        ("throughput", [ok("b", 2.0, throughput=100.0), ok("a", 3.0, throughput=100.0)], "b"),
        ("throughput", [ok("b", 3.0, throughput=100.0), ok("a", 3.0, throughput=100.0)], "a"),
    ],
)
def test_ties_are_broken_deterministically(objective, candidates, chosen):
    candidates = [ok("tf:fp32", 50.0, throughput=10.0), *candidates]
    selection = select(candidates, objective=objective, gate=GATE, slo=NO_SLO)
    assert selection.chosen == chosen


@pytest.mark.parametrize("objective", ["latency", "throughput"])
def test_input_order_does_not_matter(objective):
    candidates = [
        *FIELD,
        ok("tftrt:fp16", 3.1, throughput=300.0),
        not_run("tftrt:int8", "SKIPPED", "no TensorRT"),
        ok("tftrt:fp32", 1.0, p99=50.0),
    ]
    results = {
        json.dumps(
            select(order, objective=objective, gate=GATE, slo=LatencySLO(20.0)).to_dict(),
            sort_keys=True,
        )
        for order in itertools.permutations(candidates)
    }
    assert len(results) == 1


# --- bad input and data ------------------------------------------------------------------------


def test_duplicate_variants_are_rejected():
    with pytest.raises(ValueError, match="twice"):
        select([ok("tf:fp32", 1.0), ok("tf:fp32", 2.0)], objective="latency", gate=GATE, slo=NO_SLO)


def test_unknown_objective_is_rejected():
    with pytest.raises(ValueError, match="objective"):
        select([ok("tf:fp32", 1.0)], objective="accuracy", gate=GATE, slo=NO_SLO)


def test_selection_json_round_trip():
    candidates = [*FIELD, not_run("tftrt:fp16", "SKIPPED", "no TensorRT")]
    selection = select(candidates, objective="latency", gate=GATE, slo=LatencySLO(10.0))
    data = json.loads(json.dumps(selection.to_dict(), allow_nan=False))
    assert Selection.from_dict(data) == selection


def test_candidate_from_dict_round_trip():
    candidate = ok("tflite:int8", 2.0, validation_reasons=("x",))
    assert Candidate.from_dict(json.loads(json.dumps(candidate.to_dict()))) == candidate
    parsed = Candidate.from_dict({"variant": "tftrt:fp16", "status": "SKIPPED", "reason": ""})
    assert parsed == Candidate("tftrt:fp16", Status.SKIPPED)


def test_verdicts_cover_every_row_with_a_reason():
    candidates = [
        *FIELD,
        ok("tflite:int8x", 1.0, validation_passed=False, validation_reasons=("dropped",)),
        not_run("tftrt:fp16", "SKIPPED", "no TensorRT"),
        not_run("openvino:int8", "FAILED", "convert: RuntimeError: boom"),
    ]
    selection = select(candidates, objective="latency", gate=GATE, slo=NO_SLO)
    verdicts = {
        s.variant: (s.verdict.value, s.verdict_reason) for s in with_verdicts(candidates, selection)
    }
    assert verdicts["tflite:fp16"] == ("chosen", selection.reason)
    assert verdicts["tflite:int8"][0] == "eligible" and "ranked 2" in verdicts["tflite:int8"][1]
    assert verdicts["tflite:int8x"] == ("rejected", "accuracy: dropped")
    assert verdicts["tftrt:fp16"] == ("skipped", "no TensorRT")
    assert verdicts["openvino:int8"] == ("failed", "convert: RuntimeError: boom")


# --- beats_champion ----------------------------------------------------------------------------

CPU = "cpu-x86_64-avx512"


@pytest.mark.parametrize(
    ("new", "champion", "objective", "expected", "reason"),
    [
        (
            {"p50_ms": 3.0, "hardware_class": CPU},
            None,
            "latency",
            True,
            "no current champion: this version becomes champion",
        ),
        ({"p50_ms": 3.0, "hardware_class": CPU}, {}, "latency", True, "no current champion"),
        (
            {"p50_ms": 3.0, "throughput": 100.0, "hardware_class": CPU},
            {"p50_ms": 4.0, "throughput": 200.0, "hardware_class": CPU},
            "latency",
            True,
            f"p50 3.0 ms vs champion's 4.0 ms on {CPU}: 25.0% better, takes champion",
        ),
        (
            {"p50_ms": 4.2, "hardware_class": CPU},
            {"p50_ms": 4.0, "hardware_class": CPU},
            "latency",
            False,
            f"p50 4.2 ms vs champion's 4.0 ms on {CPU}: not better by more than 0.0%, "
            "keeping champion",
        ),
        (
            {"p50_ms": 4.0, "hardware_class": CPU},
            {"p50_ms": 4.0, "hardware_class": CPU},
            "latency",
            False,
            "keeping champion",
        ),
        (
            {"p50_ms": 9.0, "throughput": 300.0, "hardware_class": CPU},
            {"p50_ms": 3.0, "throughput": 200.0, "hardware_class": CPU},
            "throughput",
            True,
            f"throughput 300.0 samples/s vs champion's 200.0 samples/s on {CPU}: 50.0% better",
        ),
        (
            {"throughput": 100.0, "hardware_class": CPU},
            {"throughput": 200.0, "hardware_class": CPU},
            "throughput",
            False,
            "keeping champion",
        ),
        (
            {"p50_ms": 1.0, "hardware_class": "gpu-a100"},
            {"p50_ms": 4.0, "hardware_class": CPU},
            "latency",
            False,
            f"champion was measured on {CPU}, this run on gpu-a100: not comparable, "
            "keeping champion",
        ),
        (
            {"p50_ms": 1.0, "hardware_class": CPU},
            {"p50_ms": 4.0},
            "latency",
            False,
            f"champion was measured on an unknown hardware class, this run on {CPU}",
        ),
        (
            {"p50_ms": None, "hardware_class": CPU},
            {"p50_ms": 4.0, "hardware_class": CPU},
            "latency",
            False,
            "this run has no p50 measured: keeping champion",
        ),
        (
            {"p50_ms": 1.0, "hardware_class": CPU},
            {"throughput": 4.0, "hardware_class": CPU},
            "latency",
            False,
            "champion has no p50 recorded: not comparable, keeping champion",
        ),
    ],
)
def test_beats_champion(new, champion, objective, expected, reason):
    beats, why = beats_champion(new, champion, objective)
    assert beats is expected
    assert why.startswith(reason) or why.endswith(reason)


@pytest.mark.parametrize(("new_p50", "expected"), [(3.9, False), (3.5, True)])
def test_beats_champion_min_gain(new_p50, expected):
    beats, _ = beats_champion(
        {"p50_ms": new_p50, "hardware_class": CPU},
        {"p50_ms": 4.0, "hardware_class": CPU},
        "latency",
        min_gain=0.05,
    )
    assert beats is expected


def test_beats_champion_rejects_unknown_objective():
    with pytest.raises(ValueError, match="objective"):
        beats_champion({}, None, "accuracy")
