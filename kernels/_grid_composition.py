"""Triton kernels shared by compose and consistency_loss: the composition of absolute grids (N, h, w, 2)
(align_corners=True, zeros outside; see pscfast.ops._reference.compose) and the backward of both ops.
Accumulation in float32 (float64 for float64).

Backward, one launch, two kinds of programs (d L / d cycle = g: the incoming gradient for compose,
2 grad (cycle - identity) mask / count for the loss, recomputed from the cycle):
  pointwise  d f_bc(p) = sum_c g_c d cycle_c / d p * (size - 1) / 2     (0 for nearest)
  scatter    d f_ab(q) = sum over pixels p and taps k reading q of w_k g(p): each program owns a block of
             nodes q and scans every pixel of its sample in order (a gather; no atomics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._field import accumulation, clamp_pixel, field_taps, gather_scatter, tap_values

BQ, BP = 32, 64


@triton.jit
def cycle(fab_n, fbc_n, pix, mask, h, w, NEAREST: tl.constexpr, ACC: tl.constexpr):
    """Taps of f_bc[pix] in f_ab's grid, the tap values of both channels and the cycle f_ab(f_bc[pix])."""
    gx = tl.load(fbc_n + 2 * pix, mask=mask, other=0.0).to(ACC)
    gy = tl.load(fbc_n + 2 * pix + 1, mask=mask, other=0.0).to(ACC)
    px = clamp_pixel(((gx + 1.0) / 2.0) * (w - 1), w)
    py = clamp_pixel(((gy + 1.0) / 2.0) * (h - 1), h)
    i0, i1, i2, i3, w0, w1, w2, w3, e, r, s, d = field_taps(px, py, h, w, NEAREST)
    a0, a1, a2, a3 = tap_values(fab_n, i0, i1, i2, i3, 2, mask, ACC)
    b0, b1, b2, b3 = tap_values(fab_n + 1, i0, i1, i2, i3, 2, mask, ACC)
    cx = w0 * a0 + w1 * a1 + w2 * a2 + w3 * a3
    cy = w0 * b0 + w1 * b1 + w2 * b2 + w3 * b3
    return i0, i1, i2, i3, w0, w1, w2, w3, e, r, s, d, a0, a1, a2, a3, b0, b1, b2, b3, cx, cy


@triton.jit
def counted(c, i):
    """The release's mask of one cycle coordinate c against the identity coordinate i."""
    return (c != 0.0) & (i != 0.0) & (tl.abs(c) <= 1.0) & (tl.abs(i) <= 1.0)


@triton.jit
def identity(xs_ptr, ys_ptr, pix, mask, wo, ACC: tl.constexpr):
    """The identity grid's (x, y) at pixels pix of a grid wo wide."""
    ix = tl.load(xs_ptr + pix % wo, mask=mask, other=0.0).to(ACC)
    iy = tl.load(ys_ptr + pix // wo, mask=mask, other=0.0).to(ACC)
    return ix, iy


@triton.jit
def _grad(grad_n, xs_ptr, ys_ptr, pix, mask, wo, cx, cy, scale, LOSS: tl.constexpr, ACC: tl.constexpr):
    """d L / d cycle at pixels pix."""
    if LOSS:
        ix, iy = identity(xs_ptr, ys_ptr, pix, mask, wo, ACC)
        gx = tl.where(mask & counted(cx, ix), scale * (cx - ix), 0.0)
        gy = tl.where(mask & counted(cy, iy), scale * (cy - iy), 0.0)
    else:
        gx = tl.load(grad_n + 2 * pix, mask=mask, other=0.0).to(ACC)
        gy = tl.load(grad_n + 2 * pix + 1, mask=mask, other=0.0).to(ACC)
    return gx, gy


@triton.jit
def _compose_bwd_nodes(q, fab_n, fbc_n, grad_n, xs_ptr, ys_ptr, dfab_n, h, w, wo, P, scale, LOSS: tl.constexpr,
                       NEAREST: tl.constexpr, ACC: tl.constexpr, BQ: tl.constexpr, BP: tl.constexpr):
    """Gradient of f_ab at its nodes q: gathered from every pixel, in order."""
    ax = tl.zeros([BQ], ACC)
    ay = tl.zeros([BQ], ACC)
    for p0 in range(0, P, BP):
        pix = p0 + tl.arange(0, BP)
        mask = pix < P
        res = cycle(fab_n, fbc_n, pix, mask, h, w, NEAREST, ACC)
        gx, gy = _grad(grad_n, xs_ptr, ys_ptr, pix, mask, wo, res[20], res[21], scale, LOSS, ACC)
        ax += gather_scatter(q, res[0], res[1], res[2], res[3], res[4], res[5], res[6], res[7], gx)
        ay += gather_scatter(q, res[0], res[1], res[2], res[3], res[4], res[5], res[6], res[7], gy)
    tl.store(dfab_n + 2 * q, ax.to(dfab_n.dtype.element_ty), mask=q < h * w)
    tl.store(dfab_n + 2 * q + 1, ay.to(dfab_n.dtype.element_ty), mask=q < h * w)


@triton.jit
def _compose_bwd_pixels(pix, fab_n, fbc_n, grad_n, xs_ptr, ys_ptr, dfbc_n, h, w, wo, P, scale, LOSS: tl.constexpr,
                        NEAREST: tl.constexpr, ACC: tl.constexpr):
    """Gradient of the sampling positions f_bc at pixels pix (pointwise)."""
    mask = pix < P
    (i0, i1, i2, i3, w0, w1, w2, w3, e, r, s, d, a0, a1, a2, a3, b0, b1, b2, b3, cx, cy) = \
        cycle(fab_n, fbc_n, pix, mask, h, w, NEAREST, ACC)
    gx, gy = _grad(grad_n, xs_ptr, ys_ptr, pix, mask, wo, cx, cy, scale, LOSS, ACC)
    dpx = gx * ((a1 - a0) * s + (a3 - a2) * d) + gy * ((b1 - b0) * s + (b3 - b2) * d)
    dpy = gx * ((a2 - a0) * e + (a3 - a1) * r) + gy * ((b2 - b0) * e + (b3 - b1) * r)
    tl.store(dfbc_n + 2 * pix, (dpx * ((w - 1) / 2.0)).to(dfbc_n.dtype.element_ty), mask=mask)
    tl.store(dfbc_n + 2 * pix + 1, (dpy * ((h - 1) / 2.0)).to(dfbc_n.dtype.element_ty), mask=mask)


@triton.jit
def compose_bwd_kernel(grad_ptr, count_ptr, xs_ptr, ys_ptr, fab_ptr, fbc_ptr, dfab_ptr, dfbc_ptr, h, w, wo, P, NQB,
                       LOSS: tl.constexpr, NEAREST: tl.constexpr, ACC: tl.constexpr, BQ: tl.constexpr,
                       BP: tl.constexpr):
    n = tl.program_id(1).to(tl.int64)
    pid = tl.program_id(0)
    fab_n = fab_ptr + n * h * w * 2
    fbc_n = fbc_ptr + n * P * 2
    grad_n = grad_ptr + n * P * 2
    scale = 0.0
    if LOSS:
        count = tl.maximum(tl.load(count_ptr), 1).to(ACC)
        scale = tl.load(grad_ptr).to(ACC) * 2.0 / count
    # the branches live in separate functions: compiled Triton merges same-named variables of an if's two
    # branches, and their blocks differ (BQ nodes, BP pixels)
    if pid < NQB:  # scatter: nodes [pid * BQ, pid * BQ + BQ) of f_ab gather from every pixel, in order
        _compose_bwd_nodes(pid * BQ + tl.arange(0, BQ), fab_n, fbc_n, grad_n, xs_ptr, ys_ptr,
                           dfab_ptr + n * h * w * 2, h, w, wo, P, scale, LOSS, NEAREST, ACC, BQ, BP)
    else:  # pointwise: the gradient of the sampling positions f_bc
        _compose_bwd_pixels((pid - NQB) * BP + tl.arange(0, BP), fab_n, fbc_n, grad_n, xs_ptr, ys_ptr,
                            dfbc_ptr + n * P * 2, h, w, wo, P, scale, LOSS, NEAREST, ACC)


def backward(grad, count, xs, ys, f_ab, f_bc, mode, loss, output_mask):
    """(d f_ab, d f_bc) of compose (loss False: grad (N, h', w', 2)) or of consistency_loss (loss True: grad and
    count scalars), each None unless output_mask asks for it; the scatter programs run only for d f_ab and the
    pointwise ones only for d f_bc."""
    N, h, w, _ = f_ab.shape
    P = f_bc.shape[1] * f_bc.shape[2]
    d_ab = torch.empty_like(f_ab) if output_mask[0] else None
    d_bc = torch.empty_like(f_bc) if output_mask[1] else None
    nqb = triton.cdiv(h * w, BQ) if output_mask[0] else 0
    npb = triton.cdiv(P, BP) if output_mask[1] else 0
    if N and nqb + npb:
        compose_bwd_kernel[(nqb + npb, N)](
            grad, count, xs, ys, f_ab, f_bc, f_ab if d_ab is None else d_ab, f_bc if d_bc is None else d_bc, h, w,
            f_bc.shape[2], P, nqb, LOSS=loss, NEAREST=mode == "nearest", ACC=accumulation(f_ab.dtype)[0], BQ=BQ,
            BP=BP)
    return d_ab, d_bc
