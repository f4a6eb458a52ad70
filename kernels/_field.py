"""Triton helpers shared by the consistency, cycle, warp and correlation kernels: grid_sample's grid-to-pixel
conversion, the taps of a bilinear resize, and the taps of a position in a plane (bilinear or nearest, zeros
outside), as csrc/ops/common/field_sample.h.

A position (px, py) in pixels of an H x W plane reads taps 0 = (y0, x0), 1 = (y0, x0 + 1), 2 = (y0 + 1, x0),
3 = (y0 + 1, x0 + 1) with flat indices (-1 outside) and weights; the distances e, r (to the right / left tap
columns) and s, d (to the lower / upper tap rows) give the coordinate gradient
  d value / d px = (v1 - v0) s + (v3 - v2) d,   d value / d py = (v2 - v0) e + (v3 - v1) r.
Nearest rounds half to even (grid_sample) into tap 0 with weight 1; its coordinate gradient is 0.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def accumulation(dtype: torch.dtype):
    """(Triton, torch) accumulation types of a kernel on `dtype`: float64 stays float64, the rest use float32."""
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


@triton.jit
def grid_to_pixel(g, size, ALIGN: tl.constexpr):
    """grid_sample's unnormalisation of grid coordinates in [-1, 1] to pixels of an axis of `size` pixels."""
    if ALIGN:
        return ((g + 1.0) / 2.0) * (size - 1)
    return ((g + 1.0) * size - 1.0) / 2.0


@triton.jit
def resize_taps(ry_ptr, rly_ptr, rx_ptr, rlx_ptr, oy, ox, mask, ACC: tl.constexpr):
    """Source rows (y0, y1), columns (x0, x1) and the second ones' weights (ly1, lx1) of output pixels (oy, ox)
    of a bilinear resize, from the tables of kernels/_tables.lerp_table."""
    y0 = tl.load(ry_ptr + oy * 2, mask=mask, other=0)
    y1 = tl.load(ry_ptr + oy * 2 + 1, mask=mask, other=0)
    x0 = tl.load(rx_ptr + ox * 2, mask=mask, other=0)
    x1 = tl.load(rx_ptr + ox * 2 + 1, mask=mask, other=0)
    ly1 = tl.load(rly_ptr + oy, mask=mask, other=0.0).to(ACC)
    lx1 = tl.load(rlx_ptr + ox, mask=mask, other=0.0).to(ACC)
    return y0, y1, x0, x1, ly1, lx1


@triton.jit
def clamp_pixel(p, size):
    """Clamp to [-2, size + 1]: beyond it every tap is outside either way; keeps int conversion defined."""
    return tl.minimum(tl.maximum(p, -2.0), size + 1.0)


@triton.jit
def round_half_even(v):
    r = tl.floor(v + 0.5)
    half = r * 0.5
    odd = tl.floor(half) != half
    return tl.where((r - v == 0.5) & odd, r - 1.0, r).to(tl.int32)


@triton.jit
def field_taps(px, py, H, W, NEAREST: tl.constexpr):
    """(i0, i1, i2, i3, w0, w1, w2, w3, e, r, s, d) for positions (px, py) already clamped."""
    if NEAREST:
        ix = round_half_even(px)
        iy = round_half_even(py)
        ok = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H)
        i0 = tl.where(ok, iy * W + ix, -1)
        none = tl.full(i0.shape, -1, tl.int32)
        one = tl.full(px.shape, 1.0, px.dtype)
        zero = tl.zeros_like(px)
        return i0, none, none, none, one, zero, zero, zero, zero, zero, zero, zero
    fx = tl.floor(px)
    fy = tl.floor(py)
    x0 = fx.to(tl.int32)
    y0 = fy.to(tl.int32)
    e = fx + 1.0 - px
    r = px - fx
    s = fy + 1.0 - py
    d = py - fy
    x0in = (x0 >= 0) & (x0 < W)
    x1in = (x0 + 1 >= 0) & (x0 + 1 < W)
    y0in = (y0 >= 0) & (y0 < H)
    y1in = (y0 + 1 >= 0) & (y0 + 1 < H)
    q = y0 * W + x0
    i0 = tl.where(y0in & x0in, q, -1)
    i1 = tl.where(y0in & x1in, q + 1, -1)
    i2 = tl.where(y1in & x0in, q + W, -1)
    i3 = tl.where(y1in & x1in, q + W + 1, -1)
    return i0, i1, i2, i3, e * s, r * s, e * d, r * d, e, r, s, d


@triton.jit
def tap_values(base, i0, i1, i2, i3, pstride, mask, ACC: tl.constexpr):
    """The four tap values base[i * pstride] (0 outside or masked) in the accumulation dtype."""
    v0 = tl.load(base + i0 * pstride, mask=mask & (i0 >= 0), other=0.0).to(ACC)
    v1 = tl.load(base + i1 * pstride, mask=mask & (i1 >= 0), other=0.0).to(ACC)
    v2 = tl.load(base + i2 * pstride, mask=mask & (i2 >= 0), other=0.0).to(ACC)
    v3 = tl.load(base + i3 * pstride, mask=mask & (i3 >= 0), other=0.0).to(ACC)
    return v0, v1, v2, v3


@triton.jit
def gather_scatter(q, i0, i1, i2, i3, w0, w1, w2, w3, g):
    """For nodes q (BQ,) and pixels (BP,) with taps i_k, weights w_k and gradient g: the sum over pixels and
    taps that read node q of w_k g, a (BQ,) vector (a deterministic scatter: fixed-order tl.sum)."""
    qq = q[:, None]
    t = tl.where(i0[None, :] == qq, w0[None, :], 0.0) + tl.where(i1[None, :] == qq, w1[None, :], 0.0) \
        + tl.where(i2[None, :] == qq, w2[None, :], 0.0) + tl.where(i3[None, :] == qq, w3[None, :], 0.0)
    return tl.sum(t * g[None, :], axis=1)
