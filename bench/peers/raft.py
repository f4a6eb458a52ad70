"""RAFT (Teed and Deng, ECCV 2020): the all-pairs correlation of two 1/8-resolution feature maps,
fmap1^T fmap2 / sqrt(C), pooled into a 4-level pyramid, and at every refinement iteration a 9x9 window
(radius 4) looked up at each level around the current correspondence of every pixel (bilinear, zeros
outside): 4 lookups of (N * H * W) one-channel maps per iteration.

Plain PyTorch as the release computes it: a matmul viewed as (N, H, W, 1, H, W) divided by sqrt of the
channel count as a float32 tensor, and grid_sample (align_corners=True) for the lookups. pscfast: the same
correlation from pscfast.ops.correlation (source = fmap2, target = fmap1 gives the release's layout), its
1 / sqrt(C) passed as the op's scale (applied inside the product, not as a division afterwards), and the
lookups through pscfast.ops.warp.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from pscfast import ops

from .sampling import pixel_coords, pscfast_sample, sample

LEVELS, RADIUS, ITERATIONS = 4, 4, 12


def all_pairs(fmap1: torch.Tensor, fmap2: torch.Tensor) -> torch.Tensor:
    n, c, h, w = fmap1.shape
    corr = torch.matmul(fmap1.view(n, c, h * w).transpose(1, 2), fmap2.view(n, c, h * w))
    return corr.view(n, h, w, 1, h, w) / torch.sqrt(torch.tensor(c).float())


def pscfast_all_pairs(fmap1: torch.Tensor, fmap2: torch.Tensor) -> torch.Tensor:
    n, c, h, w = fmap1.shape
    size = h if h == w else (h, w)
    return ops.correlation([fmap2], [fmap1], None, size, scale=1 / math.sqrt(c)).view(n, h, w, 1, h, w)


def pyramid(corr: torch.Tensor, levels: int = LEVELS) -> list[torch.Tensor]:
    """(N, H, W, 1, H, W) -> per level (N * H * W, 1, H / 2^l, W / 2^l), average-pooled."""
    n, h, w, _, h2, w2 = corr.shape
    out = [corr.reshape(n * h * w, 1, h2, w2)]
    for _ in range(levels - 1):
        out.append(F.avg_pool2d(out[-1], 2, stride=2))
    return out


def lookup_grid(centre: torch.Tensor, size: tuple[int, int], radius: int = RADIUS) -> torch.Tensor:
    """Pixel centres (M, 2) (x, y) -> the (M, 2r+1, 2r+1, 2) window around each, normalised by (size - 1)."""
    d = torch.arange(-radius, radius + 1, dtype=centre.dtype, device=centre.device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    x = centre[:, 0, None, None] + dx
    y = centre[:, 1, None, None] + dy
    h, w = size
    return torch.stack((2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1), dim=-1)


def lookup(pyr: list[torch.Tensor], coords: torch.Tensor, sampler) -> torch.Tensor:
    """Correlation features (N, levels * (2r+1)^2, H, W) around coords (N, 2, H, W), pixels of level 0."""
    n, _, h, w = coords.shape
    centre = coords.permute(0, 2, 3, 1).reshape(n * h * w, 2)
    feats = [sampler(c, lookup_grid(centre / 2 ** i, tuple(c.shape[-2:]))).view(n, h, w, -1)
             for i, c in enumerate(pyr)]
    return torch.cat(feats, dim=-1).permute(0, 3, 1, 2)


PLAIN = SimpleNamespace(all_pairs=all_pairs, sample=sample)
PSCFAST = SimpleNamespace(all_pairs=pscfast_all_pairs, sample=pscfast_sample)


def head(fmap1, fmap2, update, iterations: int = ITERATIONS, impl=PLAIN):
    """RAFT's correlation and lookup path: `update` (2, levels * (2r+1)^2, 1, 1), a 1x1 convolution, stands in
    for the GRU update block. Each iteration detaches the coordinates (as RAFT) and adds the update's step.
    Returns the flow after every iteration, (iterations, N, 2, H, W)."""
    n, _, h, w = fmap1.shape
    pyr = pyramid(impl.all_pairs(fmap1, fmap2))
    coords0 = torch.stack(pixel_coords(h, w, fmap1)).expand(n, 2, h, w)
    coords1, flows = coords0, []
    for _ in range(iterations):
        coords1 = coords1.detach()
        coords1 = coords1 + F.conv2d(lookup(pyr, coords1, impl.sample), update)
        flows.append(coords1 - coords0)
    return torch.stack(flows)


def pscfast_head(fmap1, fmap2, update, iterations: int = ITERATIONS):
    return head(fmap1, fmap2, update, iterations, PSCFAST)


def head_inputs(n: int, c: int, h: int, w: int, device, dtype):
    """Feature maps and the stand-in update's weights, all trained."""
    fmap1 = torch.randn(n, c, h, w, device=device, dtype=dtype, requires_grad=True)
    fmap2 = torch.randn(n, c, h, w, device=device, dtype=dtype, requires_grad=True)
    update = (torch.randn(2, LEVELS * (2 * RADIUS + 1) ** 2, 1, 1, device=device, dtype=dtype) * 0.05).requires_grad_()
    return (fmap1, fmap2, update), (fmap1, fmap2, update)
