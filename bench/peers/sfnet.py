"""SFNet (Lee, Kim, Min, Ham and Sohn, CVPR 2019): per-level cosine correlations (conv4-23 and the upsampled
conv5-3 of ResNet-101, 1024 and 2048 channels, after adaptation layers) multiplied element-wise, the kernel
soft-argmax in both directions, and foreground masks warped by the resulting grids for the mask
consistency loss.

Plain PyTorch as the authors' release computes it: each correlation is a batched matmul (channel = target
position, spatial = source position: pscfast.ops.correlation's layout), and the kernel soft-argmax is its
own sequence of tensors (the correlation L2-normalised with 1e-6 under the root; a Gaussian of sigma 5 target
cells centred at each row's argmax, multiplied in; a max-subtracted softmax of beta 50 times that; the
expected x and y from the marginals), returned as the (N, H, W, 2) grid it warps the masks with (grid_sample,
align_corners=True).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from pscfast import ops

from .sampling import pscfast_sample, sample

BETA, SIGMA = 50.0, 5.0


def correlation(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """(N, Ht * Wt, Hs, Ws): channel = target position, spatial = source position."""
    n, c, h, w = src.shape
    return torch.bmm(tgt.view(n, c, -1).transpose(1, 2), src.view(n, c, h * w)).view(n, -1, h, w)


def pscfast_correlation(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    return ops.correlation([src], [tgt], None, src.shape[-1])


def l2normalize(x: torch.Tensor) -> torch.Tensor:
    return x / ((x ** 2).sum(1, keepdim=True) + 1e-6) ** 0.5


def kernel_soft_argmax_normalised(corr: torch.Tensor, beta: float = BETA, sigma: float = SIGMA) -> torch.Tensor:
    """The release's kernel soft-argmax of an already L2-normalised square correlation (N, H*W, H, W)."""
    n, _, h, w = corr.shape
    best = corr.max(dim=1)[1]
    by = (best // w).view(n, 1, 1, h, w).to(corr.dtype)
    bx = (best % w).view(n, 1, 1, h, w).to(corr.dtype)
    xs = torch.arange(w, dtype=corr.dtype, device=corr.device).view(1, 1, w, 1, 1)
    ys = torch.arange(h, dtype=corr.dtype, device=corr.device).view(1, h, 1, 1, 1)
    gauss = torch.exp(-((xs - bx) ** 2 + (ys - by) ** 2) / (2 * sigma ** 2)).view(n, h * w, h, w)
    x = gauss * corr
    x = x - x.max(dim=1, keepdim=True)[0]
    e = torch.exp(beta * x)
    m = (e / e.sum(dim=1, keepdim=True)).view(n, h, w, h, w)  # (target y, target x) x (source y, source x)
    x_normal = torch.linspace(-1, 1, w, dtype=corr.dtype, device=corr.device).view(1, w, 1, 1)
    y_normal = torch.linspace(-1, 1, h, dtype=corr.dtype, device=corr.device).view(1, h, 1, 1)
    gx = (m.sum(dim=1) * x_normal).sum(dim=1, keepdim=True)
    gy = (m.sum(dim=2) * y_normal).sum(dim=1, keepdim=True)
    return torch.cat((gx.permute(0, 2, 3, 1), gy.permute(0, 2, 3, 1)), dim=3)


def kernel_soft_argmax(corr: torch.Tensor) -> torch.Tensor:
    """The release's normalisation and kernel soft-argmax: the plain counterpart of pscfast's op."""
    return kernel_soft_argmax_normalised(l2normalize(corr))


def pscfast_kernel_soft_argmax(corr: torch.Tensor) -> torch.Tensor:
    return ops.kernel_soft_argmax(corr, BETA, SIGMA)


def _level_correlations(src, tgt):
    return [correlation(s, t) for s, t in zip(src, tgt)]


def _pscfast_level_correlations(src, tgt):
    hw = src[0].shape[-2] * src[0].shape[-1]
    return ops.correlation(list(src), list(tgt), None, src[0].shape[-1]).split(hw, dim=1)


PLAIN = SimpleNamespace(level_correlations=_level_correlations,
                        soft_argmax=lambda corr: kernel_soft_argmax_normalised(F.normalize(corr, dim=1)),
                        sample=sample)
PSCFAST = SimpleNamespace(level_correlations=_pscfast_level_correlations, soft_argmax=pscfast_kernel_soft_argmax,
                          sample=pscfast_sample)


def head(src3, src4, tgt3, tgt4, src_mask, tgt_mask, impl=PLAIN):
    """SFNet's matching path after its adaptation layers: adapted features of both levels (N, C_l, H, W) and
    the foreground masks (N, 1, H, W) -> the source-to-target and target-to-source grids and the masks they
    warp (the target's into the source frame, the source's into the target frame). The correlation is
    L2-normalised as the paper says (F.normalize: the plain head and pscfast's op agree exactly)."""
    src = [F.normalize(f, dim=1) for f in (src3, src4)]
    tgt = [F.normalize(f, dim=1) for f in (tgt3, tgt4)]
    c3, c4 = (F.relu(c) for c in impl.level_correlations(src, tgt))
    s2t = c3 * c4  # channel = target, spatial = source
    n, hw, h, w = s2t.shape
    t2s = s2t.view(n, hw, hw).transpose(1, 2).reshape(n, hw, h, w)
    grid_s2t, grid_t2s = impl.soft_argmax(s2t), impl.soft_argmax(t2s)
    return grid_s2t, grid_t2s, impl.sample(tgt_mask, grid_s2t), impl.sample(src_mask, grid_t2s)


def pscfast_head(src3, src4, tgt3, tgt4, src_mask, tgt_mask):
    return head(src3, src4, tgt3, tgt4, src_mask, tgt_mask, PSCFAST)


def head_inputs(n: int, c3: int, c4: int, size: int, device, dtype):
    """Adapted features (trained: they require grad) of two images that match: the target is the source
    circularly shifted by a few cells plus noise, so every row has a clear maximum; binary masks."""
    def pair(c):
        src = torch.randn(n, c, size, size, device=device, dtype=dtype)
        tgt = torch.roll(src, shifts=(1, 2), dims=(2, 3)) + 0.5 * torch.randn_like(src)
        return src.requires_grad_(), tgt.requires_grad_()

    (s3, t3), (s4, t4) = pair(c3), pair(c4)
    masks = [(torch.rand(n, 1, size, size, device=device) > 0.5).to(dtype) for _ in range(2)]
    return (s3, s4, t3, t4, *masks), (s3, s4, t3, t4)
