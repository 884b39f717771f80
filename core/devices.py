"""Choosing and checking the torch device a model runs on."""

from __future__ import annotations

import os
from typing import Any

from .errors import ConfigError


def resolve_device(device: Any = None):
    """``None``/``"auto"`` → the first CUDA GPU if there is one, else the CPU; anything else is checked.

    Raises ConfigError for a device string torch does not know, or a GPU this machine lacks.
    """
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {device!r} is not a torch device; use cpu, cuda, cuda:N, mps or auto") from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: this machine has no CUDA GPU (torch sees none); use cpu or auto")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: there are only {torch.cuda.device_count()} CUDA GPUs")
    if chosen.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {device!r}: Apple's MPS backend is not available here; use cpu or auto")
    return chosen


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def to_device(value: Any, device: Any) -> Any:
    """``value`` with every tensor inside it (lists, tuples, dicts) moved to ``device``."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value
