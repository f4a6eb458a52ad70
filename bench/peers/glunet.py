"""GLU-Net (Truong, Danelljan and Timofte, CVPR 2020): a global correlation at the coarsest level (16x16 for a
256x256 input), then at the next level a warp of the source features by the upsampled flow and a local cost
volume (max displacement 4).

Plain PyTorch as the authors' release computes it: the global correlation is a batched matmul whose channel
is the source position in column-major order (x * H + y; the transposes of Rocco et al.'s CNNGeometric
correlation it reuses), features are L2-normalised with 1e-6 under the root, flows become grids normalised
by (size - 1) (align_corners=True semantics) and the warp zeroes pixels that read outside the source.
pscfast's correlation orders the channel row-major: a fixed permutation of the decoder's input channels, so
the pscfast head permutes its decoder weights once (equal outputs; a model trained on either layout is the
same model).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from pscfast import ops

from . import cost_volume
from .sampling import pixel_coords, pscfast_sample, sample

MAX_DISPLACEMENT = 4


def global_correlation(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """(N, Hs * Ws, Ht, Wt): channel = source position column-major, spatial = target position."""
    n, c, h, w = src.shape
    s = src.transpose(2, 3).contiguous().view(n, c, h * w)
    t = tgt.view(n, c, h * w).transpose(1, 2)
    return torch.bmm(t, s).view(n, h, w, h * w).transpose(2, 3).transpose(1, 2)


def pscfast_global_correlation(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """(N, Hs * Ws, Ht, Wt) with the source position row-major (pscfast.ops.correlation's layout)."""
    return ops.correlation([tgt], [src], None, tgt.shape[-1])


def column_to_row_major(corr: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """global_correlation's channel order (x * h + y) -> pscfast's (y * w + x), for an h x w source."""
    n, _, ht, wt = corr.shape
    return corr.reshape(n, w, h, ht, wt).transpose(1, 2).reshape(n, h * w, ht, wt)


def l2norm(f: torch.Tensor) -> torch.Tensor:
    return f / torch.sqrt((f * f).sum(1, keepdim=True) + 1e-6)


def flow_to_grid(flow: torch.Tensor) -> torch.Tensor:
    """Pixel displacement (N, 2, H, W) -> absolute grid (N, H, W, 2) normalised by (size - 1)."""
    _, _, h, w = flow.shape
    xs, ys = pixel_coords(h, w, flow)
    gx = 2 * (xs + flow[:, 0]) / max(w - 1, 1) - 1
    gy = 2 * (ys + flow[:, 1]) / max(h - 1, 1) - 1
    return torch.stack((gx, gy), dim=-1)


def warp_features(x: torch.Tensor, flow: torch.Tensor, sampler) -> torch.Tensor:
    """x sampled at pixel + flow, 0 where the bilinear footprint leaves x (a one-channel validity warp; the
    release warps a full-size tensor of ones for it)."""
    grid = flow_to_grid(flow)
    valid = sampler(torch.ones_like(x[:, :1]), grid) > 0.9999
    return sampler(x, grid) * valid


def mapping_to_flow(mapping: torch.Tensor) -> torch.Tensor:
    """A normalised mapping (N, 2, H, W) in [-1, 1] (align_corners=True) -> pixel displacement."""
    _, _, h, w = mapping.shape
    xs, ys = pixel_coords(h, w, mapping)
    return torch.stack(((mapping[:, 0] + 1) * (w - 1) / 2 - xs, (mapping[:, 1] + 1) * (h - 1) / 2 - ys), dim=1)


PLAIN = SimpleNamespace(global_correlation=global_correlation, sample=sample,
                        local=cost_volume.shift_and_multiply, row_major=False)
PSCFAST = SimpleNamespace(global_correlation=pscfast_global_correlation, sample=pscfast_sample,
                          local=cost_volume.pscfast_local, row_major=True)


def head(c14, c24, c13, c23, w4, w3, impl=PLAIN):
    """GLU-Net's matching path without its convolutional decoders (a 1x1 convolution stands in for each):
    target/source features at 16x16 (c14, c24) and 32x32 (c13, c23), frozen as the release's pyramid.
    Returns the 16x16 and 32x32 flows (pixels of their levels)."""
    corr4 = impl.global_correlation(l2norm(c24), l2norm(c14))  # source first, then target, as the release
    corr4 = l2norm(F.relu(corr4))
    h, w = c24.shape[-2:]
    if impl.row_major:  # the decoder's input channels in pscfast's order
        w4 = w4.view(w4.shape[0], w, h).transpose(1, 2).reshape(w4.shape)
    flow4 = mapping_to_flow(F.conv2d(corr4, w4))
    up4 = 2 * F.interpolate(flow4, scale_factor=2, mode="bilinear", align_corners=False)
    warp3 = warp_features(c23, up4, impl.sample)
    corr3 = F.leaky_relu(impl.local(c13, warp3, MAX_DISPLACEMENT), 0.1)
    return flow4, up4 + F.conv2d(corr3, w3)


def pscfast_head(c14, c24, c13, c23, w4, w3):
    return head(c14, c24, c13, c23, w4, w3, PSCFAST)


def head_inputs(n: int, c4: int, c3: int, size4: int, device, dtype):
    """Features (frozen) and the two stand-in decoders' weights (trained), scaled so that about a quarter of the
    coarse mapping points outside the source: the validity mask matters."""
    def feat(c, s):
        return torch.randn(n, c, s, s, device=device, dtype=dtype)

    c14, c24, c13, c23 = feat(c4, size4), feat(c4, size4), feat(c3, 2 * size4), feat(c3, 2 * size4)
    w4 = (torch.randn(2, size4 * size4, 1, 1, device=device, dtype=dtype) * 0.8).requires_grad_()
    w3 = (torch.randn(2, (2 * MAX_DISPLACEMENT + 1) ** 2, 1, 1, device=device, dtype=dtype) * 0.3).requires_grad_()
    return (c14, c24, c13, c23, w4, w3), (w4, w3)
