"""Triton kernels of the correlation op's backward, one layer per launch (the forward, the tap and tile
helpers and the notation are in correlation.py).

Backward (deterministic, no atomics), with G = grad block (S_t, S_s) of the layer (S_t = ht * wt target
positions, S_s = hs * ws source positions):
  dR_t = R_s G^T (C, S_t) and dR_s = R_t G (C, S_s): tiled like the forward, times the forward's scale as
        they are stored (so the map gradients and the grid's carry it), written to a float buffer;
  dgrid[n, s] = sum over layers and channels of dR_s[c, s] * d(sample)/d(pixel) * (W - 1) / 2 (resp. H):
        per-channel-block partials, then summed in a fixed order;
  dmap[c, q] = sum over the (position, tap) pairs that read q of w * dR[c, s]: the pairs are stably sorted
        by q and each element sums its segment in that order (a gather, as the warp's image gradient).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._field import tap_values
from .correlation import _dot, _dummy_tables, _grid_taps, _resize_tables, _taps, _tile, _types, blocks

BLOCK = 128


@triton.jit
def correlation_bwd_resampled_kernel(x_ptr, y_ptr, grid_ptr, gout_ptr, dr_ptr, part_ptr, xry, xrly, xrx, xrlx,
                                     C, Hx, Wx, Hy, Wy, K, KW, P, Ss, layer, layers, scale: tl.float64,
                                     X_GRID: tl.constexpr, WRT_SRC: tl.constexpr, NEED_GRID: tl.constexpr,
                                     ACC: tl.constexpr, DOT: tl.constexpr, IEEE: tl.constexpr, BC: tl.constexpr,
                                     BP: tl.constexpr, BK: tl.constexpr):
    """Program (c block, p block, n): dR_y[c, p] = scale * sum_k R_x[c, k] G'[k, p] for the map y whose gradient
    this is, x the other map (WRT_SRC: y = src, x = tgt, G' = G; else y = tgt, x = src, G' = G^T), over x's K
    positions (KW per row) and y's P positions; Ss, the source positions, is G's row length. With NEED_GRID
    (y = src sampled at the grid) it also writes this channel block's part of d L / d grid at positions p."""
    n = tl.program_id(2)
    chan = tl.program_id(0) * BC + tl.arange(0, BC)
    cm = chan < C
    p = tl.program_id(1) * BP + tl.arange(0, BP)
    pm = p < P
    plane_x = Hx * Wx
    x_n = x_ptr + n.to(tl.int64) * C * plane_x
    g_n = gout_ptr + (n.to(tl.int64) * layers + layer) * K * P
    acc = tl.zeros((BC, BP), dtype=ACC)
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        km = k < K
        xa = _taps(grid_ptr, xry, xrly, xrx, xrlx, n, k, km, K, KW, Hx, Wx, X_GRID, ACC)
        a = _tile(x_n, chan, cm, plane_x, xa[0], xa[1], xa[2], xa[3], xa[4], xa[5], xa[6], xa[7], km, ACC)
        if WRT_SRC:  # G[t = k, s = p]
            gp = g_n + k[:, None] * Ss + p[None, :]
        else:  # G^T[s = k, t = p] = G[p, k]
            gp = g_n + p[None, :] * Ss + k[:, None]
        g = tl.load(gp, mask=km[:, None] & pm[None, :], other=0.0).to(ACC)
        acc = _dot(a, g, acc, DOT, IEEE)
    acc = acc * tl.full((), scale, ACC)
    m = cm[:, None] & pm[None, :]
    tl.store(dr_ptr + (n.to(tl.int64) * C + chan[:, None]) * P + p[None, :], acc, mask=m)
    if NEED_GRID:
        # d sample / d px = (v1 - v0) s + (v3 - v2) d, d sample / d py = (v2 - v0) e + (v3 - v1) r (taps 0..3
        # = (y0, x0), (y0, x1), (y1, x0), (y1, x1); v = 0 outside), then d px / d gx = (W - 1) / 2
        i0, i1, i2, i3, _, _, _, _, e, r, s, d = _grid_taps(grid_ptr, n, p, pm, P, Hy, Wy, ACC)
        rows = y_ptr + (n.to(tl.int64) * C + chan[:, None]) * (Hy * Wy)
        v0, v1, v2, v3 = tap_values(rows, i0[None, :], i1[None, :], i2[None, :], i3[None, :], 1, m, ACC)
        ax = tl.sum(acc * ((v1 - v0) * s[None, :] + (v3 - v2) * d[None, :]), axis=0) * ((Wy - 1) / 2.0)
        ay = tl.sum(acc * ((v2 - v0) * e[None, :] + (v3 - v1) * r[None, :]), axis=0) * ((Hy - 1) / 2.0)
        out = part_ptr + ((n.to(tl.int64) * tl.num_programs(0) + tl.program_id(0)) * P + p) * 2
        tl.store(out, ax, mask=pm)
        tl.store(out + 1, ay, mask=pm)


@triton.jit
def correlation_tap_keys_kernel(grid_ptr, ry, rly, rx, rlx, keys_ptr, weights_ptr, S, OW, H, W,
                                GRID: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Program (position block, n): key (n * H * W + element read, or the past-the-end key for taps outside)
    and weight of each of the 4 taps of every position of the grid (S positions, OW per row); one sample
    (n = 0) for the resize."""
    n = tl.program_id(1)
    pos = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = pos < S
    o0, o1, o2, o3, w0, w1, w2, w3 = _taps(grid_ptr, ry, rly, rx, rlx, n, pos, mask, S, OW, H, W, GRID, ACC)
    plane = H * W
    none = tl.num_programs(1) * plane
    base = (n * S + pos).to(tl.int64) * 4
    key = n * plane
    tl.store(keys_ptr + base, tl.where(w0 != 0.0, key + o0, none), mask=mask)
    tl.store(keys_ptr + base + 1, tl.where(w1 != 0.0, key + o1, none), mask=mask)
    tl.store(keys_ptr + base + 2, tl.where(w2 != 0.0, key + o2, none), mask=mask)
    tl.store(keys_ptr + base + 3, tl.where(w3 != 0.0, key + o3, none), mask=mask)
    tl.store(weights_ptr + base, w0, mask=mask)
    tl.store(weights_ptr + base + 1, w1, mask=mask)
    tl.store(weights_ptr + base + 2, w2, mask=mask)
    tl.store(weights_ptr + base + 3, w3, mask=mask)


@triton.jit
def correlation_gather_kernel(dr_ptr, order_ptr, offsets_ptr, weights_ptr, dx_ptr, C, plane, S,
                              PER_SAMPLE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Program (element block, n * C + c): dx[n, c, q] = sum over q's sorted taps of weight * dR[n, c, s]."""
    q = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    row = tl.program_id(1)
    n = row // C
    mask = q < plane
    ks = n if PER_SAMPLE else 0  # the sample whose tap table holds the keys
    key = ks * plane + q
    start = tl.load(offsets_ptr + key, mask=mask, other=0)
    end = tl.load(offsets_ptr + key + 1, mask=mask, other=0)
    longest = tl.max(end - start, axis=0)
    dr_row = dr_ptr + row.to(tl.int64) * S
    acc = tl.zeros((BLOCK,), dtype=ACC)
    for j in range(0, longest):
        e = start + j
        ok = e < end
        entry = tl.load(order_ptr + e, mask=ok, other=0)
        s = entry // 4 - ks * S
        w = tl.load(weights_ptr + entry, mask=ok, other=0.0).to(ACC)
        g = tl.load(dr_row + s, mask=ok, other=0.0).to(ACC)
        acc += tl.where(ok, w * g, 0.0)
    tl.store(dx_ptr + row.to(tl.int64) * plane + q, acc.to(dx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------
# Launchers; inputs as in correlation.py's.

def _adjoint(dr, grid, tables, shape, out_size, acc, acc_t, dtype):
    """Map gradient (N, C, H, W) from dR (N, C, S) through the taps of the out_size grid (resize tables, or
    the grid)."""
    N, C, H, W = shape
    S, plane = out_size[0] * out_size[1], H * W
    nk = N if grid is not None else 1  # tap tables: one per sample for the grid, one for the resize
    if nk * plane >= 1 << 31 or nk * S * 4 >= 1 << 31:
        raise ValueError("pscfast.ops.correlation: maps too large for the Triton backward")
    keys = torch.empty(nk * S * 4, device=dr.device, dtype=torch.int32)
    weights = torch.empty(nk * S * 4, device=dr.device, dtype=acc_t)
    g = grid if grid is not None else dr
    correlation_tap_keys_kernel[(triton.cdiv(S, BLOCK), nk)](
        g, *tables, keys, weights, S, out_size[1], H, W, GRID=grid is not None, ACC=acc, BLOCK=BLOCK)
    sorted_keys, order = torch.sort(keys, stable=True)
    offsets = torch.searchsorted(sorted_keys, torch.arange(nk * plane + 1, device=dr.device, dtype=torch.int32))
    dx = torch.empty(shape, device=dr.device, dtype=dtype)
    correlation_gather_kernel[(triton.cdiv(plane, BLOCK), N * C)](
        dr, order, offsets, weights, dx, C, plane, S, PER_SAMPLE=grid is not None, ACC=acc, BLOCK=BLOCK)
    return dx


def correlation_backward(grad_out, src, tgt, grid, size, target_size, scale, output_mask):
    """(dsrc, dtgt, dgrid) as pscfast::_correlation_backward returns them: a list of per-layer gradients for
    src and for tgt, empty when masked, and dgrid, None when masked or without a grid; grad_out
    (N, L * ht * wt, hs, ws) contiguous."""
    need_src, need_tgt, need_grid = output_mask
    N, L = src[0].shape[0], len(src)
    (hs, ws), (ht, wt) = size, target_size
    Ss, St = hs * ws, ht * wt
    dtype, device = src[0].dtype, src[0].device
    acc, acc_t, dot, ieee = _types(dtype)
    need_grid = need_grid and grid is not None
    dsrc, dtgt, parts = [], [], []
    g = grid if grid is not None else src[0]
    BT, BS, BC = blocks(dtype)
    for layer, (s, t) in enumerate(zip(src, tgt)):
        C, Hs, Ws = s.shape[1:]
        Ht, Wt = t.shape[2:]
        st = _dummy_tables(acc_t, device) if grid is not None else _resize_tables(Hs, Ws, size, acc_t, device)
        tt = _resize_tables(Ht, Wt, target_size, acc_t, device)
        flags = dict(ACC=acc, DOT=dot, IEEE=ieee, BC=BC, BP=BS, BK=BT)
        if need_tgt:  # x = src (resized or sampled), y = tgt
            dr = torch.empty((N, C, St), device=device, dtype=acc_t)
            correlation_bwd_resampled_kernel[(triton.cdiv(C, BC), triton.cdiv(St, BS), N)](
                s, t, g, grad_out, dr, dr, *st, C, Hs, Ws, Ht, Wt, Ss, ws, St, Ss, layer, L, float(scale),
                X_GRID=grid is not None,
                WRT_SRC=False, NEED_GRID=False, **flags)
            dtgt.append(_adjoint(dr, None, tt, t.shape, target_size, acc, acc_t, dtype))
        if need_src or need_grid:  # x = tgt (resized), y = src
            dr = torch.empty((N, C, Ss), device=device, dtype=acc_t)
            launch = (triton.cdiv(C, BC), triton.cdiv(Ss, BS), N)
            part = torch.empty((N, launch[0], Ss, 2), device=device, dtype=acc_t) if need_grid else dr
            correlation_bwd_resampled_kernel[launch](
                t, s, g, grad_out, dr, part, *tt, C, Ht, Wt, Hs, Ws, St, wt, Ss, Ss, layer, L, float(scale),
                X_GRID=False, WRT_SRC=True, NEED_GRID=need_grid, **flags)
            if need_src:
                dsrc.append(_adjoint(dr, grid, st, s.shape, size, acc, acc_t, dtype))
            if need_grid:
                parts.append(part.sum(1))
    dgrid = None
    if need_grid:
        dgrid = parts[0]
        for p in parts[1:]:
            dgrid = dgrid + p
        dgrid = dgrid.view(N, hs, ws, 2).to(dtype)
    return dsrc, dtgt, dgrid
