"""Pick the compute device: CUDA > MPS > CPU, unless the user says otherwise."""

from __future__ import annotations

from tunelab.errors import ConfigError


def _may_have_gpu() -> bool:
    """Cheap signs of a GPU, so a CPU-only machine running a GGUF on llama.cpp never imports torch
    (half the time of a first answer). Where torch is loaded already, asking it costs nothing."""
    import os
    import platform
    import shutil
    import sys

    if "torch" in sys.modules:
        return True
    if sys.platform == "darwin" and platform.machine() == "arm64":  # Apple silicon: MPS
        return True
    nvidia = os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")
    return nvidia or os.path.exists("/dev/kfd") or shutil.which("nvidia-smi") is not None  # kfd: ROCm


def pick_device(requested: str = "auto") -> str:
    if requested in ("auto", "cpu") and not _may_have_gpu():
        return "cpu"
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' was asked for but torch sees no CUDA GPU; use device='auto' or 'cpu'"
        )
    if requested == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError(
            "device 'mps' was asked for but torch sees no Apple GPU; use device='auto' or 'cpu'"
        )
    if requested not in {"cuda", "mps", "cpu"}:
        raise ConfigError(f"unknown device {requested!r}; choose auto, cuda, mps or cpu")
    return requested


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls in hardware (elsewhere torch emulates them, slower than fp32)."""
    import torch

    cpu = getattr(torch, "cpu", None)
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(cpu, probe, lambda: False)() for probe in probes)
