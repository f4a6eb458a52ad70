"""What GLU-Net, RAFT and SFNet share: bilinear sampling at a grid normalised with align_corners=True
semantics (their grids divide by size - 1), zeros outside, as grid_sample or pscfast.ops.warp, and the pixel
coordinate grid their flows are built on."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pscfast import ops


def sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def pscfast_sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return ops.warp(x, grid, None, "bilinear", "zeros", True)


def pixel_coords(h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(xs, ys), each (h, w): the column and row of every pixel, in like's dtype and device."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=like.dtype, device=like.device),
                            torch.arange(w, dtype=like.dtype, device=like.device), indexing="ij")
    return xs, ys
