"""The plain PyTorch version of every pscfast op: the specification, the fallback backend, the oracle of
the tests and the baseline of the benchmarks. Written for clarity, with autograd providing the backward.

Coordinate contract (all ops):
  absolute grid   (N, h, w, 2), last dim (x, y), normalised to [-1, 1]; with align_corners=True -1 and 1 are
                  the centres of the first and last pixel, with False their outer edges (as grid_sample).
  displacement    (N, 2, H, W), channel 0 = x (columns), 1 = y (rows), in pixels: output pixel (i, j) reads
                  the input at (j + u, i + v).
  resizing        a grid is resized bilinearly with align_corners=True (exact for affine fields).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_grid(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w, 2) -> (N, *size, 2), bilinear, align_corners=True."""
    if tuple(grid.shape[1:3]) == tuple(size):
        return grid
    return F.interpolate(grid.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=True).permute(0, 2, 3, 1)


def warp(x: torch.Tensor, grid: torch.Tensor, out_size: tuple[int, int] | None = None, mode: str = "bilinear",
         padding_mode: str = "zeros", align_corners: bool = True) -> torch.Tensor:
    """Sample x (N, C, H, W) at the absolute grid (N, h, w, 2), first resized to out_size (default (h, w)).

    Returns (N, C, *out_size). padding_mode "zeros" reads 0 outside the image, "border" the nearest edge
    pixel; mode "nearest" rounds half to even.
    """
    if out_size is not None:
        grid = resize_grid(grid, tuple(out_size))
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)


def displacement_to_grid(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel displacement (N, 2, h, w) -> absolute grid (N, h, w, 2) into an image of `size` (H, W),
    normalised with align_corners=False (pixel j sits at (2 j + 1) / W - 1, so no size is degenerate)."""
    H, W = size
    h, w = flow.shape[-2:]
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype).view(1, h, 1)
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, 1, w)
    gx = (2 * (xs + flow[:, 0]) + 1) / W - 1
    gy = (2 * (ys + flow[:, 1]) + 1) / H - 1
    return torch.stack((gx, gy), dim=-1)


def warp_displacement(x: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear",
                      padding_mode: str = "zeros") -> torch.Tensor:
    """Backward-warp x (N, C, H, W) by a pixel displacement field (N, 2, h, w): out (N, C, h, w)."""
    grid = displacement_to_grid(flow, tuple(x.shape[-2:]))
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=False)
