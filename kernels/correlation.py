"""Triton kernels of the correlation op (PSC's global multi-layer correlation), one layer per launch.

Per sample n and layer l, with R_t (C, S_t) the tgt map resized to the ht x wt target grid (bilinear,
align_corners=False) and R_s (C, S_s) the src map resized to the hs x ws source grid or sampled at the grid
(bilinear, zeros, align_corners=True): out[n, l S_t + t, s] = scale * sum_c R_t[c, t] R_s[c, s]. Both resamplings
are 4-tap linear maps (_taps); the kernels apply them while loading tiles, so R_t and R_s never reach global
memory.
Accumulation in float32 (float64 for float64); float32 dot products in IEEE precision (no TF32). The scale
(RAFT's 1 / sqrt(C)) multiplies the accumulator as it is stored: it arrives as a float64 argument (a Python
float would be float32), so a float64 correlation takes it unrounded.
The backward is in correlation_backward.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import INTERPRET
from ._field import clamp_pixel, field_taps, grid_to_pixel, resize_taps
from ._tables import lerp_table


def blocks(dtype: torch.dtype) -> tuple[int, int, int]:
    """(tgt positions, src positions, channels) per tile. The interpreter runs each program in numpy, so fewer,
    larger programs are much faster there; on a GPU those would need 1.1 MB of shared memory, and float64
    tiles of 64 x 64 need 272 KiB where an H100 block may use 227 KiB (tests/triton_aot.py measures this)."""
    if INTERPRET:
        return 256, 256, 32
    return (32, 32, 32) if dtype == torch.float64 else (64, 64, 32)


@triton.jit
def _grid_taps(grid_ptr, n, pos, mask, S, H, W, ACC: tl.constexpr):
    """field_taps of positions `pos` of the S-position grid sampling an H x W plane (align_corners=True)."""
    base = grid_ptr + n.to(tl.int64) * S * 2 + pos * 2
    gx = tl.load(base, mask=mask, other=0.0).to(ACC)
    gy = tl.load(base + 1, mask=mask, other=0.0).to(ACC)
    return field_taps(clamp_pixel(grid_to_pixel(gx, W, True), W), clamp_pixel(grid_to_pixel(gy, H, True), H), H, W,
                      False)


@triton.jit
def _taps(grid_ptr, ry_ptr, rly_ptr, rx_ptr, rlx_ptr, n, pos, mask, S, OW, H, W, GRID: tl.constexpr,
          ACC: tl.constexpr):
    """Offsets (into an H x W plane; 0 for taps outside) and weights (0 outside) of the four taps of
    positions `pos` of a grid of S positions, OW per row: the resize (lerp tables) or the grid sample."""
    if GRID:
        i0, i1, i2, i3, w0, w1, w2, w3, _, _, _, _ = _grid_taps(grid_ptr, n, pos, mask, S, H, W, ACC)
        o0 = tl.maximum(i0, 0)
        o1 = tl.maximum(i1, 0)
        o2 = tl.maximum(i2, 0)
        o3 = tl.maximum(i3, 0)
        w0 = tl.where(i0 >= 0, w0, 0.0)
        w1 = tl.where(i1 >= 0, w1, 0.0)
        w2 = tl.where(i2 >= 0, w2, 0.0)
        w3 = tl.where(i3 >= 0, w3, 0.0)
    else:
        oy = pos // OW
        ox = pos % OW
        y0, y1, x0, x1, ly1, lx1 = resize_taps(ry_ptr, rly_ptr, rx_ptr, rlx_ptr, oy, ox, mask, ACC)
        ly0 = 1.0 - ly1
        lx0 = 1.0 - lx1
        o0 = y0 * W + x0
        o1 = y0 * W + x1
        o2 = y1 * W + x0
        o3 = y1 * W + x1
        w0 = ly0 * lx0
        w1 = ly0 * lx1
        w2 = ly1 * lx0
        w3 = ly1 * lx1
    return o0, o1, o2, o3, w0, w1, w2, w3


@triton.jit
def _tile(x_n, chan, cmask, plane, o0, o1, o2, o3, w0, w1, w2, w3, pmask, ACC: tl.constexpr):
    """(BC, BP) tile of the resampled map: channels `chan` x positions with taps (o, w)."""
    rows = x_n + chan[:, None].to(tl.int64) * plane
    m = cmask[:, None] & pmask[None, :]
    v = w0[None, :] * tl.load(rows + o0[None, :], mask=m, other=0.0).to(ACC)
    v += w1[None, :] * tl.load(rows + o1[None, :], mask=m, other=0.0).to(ACC)
    v += w2[None, :] * tl.load(rows + o2[None, :], mask=m, other=0.0).to(ACC)
    v += w3[None, :] * tl.load(rows + o3[None, :], mask=m, other=0.0).to(ACC)
    return v


@triton.jit
def _dot(a, b, acc, DOT: tl.constexpr, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a.to(DOT), b.to(DOT), acc, input_precision="ieee", out_dtype=acc.dtype)
    return tl.dot(a.to(DOT), b.to(DOT), acc, out_dtype=acc.dtype)


@triton.jit
def correlation_fwd_kernel(src_ptr, tgt_ptr, grid_ptr, out_ptr, sry, srly, srx, srlx, try_, trly, trx, trlx,
                           C, Hs, Ws, Ht, Wt, St, tw, Ss, sw, layer, layers, scale: tl.float64, GRID: tl.constexpr,
                           ACC: tl.constexpr, DOT: tl.constexpr, IEEE: tl.constexpr, BT: tl.constexpr,
                           BS: tl.constexpr, BC: tl.constexpr):
    """Program (t block, s block, n): out[n, layer S_t + t, s] for its tile of tgt x src positions (St = ht * wt
    target positions, tw per row; Ss = hs * ws source positions, sw per row), times scale."""
    n = tl.program_id(2)
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    s = tl.program_id(1) * BS + tl.arange(0, BS)
    tm = t < St
    sm = s < Ss
    ta = _taps(grid_ptr, try_, trly, trx, trlx, n, t, tm, St, tw, Ht, Wt, False, ACC)
    sa = _taps(grid_ptr, sry, srly, srx, srlx, n, s, sm, Ss, sw, Hs, Ws, GRID, ACC)
    pt = Ht * Wt
    ps = Hs * Ws
    tgt_n = tgt_ptr + n.to(tl.int64) * C * pt
    src_n = src_ptr + n.to(tl.int64) * C * ps
    acc = tl.zeros((BT, BS), dtype=ACC)
    for c0 in range(0, C, BC):
        chan = c0 + tl.arange(0, BC)
        cm = chan < C
        a = _tile(tgt_n, chan, cm, pt, ta[0], ta[1], ta[2], ta[3], ta[4], ta[5], ta[6], ta[7], tm, ACC)
        b = _tile(src_n, chan, cm, ps, sa[0], sa[1], sa[2], sa[3], sa[4], sa[5], sa[6], sa[7], sm, ACC)
        acc = _dot(tl.trans(a), b, acc, DOT, IEEE)
    acc = acc * tl.full((), scale, ACC)
    rows = (n.to(tl.int64) * layers + layer) * St + t
    ptr = out_ptr + rows[:, None] * Ss + s[None, :]
    tl.store(ptr, acc.to(out_ptr.dtype.element_ty), mask=tm[:, None] & sm[None, :])


# ----------------------------------------------------------------------------------------------------------
# Launchers. Inputs: lists of contiguous (N, C_l, H_l, W_l) maps and an optional contiguous grid
# (N, hs, ws, 2), all of one dtype; size = (hs, ws) and target_size = (ht, wt).

def _types(dtype: torch.dtype):
    """(accumulation tl type, its torch dtype, dot operand type, IEEE fp32 dot)."""
    if dtype == torch.float64:
        return tl.float64, torch.float64, tl.float64, True
    if dtype in (torch.float16, torch.bfloat16):
        return tl.float32, torch.float32, tl.float16 if dtype == torch.float16 else tl.bfloat16, False
    return tl.float32, torch.float32, tl.float32, True


def _resize_tables(H, W, out_size, acc_t, device):
    ry, rly = lerp_table(H, out_size[0], False, acc_t, device)
    rx, rlx = lerp_table(W, out_size[1], False, acc_t, device)
    return ry, rly, rx, rlx


def _dummy_tables(acc_t, device):
    i = torch.zeros(2, dtype=torch.int32, device=device)
    f = torch.zeros(1, dtype=acc_t, device=device)
    return i, f, i, f


def correlation(src, tgt, grid, size, target_size, scale=1.0):
    N, L = src[0].shape[0], len(src)
    (hs, ws), (ht, wt) = size, target_size
    out = torch.empty((N, L * ht * wt, hs, ws), device=src[0].device, dtype=src[0].dtype)
    if out.numel() == 0:
        return out
    acc, acc_t, dot, ieee = _types(src[0].dtype)
    g = grid if grid is not None else src[0]
    BT, BS, BC = blocks(src[0].dtype)
    for layer, (s, t) in enumerate(zip(src, tgt)):
        C, Hs, Ws = s.shape[1:]
        Ht, Wt = t.shape[2:]
        st = _dummy_tables(acc_t, s.device) if grid is not None else _resize_tables(Hs, Ws, size, acc_t, s.device)
        tt = _resize_tables(Ht, Wt, target_size, acc_t, s.device)
        correlation_fwd_kernel[(triton.cdiv(ht * wt, BT), triton.cdiv(hs * ws, BS), N)](
            s, t, g, out, *st, *tt, C, Hs, Ws, Ht, Wt, ht * wt, wt, hs * ws, ws, layer, L, float(scale),
            GRID=grid is not None,
            ACC=acc, DOT=dot, IEEE=ieee, BT=BT, BS=BS, BC=BC)
    return out
