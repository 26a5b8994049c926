"""Pick the compute device: CUDA > MPS > CPU, unless the user says otherwise."""

from __future__ import annotations

from tunelab.errors import ConfigError


def pick_device(requested: str = "auto") -> str:
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


def cpu_threads() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
