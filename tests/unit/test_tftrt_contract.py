"""tftrt.py against a recording stand-in for TF-TRT's trt_convert: what reaches the converter."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from tasks.backends import BackendUnavailableError, ConversionRequest, get_backend, tftrt
from tasks.errors import UserInputError
from tasks.signature import Signature, TensorInfo

pytestmark = pytest.mark.unit

SIGNATURE = Signature(
    inputs=(
        TensorInfo("zeta", "float32", (None, 4)),
        TensorInfo("alpha", "float32", (None, 3)),
    ),
    outputs=(TensorInfo("output_0", "float32", (None, 2)),),
)
SUMMARY_LINES = [
    "TRTEngineOP Name    Device   # Nodes ...",
    "=" * 160,
    "TRTEngineOp_000_000 GPU:0    5       2        1",
    "",
    "\t- ConcatV2: 1x",
    "\t- MatMul: 2x",
    "\n" + "-" * 40 + "\n",
    "TRTEngineOp_000_001 GPU:0    3       1        1",
    "",
    "\t- MatMul: 1x",
    "\t- Softmax: 2x",
    "\n" + "=" * 160,
    "[*] Total number of TensorRT engines: 2",
    "[*] % of OPs Converted: 80.00% [8/10]\n",
]


class RecordingConverter:
    """Records every call; enforces TrtGraphConverterV2's call order and argument rules."""

    instances: list[RecordingConverter] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list[str] = []
        self.calibration_feeds: list = []
        self.build_feeds: list = []
        self.saved_to: str | None = None
        RecordingConverter.instances.append(self)

    def convert(self, calibration_input_fn=None):
        need = self.kwargs["precision_mode"] == "INT8" and self.kwargs["use_calibration"]
        if need != (calibration_input_fn is not None):
            raise ValueError("calibration_input_fn must be given exactly when INT8 calibrates")
        self.calls.append("convert")
        if calibration_input_fn is not None:
            self.calibration_feeds = list(calibration_input_fn())

    def build(self, input_fn):
        assert self.calls == ["convert"], "build() before convert() or twice"
        self.calls.append("build")
        self.build_feeds = list(input_fn())

    def save(self, output_saved_model_dir):
        assert self.calls == ["convert", "build"]
        self.calls.append("save")
        self.saved_to = output_saved_model_dir
        Path(output_saved_model_dir, "saved_model.pb").write_bytes(b"fake")

    def summary(self, line_length=160, detailed=True, print_fn=None):
        for line in SUMMARY_LINES:
            print_fn(line)
        print_fn()


FAKE_TRT = types.SimpleNamespace(
    TrtGraphConverterV2=RecordingConverter,
    TrtPrecisionMode=types.SimpleNamespace(FP32="FP32", FP16="FP16", INT8="INT8"),
)


@pytest.fixture
def fake_trt(monkeypatch):
    RecordingConverter.instances.clear()
    monkeypatch.setattr(tftrt, "_trt_module", lambda: FAKE_TRT)
    monkeypatch.setattr(tftrt, "probe_tensorrt", lambda: None)
    return RecordingConverter.instances


def _calibration_batches() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        {"zeta": rng.random((1, 4), dtype=np.float32), "alpha": rng.random((1, 3)).astype("f4")}
        for _ in range(5)
    ]


def _request(tmp_path, precision, batch_sizes=(1, 8), batches=None):
    batches = _calibration_batches() if batches is None else batches
    return ConversionRequest(
        saved_model_dir=tmp_path / "export",
        signature=SIGNATURE,
        precision=precision,
        output_dir=tmp_path / f"tftrt-{precision}",
        calibration_data=lambda: iter(batches),
        batch_sizes=batch_sizes,
    )


@pytest.mark.parametrize(
    ("precision", "mode"), [("fp32", "FP32"), ("fp16", "FP16"), ("int8", "INT8")]
)
def test_precision_mode_and_converter_arguments(fake_trt, tmp_path, precision, mode):
    request = _request(tmp_path, precision, batch_sizes=(1, 4, 8))
    get_backend("tftrt").convert(request)
    (converter,) = fake_trt
    assert converter.kwargs == {
        "input_saved_model_dir": str(tmp_path / "export"),
        "input_saved_model_signature_key": "serving_default",
        "precision_mode": mode,
        "use_calibration": precision == "int8",
        "use_dynamic_shape": False,
        "minimum_segment_size": 3,
        "maximum_cached_engines": 3,
        "allow_build_at_runtime": True,
    }
    assert converter.calls == ["convert", "build", "save"]


def test_int8_calibration_input_fn_yields_the_calibration_batches_in_order(fake_trt, tmp_path):
    batches = _calibration_batches()
    get_backend("tftrt").convert(_request(tmp_path, "int8", batches=batches))
    (converter,) = fake_trt
    assert len(converter.calibration_feeds) == len(batches)
    for fed, batch in zip(converter.calibration_feeds, batches, strict=True):
        # keyed by input name: the converter's positional order is not the signature's
        assert set(fed) == {"zeta", "alpha"}
        for name in fed:
            np.testing.assert_array_equal(fed[name], batch[name])
            assert fed[name].dtype == np.float32


def test_fp16_gets_no_calibration(fake_trt, tmp_path):
    get_backend("tftrt").convert(_request(tmp_path, "fp16"))
    assert fake_trt[0].calibration_feeds == []


def test_build_gets_one_feed_per_batch_size_with_signature_shapes(fake_trt, tmp_path):
    get_backend("tftrt").convert(_request(tmp_path, "fp16", batch_sizes=(1, 8, 32)))
    shapes = [{name: a.shape for name, a in feed.items()} for feed in fake_trt[0].build_feeds]
    assert shapes == [
        {"zeta": (1, 4), "alpha": (1, 3)},
        {"zeta": (8, 4), "alpha": (8, 3)},
        {"zeta": (32, 4), "alpha": (32, 3)},
    ]


def test_unknown_non_batch_dims_come_from_the_calibration_data(fake_trt, tmp_path):
    signature = Signature(
        inputs=(TensorInfo("image", "float32", (None, None, None, 3)),),
        outputs=SIGNATURE.outputs,
    )
    batches = [{"image": np.zeros((1, 32, 24, 3), np.float32)}]
    request = ConversionRequest(
        saved_model_dir=tmp_path / "export",
        signature=signature,
        precision="fp32",
        output_dir=tmp_path / "out",
        calibration_data=lambda: iter(batches),
        batch_sizes=(2,),
    )
    get_backend("tftrt").convert(request)
    assert [f["image"].shape for f in fake_trt[0].build_feeds] == [(2, 32, 24, 3)]


def test_save_gets_the_output_dir_and_the_summary_is_kept(fake_trt, tmp_path):
    request = _request(tmp_path, "fp16")
    conversion = get_backend("tftrt").convert(request)
    assert fake_trt[0].saved_to == str(request.output_dir)
    assert conversion.artifact_dir == request.output_dir
    summary = conversion.summary
    assert summary["trt_engines"] == 2
    assert (summary["ops_converted"], summary["ops_total"]) == (8, 10)
    assert summary["ops_not_converted"] == 2
    assert summary["percent_converted"] == 80.0
    assert summary["converted_op_types"] == {"ConcatV2": 1, "MatMul": 3, "Softmax": 2}
    assert summary["converter_kwargs"]["precision_mode"] == "FP16"
    assert summary["engine_batch_sizes"] == [1, 8]
    assert (
        "Total number of TensorRT engines: 2"
        in (request.output_dir / tftrt.SUMMARY_FILE).read_text()
    )
    assert Signature.read(request.output_dir) == SIGNATURE


def test_reproduce_script_holds_the_exact_converter_parameters(fake_trt, tmp_path):
    request = _request(tmp_path, "int8", batch_sizes=(1, 4))
    get_backend("tftrt").convert(request)
    source = (request.output_dir / tftrt.REPRODUCE_FILE).read_text()
    tree = ast.parse(source)
    constants = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    assert constants["CONVERTER_KWARGS"] == fake_trt[0].kwargs
    assert constants["INPUT_DTYPES"] == {"zeta": "float32", "alpha": "float32"}
    assert constants["ENGINE_INPUT_SHAPES"] == [
        {"zeta": [1, 4], "alpha": [1, 3]},
        {"zeta": [4, 4], "alpha": [4, 3]},
    ]
    assert "trt_convert as trt" in source


def test_int8_without_calibration_data_is_a_user_error(fake_trt, tmp_path):
    with pytest.raises(UserInputError, match="calibration data"):
        get_backend("tftrt").convert(_request(tmp_path, "int8", batches=[]))
    assert fake_trt == []


def test_unknown_precision_is_a_user_error(fake_trt, tmp_path):
    with pytest.raises(UserInputError, match="precision"):
        get_backend("tftrt").convert(_request(tmp_path, "int4"))


def test_convert_and_load_raise_the_reason_when_unavailable(monkeypatch, tmp_path):
    monkeypatch.setattr(tftrt, "probe_tensorrt", lambda: "no TensorRT here")
    monkeypatch.setattr(tftrt, "_trt_module", lambda: pytest.fail("converter must not be used"))
    backend = get_backend("tftrt")
    with pytest.raises(BackendUnavailableError) as raised:
        backend.convert(_request(tmp_path, "fp16"))
    assert raised.value.reason == "no TensorRT here"
    with pytest.raises(BackendUnavailableError):
        backend.load(tmp_path, SIGNATURE, num_threads=2)


def test_available_gives_the_reason_on_this_worker():
    tftrt.probe_tensorrt.cache_clear()
    reason = get_backend("tftrt").available()
    assert isinstance(reason, str)
    assert "has no TensorRT (TF-TRT was removed after 2.17)" in reason
    assert "GPU worker" in reason


def test_no_tensorrt_reason_text():
    assert tftrt.no_tensorrt_reason("2.21.0") == (
        "TensorFlow 2.21 has no TensorRT (TF-TRT was removed after 2.17); run tftrt variants on "
        "a GPU worker with TF 2.17 + TensorRT 8.6 or NVIDIA's TensorFlow container"
    )


def test_importing_the_backends_is_cheap():
    code = (
        "import sys, tasks.backends; "
        "heavy = [m for m in ('tensorflow', 'keras', 'ai_edge_litert') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_string_inputs_need_a_calibration_batch_to_build_engines(fake_trt, tmp_path):
    signature = Signature(
        inputs=(TensorInfo("image_bytes", "string", (None,)),), outputs=SIGNATURE.outputs
    )
    request = ConversionRequest(
        saved_model_dir=tmp_path / "export",
        signature=signature,
        precision="fp16",
        output_dir=tmp_path / "out",
        calibration_data=lambda: iter(()),
    )
    with pytest.raises(UserInputError, match="string inputs"):
        get_backend("tftrt").convert(request)
    assert fake_trt == []
