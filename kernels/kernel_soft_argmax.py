"""Triton kernels of the kernel_soft_argmax op (SFNet eq. 2-3; conventions:
pscfast.ops._reference.kernel_soft_argmax and csrc/ops/common/kernel_soft_argmax_math.h).

One program per (n, block of source positions) streams the correlation in blocks of target rows:
pass 1 sums of squares and the first argmax, pass 2 the maximum of k n and its position p, pass 3 the
softmax sum (exp(beta (k n - max)), the difference formed before the scaling by beta, as SFNet) and the
expected offset from p (the backward's q - x is formed as (q - p) - offset: exact where m is close to 1;
csrc/ops/common/kernel_soft_argmax_math.h). The backward recomputes these, then pass 4 the dot product
<n, nb> and pass 5 writes d L / d corr once per element (no atomics: deterministic). Accumulation in float32
(float64 for float64).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._field import accumulation

BLOCK_T = 32
BLOCK_S = 32
# constexprs: compiled kernels read no other globals
NORM_EPS = tl.constexpr(1e-12)  # F.normalize's eps: r = max(||c||, eps)
SFNET_EPS = tl.constexpr(1e-6)  # SFNet's L2normalize: r = sqrt(||c||^2 + eps)
NORMALIZE = {"l2": 0, "sfnet": 1, "none": 2}  # the NORM constexpr of the kernels


@triton.jit
def _stats(c_ptr, base, s, smask, T, S, Wt, beta, inv2s2, NORM: tl.constexpr, BT: tl.constexpr, BS: tl.constexpr,
           ACC: tl.constexpr):
    """Divisor r and whether the backward projects, argmax (bx, by), max of k n and its position (zx, zy),
    softmax sum, expected offset (dx, dy) from (zx, zy) in cells, per source s."""
    qs = tl.arange(0, BT)
    sq = tl.zeros([BS], dtype=ACC)
    best = tl.full([BS], float("-inf"), dtype=ACC)
    arg = tl.zeros([BS], dtype=tl.int32)
    for q0 in range(0, T, BT):
        q = q0 + qs
        m = (q[:, None] < T) & smask[None, :]
        v = tl.load(c_ptr + base + q[:, None].to(tl.int64) * S + s[None, :], mask=m, other=0.0).to(ACC)
        sq += tl.sum(v * v, axis=0)
        v = tl.where(m, v, float("-inf"))
        cmax = tl.max(v, axis=0)
        carg = tl.argmax(v, axis=0, tie_break_left=True).to(tl.int32) + q0
        better = cmax > best
        arg = tl.where(better, carg, arg)
        best = tl.where(better, cmax, best)
    if NORM == 0:
        norm = tl.sqrt(sq)
        project = norm > NORM_EPS
        r = tl.where(project, norm, NORM_EPS)
    elif NORM == 1:
        r = tl.sqrt(sq + SFNET_EPS)
        project = tl.full([BS], 1, dtype=tl.int1)
    else:
        r = tl.full([BS], 1.0, dtype=ACC)
        project = tl.full([BS], 0, dtype=tl.int1)
    bx = (arg % Wt).to(ACC)
    by = (arg // Wt).to(ACC)
    zmax = tl.full([BS], float("-inf"), dtype=ACC)
    zarg = tl.zeros([BS], dtype=tl.int32)
    for q0 in range(0, T, BT):
        q = q0 + qs
        m = (q[:, None] < T) & smask[None, :]
        z = tl.where(m, _kernel_n(c_ptr, base, q, s, m, S, Wt, r, bx, by, inv2s2, ACC), float("-inf"))
        cmax = tl.max(z, axis=0)
        carg = tl.argmax(z, axis=0, tie_break_left=True).to(tl.int32) + q0
        better = cmax > zmax
        zarg = tl.where(better, carg, zarg)
        zmax = tl.where(better, cmax, zmax)
    zx = zarg % Wt
    zy = zarg // Wt
    tot = tl.zeros([BS], dtype=ACC)
    sx = tl.zeros([BS], dtype=ACC)
    sy = tl.zeros([BS], dtype=ACC)
    for q0 in range(0, T, BT):
        q = q0 + qs
        m = (q[:, None] < T) & smask[None, :]
        z = _kernel_n(c_ptr, base, q, s, m, S, Wt, r, bx, by, inv2s2, ACC)
        e = tl.where(m, tl.exp(beta * (z - zmax[None, :])), 0.0)
        tot += tl.sum(e, axis=0)
        sx += tl.sum(e * ((q % Wt)[:, None] - zx[None, :]).to(ACC), axis=0)
        sy += tl.sum(e * ((q // Wt)[:, None] - zy[None, :]).to(ACC), axis=0)
    tot = tl.where(smask, tot, 1.0)
    zmax = tl.where(smask, zmax, 0.0)
    return r, project, bx, by, zmax, zx, zy, tot, sx / tot, sy / tot


@triton.jit
def _kernel_n(c_ptr, base, q, s, m, S, Wt, r, bx, by, inv2s2, ACC: tl.constexpr):
    """z = k * n of a [BT, BS] tile (target rows q, source columns s)."""
    v = tl.load(c_ptr + base + q[:, None].to(tl.int64) * S + s[None, :], mask=m, other=0.0).to(ACC)
    dx = (q % Wt).to(ACC)[:, None] - bx[None, :]
    dy = (q // Wt).to(ACC)[:, None] - by[None, :]
    k = tl.exp(-(dx * dx + dy * dy) * inv2s2)
    return k * (v / r[None, :])


@triton.jit
def _forward(c_ptr, out_ptr, prm_ptr, T, S, Ht, Wt, NORM: tl.constexpr, BT: tl.constexpr, BS: tl.constexpr,
             ACC: tl.constexpr):
    beta = tl.load(prm_ptr)
    inv2s2 = tl.load(prm_ptr + 1)
    n = tl.program_id(0)
    s = tl.program_id(1) * BS + tl.arange(0, BS)
    smask = s < S
    base = n.to(tl.int64) * T * S
    _, _, _, _, _, zx, zy, _, dx, dy = _stats(c_ptr, base, s, smask, T, S, Wt, beta, inv2s2, NORM, BT, BS, ACC)
    gx = tl.where(Wt > 1, (zx.to(ACC) + dx) * tl.load(prm_ptr + 2) - 1.0, 0.0)
    gy = tl.where(Ht > 1, (zy.to(ACC) + dy) * tl.load(prm_ptr + 3) - 1.0, 0.0)
    o = out_ptr + (n.to(tl.int64) * S + s) * 2
    tl.store(o, gx.to(out_ptr.dtype.element_ty), mask=smask)
    tl.store(o + 1, gy.to(out_ptr.dtype.element_ty), mask=smask)


@triton.jit
def _backward(gout_ptr, c_ptr, grad_ptr, prm_ptr, T, S, Ht, Wt, NORM: tl.constexpr, BT: tl.constexpr,
              BS: tl.constexpr, ACC: tl.constexpr):
    beta = tl.load(prm_ptr)
    inv2s2 = tl.load(prm_ptr + 1)
    n = tl.program_id(0)
    s = tl.program_id(1) * BS + tl.arange(0, BS)
    smask = s < S
    base = n.to(tl.int64) * T * S
    r, project, bx, by, zmax, zx, zy, tot, dx, dy = _stats(c_ptr, base, s, smask, T, S, Wt, beta, inv2s2, NORM,
                                                          BT, BS, ACC)
    g = gout_ptr + (n.to(tl.int64) * S + s) * 2
    xb = tl.load(g, mask=smask, other=0.0).to(ACC) * tl.load(prm_ptr + 2)
    yb = tl.load(g + 1, mask=smask, other=0.0).to(ACC) * tl.load(prm_ptr + 3)
    qs = tl.arange(0, BT)
    dn = tl.zeros([BS], dtype=ACC)
    for q0 in range(0, T, BT):  # <n, nb>
        q = q0 + qs
        m = (q[:, None] < T) & smask[None, :]
        nb, nq = _grad_n(c_ptr, base, q, s, m, S, Wt, r, bx, by, zmax, zx, zy, tot, dx, dy, xb, yb, beta,
                         inv2s2, ACC)
        dn += tl.sum(tl.where(m, nq * nb, 0.0), axis=0)
    for q0 in range(0, T, BT):
        q = q0 + qs
        m = (q[:, None] < T) & smask[None, :]
        nb, nq = _grad_n(c_ptr, base, q, s, m, S, Wt, r, bx, by, zmax, zx, zy, tot, dx, dy, xb, yb, beta,
                         inv2s2, ACC)
        gc = tl.where(project[None, :], nb - nq * dn[None, :], nb) / r[None, :]
        tl.store(grad_ptr + base + q[:, None].to(tl.int64) * S + s[None, :], gc.to(grad_ptr.dtype.element_ty),
                 mask=m)


@triton.jit
def _grad_n(c_ptr, base, q, s, m, S, Wt, r, bx, by, zmax, zx, zy, tot, dx, dy, xb, yb, beta, inv2s2,
            ACC: tl.constexpr):
    """d L / d n and n for a [BT, BS] tile."""
    v = tl.load(c_ptr + base + q[:, None].to(tl.int64) * S + s[None, :], mask=m, other=0.0).to(ACC)
    qx = (q % Wt)[:, None]
    qy = (q // Wt)[:, None]
    kx = qx.to(ACC) - bx[None, :]
    ky = qy.to(ACC) - by[None, :]
    k = tl.exp(-(kx * kx + ky * ky) * inv2s2)
    nq = v / r[None, :]
    mq = tl.exp(beta * (k * nq - zmax[None, :])) / tot[None, :]
    ox = (qx - zx[None, :]).to(ACC) - dx[None, :]
    oy = (qy - zy[None, :]).to(ACC) - dy[None, :]
    nb = beta * k * mq * (xb[None, :] * ox + yb[None, :] * oy)
    return nb, nq


def _params(corr, beta, sigma, target_size):
    """beta, 1 / (2 sigma^2) and d(normalised)/d(cell) along x and y (0 for a size of 1), in the
    accumulation dtype, so that float64 runs are exact."""
    Ht, Wt = target_size
    values = [beta, 1.0 / (2.0 * sigma * sigma), 2.0 / (Wt - 1) if Wt > 1 else 0.0, 2.0 / (Ht - 1) if Ht > 1 else 0.0]
    return torch.tensor(values, dtype=accumulation(corr.dtype)[1]).to(corr.device)


def kernel_soft_argmax(corr, beta, sigma, target_size, normalize):
    """corr contiguous (N, Ht * Wt, Hs, Ws) -> (N, Hs, Ws, 2)."""
    N, T, Hs, Ws = corr.shape
    S = Hs * Ws
    out = corr.new_empty(N, Hs, Ws, 2)
    grid = (N, triton.cdiv(S, BLOCK_S))
    _forward[grid](corr, out, _params(corr, beta, sigma, target_size), T, S, target_size[0], target_size[1],
                   NORM=NORMALIZE[normalize], BT=BLOCK_T, BS=BLOCK_S, ACC=accumulation(corr.dtype)[0])
    return out


def kernel_soft_argmax_backward(grad_out, corr, beta, sigma, target_size, normalize, output_mask):
    """d L / d corr (N, Ht * Wt, Hs, Ws) from grad_out (N, Hs, Ws, 2), both contiguous; None when
    output_mask[0] is false."""
    if not output_mask[0]:
        return None
    N, T, Hs, Ws = corr.shape
    S = Hs * Ws
    grad = torch.empty_like(corr)
    grid = (N, triton.cdiv(S, BLOCK_S))
    _backward[grid](grad_out, corr, grad, _params(corr, beta, sigma, target_size), T, S, target_size[0],
                    target_size[1], NORM=NORMALIZE[normalize], BT=BLOCK_T, BS=BLOCK_S, ACC=accumulation(corr.dtype)[0])
    return grad
