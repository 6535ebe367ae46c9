"""What a variant's MLflow run records as metrics (numbers only, with the converter's summary)."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.unit


def test_variant_metrics_keep_numbers_and_the_conversion_summary():
    from tasks.registry import _numeric_metrics

    row = {
        "metric_name": "top1",
        "metric_value": 0.966,
        "metric_details": {"cosine": 0.999, "bad": math.inf},
        "metric_delta": -0.002,
        "p50_ms": 0.048,
        "speedup": None,
        "max_abs_error": math.nan,
        "p50_ms_by_batch": {1: 0.048, 8: 0.321},
        "throughput_by_batch": {1: 20000.0, 8: None},
        "conversion_summary": {
            "trt_engines": 2,
            "ops_converted": 120,
            "ops_not_converted": 3,
            "io_dtype": "float32",
            "op_counts": {"CONV_2D": 7},
            "calibrated": True,
        },
    }
    assert _numeric_metrics(row) == {
        "top1": 0.966,
        "metric.cosine": 0.999,
        "metric_delta": -0.002,
        "p50_ms": 0.048,
        "conversion.trt_engines": 2.0,
        "conversion.ops_converted": 120.0,
        "conversion.ops_not_converted": 3.0,
        "p50_ms_batch_1": 0.048,
        "p50_ms_batch_8": 0.321,
        "throughput_batch_1": 20000.0,
    }
