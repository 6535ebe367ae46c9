"""openvino.py's decisions without OpenVINO: BF16 skip reason, compile settings, precision hints."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.backends import BackendUnavailableError, ConversionRequest, get_backend, openvino
from tasks.errors import UserInputError
from tasks.signature import Signature, TensorInfo

pytestmark = pytest.mark.unit

SIGNATURE = Signature(
    inputs=(TensorInfo("image", "float32", (None, 8, 8, 3)),),
    outputs=(TensorInfo("output_0", "float32", (None, 2)),),
)


class _FakeCore:
    """Answers the two CPU properties the BF16 check reads."""

    def __init__(self, capabilities: list[str]) -> None:
        self.capabilities = capabilities

    def get_property(self, device: str, name: str):
        assert device == "CPU"
        return {"OPTIMIZATION_CAPABILITIES": self.capabilities, "FULL_DEVICE_NAME": "Old CPU"}[name]


def _request(tmp_path: Path, precision: str) -> ConversionRequest:
    return ConversionRequest(
        saved_model_dir=tmp_path / "saved_model",
        signature=SIGNATURE,
        precision=precision,
        output_dir=tmp_path / "out",
        calibration_data=lambda: iter(()),
    )


def test_bf16_is_skipped_with_the_cpu_named_where_it_has_no_bf16(monkeypatch, tmp_path):
    monkeypatch.setattr(openvino, "_core", lambda: _FakeCore(["FP32", "INT8", "BIN"]))
    with pytest.raises(BackendUnavailableError) as raised:
        get_backend("openvino").convert(_request(tmp_path, "bf16"))
    reason = raised.value.reason
    assert "Old CPU" in reason and "no native BF16" in reason and "FP32, INT8, BIN" in reason
    assert not (tmp_path / "out").exists(), "nothing is built for a skipped variant"


def test_bf16_is_available_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(openvino, "_core", lambda: _FakeCore(["FP32", "BF16", "INT8"]))
    assert openvino.bf16_unavailable_reason() is None


def test_every_precision_pins_its_inference_precision():
    assert openvino.PRECISION_HINTS == {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
    assert set(openvino.PRECISION_HINTS) == set(get_backend("openvino").precisions)


def test_compile_settings_follow_the_objective_and_threads():
    latency = openvino.compile_config("f32", "LATENCY", 2)
    assert latency == {
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": 2,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    throughput = openvino.compile_config("bf16", "THROUGHPUT", 4)
    assert "NUM_STREAMS" not in throughput and throughput["PERFORMANCE_HINT"] == "THROUGHPUT"
    assert openvino._performance_hint("throughput") == "THROUGHPUT"
    assert openvino._performance_hint("latency") == "LATENCY"


def test_unknown_dims_come_from_the_first_calibration_sample():
    import numpy as np

    signature = Signature(
        inputs=(TensorInfo("image", "float32", (None, None, None, 3)),), outputs=SIGNATURE.outputs
    )
    sample = {"image": np.zeros((1, 24, 32, 3), np.float32)}
    assert openvino.input_shapes(signature, lambda: iter([sample])) == {"image": [-1, 24, 32, 3]}
    assert openvino.input_shapes(SIGNATURE, lambda: iter(())) == {"image": [-1, 8, 8, 3]}
    with pytest.raises(UserInputError, match="calibration"):
        openvino.input_shapes(signature, lambda: iter(()))


def test_loading_needs_a_converted_variant(tmp_path):
    with pytest.raises(UserInputError, match="convert the variant first"):
        get_backend("openvino").load(tmp_path, SIGNATURE, 2)
