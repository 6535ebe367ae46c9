"""Unit tests of the machine's description: CPU model, ISA features, hardware class."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks import hardware

pytestmark = pytest.mark.unit


CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse avx2 avx512f avx512_vnni amx_tile
processor\t: 1
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
physical id\t: 0
core id\t\t: 0
processor\t: 2
physical id\t: 0
core id\t\t: 1
"""


def test_describe_hardware_reads_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    monkeypatch.setattr(hardware, "_CPUINFO", cpuinfo)
    monkeypatch.setattr(hardware.shutil, "which", lambda name: None)
    info = hardware.describe_hardware()
    assert info["cpu_model"] == "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"
    assert info["physical_cores"] == 2
    assert info["cpu_flags"] == ["avx2", "avx512f", "avx512_vnni", "amx_tile"]
    assert info["gpus"] == []
    assert info["libraries"]["numpy"] == np.__version__
    assert json.loads(json.dumps(info)) == info
    assert (
        hardware.hardware_class(info) == f"cpu:intel-xeon-gold-6248-2.50ghz:{info['usable_cores']}c"
    )


def test_hardware_class_is_short_and_stable() -> None:
    cpu = {"cpu_model": "AMD EPYC 7B13 64-Core Processor", "usable_cores": 8, "gpus": []}
    assert hardware.hardware_class(cpu) == "cpu:amd-epyc-7b13-64-core:8c"
    gpu = {**cpu, "gpus": ["NVIDIA A100-SXM4-40GB"]}
    assert hardware.hardware_class(gpu) == "gpu:nvidia-a100-sxm4-40gb"
    two = {**cpu, "gpus": ["NVIDIA L4", "NVIDIA L4"]}
    assert hardware.hardware_class(two) == "gpu:nvidia-l4:x2"
    assert hardware.hardware_class({}) == "cpu:unknown:0c"


# --- interleaved rounds ------------------------------------------------------------------------


def test_isa_features_tier_and_label() -> None:
    info = {"cpu_flags": ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]}
    features = hardware.isa_features(info)
    assert features["avx512_bf16"] and features["avx512_vnni"] and not features["amx_tile"]
    assert hardware.isa_tier(info) == "avx512_bf16"
    assert hardware.isa_label(info) == "avx2, avx512f, avx512_vnni, avx512_bf16"
    assert hardware.isa_tier({"cpu_flags": ["avx2"]}) == "avx2"
    assert hardware.isa_tier({"cpu_flags": ["avx2", "amx_tile", "amx_int8"]}) == "amx"
    assert hardware.isa_tier({}) == "baseline"
    assert hardware.isa_label({}) == "no AVX2/AVX-512/VNNI/BF16/AMX"
    recorded = {"cpu_flags": ["avx2"], "isa": {"avx2": True, "avx512f": False}}
    assert hardware.isa_features(recorded)["avx2"] and hardware.isa_tier(recorded) == "avx2"


def test_isa_is_recorded_beside_an_unchanged_hardware_class(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    monkeypatch.setattr(hardware, "_CPUINFO", cpuinfo)
    monkeypatch.setattr(hardware.shutil, "which", lambda name: None)
    info = hardware.describe_hardware()
    assert info["isa"] == {
        "avx2": True,
        "avx512f": True,
        "avx512_vnni": True,
        "avx512_bf16": False,
        "avx_vnni": False,
        "amx_tile": True,
        "amx_int8": False,
        "amx_bf16": False,
    }
    assert hardware.isa_tier(info) == "amx"
    assert hardware.hardware_class(info).startswith("cpu:intel-xeon-gold-6248")
