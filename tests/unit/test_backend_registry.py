"""The backend registry: the one table variant names, lanes, requirements and colours follow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tasks import backends, config, report_plots
from tasks.backends import (
    CPU_LANE,
    ENTRIES,
    GPU_LANE,
    BackendEntry,
    backend_colour,
    get_backend,
    serving_requirements,
    variant_lane,
    variants_in_lane,
)
from tasks.errors import UserInputError

pytestmark = pytest.mark.unit

REPO = Path(__file__).parents[2]


def test_every_variant_comes_from_the_table_in_display_order():
    expected = [f"{e.name}:{p}" for e in ENTRIES.values() for p in e.precisions]
    assert list(config.KNOWN_VARIANTS) == expected
    assert config.KNOWN_VARIANTS[0] == config.BASELINE
    assert config.BACKENDS == tuple(ENTRIES)
    assert set(config.PRECISIONS) == {p for e in ENTRIES.values() for p in e.precisions}
    assert {"openvino:fp32", "openvino:bf16", "openvino:int8"} <= set(config.DEFAULT_VARIANTS)


def test_parsing_follows_the_table():
    spec = config.VariantSpec.parse(" OpenVINO:BF16 ")
    assert (spec.backend, spec.precision, spec.slug) == ("openvino", "bf16", "openvino-bf16")
    with pytest.raises(UserInputError, match="openvino:int8"):
        config.VariantSpec.parse("openvino:fp16")
    parsed = config.PipelineConfig.from_params(
        {
            "model_uri": "s3://b/m.keras",
            "eval_data_uri": "s3://b/eval",
            "calibration_data_uri": "s3://b/cal",
            "registered_model_name": "m",
            "variants": "tftrt:int8,openvino:int8,tflite:int8",
        }
    )
    assert [v.name for v in parsed.variants] == [
        "tf:fp32",
        "tflite:int8",
        "openvino:int8",
        "tftrt:int8",
    ]


def test_lanes_split_the_variants_by_queue():
    variants = ["tf:fp32", "tftrt:fp16", "openvino:int8", "tflite:int8", "tftrt:int8"]
    assert variants_in_lane(variants, CPU_LANE) == ["tf:fp32", "openvino:int8", "tflite:int8"]
    assert variants_in_lane(variants, GPU_LANE) == ["tftrt:fp16", "tftrt:int8"]
    assert variant_lane("openvino:bf16") == CPU_LANE
    assert backends.LANES == (CPU_LANE, GPU_LANE)
    with pytest.raises(UserInputError, match="unknown backend 'onnx'"):
        variant_lane("onnx:fp32")


def test_serving_requirements_name_each_runtime():
    assert serving_requirements("openvino") == ("numpy", "openvino")
    assert serving_requirements("tflite") == ("numpy", "tensorflow-cpu", "ai-edge-litert")
    assert serving_requirements("tf") == ("numpy", "tensorflow-cpu")
    split = serving_requirements("openvino", tensorflow_prefix=True)
    assert split == ("numpy", "openvino", "tensorflow-cpu")
    assert serving_requirements("tflite", tensorflow_prefix=True).count("tensorflow-cpu") == 1


def test_registry_pins_the_installed_openvino_for_served_openvino_variants(monkeypatch):
    from tasks import registry

    versions = {"numpy": "2.4.0", "openvino": "2026.4.1"}
    monkeypatch.setattr(registry.metadata, "version", lambda dist: versions[dist])
    assert registry._requirements("openvino") == ["numpy==2.4.0", "openvino==2026.4.1"]


def test_a_split_variant_is_served_with_tensorflow_for_its_prefix(monkeypatch, tmp_path):
    from tasks import registry

    monkeypatch.setattr(registry.metadata, "version", lambda dist: "1.0")
    assert registry._requirements("openvino", tmp_path) == ["numpy==1.0", "openvino==1.0"]
    (tmp_path / "split.json").write_text("{}")
    assert registry._requirements("openvino", tmp_path)[-1] == "tensorflow-cpu==1.0"


def test_report_colours_come_from_the_table():
    colours = {name: e.colour for name, e in ENTRIES.items()}
    assert len(set(colours.values())) == len(colours), "each backend has its own colour"
    for name, colour in colours.items():
        assert report_plots.colour(f"{name}:fp32") == colour == backend_colour(f"{name}:int8")
    assert report_plots.colour("onnx:fp32") == backends.FALLBACK_COLOUR


def test_backends_are_built_lazily_once_and_agree_with_their_entry():
    for name, found in ENTRIES.items():
        backend = get_backend(f" {name.upper()} ")
        assert backend is get_backend(name)
        assert backend.name == name
        assert backend.precisions == found.precisions
    with pytest.raises(UserInputError, match="unknown backend"):
        get_backend("onnx")


def test_an_entry_names_its_variants():
    entry = BackendEntry("x", ("fp32", "int8"), "tasks.backends.tf:TfBackend")
    assert entry.variants == ("x:fp32", "x:int8")
    assert entry.lane == CPU_LANE


def test_the_table_and_the_config_import_without_heavy_modules():
    code = (
        "import sys, tasks.config, tasks.backends; "
        "tasks.backends.variants_in_lane(tasks.config.KNOWN_VARIANTS, 'gpu'); "
        "heavy = [m for m in ('numpy', 'tensorflow', 'openvino', 'nncf', 'ai_edge_litert') "
        "if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_the_contract_is_re_exported_lazily():
    from tasks.backends import ConversionRequest
    from tasks.backends.base import ConversionRequest as Defined

    assert ConversionRequest is Defined
    with pytest.raises(AttributeError):
        _ = backends.NoSuchThing
