"""Triton kernels of the local_correlation op (conventions: pscfast.ops._reference.local_correlation; every
size argument an (h, w) pair).

Tiles span all PH * PW displacements (rows, padded to a power of two) by a block of columns:
forward: one program per (n, output row, block of output columns) loops over the kernel window and the
  channels, reading a once per channel and tap and the matching b of every displacement; accumulation in
  float32 (float64 for float64).
backward, gather form (deterministic, no atomics): one program per (n, input row, block of columns) of
  grad_a (sign=+1, partner b at (y + oy, x + ox)) or grad_b (sign=-1, partner a at (y - oy, x - ox)) first
  sums gout over the window taps into a (displacement, column) tile G, then for each channel writes
  sum over displacements of G * partner, a fixed-order reduction.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._field import accumulation


def _out_size(H, W, kernel_size, stride, padding, dilation):
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, k, s, p, d in zip((H, W), kernel_size, stride, padding, dilation))


def _blocks(P2, W):
    bp = triton.next_power_of_2(P2)
    return bp, max(1, min(triton.next_power_of_2(W), 4096 // bp, 64))


@triton.jit
def _forward(a_ptr, b_ptr, out_ptr, C, H, W, Ho, Wo, PW, P2, rh, rw, sh, sw, padh, padw, dilh, dilw, dph, dpw,
             KH: tl.constexpr, KW: tl.constexpr, BP: tl.constexpr, BW: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0)
    n = row // Ho
    i = row % Ho
    j = tl.program_id(1) * BW + tl.arange(0, BW)
    p = tl.arange(0, BP)
    oy = (p // PW - rh) * dph
    ox = (p % PW - rw) * dpw
    HW = H * W
    acc = tl.zeros([BP, BW], dtype=ACC)
    for ki in tl.static_range(KH):
        ya = i * sh - padh + ki * dilh
        yb = ya + oy
        for kj in tl.static_range(KW):
            xa = j * sw - padw + kj * dilw
            a_ok = (j < Wo) & (xa >= 0) & (xa < W) & (ya >= 0) & (ya < H)
            xb = xa[None, :] + ox[:, None]
            b_ok = a_ok[None, :] & (p[:, None] < P2) & (xb >= 0) & (xb < W) & (yb[:, None] >= 0) & (yb[:, None] < H)
            a_off = ya * W + xa
            b_off = yb[:, None] * W + xb
            for c in range(C):
                plane = (n.to(tl.int64) * C + c) * HW  # int64: a sample may hold 2^31 elements or more
                va = tl.load(a_ptr + plane + a_off, mask=a_ok, other=0.0).to(ACC)
                vb = tl.load(b_ptr + plane + b_off, mask=b_ok, other=0.0).to(ACC)
                acc += va[None, :] * vb
    off = ((n.to(tl.int64) * P2 + p[:, None]) * Ho + i) * Wo + j[None, :]
    tl.store(out_ptr + off, acc.to(out_ptr.dtype.element_ty), mask=(p[:, None] < P2) & (j[None, :] < Wo))


@triton.jit
def _backward(gout_ptr, other_ptr, grad_ptr, C, H, W, Ho, Wo, PW, P2, rh, rw, sh, sw, padh, padw, dilh, dilw, dph,
              dpw, SIGN: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, BP: tl.constexpr, BW: tl.constexpr,
              ACC: tl.constexpr):
    row = tl.program_id(0)
    n = row // H
    y = row % H
    x = tl.program_id(1) * BW + tl.arange(0, BW)
    p = tl.arange(0, BP)
    py = y + SIGN * (p // PW - rh) * dph  # [BP]
    px = x[None, :] + SIGN * ((p % PW - rw) * dpw)[:, None]  # [BP, BW]
    ok = (p[:, None] < P2) & (x[None, :] < W) & (px >= 0) & (px < W) & (py[:, None] >= 0) & (py[:, None] < H)
    if SIGN > 0:  # the position of a in the window
        wy = y + tl.zeros([BP], dtype=tl.int32)
        wx = x[None, :] + tl.zeros([BP, BW], dtype=tl.int32)
    else:
        wy = py
        wx = px
    gbase = n.to(tl.int64) * P2 * Ho * Wo
    # int64: a sample's P2 * Ho * Wo outputs may number 2^31 or more
    gplane = p[:, None].to(tl.int64) * Ho * Wo
    G = tl.zeros([BP, BW], dtype=ACC)
    for ki in tl.static_range(KH):
        t = wy + padh - ki * dilh
        i = t // sh
        i_ok = (t >= 0) & (t % sh == 0) & (i < Ho)
        for kj in tl.static_range(KW):
            tx = wx + padw - kj * dilw
            j = tx // sw
            m = ok & i_ok[:, None] & (tx >= 0) & (tx % sw == 0) & (j < Wo)
            G += tl.load(gout_ptr + gbase + gplane + i[:, None] * Wo + j, mask=m, other=0.0).to(ACC)
    HW = H * W
    off = py[:, None] * W + px
    for c in range(C):
        plane = (n.to(tl.int64) * C + c) * HW
        partner = tl.load(other_ptr + plane + off, mask=ok, other=0.0).to(ACC)
        g = tl.sum(G * partner, axis=0)
        tl.store(grad_ptr + plane + y * W + x, g.to(grad_ptr.dtype.element_ty), mask=x < W)


def _geometry_args(patch_size, stride, padding, dilation, dilation_patch):
    """The kernels' scalar arguments PW, P2, rh, rw, sh, sw, padh, padw, dilh, dilw, dph, dpw."""
    PH, PW = patch_size
    return (PW, PH * PW, (PH - 1) // 2, (PW - 1) // 2, *stride, *padding, *dilation, *dilation_patch)


# Launchers, in the argument order of the pscfast::local_correlation schemas: a, b contiguous (N, C, H, W), every
# size argument an (h, w) pair.

def local_correlation(a, b, kernel_size, patch_size, stride, padding, dilation, dilation_patch):
    """The cost volume (N, PH * PW, Ho, Wo)."""
    N, C, H, W = a.shape
    P2 = patch_size[0] * patch_size[1]
    Ho, Wo = _out_size(H, W, kernel_size, stride, padding, dilation)
    out = a.new_empty(N, P2, Ho, Wo)
    if out.numel() == 0:
        return out.zero_()
    bp, bw = _blocks(P2, Wo)
    grid = (N * Ho, triton.cdiv(Wo, bw))
    _forward[grid](a, b, out, C, H, W, Ho, Wo, *_geometry_args(patch_size, stride, padding, dilation, dilation_patch),
                   KH=kernel_size[0], KW=kernel_size[1], BP=bp, BW=bw, ACC=accumulation(a.dtype)[0])
    return out


def local_correlation_backward(grad_out, a, b, kernel_size, patch_size, stride, padding, dilation, dilation_patch,
                               output_mask):
    """(d a, d b) for a contiguous grad_out (N, PH * PW, Ho, Wo), each None unless output_mask asks for it; a and b
    may have any strides (each is read, contiguous, for the other's gradient only)."""
    sizes = (kernel_size, patch_size, stride, padding, dilation, dilation_patch)
    grad_a = _gradient(grad_out, b.contiguous(), *sizes, sign=1) if output_mask[0] else None
    grad_b = _gradient(grad_out, a.contiguous(), *sizes, sign=-1) if output_mask[1] else None
    return grad_a, grad_b


def _gradient(grad_out, other, kernel_size, patch_size, stride, padding, dilation, dilation_patch, sign):
    """Gradient of a (sign=+1, other = b) or of b (sign=-1, other = a), other contiguous; (N, C, H, W)."""
    N, C, H, W = other.shape
    P2 = patch_size[0] * patch_size[1]
    Ho, Wo = grad_out.shape[-2:]
    grad = torch.empty_like(other)
    if grad.numel() == 0:
        return grad
    bp, bw = _blocks(P2, W)
    grid = (N * H, triton.cdiv(W, bw))
    _backward[grid](grad_out, other, grad, C, H, W, Ho, Wo,
                    *_geometry_args(patch_size, stride, padding, dilation, dilation_patch), SIGN=sign,
                    KH=kernel_size[0], KW=kernel_size[1], BP=bp, BW=bw, ACC=accumulation(other.dtype)[0])
    return grad
