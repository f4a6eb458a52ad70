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


def resize_features(f: torch.Tensor, size) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, *size), bilinear, align_corners=False, no antialias (as the release); an int
    size means size x size."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(f.shape[-2:]) == size:
        return f
    return F.interpolate(f, size=size, mode="bilinear", align_corners=False)


def correlation(src, tgt, grid: torch.Tensor | None = None, size=16, target_size=None,
                scale: float = 1.0) -> torch.Tensor:
    """Global multi-layer correlation of PSC's warp estimator (and of RAFT-style all-pairs volumes).

    src, tgt: sequences of per-layer maps (N, C_l, H_l, W_l) (layers may differ in size and channels; src and
    tgt layer l have the same C_l). size = (hs, ws) is the source grid (an int: a square) and target_size
    = (ht, wt) the target grid (default: size). Each tgt layer is resized to (ht, wt); each src layer is
    resized to (hs, ws) when grid is None, or sampled at the absolute grid (N, hs, ws, 2) (bilinear, zeros
    padding, align_corners=True) from its native resolution. Returns (N, L * ht * wt, hs, ws): channel
    l * ht * wt + (row-major tgt position), spatial = src position; value = scale * (dot product over C_l)
    (RAFT, Teed and Deng, ECCV 2020, divides by sqrt(C): scale = 1 / sqrt(C)).
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    target_size = size if target_size is None else (
        (target_size, target_size) if isinstance(target_size, int) else tuple(target_size))
    out = []
    for s, t in zip(src, tgt):
        t = resize_features(t, target_size).flatten(2)  # (N, C, ht * wt)
        if grid is None:
            s = resize_features(s, size)
        else:
            s = F.grid_sample(s, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out.append(torch.einsum("nct,nchw->nthw", t, s))
    out = torch.cat(out, dim=1)
    return out if scale == 1 else out * scale


def compose(f_ab: torch.Tensor, f_bc: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """F_ab o F_bc on absolute grids: f_ab (N, h, w, 2) sampled (as a 2-channel image; zeros outside,
    align_corners=True) at the positions f_bc (N, h', w', 2). Returns (N, h', w', 2)."""
    return F.grid_sample(f_ab.permute(0, 3, 1, 2), f_bc, mode=mode, padding_mode="zeros",
                         align_corners=True).permute(0, 2, 3, 1)


def identity_grid(n: int, h: int, w: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(n, h, w, 2) grid that maps every position to itself (align_corners=True)."""
    ys = torch.linspace(-1, 1, h, dtype=dtype, device=device)
    xs = torch.linspace(-1, 1, w, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1).expand(n, h, w, 2)


def consistency_loss(fwd: torch.Tensor, bwd: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """PSC's forward-backward consistency loss (scalar).

    cycle = compose(fwd, bwd, mode) lives on bwd's grid and should be the identity there. The loss is the
    mean of (cycle - identity)^2 over the coordinates (x and y each on their own) where cycle != 0,
    identity != 0, |cycle| <= 1 and |identity| <= 1, as the release computes it; 0 when no coordinate
    qualifies (the release would give NaN). mode="nearest" is the release (gradient to fwd only);
    "bilinear" is differentiable in both flows.
    """
    cycle = compose(fwd, bwd, mode)
    ident = identity_grid(*cycle.shape[:3], dtype=cycle.dtype, device=cycle.device)
    mask = (cycle != 0) & (ident != 0) & (cycle.abs() <= 1) & (ident.abs() <= 1)
    sq = torch.where(mask, (cycle - ident) ** 2, torch.zeros_like(cycle))
    return sq.sum() / mask.sum().clamp_min(1)


def similarity_loss(fw, ft, tau: float = 0.001, size: int = 16):
    """PSC's weighted perceptual similarity, per direction. Returns (ce, weight), each (N, size^2).

    F = concat over layers of each map resized to size x size (bilinear, align_corners=False), flattened to
    (N, C, size^2). S[n, i, j] = <Fw[n, :, i], Ft[n, :, j]>; S is L1-normalised over i, then over j
    (F.normalize, so signed features use |S|); weight[n, i] = max_j S[n, i, j], min-max scaled over the whole
    batch and detached (0 where the batch is constant); ce[n, j] = -log softmax_i(S[n, :, j] / tau)[j].
    The training loss of the direction is (ce * weight).mean().
    """
    fw = torch.cat([resize_features(f, size) for f in fw], dim=1).flatten(2)
    ft = torch.cat([resize_features(f, size) for f in ft], dim=1).flatten(2)
    s = torch.bmm(fw.transpose(1, 2), ft)
    s = F.normalize(s, p=1, dim=1)
    s = F.normalize(s, p=1, dim=2)
    w = s.max(dim=2).values.detach()
    w = w - w.min()
    w = w / w.max().clamp_min(torch.finfo(w.dtype).tiny)
    target = torch.arange(s.shape[2], device=s.device).expand(s.shape[0], -1)
    ce = F.cross_entropy(s / tau, target, reduction="none")
    return ce, w


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def local_correlation(a: torch.Tensor, b: torch.Tensor, kernel_size=1, patch_size=9, stride=1, padding=0,
                      dilation=1, dilation_patch=1) -> torch.Tensor:
    """Windowed cost volume (PWC-Net / FlowNet style), the semantics of spatial_correlation_sampler, flattened.

    Every size argument is an int or an (h, w) pair. out[n, py * PW + px, i, j] (row-major over the PH x PW
    patch; displacement ((py - (PH - 1) // 2) * dilation_patch_h, (px - (PW - 1) // 2) * dilation_patch_w), so
    an even patch reaches one step further forward than back) = sum over c and the kernel window (ki, kj) of
    a[n, c, u + ki * dilation_h, v + kj * dilation_w] * b[n, c, same + displacement], u = i * stride_h - padding_h
    (v likewise); terms where either position is outside the maps are 0. No normalisation by C.
    Output (N, PH * PW, H', W'), H' = (H + 2 padding_h - dilation_h (kernel_h - 1) - 1) // stride_h + 1.
    """
    (kh, kw), (PH, PW), (sh, sw), (ph, pw), (dh, dw), (dph, dpw) = map(
        _pair, (kernel_size, patch_size, stride, padding, dilation, dilation_patch))
    N, C, H, W = a.shape
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    rh, rw = (PH - 1) // 2, (PW - 1) // 2
    # zero room for the displacements back (r steps) and forward (P - 1 - r steps); one of the size of the maps
    # or more leaves them (its channel is 0), so the room never exceeds size - 1
    top, left = ph + min(rh * dph, H - 1), pw + min(rw * dpw, W - 1)
    pads = (left, pw + min((PW - 1 - rw) * dpw, W - 1), top, ph + min((PH - 1 - rh) * dph, H - 1))
    a_p, b_p = F.pad(a, pads), F.pad(b, pads)
    out = a.new_zeros(N, PH * PW, Ho, Wo)
    rows = torch.arange(Ho, device=a.device) * sh + top - ph  # padded row of window tap 0
    cols = torch.arange(Wo, device=a.device) * sw + left - pw
    for py in range(PH):
        for px in range(PW):
            oy, ox = (py - rh) * dph, (px - rw) * dpw
            if abs(oy) >= H or abs(ox) >= W:
                continue
            acc = 0
            for ki in range(kh):
                for kj in range(kw):
                    r, c = rows + ki * dh, cols + kj * dw
                    va = a_p[:, :, r][:, :, :, c]
                    vb = b_p[:, :, r + oy][:, :, :, c + ox]
                    acc = acc + (va * vb).sum(1)
            out[:, py * PW + px] = acc
    return out


L2_NORM_EPS = 1e-12  # F.normalize's default: the norm is max(||c||, eps)
SFNET_NORM_EPS = 1e-6  # SFNet's L2normalize adds it under the square root


def normalize_rows(c: torch.Tensor, normalize: str) -> torch.Tensor:
    """The correlation rows (N, T, S) L2-normalised over T as kernel_soft_argmax's `normalize` says:
    "l2" c / max(||c||, 1e-12) (the values and gradients of F.normalize), "sfnet" c / sqrt(||c||^2 + 1e-6)
    (SFNet's L2normalize), "none" c unchanged. Both norms are formed as SFNet's code forms its own (sum of
    squares, then the root; clamped before the root, so a zero row passes no gradient through its norm), so
    that float32 rounds alike; half types in float32 (their squares overflow above 256)."""
    if normalize == "none":
        return c
    x = c.to(torch.promote_types(c.dtype, torch.float32))
    sq = x.pow(2).sum(1, keepdim=True)
    r = sq.clamp_min(L2_NORM_EPS ** 2).sqrt() if normalize == "l2" else (sq + SFNET_NORM_EPS).sqrt()
    return (x / r).to(c.dtype)


def kernel_soft_argmax(corr: torch.Tensor, beta: float = 50.0, sigma: float = 5.0,
                       target_size: tuple[int, int] | None = None, normalize: str = "l2") -> torch.Tensor:
    """SFNet's kernel soft argmax (Lee et al., eq. 2-3) on a correlation in pscfast's layout.

    corr (N, Ht * Wt, Hs, Ws): channel = row-major target position, spatial = source position; target_size
    (Ht, Wt) defaults to a square. Per source position: n = the correlation row normalised over target
    positions (normalize_rows); k = exp(-|q - q*|^2 / (2 sigma^2)) with q* = argmax_q n (in target cells, no
    gradient); m = softmax_q(beta * k * n); the expected target position sum_q m(q) q, returned as an
    absolute grid (N, Hs, Ws, 2) into the target, (x, y) normalised with align_corners=True.

    The softmax is SFNet's softmax_with_temperature, exp(beta * (k n - max_q k n)) / sum, with the gradient
    flowing through the max: the difference is formed before the scaling by beta, and the gradient at the
    maximum comes out as minus the sum of the others, so float32 keeps SFNet's accuracy (torch.softmax loses
    1e-5 along a non-last dim on the CPU, and its gradient at a saturated maximum beta * eps).
    """
    N, T, Hs, Ws = corr.shape
    Ht, Wt = target_size or (int(round(T ** 0.5)),) * 2
    n = normalize_rows(corr.flatten(2), normalize)
    q = torch.arange(T, device=corr.device)
    qy, qx = (q // Wt).to(corr.dtype), (q % Wt).to(corr.dtype)
    best = n.argmax(dim=1, keepdim=True)  # (N, 1, S)
    by, bx = (best // Wt).to(corr.dtype), (best % Wt).to(corr.dtype)
    k = torch.exp(-((qx[None, :, None] - bx) ** 2 + (qy[None, :, None] - by) ** 2) / (2 * sigma ** 2))
    z = k * n
    e = torch.exp(beta * (z - z.amax(dim=1, keepdim=True)))
    m = e / e.sum(dim=1, keepdim=True)
    # expectation over target positions normalised to [-1, 1] (0 along an axis of one cell), as SFNet sums
    gx = (m * (qx * (2 / (Wt - 1)) - 1 if Wt > 1 else torch.zeros_like(qx))[None, :, None]).sum(1)
    gy = (m * (qy * (2 / (Ht - 1)) - 1 if Ht > 1 else torch.zeros_like(qy))[None, :, None]).sum(1)
    return torch.stack((gx, gy), dim=-1).view(N, Hs, Ws, 2)


def compose_displacement(f_ab: torch.Tensor, f_bc: torch.Tensor, m_ab: torch.Tensor | None = None,
                         m_bc: torch.Tensor | None = None):
    """Transitive composition of pixel displacement fields with matchability (Zhou et al., CVPR 2016):
    F_ac(p) = F_ab(p) + F_bc(p + F_ab(p)),  M_ac(p) = M_ab(p) * M_bc(p + F_ab(p)),
    sampled bilinearly, 0 outside image b. f_ab (N, 2, H, W) on image a (x then y, pixels), f_bc
    (N, 2, Hb, Wb) on image b; matchability maps (N, 1, ., .) default to 1. Returns (f_ac, m_ac)."""
    sampled = warp_displacement(f_bc, f_ab, "bilinear", "zeros")
    ones = torch.ones_like(f_bc[:, :1])
    m_b = warp_displacement(ones if m_bc is None else m_bc, f_ab, "bilinear", "zeros")
    m_ac = m_b if m_ab is None else m_ab * m_b
    return f_ab + sampled, m_ac


def truncated_flow_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                        T: float = 15.0) -> torch.Tensor:
    """Zhou et al.'s truncated Euclidean loss: sum over pixels of mask * min(||pred - target||^2, T^2), with
    flows (N, 2, H, W) and mask (N, 1, H, W) (default all ones). A scalar."""
    err = ((pred - target) ** 2).sum(dim=1, keepdim=True).clamp_max(T * T)
    return (err if mask is None else err * mask).sum()
