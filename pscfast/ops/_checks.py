"""Argument checks shared by the public ops: every bad input becomes a Python error that names the op and
the argument, before any kernel runs.

The finiteness check reads a value back from the device (one synchronisation per checked tensor); it is
skipped while torch.compile traces and when PSCFAST_CHECK_FINITE=0.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import torch


def tensor(op: str, name: str, value, dims: int | None = None, last: int | None = None) -> torch.Tensor:
    """A floating-point tensor with `dims` dimensions and last dimension `last` (when given)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"pscfast.ops.{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"pscfast.ops.{op}: {name} must be a floating-point tensor, got {value.dtype}")
    if dims is not None and value.dim() != dims:
        raise ValueError(f"pscfast.ops.{op}: {name} must have {dims} dimensions, got shape {tuple(value.shape)}")
    if last is not None and value.shape[-1] != last:
        raise ValueError(f"pscfast.ops.{op}: {name} must have size {last} in its last dimension, "
                         f"got shape {tuple(value.shape)}")
    return value


def same_device(op: str, **tensors: torch.Tensor) -> None:
    devices = [t.device for t in tensors.values()]
    if devices.count(devices[0]) != len(devices):
        listed = ", ".join(f"{n} on {d}" for n, d in zip(tensors, devices))
        raise ValueError(f"pscfast.ops.{op}: all tensors must be on one device, got {listed}")


def same_batch(op: str, **tensors: torch.Tensor) -> None:
    sizes = [t.shape[0] for t in tensors.values()]
    # compared with ==, not hashed into a set: hashing a symbolic size (torch.compile with dynamic shapes)
    # would specialise the graph to its value
    if sizes.count(sizes[0]) != len(sizes):
        listed = ", ".join(f"{n} has {s}" for n, s in zip(tensors, sizes))
        raise ValueError(f"pscfast.ops.{op}: batch sizes differ: {listed}")


def promote(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """All tensors in their common floating dtype (e.g. an fp16 image with an fp32 grid: both fp32)."""
    dtypes = [t.dtype for t in tensors]
    if dtypes.count(dtypes[0]) == len(dtypes):
        return list(tensors)
    dtype = dtypes[0]
    for d in dtypes[1:]:
        dtype = torch.promote_types(dtype, d)
    return [t.to(dtype) for t in tensors]


def finite(op: str, name: str, value: torch.Tensor) -> None:
    if (os.environ.get("PSCFAST_CHECK_FINITE", "1") == "0" or torch.compiler.is_compiling()
            or value.device.type == "meta"):
        return
    # min and max propagate NaN and are +-inf when any value is: one reduction pass, no boolean temporary
    if value.numel() and not all(map(math.isfinite, torch.stack(torch.aminmax(value.detach())).tolist())):
        raise ValueError(f"pscfast.ops.{op}: {name} contains NaN or infinite values")


def choice(op: str, name: str, value, options: Sequence) -> None:
    if value not in options:
        raise ValueError(f"pscfast.ops.{op}: {name} must be one of {', '.join(map(repr, options))}; got {value!r}")


def size_pair(op: str, name: str, value) -> tuple[int, int]:
    """A (height, width) pair of positive ints; a single int means a square."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        # numbers only: a string is a sequence too ("16" would read as (1, 6)), and True is an int
        ok = not isinstance(value, (str, bytes)) and len(value) == 2 and all(
            not isinstance(v, (bool, str, bytes)) and float(v) == int(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or int(value[0]) <= 0 or int(value[1]) <= 0:
        raise ValueError(f"pscfast.ops.{op}: {name} must be a positive int or a (height, width) pair of "
                         f"positive ints, got {value!r}")
    return int(value[0]), int(value[1])


def plane(op: str, name: str, size, bits: int = 31) -> None:
    """A spatial size (h, w) of fewer than 2^bits pixels: the kernels index a plane in int32. Checked on the
    sizes alone, before any input is copied or promoted (an expanded tensor can be far larger than its memory)."""
    h, w = size
    if h * w >= 1 << bits:
        raise ValueError(f"pscfast.ops.{op}: {name} has a plane of {h} x {w} = {h * w} pixels; the kernels take "
                         f"fewer than 2^{bits}")


def nonempty_spatial(op: str, name: str, value: torch.Tensor) -> None:
    nonempty_plane(op, name, value.shape[-2:])


def nonempty_plane(op: str, name: str, size) -> None:
    """A spatial size (h, w) with no zero (a grid's is shape[1:3], read without indexing the tensor)."""
    if size[0] == 0 or size[1] == 0:
        raise ValueError(f"pscfast.ops.{op}: {name} has an empty spatial size {tuple(size)}")


def positive_number(op: str, name: str, value) -> float:
    """A positive finite real number (int or float, not bool or str) as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"pscfast.ops.{op}: {name} must be a positive finite number, got {value!r}")
    return float(value)


def absolute_grids(op: str, **grids: torch.Tensor) -> list[torch.Tensor]:
    """Absolute grids (N, h, w, 2) of one batch and device, each with a non-empty plane of fewer than 2^30
    points and finite values, in their common dtype."""
    for name, g in grids.items():
        tensor(op, name, g, dims=4, last=2)
        nonempty_plane(op, name, g.shape[1:3])
        plane(op, name, g.shape[1:3], bits=30)
        finite(op, name, g)
    same_device(op, **grids)
    same_batch(op, **grids)
    return promote(*grids.values())


def field(op: str, name: str, t: torch.Tensor, channels: int, like: torch.Tensor | None = None) -> None:
    """A field (N, channels, H, W) with a non-empty plane of fewer than 2^30 pixels and finite values, of the
    spatial size of `like` when given."""
    tensor(op, name, t, dims=4)
    if t.shape[1] != channels:
        raise ValueError(f"pscfast.ops.{op}: {name} must be (N, {channels}, H, W), got shape {tuple(t.shape)}")
    nonempty_spatial(op, name, t)
    if like is not None and t.shape[2:] != like.shape[2:]:
        raise ValueError(f"pscfast.ops.{op}: {name} must have the spatial size {tuple(like.shape[2:])}, "
                         f"got shape {tuple(t.shape)}")
    plane(op, name, t.shape[2:], bits=30)
    finite(op, name, t)
