"""Hardware and library fingerprint of this worker, and its stable "hardware class" key."""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CPU_FLAGS_OF_INTEREST = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
LIBRARIES: dict[str, tuple[str, ...]] = {
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly"),
    "ai-edge-litert": ("ai-edge-litert", "ai-edge-litert-nightly"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-libs"),
    "numpy": ("numpy",),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "openvino": ("openvino",),
    "nncf": ("nncf",),
}
"""Library -> the distributions that provide it, first installed one wins."""
ISA_TIERS = (
    ("amx", ("amx_tile",)),
    ("avx512_bf16", ("avx512_bf16",)),
    ("avx512_vnni", ("avx512_vnni",)),
    ("avx_vnni", ("avx_vnni",)),
    ("avx512", ("avx512f",)),
    ("avx2", ("avx2",)),
)
"""The highest tier whose flags are all present names the CPU's vector ISA (best first)."""
_CPUINFO = Path("/proc/cpuinfo")
_MEMINFO = Path("/proc/meminfo")
_NVIDIA_SMI_TIMEOUT_S = 10


def describe_hardware() -> dict[str, Any]:
    """Describe this worker: CPU, cores, memory, GPUs, OS and library versions.

    Cheap and import-light: reads /proc, asks `nvidia-smi` only when it is on PATH and reads
    library versions from package metadata (nothing is imported).

    Returns:
        A JSON-safe dict; unknown values are None.
    """
    cpu = _read_cpuinfo()
    return {
        "cpu_model": cpu["model"],
        "physical_cores": cpu["physical_cores"],
        "logical_cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "memory_gib": _memory_gib(),
        "cpu_flags": [flag for flag in CPU_FLAGS_OF_INTEREST if flag in cpu["flags"]],
        "isa": {flag: flag in cpu["flags"] for flag in CPU_FLAGS_OF_INTEREST},
        "gpus": _gpu_names(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "libraries": library_versions(),
    }


def hardware_class(info: dict[str, Any]) -> str:
    """A short, stable key for "same hardware class" comparisons.

    Args:
        info: the output of `describe_hardware()`.

    Returns:
        `gpu:<gpu slug>` (with `x<n>` for several GPUs) or `cpu:<cpu slug>:<n>c` where n is
        the number of cores this process may use.
    """
    gpus = info.get("gpus") or []
    if gpus:
        suffix = f":x{len(gpus)}" if len(gpus) > 1 else ""
        return f"gpu:{_slug(gpus[0])}{suffix}"
    cores = info.get("usable_cores") or info.get("logical_cores") or 0
    return f"cpu:{_slug(info.get('cpu_model') or 'unknown')}:{cores}c"


def isa_features(info: dict[str, Any]) -> dict[str, bool]:
    """Each ISA feature that decides which runtime and precision wins: present or not.

    Args:
        info: the output of `describe_hardware()` (older records without `isa` are read from
            their `cpu_flags`).
    """
    flags = set(info.get("cpu_flags") or ())
    recorded = info.get("isa") or {}
    return {flag: bool(recorded.get(flag, flag in flags)) for flag in CPU_FLAGS_OF_INTEREST}


def isa_tier(info: dict[str, Any]) -> str:
    """The CPU's best vector tier (`amx`, `avx512_bf16`, `avx512_vnni`, ..., `baseline`).

    Recorded beside `hardware_class`, not inside it: the class key stays the same as in the
    figures already stored, and two machines sold under one CPU name but with different
    vector units (an AVX2-only and an AVX-512 EPYC, say) are told apart by this tier.
    """
    present = {flag for flag, on in isa_features(info).items() if on}
    for tier, needs in ISA_TIERS:
        if present.issuperset(needs):
            return tier
    return "baseline"


def isa_label(info: dict[str, Any]) -> str:
    """The present ISA features, comma-separated, for printing beside a figure."""
    present = [flag for flag, on in isa_features(info).items() if on]
    return ", ".join(present) if present else "no AVX2/AVX-512/VNNI/BF16/AMX"


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that decide the numbers (None when absent).

    Read from package metadata, so nothing is imported; `tensorflow` is found whether the
    distribution is `tensorflow` or `tensorflow-cpu`.
    """
    return {name: _first_version(dists) for name, dists in LIBRARIES.items()}


def _first_version(distributions: tuple[str, ...]) -> str | None:
    for dist in distributions:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _read_cpuinfo() -> dict[str, Any]:
    model = None
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    physical_id = core_id = ""
    try:
        text = _CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in ("model name", "Model", "cpu model") and model is None:
            model = value
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
            cores.add((physical_id, core_id))
    return {
        "model": model or platform.processor() or None,
        "flags": flags,
        "physical_cores": len(cores) or None,
    }


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _memory_gib() -> float | None:
    try:
        for line in _MEMINFO.read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        logger.debug("could not read %s", _MEMINFO)
    return None


def _gpu_names() -> list[str]:
    """Names of NVIDIA GPUs from `nvidia-smi`; empty when it is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=_NVIDIA_SMI_TIMEOUT_S,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("nvidia-smi is present but failed (%s); reporting no GPU", exc)
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _slug(text: str) -> str:
    slug = re.sub(r"\((r|tm)\)|\bcpu\b|\bprocessor\b", " ", text.lower())
    slug = re.sub(r"[^a-z0-9.]+", "-", slug).strip("-")
    return slug or "unknown"
