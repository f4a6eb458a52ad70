"""Triton kernels of the warp op: sample x (N, C, H, W) at a grid (N, h, w, 2) resized on the fly to (Ho, Wo).

Conventions as grid_sample (see pscfast.ops._reference.warp). Accumulation in float32 (float64 for float64).
Backward, deterministic (no atomics):
  grid: d L / d g = sum_c gout_c * d sample_c / d p * dp/dg per output pixel; with a resized grid each
        program reduces one cell of the low-resolution grid onto its four corners (fixed-order tl.sum) and
        the corners around each node are added in a fixed order afterwards;
  x:    the (pixel, tap) pairs are stably sorted by the image element they read, and each image element sums
        gout * weight over its segment in that order.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._field import accumulation, clamp_pixel, field_taps, grid_to_pixel, resize_taps, tap_values
from ._tables import cell_starts, lerp_table

BLOCK = 128


@triton.jit
def _grid_point(grid_ptr, ry_ptr, rly_ptr, rx_ptr, rlx_ptr, n, oy, ox, h, w, mask, DIRECT: tl.constexpr,
                ACC: tl.constexpr):
    """Grid point (gx, gy) of output pixels (oy, ox), bilinearly resized (align_corners=True) unless DIRECT."""
    base = grid_ptr + n.to(tl.int64) * h * w * 2
    if DIRECT:
        off = (oy * w + ox) * 2
        gx = tl.load(base + off, mask=mask, other=0.0).to(ACC)
        gy = tl.load(base + off + 1, mask=mask, other=0.0).to(ACC)
    else:
        y0, y1, x0, x1, ly1, lx1 = resize_taps(ry_ptr, rly_ptr, rx_ptr, rlx_ptr, oy, ox, mask, ACC)
        ly0 = 1.0 - ly1
        lx0 = 1.0 - lx1
        o00 = (y0 * w + x0) * 2
        o01 = (y0 * w + x1) * 2
        o10 = (y1 * w + x0) * 2
        o11 = (y1 * w + x1) * 2
        gx = ly0 * (lx0 * tl.load(base + o00, mask=mask, other=0.0).to(ACC)
                    + lx1 * tl.load(base + o01, mask=mask, other=0.0).to(ACC)) \
            + ly1 * (lx0 * tl.load(base + o10, mask=mask, other=0.0).to(ACC)
                     + lx1 * tl.load(base + o11, mask=mask, other=0.0).to(ACC))
        gy = ly0 * (lx0 * tl.load(base + o00 + 1, mask=mask, other=0.0).to(ACC)
                    + lx1 * tl.load(base + o01 + 1, mask=mask, other=0.0).to(ACC)) \
            + ly1 * (lx0 * tl.load(base + o10 + 1, mask=mask, other=0.0).to(ACC)
                     + lx1 * tl.load(base + o11 + 1, mask=mask, other=0.0).to(ACC))
    return gx, gy


@triton.jit
def _to_pixel(g, size, ALIGN: tl.constexpr, BORDER: tl.constexpr):
    """Pixel coordinate and d(pixel)/d(grid) (0 where the border clips), as grid_sample."""
    p = grid_to_pixel(g, size, ALIGN)
    if ALIGN:
        d = tl.zeros_like(g) + (size - 1) / 2.0
    else:
        d = tl.zeros_like(g) + size / 2.0
    if BORDER:
        hi = (size - 1) * 1.0
        clipped = (p <= 0.0) | (p >= hi)
        p = tl.minimum(tl.maximum(p, 0.0), hi)
        d = tl.where(clipped, 0.0, d)
    else:
        p = clamp_pixel(p, size)
    return p, d


@triton.jit
def _pixel(grid_ptr, ry_ptr, rly_ptr, rx_ptr, rlx_ptr, n, pix, mask, h, w, H, W, Wo,
           DIRECT: tl.constexpr, ALIGN: tl.constexpr, BORDER: tl.constexpr, ACC: tl.constexpr):
    oy = pix // Wo
    ox = pix % Wo
    gx, gy = _grid_point(grid_ptr, ry_ptr, rly_ptr, rx_ptr, rlx_ptr, n, oy, ox, h, w, mask, DIRECT, ACC)
    px, dpx = _to_pixel(gx, W, ALIGN, BORDER)
    py, dpy = _to_pixel(gy, H, ALIGN, BORDER)
    return px, py, dpx, dpy


@triton.jit
def warp_fwd_kernel(x_ptr, grid_ptr, ry_ptr, rly_ptr, rx_ptr, rlx_ptr, out_ptr, C, H, W, h, w, Ho, Wo,
                    NEAREST: tl.constexpr, BORDER: tl.constexpr, ALIGN: tl.constexpr, DIRECT: tl.constexpr,
                    ACC: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(1)
    pix = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = pix < Ho * Wo
    px, py, _, _ = _pixel(grid_ptr, ry_ptr, rly_ptr, rx_ptr, rlx_ptr, n, pix, mask, h, w, H, W, Wo,
                          DIRECT, ALIGN, BORDER, ACC)
    plane = H * W
    i0, i1, i2, i3, w0, w1, w2, w3, _, _, _, _ = field_taps(px, py, H, W, NEAREST)
    for c in range(C):
        nc = n.to(tl.int64) * C + c  # int64: a sample may hold 2^31 elements or more
        x_c = x_ptr + nc * plane
        if NEAREST:
            out = tl.load(x_c + i0, mask=mask & (i0 >= 0), other=0.0)
        else:
            v0, v1, v2, v3 = tap_values(x_c, i0, i1, i2, i3, 1, mask, ACC)
            out = w0 * v0 + w1 * v1 + w2 * v2 + w3 * v3
        tl.store(out_ptr + nc * Ho * Wo + pix, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pixel_grid_grad(x_ptr, gout_ptr, grid_ptr, ry_ptr, rly_ptr, rx_ptr, rlx_ptr, n, pix, mask, C, H, W, h, w,
                     Ho, Wo, DIRECT: tl.constexpr, ALIGN: tl.constexpr, BORDER: tl.constexpr, ACC: tl.constexpr):
    """d L / d (gx, gy) of output pixels `pix`, summed over channels (bilinear mode)."""
    px, py, dpx, dpy = _pixel(grid_ptr, ry_ptr, rly_ptr, rx_ptr, rlx_ptr, n, pix, mask, h, w, H, W, Wo,
                              DIRECT, ALIGN, BORDER, ACC)
    i0, i1, i2, i3, _, _, _, _, e, r, s, d = field_taps(px, py, H, W, False)
    plane = H * W
    ax = tl.zeros_like(px)
    ay = tl.zeros_like(px)
    for c in range(C):
        nc = n.to(tl.int64) * C + c  # int64: a sample may hold 2^31 elements or more
        v0, v1, v2, v3 = tap_values(x_ptr + nc * plane, i0, i1, i2, i3, 1, mask, ACC)
        g = tl.load(gout_ptr + nc * Ho * Wo + pix, mask=mask, other=0.0).to(ACC)
        ax += g * (-v0 * s + v1 * s - v2 * d + v3 * d)
        ay += g * (-v0 * e - v1 * r + v2 * e + v3 * r)
    return ax * dpx, ay * dpy


@triton.jit
def warp_bwd_grid_kernel(x_ptr, gout_ptr, grid_ptr, ry_ptr, rly_ptr, rx_ptr, rlx_ptr, dgrid_ptr, C, H, W, h, w,
                         Ho, Wo, BORDER: tl.constexpr, ALIGN: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Grid already at the output size: each pixel owns its grid point."""
    n = tl.program_id(1)
    pix = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = pix < Ho * Wo
    gx, gy = _pixel_grid_grad(x_ptr, gout_ptr, grid_ptr, ry_ptr, rly_ptr, rx_ptr, rlx_ptr, n, pix, mask, C, H, W,
                              h, w, Ho, Wo, True, ALIGN, BORDER, ACC)
    out = dgrid_ptr + (n.to(tl.int64) * Ho * Wo + pix) * 2
    tl.store(out, gx.to(dgrid_ptr.dtype.element_ty), mask=mask)
    tl.store(out + 1, gy.to(dgrid_ptr.dtype.element_ty), mask=mask)


@triton.jit
def warp_bwd_grid_cells_kernel(x_ptr, gout_ptr, grid_ptr, ry_ptr, rly_ptr, rx_ptr, rlx_ptr, row_start_ptr,
                               col_start_ptr, partial_ptr, C, H, W, h, w, Ho, Wo, BORDER: tl.constexpr,
                               ALIGN: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Program (cell, n): the pixels of cell (a, b) reduced onto its four corners -> partial[n, a, b, 4, 2]."""
    cell = tl.program_id(0)
    n = tl.program_id(1)
    a = cell // w
    b = cell % w
    y0 = tl.load(row_start_ptr + a)
    y1 = tl.load(row_start_ptr + a + 1)
    x0 = tl.load(col_start_ptr + b)
    x1 = tl.load(col_start_ptr + b + 1)
    cols = x1 - x0
    count = (y1 - y0) * cols
    acc = tl.zeros((BLOCK, 8), dtype=ACC)
    corner = tl.arange(0, 8)
    for start in range(0, count, BLOCK):
        i = start + tl.arange(0, BLOCK)
        mask = i < count
        oy = y0 + i // tl.maximum(cols, 1)
        ox = x0 + i % tl.maximum(cols, 1)
        pix = oy * Wo + ox
        gx, gy = _pixel_grid_grad(x_ptr, gout_ptr, grid_ptr, ry_ptr, rly_ptr, rx_ptr, rlx_ptr, n, pix, mask, C, H,
                                  W, h, w, Ho, Wo, False, ALIGN, BORDER, ACC)
        # corner weights; the second corner folds into the first in the last row/column (i1 == i0)
        iy0, iy1, ix0, ix1, ly1, lx1 = resize_taps(ry_ptr, rly_ptr, rx_ptr, rlx_ptr, oy, ox, mask, ACC)
        wy0 = tl.where(iy1 == iy0, 1.0, 1.0 - ly1)
        wy1 = tl.where(iy1 == iy0, 0.0, ly1)
        wx0 = tl.where(ix1 == ix0, 1.0, 1.0 - lx1)
        wx1 = tl.where(ix1 == ix0, 0.0, lx1)
        k = corner[None, :] // 2  # corner index 0..3
        is_x = (corner[None, :] % 2) == 0
        wy = tl.where(k >= 2, wy1[:, None], wy0[:, None])
        wxx = tl.where((k % 2) == 1, wx1[:, None], wx0[:, None])
        val = tl.where(is_x, gx[:, None], gy[:, None])
        acc += tl.where(mask[:, None], wy * wxx * val, 0.0)
    total = tl.sum(acc, axis=0)
    tl.store(partial_ptr + ((n.to(tl.int64) * h + a) * w + b) * 8 + corner, total)


@triton.jit
def warp_tap_keys_kernel(grid_ptr, ry_ptr, rly_ptr, rx_ptr, rlx_ptr, keys_ptr, weights_ptr, n0, ns, H, W, h, w,
                         Ho, Wo, NEAREST: tl.constexpr, BORDER: tl.constexpr, ALIGN: tl.constexpr,
                         DIRECT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Key (local sample * H * W + image element, or ns * H * W when outside) and weight of every tap."""
    nl = tl.program_id(1)
    pix = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = pix < Ho * Wo
    px, py, _, _ = _pixel(grid_ptr, ry_ptr, rly_ptr, rx_ptr, rlx_ptr, n0 + nl, pix, mask, h, w, H, W, Wo,
                          DIRECT, ALIGN, BORDER, ACC)
    plane = H * W
    none = ns * plane
    base = (nl * Ho * Wo + pix).to(tl.int64)
    i0, i1, i2, i3, w0, w1, w2, w3, _, _, _, _ = field_taps(px, py, H, W, NEAREST)
    key = nl * plane
    if NEAREST:
        tl.store(keys_ptr + base, tl.where(i0 >= 0, key + i0, none), mask=mask)
        tl.store(weights_ptr + base, w0, mask=mask)
    else:
        tl.store(keys_ptr + base * 4, tl.where(i0 >= 0, key + i0, none), mask=mask)
        tl.store(keys_ptr + base * 4 + 1, tl.where(i1 >= 0, key + i1, none), mask=mask)
        tl.store(keys_ptr + base * 4 + 2, tl.where(i2 >= 0, key + i2, none), mask=mask)
        tl.store(keys_ptr + base * 4 + 3, tl.where(i3 >= 0, key + i3, none), mask=mask)
        tl.store(weights_ptr + base * 4, w0, mask=mask)
        tl.store(weights_ptr + base * 4 + 1, w1, mask=mask)
        tl.store(weights_ptr + base * 4 + 2, w2, mask=mask)
        tl.store(weights_ptr + base * 4 + 3, w3, mask=mask)


@triton.jit
def warp_bwd_x_gather_kernel(gout_ptr, order_ptr, offsets_ptr, weights_ptr, dx_ptr, n0, C, plane, Ho, Wo,
                             TAPS: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Program (element block, nl * C + c): dx[n0 + nl, c, q] = sum over q's sorted taps of weight * gout."""
    q = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    row = tl.program_id(1)
    nl = row // C
    c = row % C
    mask = q < plane
    key = nl * plane + q
    start = tl.load(offsets_ptr + key, mask=mask, other=0)
    end = tl.load(offsets_ptr + key + 1, mask=mask, other=0)
    longest = tl.max(end - start, axis=0)
    pixels = Ho * Wo
    g_row = gout_ptr + ((n0 + nl).to(tl.int64) * C + c) * pixels
    acc = tl.zeros((BLOCK,), dtype=ACC)
    for j in range(0, longest):
        e = start + j
        ok = e < end
        entry = tl.load(order_ptr + e, mask=ok, other=0)
        pix = entry // TAPS - nl * pixels
        wgt = tl.load(weights_ptr + entry, mask=ok, other=0.0).to(ACC)
        g = tl.load(g_row + pix, mask=ok, other=0.0).to(ACC)
        acc += tl.where(ok, wgt * g, 0.0)
    tl.store(dx_ptr + ((n0 + nl).to(tl.int64) * C + c) * plane + q, acc.to(dx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------
# Launchers, in the argument order of the pscfast::warp schemas. Inputs: contiguous x (N, C, H, W) and grid
# (N, h, w, 2) of one dtype.

def _tables(h, w, Ho, Wo, dtype, device):
    ry, rly = lerp_table(h, Ho, True, dtype, device)
    rx, rlx = lerp_table(w, Wo, True, dtype, device)
    return ry, rly, rx, rlx


def warp(x, grid, out_size, mode, padding_mode, align_corners):
    N, C, H, W = x.shape
    h, w = grid.shape[1:3]
    Ho, Wo = out_size
    out = torch.empty((N, C, Ho, Wo), device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    acc, acc_t = accumulation(x.dtype)
    tables = _tables(h, w, Ho, Wo, acc_t, x.device)
    warp_fwd_kernel[(triton.cdiv(Ho * Wo, BLOCK), N)](
        x, grid, *tables, out, C, H, W, h, w, Ho, Wo, NEAREST=mode == "nearest", BORDER=padding_mode == "border",
        ALIGN=align_corners, DIRECT=(h, w) == (Ho, Wo), ACC=acc, BLOCK=BLOCK)
    return out


def warp_backward(grad_out, x, grid, mode, padding_mode, align_corners, output_mask):
    """(d x, d grid) for a contiguous grad_out (N, C, Ho, Wo), each None unless output_mask asks for it; x, read
    only for the grid's, may have any strides."""
    dx = _image_gradient(grad_out, grid, x.shape, mode, padding_mode, align_corners) if output_mask[0] else None
    dgrid = None
    if output_mask[1]:
        dgrid = _grid_gradient(grad_out, x.contiguous(), grid, mode, padding_mode, align_corners)
    return dx, dgrid


def _grid_gradient(gout, x, grid, mode, padding_mode, align_corners):
    N, C, H, W = x.shape
    h, w = grid.shape[1:3]
    Ho, Wo = gout.shape[2:]
    if mode == "nearest" or N == 0:  # nearest sampling has no grid gradient
        return torch.zeros_like(grid)
    acc, acc_t = accumulation(x.dtype)
    ry, rly, rx, rlx = _tables(h, w, Ho, Wo, acc_t, x.device)
    flags = dict(BORDER=padding_mode == "border", ALIGN=align_corners, ACC=acc, BLOCK=BLOCK)
    if (h, w) == (Ho, Wo):
        dgrid = torch.empty_like(grid)
        warp_bwd_grid_kernel[(triton.cdiv(Ho * Wo, BLOCK), N)](
            x, gout, grid, ry, rly, rx, rlx, dgrid, C, H, W, h, w, Ho, Wo, **flags)
        return dgrid
    partial = torch.empty((N, h, w, 4, 2), device=x.device, dtype=acc_t)
    warp_bwd_grid_cells_kernel[(h * w, N)](
        x, gout, grid, ry, rly, rx, rlx, cell_starts(ry, h), cell_starts(rx, w), partial, C, H, W, h, w, Ho, Wo,
        **flags)
    # node (i, j) = corner 0 of cell (i, j) + corner 1 of (i, j-1) + corner 2 of (i-1, j) + corner 3 of (i-1, j-1)
    dgrid = partial[:, :, :, 0].clone()
    dgrid[:, :, 1:] += partial[:, :, :-1, 1]
    dgrid[:, 1:, :] += partial[:, :-1, :, 2]
    dgrid[:, 1:, 1:] += partial[:, :-1, :-1, 3]
    return dgrid.to(grid.dtype)


def _image_gradient(gout, grid, x_size, mode, padding_mode, align_corners):
    N, C, H, W = x_size
    h, w = grid.shape[1:3]
    Ho, Wo = gout.shape[2:]
    dx = torch.zeros(x_size, device=gout.device, dtype=gout.dtype)
    if dx.numel() == 0 or Ho * Wo == 0:
        return dx
    acc, acc_t = accumulation(gout.dtype)
    tables = _tables(h, w, Ho, Wo, acc_t, gout.device)
    taps = 1 if mode == "nearest" else 4
    plane, pixels = H * W, Ho * Wo
    per_sample = max(pixels * taps, plane + 1)
    chunk = max(1, min(N, (1 << 24) // per_sample))
    if chunk * per_sample >= 1 << 31:
        raise ValueError("pscfast.ops.warp: one sample is too large for the Triton image gradient")
    for n0 in range(0, N, chunk):
        ns = min(chunk, N - n0)
        keys = torch.empty(ns * pixels * taps, device=gout.device, dtype=torch.int32)
        weights = torch.empty(ns * pixels * taps, device=gout.device, dtype=acc_t)
        warp_tap_keys_kernel[(triton.cdiv(pixels, BLOCK), ns)](
            grid, *tables, keys, weights, n0, ns, H, W, h, w, Ho, Wo, NEAREST=mode == "nearest",
            BORDER=padding_mode == "border", ALIGN=align_corners, DIRECT=(h, w) == (Ho, Wo), ACC=acc, BLOCK=BLOCK)
        sorted_keys, order = torch.sort(keys, stable=True)
        bounds = torch.arange(ns * plane + 1, device=gout.device, dtype=torch.int32)
        offsets = torch.searchsorted(sorted_keys, bounds)
        warp_bwd_x_gather_kernel[(triton.cdiv(plane, BLOCK), ns * C)](
            gout, order, offsets, weights, dx, n0, C, plane, Ho, Wo, TAPS=taps, ACC=acc, BLOCK=BLOCK)
    return dx
