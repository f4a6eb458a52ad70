"""torch.load of a checkpoint file that a user named, with errors that name the file."""
from __future__ import annotations

import os
import pickle

import torch


def load_file(path: str | os.PathLike, who: str, map_location="cpu"):
    """The file's contents (tensors and plain containers only: weights_only=True)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{who}: {path}: no such file")
    with open(path, "rb") as f:
        head = f.read(2)
    if head != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip archive; old files are a pickle
        raise ValueError(f"{who}: {path} is not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        text = str(exc)
        detail = text.split("WeightsUnpickler error:", 1)[-1]  # weights_only refusals: the object refused
        reason = next((line.strip() for line in detail.splitlines() if line.strip()), type(exc).__name__)
        raise ValueError(f"{who}: {path} cannot be read as a checkpoint of tensors ({reason[:200]})") from exc
