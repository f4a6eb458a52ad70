"""The device a run uses: ``choose_device("auto" | "cpu" | "cuda" | "cuda:N", who)``."""
from __future__ import annotations

import torch


def choose_device(name: str, who: str) -> torch.device:
    """torch.device(name), with "auto" the CUDA device when there is one and else the CPU; refused with a
    one-line ValueError naming ``who`` when the name is malformed or the device is absent on this machine."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"{who}: {name!r} is not a device (auto, cpu, cuda, cuda:N, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{who}: {name!r} requested but no CUDA device is available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{who}: {name!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                         "device(s)")
    return device
