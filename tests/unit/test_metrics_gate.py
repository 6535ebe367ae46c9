"""Unit tests of tasks.metrics' registry (names, auto choice) and the accuracy gate judge()."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.errors import UserInputError
from tasks.metrics import (
    GROUND_TRUTH_ARRAYS,
    METRICS,
    Verdict,
    auto_metric,
    get_metric,
    judge,
    labels_form,
    merge_labels_forms,
)

pytestmark = pytest.mark.unit


def test_registry_order_and_ground_truth():
    assert list(METRICS) == [
        "top1",
        "top5",
        "multilabel_map",
        "miou",
        "mae",
        "rmse",
        "map50",
        "map",
        "fidelity",
    ]
    for spec in METRICS.values():
        assert set(spec.ground_truth) <= set(GROUND_TRUTH_ARRAYS)
        assert spec.title and spec.tolerance_meaning
    assert [n for n, s in METRICS.items() if not s.higher_is_better] == ["mae", "rmse"]
    assert get_metric("map").ground_truth == ("gt_boxes", "gt_classes")


def test_unknown_metric_lists_the_choices():
    with pytest.raises(UserInputError, match="unknown metric 'top3'.*top1, top5, multilabel_map"):
        get_metric("top3")


@pytest.mark.parametrize(
    ("arrays", "kind", "form", "expected"),
    [
        ({"gt_boxes", "gt_classes"}, None, None, "map50"),
        ({"labels"}, "i", "ids", "top1"),
        ({"labels"}, "u", None, "top1"),
        ({"labels"}, "i", "one_hot", "top1"),
        ({"labels"}, "i", "multi_hot", "multilabel_map"),
        ({"labels"}, "b", "multi_hot", "multilabel_map"),
        ({"labels"}, "u", "dense", "miou"),
        ({"labels"}, "f", "values", "mae"),
        (set(), None, None, "fidelity"),
    ],
)
def test_auto_metric(arrays, kind, form, expected):
    assert auto_metric(arrays, kind, form) == expected


@pytest.mark.parametrize(
    ("labels", "form"),
    [
        (np.array([0, 2, 1]), "ids"),
        (np.array([[0], [2], [1]]), "ids"),
        (np.eye(3, dtype=np.int64), "one_hot"),
        (np.array([[1, 1, 0], [0, 0, 1]]), "multi_hot"),
        (np.array([[True, False], [True, True]]), "multi_hot"),
        (np.zeros((2, 4, 4), dtype=np.uint8), "dense"),
        (np.array([[3, 1, 0], [2, 2, 0]]), "dense"),  # a tag per token
        (np.array([0.5, 1.5]), "values"),
        (np.array([[0.0, 1.0], [1.0, 0.0]]), "one_hot"),
    ],
)
def test_labels_form(labels, form):
    assert labels_form(labels) == form


def test_labels_forms_merge_single_label_shards_into_multi_hot():
    assert merge_labels_forms({"one_hot", "multi_hot"}) == "multi_hot"
    assert merge_labels_forms({"dense"}) == "dense"
    assert merge_labels_forms({"ids", "dense"}) is None


def test_higher_is_better_passes_an_exact_drop_and_fails_a_larger_one():
    top1 = get_metric("top1")
    verdict = judge(top1, 0.91, 0.92, 0.01)
    assert verdict and verdict.delta == pytest.approx(-0.01)
    failed = judge(top1, 0.942, 0.966, 0.01)
    assert not failed
    assert failed.reason == (
        "top-1 accuracy dropped 2.40 points (96.60% -> 94.20%), tolerance 1.00"
    )
    assert judge(get_metric("map"), 0.6, 0.5, 0.0).reason.startswith("mAP@[.5:.95] rose 10.00")
    same = judge(top1, 0.5, 0.5, 0.0)
    assert same and same.reason == "top-1 accuracy is unchanged (50.00% -> 50.00%), tolerance 0.00"


def test_error_metrics_use_the_relative_rule():
    rmse = get_metric("rmse")
    failed = judge(rmse, 0.2303, 0.2130, 0.05)
    assert not failed
    assert failed.delta == pytest.approx(0.0173)
    assert failed.reason == "root mean squared error rose 8.1% (0.2130 -> 0.2303), tolerance 5.0%"
    assert judge(rmse, 0.21, 0.20, 0.05)
    assert judge(get_metric("mae"), 105.0, 100.0, 0.05)
    assert not judge(get_metric("mae"), 105.1, 100.0, 0.05)
    assert judge(rmse, 0.1, 0.2, 0.0).reason.startswith("root mean squared error fell 50.0%")


def test_error_metrics_with_a_zero_baseline_allow_only_1e_12():
    mae = get_metric("mae")
    assert judge(mae, 1e-13, 0.0, 0.5)
    failed = judge(mae, 1e-6, 0.0, 0.5)
    assert not failed and "baseline's is 0" in failed.reason


def test_fidelity_is_one_minus_agreement_against_a_baseline_of_one():
    fidelity = get_metric("fidelity")
    verdict = judge(fidelity, 0.99, None, 0.01)
    assert verdict and verdict.delta == pytest.approx(-0.01)
    failed = judge(fidelity, 0.975, 0.975, 0.01)
    assert not failed
    assert failed.reason == (
        "agreement with the baseline dropped 2.50 points (100.00% -> 97.50%), tolerance 1.00"
    )


def test_missing_values_fail_and_bad_tolerances_raise():
    assert not judge(get_metric("top1"), None, 0.9, 0.01)
    assert not judge(get_metric("top1"), float("nan"), 0.9, 0.01)
    missing = judge(get_metric("map50"), 0.5, None, 0.01)
    assert not missing and "baseline could not be computed" in missing.reason
    with pytest.raises(ValueError, match="tolerance"):
        judge(get_metric("top1"), 0.9, 0.9, -0.1)


def test_verdict_round_trips_and_has_no_html_entities():
    verdict = judge(get_metric("top5"), 0.5, 0.9, 0.01)
    assert Verdict.from_dict(verdict.to_dict()) == verdict
    assert "&" not in verdict.reason and "->" in verdict.reason
