"""Triton kernels of compose_displacement (Zhou et al.; see pscfast.ops._reference.compose_displacement).
Accumulation in float32 (float64 for float64).

compose_displacement: pixel p = (i, j) of image a reads image b at q = (j + u, i + v), (u, v) = f_ab(p),
bilinearly with zeros outside: f_ac = f_ab + f_bc(q), m_ac = m_ab m_bc(q). Backward, one launch with two kinds
of programs (gf = d L / d f_ac, gm = d L / d m_ac):
  pointwise  d f_ab(p) = gf + sum over channels (f_bc0, f_bc1, m_bc) of g_k d sample_k / d q  (g = gf0, gf1,
             gm m_ab), d m_ab(p) = gm m_bc(q);
  scatter    d f_bc(node), d m_bc(node) = sum over pixels p and taps reading node of w_tap g(p): each program owns
             a block of image-b nodes and scans every pixel of image a in order (deterministic, no atomics).
Each kind of program runs only for the gradients asked for, and computes and stores only those.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._field import accumulation, clamp_pixel, field_taps, gather_scatter, tap_values

BLOCK = 128
BQ, BP = 32, 64


@triton.jit
def _sample(fab_n, fbc_n, mbc_n, pix, mask, W, P, Hb, Wb, Pb, ACC: tl.constexpr):
    """Taps of q(p) in image b, the tap values of f_bc0, f_bc1, m_bc, and (u, v) = f_ab(p)."""
    u = tl.load(fab_n + pix, mask=mask, other=0.0).to(ACC)
    v = tl.load(fab_n + P + pix, mask=mask, other=0.0).to(ACC)
    px = clamp_pixel((pix % W).to(ACC) + u, Wb)
    py = clamp_pixel((pix // W).to(ACC) + v, Hb)
    i0, i1, i2, i3, w0, w1, w2, w3, e, r, s, d = field_taps(px, py, Hb, Wb, False)
    a0, a1, a2, a3 = tap_values(fbc_n, i0, i1, i2, i3, 1, mask, ACC)
    b0, b1, b2, b3 = tap_values(fbc_n + Pb, i0, i1, i2, i3, 1, mask, ACC)
    c0, c1, c2, c3 = tap_values(mbc_n, i0, i1, i2, i3, 1, mask, ACC)
    return (i0, i1, i2, i3, w0, w1, w2, w3, e, r, s, d, a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, u, v)


@triton.jit
def compose_displacement_fwd_kernel(fab_ptr, fbc_ptr, mab_ptr, mbc_ptr, fac_ptr, mac_ptr, W, P, Hb, Wb, Pb,
                                    ACC: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(1).to(tl.int64)
    pix = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = pix < P
    (i0, i1, i2, i3, w0, w1, w2, w3, e, r, s, d, a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, u, v) = \
        _sample(fab_ptr + n * 2 * P, fbc_ptr + n * 2 * Pb, mbc_ptr + n * Pb, pix, mask, W, P, Hb, Wb, Pb, ACC)
    mab = tl.load(mab_ptr + n * P + pix, mask=mask, other=0.0).to(ACC)
    fac = fac_ptr + n * 2 * P + pix
    ty = fac_ptr.dtype.element_ty
    tl.store(fac, (u + (w0 * a0 + w1 * a1 + w2 * a2 + w3 * a3)).to(ty), mask=mask)
    tl.store(fac + P, (v + (w0 * b0 + w1 * b1 + w2 * b2 + w3 * b3)).to(ty), mask=mask)
    tl.store(mac_ptr + n * P + pix, (mab * (w0 * c0 + w1 * c1 + w2 * c2 + w3 * c3)).to(ty), mask=mask)


@triton.jit
def _compose_displacement_bwd_nodes(q, fab_n, fbc_n, mbc_n, gf_n, gm_n, mab_n, dfbc_n, dmbc_n, W, P, Hb, Wb, Pb,
                                    NEED_FBC: tl.constexpr, NEED_MBC: tl.constexpr, ACC: tl.constexpr,
                                    BQ: tl.constexpr, BP: tl.constexpr):
    """Gradients of image b's flow and mask (those NEED_* asks for) at its nodes q: gathered from every pixel, in
    order."""
    a0 = tl.zeros([BQ], ACC)
    a1 = tl.zeros([BQ], ACC)
    am = tl.zeros([BQ], ACC)
    for p0 in range(0, P, BP):
        pix = p0 + tl.arange(0, BP)
        mask = pix < P
        t = _sample(fab_n, fbc_n, mbc_n, pix, mask, W, P, Hb, Wb, Pb, ACC)
        if NEED_FBC:
            g0 = tl.load(gf_n + pix, mask=mask, other=0.0).to(ACC)
            g1 = tl.load(gf_n + P + pix, mask=mask, other=0.0).to(ACC)
            a0 += gather_scatter(q, t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], g0)
            a1 += gather_scatter(q, t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], g1)
        if NEED_MBC:
            gmm = tl.load(gm_n + pix, mask=mask, other=0.0).to(ACC) * tl.load(mab_n + pix, mask=mask,
                                                                             other=0.0).to(ACC)
            am += gather_scatter(q, t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], gmm)
    ok = q < Pb
    if NEED_FBC:
        tl.store(dfbc_n + q, a0.to(dfbc_n.dtype.element_ty), mask=ok)
        tl.store(dfbc_n + Pb + q, a1.to(dfbc_n.dtype.element_ty), mask=ok)
    if NEED_MBC:
        tl.store(dmbc_n + q, am.to(dmbc_n.dtype.element_ty), mask=ok)


@triton.jit
def _compose_displacement_bwd_pixels(pix, fab_n, fbc_n, mbc_n, gf_n, gm_n, mab_n, dfab_n, dmab_n, W, P, Hb, Wb, Pb,
                                     NEED_FAB: tl.constexpr, NEED_MAB: tl.constexpr, ACC: tl.constexpr):
    """Gradients of image a's flow and mask (those NEED_* asks for) at pixels pix (pointwise)."""
    mask = pix < P
    (i0, i1, i2, i3, w0, w1, w2, w3, e, r, s, d, a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, u, v) = \
        _sample(fab_n, fbc_n, mbc_n, pix, mask, W, P, Hb, Wb, Pb, ACC)
    gm = tl.load(gm_n + pix, mask=mask, other=0.0).to(ACC)
    if NEED_FAB:
        g0 = tl.load(gf_n + pix, mask=mask, other=0.0).to(ACC)
        g1 = tl.load(gf_n + P + pix, mask=mask, other=0.0).to(ACC)
        gmm = gm * tl.load(mab_n + pix, mask=mask, other=0.0).to(ACC)
        dx = g0 * ((a1 - a0) * s + (a3 - a2) * d) + g1 * ((b1 - b0) * s + (b3 - b2) * d) \
            + gmm * ((c1 - c0) * s + (c3 - c2) * d)
        dy = g0 * ((a2 - a0) * e + (a3 - a1) * r) + g1 * ((b2 - b0) * e + (b3 - b1) * r) \
            + gmm * ((c2 - c0) * e + (c3 - c1) * r)
        tl.store(dfab_n + pix, (g0 + dx).to(dfab_n.dtype.element_ty), mask=mask)
        tl.store(dfab_n + P + pix, (g1 + dy).to(dfab_n.dtype.element_ty), mask=mask)
    if NEED_MAB:
        tl.store(dmab_n + pix, (gm * (w0 * c0 + w1 * c1 + w2 * c2 + w3 * c3)).to(dmab_n.dtype.element_ty), mask=mask)


@triton.jit
def compose_displacement_bwd_kernel(gf_ptr, gm_ptr, fab_ptr, fbc_ptr, mab_ptr, mbc_ptr, dfab_ptr, dfbc_ptr,
                                    dmab_ptr, dmbc_ptr, W, P, Hb, Wb, Pb, NQB, NEED_FAB: tl.constexpr,
                                    NEED_FBC: tl.constexpr, NEED_MAB: tl.constexpr, NEED_MBC: tl.constexpr,
                                    ACC: tl.constexpr, BQ: tl.constexpr, BP: tl.constexpr):
    n = tl.program_id(1).to(tl.int64)
    pid = tl.program_id(0)
    fab_n = fab_ptr + n * 2 * P
    fbc_n = fbc_ptr + n * 2 * Pb
    mbc_n = mbc_ptr + n * Pb
    gf_n = gf_ptr + n * 2 * P
    gm_n = gm_ptr + n * P
    mab_n = mab_ptr + n * P
    # separate functions per branch: compiled Triton merges same-named variables of an if's two branches
    if pid < NQB:  # scatter onto image-b nodes [pid * BQ, pid * BQ + BQ), gathering every pixel in order
        _compose_displacement_bwd_nodes(pid * BQ + tl.arange(0, BQ), fab_n, fbc_n, mbc_n, gf_n, gm_n, mab_n,
                                        dfbc_ptr + n * 2 * Pb, dmbc_ptr + n * Pb, W, P, Hb, Wb, Pb, NEED_FBC, NEED_MBC,
                                        ACC, BQ, BP)
    else:  # pointwise gradients of image a
        _compose_displacement_bwd_pixels((pid - NQB) * BP + tl.arange(0, BP), fab_n, fbc_n, mbc_n, gf_n, gm_n,
                                         mab_n, dfab_ptr + n * 2 * P, dmab_ptr + n * P, W, P, Hb, Wb, Pb, NEED_FAB,
                                         NEED_MAB, ACC)


# Launchers, in the argument order of the pscfast::compose_displacement schemas: contiguous f_ab (N, 2, H, W),
# f_bc (N, 2, Hb, Wb), m_ab (N, 1, H, W), m_bc (N, 1, Hb, Wb) of one dtype.

def compose_displacement(f_ab, f_bc, m_ab, m_bc):
    """(f_ac, m_ac)."""
    N, _, H, W = f_ab.shape
    Hb, Wb = f_bc.shape[2:]
    f_ac, m_ac = torch.empty_like(f_ab), torch.empty_like(m_ab)
    if N:
        compose_displacement_fwd_kernel[(triton.cdiv(H * W, BLOCK), N)](
            f_ab, f_bc, m_ab, m_bc, f_ac, m_ac, W, H * W, Hb, Wb, Hb * Wb, ACC=accumulation(f_ab.dtype)[0], BLOCK=BLOCK)
    return f_ac, m_ac


def compose_displacement_backward(grad_f, grad_m, f_ab, f_bc, m_ab, m_bc, output_mask):
    """(d f_ab, d f_bc, d m_ab, d m_bc) for contiguous grad_f, grad_m, each None unless output_mask asks for it; the
    scatter programs run only for d f_bc or d m_bc and the pointwise ones only for d f_ab or d m_ab."""
    N, _, H, W = f_ab.shape
    Hb, Wb = f_bc.shape[2:]
    need = [bool(m) for m in output_mask]
    out = [torch.empty_like(t) if want else None for t, want in zip((f_ab, f_bc, m_ab, m_bc), need)]
    nqb = triton.cdiv(Hb * Wb, BQ) if need[1] or need[3] else 0
    npb = triton.cdiv(H * W, BP) if need[0] or need[2] else 0
    if N and nqb + npb:
        d_fab, d_fbc, d_mab, d_mbc = (f_ab if t is None else t for t in out)  # placeholders the kernel never writes
        compose_displacement_bwd_kernel[(nqb + npb, N)](
            grad_f, grad_m, f_ab, f_bc, m_ab, m_bc, d_fab, d_fbc, d_mab, d_mbc, W, H * W, Hb, Wb, Hb * Wb, nqb,
            NEED_FAB=need[0], NEED_FBC=need[1], NEED_MAB=need[2], NEED_MBC=need[3], ACC=accumulation(f_ab.dtype)[0],
            BQ=BQ, BP=BP)
    return tuple(out)
