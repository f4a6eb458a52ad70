"""Triton kernels of the fused similarity loss on per-layer maps fw, ft, resized to size x size and
concatenated on channels one chunk of samples at a time (kernels/_resize.py), so the resized features
(C, P), P = size^2, exist for one chunk only; ce, the row maxima and stats are per sample, so chunks are
independent and the batch-wide min-max of the weight runs once after the last one.

S = Fw^T Ft is recomputed in (BI x BJ) tiles by tl.dot over C (float32 accumulation, IEEE precision for
float32 inputs) and never stored. a_j = sum_i |S_ij|, b_i = sum_j |S_ij| / a_j (matrix-vector products for
non-negative features, tile passes for signed ones), S2 = S / (a_j b_i), z = S2 / tau.
Forward: one program per (sample, column block) runs an online log-sum-exp over i in float32 and writes
per-(column block, row) partial row maxima; the weight is their max (order-independent).
Backward (g = dL/dce, P_ij = exp(z_ij - lse_j), sgn_ij = sign(S_ij); see csrc/ops/cpu/similarity_loss_kernel.cpp):
  G2 = g_j (P_ij - [i == j]) / tau,  u_i = sum_j G2 S2 (row programs),
  v_j = sum_i (G2 S2 - u_i |S2|) (column programs),  G0 = ((G2 - sgn u_i) / b_i - sgn v_j) / a_j,
  dFw[c, i] = sum_j G0_ij Ft[c, j] (programs own (c block, i block)), dFt[c, j] = sum_i G0_ij Fw[c, i].
Every sum is a fixed-order loop inside one program: no atomics, bitwise reproducible.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import INTERPRET
from ._field import accumulation
from ._resize import ConcatResize, chunks

EPS = 1e-12  # F.normalize's eps
BLOCK = 32 if INTERPRET else 64
BK = 32


@triton.jit
def _tile(fw_ptr, ft_ptr, base, offs_i, offs_j, C, P, BI: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr,
          PREC: tl.constexpr):
    """S[offs_i, offs_j] of one sample (rows or columns outside P give 0), float32."""
    acc = tl.zeros((BI, BJ), dtype=tl.float32)
    mi, mj = offs_i < P, offs_j < P
    for k0 in range(0, C, BK):
        ck = k0 + tl.arange(0, BK)
        mk = ck < C
        a = tl.load(fw_ptr + base + ck[:, None] * P + offs_i[None, :], mask=mk[:, None] & mi[None, :], other=0.0)
        b = tl.load(ft_ptr + base + ck[:, None] * P + offs_j[None, :], mask=mk[:, None] & mj[None, :], other=0.0)
        acc += tl.dot(tl.trans(a), b, input_precision=PREC)
    return acc


@triton.jit
def _colsum_abs_kernel(fw_ptr, ft_ptr, a_ptr, C, P, BI: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr,
                       PREC: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    offs_j = tl.program_id(1) * BJ + tl.arange(0, BJ)
    acc = tl.zeros((BJ,), dtype=tl.float32)
    for i0 in range(0, P, BI):
        s = _tile(fw_ptr, ft_ptr, n * C * P, i0 + tl.arange(0, BI), offs_j, C, P, BI, BJ, BK, PREC)
        acc += tl.sum(tl.abs(s), axis=0)
    tl.store(a_ptr + n * P + offs_j, acc, mask=offs_j < P)


@triton.jit
def _rowsum_abs_kernel(fw_ptr, ft_ptr, ia_ptr, b_ptr, C, P, BI: tl.constexpr, BJ: tl.constexpr,
                       BK: tl.constexpr, PREC: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    offs_i = tl.program_id(1) * BI + tl.arange(0, BI)
    acc = tl.zeros((BI,), dtype=tl.float32)
    for j0 in range(0, P, BJ):
        offs_j = j0 + tl.arange(0, BJ)
        s = _tile(fw_ptr, ft_ptr, n * C * P, offs_i, offs_j, C, P, BI, BJ, BK, PREC)
        ia = tl.load(ia_ptr + n * P + offs_j, mask=offs_j < P, other=0.0)
        acc += tl.sum(tl.abs(s) * ia[None, :], axis=1)
    tl.store(b_ptr + n * P + offs_i, acc, mask=offs_i < P)


@triton.jit
def _fwd_kernel(fw_ptr, ft_ptr, st_ptr, ce_ptr, rowmax_ptr, C, P, itau,
                BI: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    pj = tl.program_id(1)
    offs_j = pj * BJ + tl.arange(0, BJ)
    mj = offs_j < P
    ia = tl.load(st_ptr + n * 5 * P + offs_j, mask=mj, other=0.0)
    m = tl.full((BJ,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BJ,), dtype=tl.float32)
    diag = tl.zeros((BJ,), dtype=tl.float32)
    for i0 in range(0, P, BI):
        offs_i = i0 + tl.arange(0, BI)
        mi = offs_i < P
        ib = tl.load(st_ptr + (n * 5 + 1) * P + offs_i, mask=mi, other=0.0)
        s2 = _tile(fw_ptr, ft_ptr, n * C * P, offs_i, offs_j, C, P, BI, BJ, BK, PREC) * ia[None, :] * ib[:, None]
        valid = mi[:, None] & mj[None, :]
        tl.store(rowmax_ptr + (n * tl.num_programs(1) + pj) * P + offs_i,
                 tl.max(tl.where(valid, s2, float("-inf")), axis=1), mask=mi)
        z = tl.where(valid, s2 * itau, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(z - m_safe[None, :]), axis=0)
        m = m_new
        diag += tl.sum(tl.where(offs_i[:, None] == offs_j[None, :], s2 * itau, 0.0), axis=0)
    lse = m + tl.log(tl.where(mj, s, 1.0))
    tl.store(st_ptr + (n * 5 + 2) * P + offs_j, lse, mask=mj)
    tl.store(ce_ptr + n * P + offs_j, lse - diag, mask=mj)


@triton.jit
def _g2s2(s, offs_i, offs_j, g, lse, ia, ib, itau):
    """S2 and G2 = dL/dS2 of one tile (0 outside P, since g and S are 0 there)."""
    s2 = s * ia[None, :] * ib[:, None]
    p = tl.exp(s2 * itau - lse[None, :]) - tl.where(offs_i[:, None] == offs_j[None, :], 1.0, 0.0)
    return s2, g[None, :] * p * itau


@triton.jit
def _g0(s, offs_i, offs_j, g, lse, ia, ib, u, v, itau):
    """G0 = dL/dS of one tile."""
    s2, g2 = _g2s2(s, offs_i, offs_j, g, lse, ia, ib, itau)
    sg = tl.where(s > 0, 1.0, tl.where(s < 0, -1.0, 0.0))
    return ((g2 - sg * u[:, None]) * ib[:, None] - sg * v[None, :]) * ia[None, :]


@triton.jit
def _bwd_u_kernel(fw_ptr, ft_ptr, g_ptr, st_ptr, u_ptr, C, P, itau, BI: tl.constexpr, BJ: tl.constexpr,
                  BK: tl.constexpr, PREC: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    offs_i = tl.program_id(1) * BI + tl.arange(0, BI)
    mi = offs_i < P
    ib = tl.load(st_ptr + (n * 5 + 1) * P + offs_i, mask=mi, other=0.0)
    acc = tl.zeros((BI,), dtype=tl.float32)
    for j0 in range(0, P, BJ):
        offs_j = j0 + tl.arange(0, BJ)
        mj = offs_j < P
        g = tl.load(g_ptr + n * P + offs_j, mask=mj, other=0.0).to(tl.float32)
        ia = tl.load(st_ptr + n * 5 * P + offs_j, mask=mj, other=0.0)
        lse = tl.load(st_ptr + (n * 5 + 2) * P + offs_j, mask=mj, other=0.0)
        s = _tile(fw_ptr, ft_ptr, n * C * P, offs_i, offs_j, C, P, BI, BJ, BK, PREC)
        s2, g2 = _g2s2(s, offs_i, offs_j, g, lse, ia, ib, itau)
        acc += tl.sum(g2 * s2, axis=1)
    active = tl.load(st_ptr + (n * 5 + 4) * P + offs_i, mask=mi, other=0.0)  # b >= eps
    tl.store(u_ptr + n * P + offs_i, acc * active, mask=mi)


@triton.jit
def _bwd_v_kernel(fw_ptr, ft_ptr, g_ptr, st_ptr, u_ptr, v_ptr, C, P, itau, BI: tl.constexpr, BJ: tl.constexpr,
                  BK: tl.constexpr, PREC: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    offs_j = tl.program_id(1) * BJ + tl.arange(0, BJ)
    mj = offs_j < P
    g = tl.load(g_ptr + n * P + offs_j, mask=mj, other=0.0).to(tl.float32)
    ia = tl.load(st_ptr + n * 5 * P + offs_j, mask=mj, other=0.0)
    lse = tl.load(st_ptr + (n * 5 + 2) * P + offs_j, mask=mj, other=0.0)
    acc = tl.zeros((BJ,), dtype=tl.float32)
    for i0 in range(0, P, BI):
        offs_i = i0 + tl.arange(0, BI)
        mi = offs_i < P
        ib = tl.load(st_ptr + (n * 5 + 1) * P + offs_i, mask=mi, other=0.0)
        u = tl.load(u_ptr + n * P + offs_i, mask=mi, other=0.0)
        s = _tile(fw_ptr, ft_ptr, n * C * P, offs_i, offs_j, C, P, BI, BJ, BK, PREC)
        s2, g2 = _g2s2(s, offs_i, offs_j, g, lse, ia, ib, itau)
        acc += tl.sum(g2 * s2 - u[:, None] * tl.abs(s2), axis=0)
    active = tl.load(st_ptr + (n * 5 + 3) * P + offs_j, mask=mj, other=0.0)  # a >= eps
    tl.store(v_ptr + n * P + offs_j, acc * active, mask=mj)


@triton.jit
def _bwd_df_kernel(x_ptr, y_ptr, g_ptr, st_ptr, u_ptr, v_ptr, out_ptr, C, P, itau, FOR_FW: tl.constexpr,
                   BO: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """FOR_FW: out = dFw[c block, i block] = sum_j G0_ij Ft[c, j] (x = fw, y = ft, reduced index r = j);
    else out = dFt[c block, j block] = sum_i G0_ij Fw[c, i] (x = ft, y = fw, r = i)."""
    n = tl.program_id(0).to(tl.int64)
    offs_o = tl.program_id(1) * BO + tl.arange(0, BO)
    offs_c = tl.program_id(2) * BC + tl.arange(0, BC)
    mo, mc = offs_o < P, offs_c < C
    base = n * C * P
    acc = tl.zeros((BC, BO), dtype=tl.float32)
    for r0 in range(0, P, BR):
        offs_r = r0 + tl.arange(0, BR)
        mr = offs_r < P
        if FOR_FW:
            offs_i, offs_j, mi, mj = offs_o, offs_r, mo, mr
            s = _tile(x_ptr, y_ptr, base, offs_i, offs_j, C, P, BO, BR, BK, PREC)
        else:
            offs_i, offs_j, mi, mj = offs_r, offs_o, mr, mo
            s = _tile(y_ptr, x_ptr, base, offs_i, offs_j, C, P, BR, BO, BK, PREC)
        g = tl.load(g_ptr + n * P + offs_j, mask=mj, other=0.0).to(tl.float32)
        ia = tl.load(st_ptr + n * 5 * P + offs_j, mask=mj, other=0.0)
        lse = tl.load(st_ptr + (n * 5 + 2) * P + offs_j, mask=mj, other=0.0)
        v = tl.load(v_ptr + n * P + offs_j, mask=mj, other=0.0)
        ib = tl.load(st_ptr + (n * 5 + 1) * P + offs_i, mask=mi, other=0.0)
        u = tl.load(u_ptr + n * P + offs_i, mask=mi, other=0.0)
        g0 = _g0(s, offs_i, offs_j, g, lse, ia, ib, u, v, itau)
        yc = tl.load(y_ptr + base + offs_c[:, None] * P + offs_r[None, :], mask=mc[:, None] & mr[None, :], other=0.0)
        if FOR_FW:
            acc += tl.dot(yc, tl.trans(g0).to(yc.dtype), input_precision=PREC)
        else:
            acc += tl.dot(yc, g0.to(yc.dtype), input_precision=PREC)
    tl.store(out_ptr + base + offs_c[:, None] * P + offs_o[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=mc[:, None] & mo[None, :])


def _prec(x: torch.Tensor) -> str:
    """float32 products in IEEE float32 (no TF32: the fp32 path must reproduce the goldens)."""
    return "ieee"


def _plans(fw, ft, size):
    acc = accumulation(fw[0].dtype)[1]
    rw, rt = ConcatResize(fw, size, acc), ConcatResize(ft, size, acc)
    return rw, rt, chunks(fw[0].shape[0], rw.channels, size * size, fw[0].element_size())


def _working(a, b, lse):
    """The kernels' table (B, 5, P) float32 from the saved stats' rows: 1/max(a, eps), 1/max(b, eps), lse,
    [a >= eps], [b >= eps] (lse left to the forward kernel to fill when None)."""
    return torch.stack([1 / a.clamp_min(EPS), 1 / b.clamp_min(EPS), torch.empty_like(a) if lse is None else lse,
                        (a >= EPS).float(), (b >= EPS).float()], dim=1)


def _fwd_chunk(w, t, tau, nonneg, ce, wmax, stats):
    """One chunk of resized features w, t (B, C, P): ce, raw row maxima wmax (B, P), stats (B, 3, P)."""
    n, c, p = w.shape
    grid = (n, triton.cdiv(p, BLOCK))
    prec = _prec(w)
    if nonneg:  # |S| = S: the L1 sums are matrix-vector products
        w32, t32 = w.float(), t.float()
        a = torch.einsum("ncj,nc->nj", t32, w32.sum(2))
        b = torch.einsum("nci,nc->ni", w32, torch.einsum("ncj,nj->nc", t32, 1 / a.clamp_min(EPS)))
    else:
        a = torch.empty(n, p, dtype=torch.float32, device=w.device)
        b = torch.empty_like(a)
        _colsum_abs_kernel[grid](w, t, a, c, p, BLOCK, BLOCK, BK, prec)
        _rowsum_abs_kernel[grid](w, t, 1 / a.clamp_min(EPS), b, c, p, BLOCK, BLOCK, BK, prec)
    work = _working(a, b, None)
    rowmax = torch.empty(n, grid[1], p, dtype=torch.float32, device=w.device)
    _fwd_kernel[grid](w, t, work, ce, rowmax, c, p, 1.0 / tau, BLOCK, BLOCK, BK, prec)
    wmax.copy_(rowmax.amax(1))
    stats.copy_(torch.stack([a, b, work[:, 2]], dim=1))


def similarity_loss(fw, ft, tau: float, size: int):
    """Layer lists fw, ft (N, C_l, H_l, W_l) -> ce (N, P), weight (N, P) (min-max scaled), stats (N, 3, P)
    float32 as the C++ op saves them: raw column L1 sums a, raw row L1 sums b and each column's log-sum-exp."""
    n, p, dev = fw[0].shape[0], size * size, fw[0].device
    rw, rt, ranges = _plans(fw, ft, size)
    # a bilinear resize of non-negative maps is non-negative
    nonneg = all(bool(f.min() >= 0) for f in (*fw, *ft))
    ce, wmax = (torch.empty(n, p, dtype=torch.float32, device=dev) for _ in range(2))
    stats = torch.empty(n, 3, p, dtype=torch.float32, device=dev)
    for n0, n1 in ranges:
        _fwd_chunk(rw.resize(fw, n0, n1), rt.resize(ft, n0, n1), tau, nonneg, ce[n0:n1], wmax[n0:n1],
                   stats[n0:n1])
    weight = wmax - wmax.min()
    weight = weight / weight.max().clamp_min(torch.finfo(fw[0].dtype).tiny)
    return ce.to(fw[0].dtype), weight.to(fw[0].dtype), stats


def similarity_loss_backward(grad_ce: torch.Tensor, fw, ft, stats: torch.Tensor, tau: float, size: int,
                             output_mask):
    """Gradients (dfw, dft: lists shaped like the layers, empty when masked) of sum(grad_ce * ce)."""
    need_fw, need_ft = output_mask
    p = size * size
    rw, rt, ranges = _plans(fw, ft, size)
    itau = 1.0 / tau
    g = grad_ce.contiguous()
    dfw = [torch.empty(f.shape, dtype=f.dtype, device=f.device) for f in fw] if need_fw else []
    dft = [torch.empty(f.shape, dtype=f.dtype, device=f.device) for f in ft] if need_ft else []
    if not (need_fw or need_ft):
        return dfw, dft
    for n0, n1 in ranges:
        w, t = rw.resize(fw, n0, n1), rt.resize(ft, n0, n1)
        gc, st, c = g[n0:n1], _working(*stats[n0:n1].unbind(1)), rw.channels
        u = torch.empty(n1 - n0, p, dtype=torch.float32, device=w.device)
        v = torch.empty_like(u)
        nb = triton.cdiv(p, BLOCK)
        prec = _prec(w)
        _bwd_u_kernel[(n1 - n0, nb)](w, t, gc, st, u, c, p, itau, BLOCK, BLOCK, BK, prec)
        _bwd_v_kernel[(n1 - n0, nb)](w, t, gc, st, u, v, c, p, itau, BLOCK, BLOCK, BK, prec)
        grid = (n1 - n0, nb, triton.cdiv(c, BK))
        if need_fw:
            dw = torch.empty_like(w)
            _bwd_df_kernel[grid](w, t, gc, st, u, v, dw, c, p, itau, True, BLOCK, BLOCK, BK, BK, prec)
            rw.adjoint(dw, n0, dfw)
        if need_ft:
            dt = torch.empty_like(t)
            _bwd_df_kernel[grid](t, w, gc, st, u, v, dt, c, p, itau, False, BLOCK, BLOCK, BK, BK, prec)
            rt.adjoint(dt, n0, dft)
    return dfw, dft
