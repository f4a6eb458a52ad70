"""Index/weight tables for bilinear resizing, computed once per call on the host side with torch in the
kernel's accumulation dtype, so that every backend rounds the source positions identically
(the formulas of F.interpolate, mode="bilinear", no antialias)."""
from __future__ import annotations

import torch


def lerp_table(n_in: int, n_out: int, align_corners: bool, dtype: torch.dtype,
               device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each output index: the two source indices (int32, (n_out, 2)) and the weight of the second (n_out,).

    align_corners=True:  src = dst * (n_in - 1) / (n_out - 1)
    align_corners=False: src = max((dst + 0.5) * n_in / n_out - 0.5, 0)
    i0 = min(floor(src), n_in - 1), i1 = min(i0 + 1, n_in - 1), weight = clamp(src - i0, 0, 1).
    """
    one = torch.ones((), dtype=dtype)
    dst = torch.arange(n_out, dtype=dtype)
    if align_corners:
        scale = (one * (n_in - 1)) / (one * (n_out - 1)) if n_out > 1 else one * 0
        src = scale * dst
    else:
        scale = (one * n_in) / (one * n_out)
        src = (scale * (dst + 0.5) - 0.5).clamp_min(0)
    i0 = src.to(torch.int64).clamp_max(n_in - 1)
    l1 = (src - i0.to(dtype)).clamp(0, 1)
    i1 = i0 + (i0 < n_in - 1).to(torch.int64)
    idx = torch.stack((i0, i1), dim=1).to(torch.int32)
    return idx.to(device), l1.to(device)


def cell_starts(idx: torch.Tensor, n_cells: int) -> torch.Tensor:
    """First output index of each cell i0 = 0..n_cells-1, plus the end: (n_cells + 1,) int32.
    Cells are contiguous runs because i0 never decreases along the output."""
    i0 = idx[:, 0].to(torch.int64).cpu()
    starts = torch.searchsorted(i0, torch.arange(n_cells + 1))
    return starts.to(torch.int32).to(idx.device)
