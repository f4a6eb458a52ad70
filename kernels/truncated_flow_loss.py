"""Triton kernels of truncated_flow_loss (Zhou et al.; see pscfast.ops._reference.truncated_flow_loss).
Accumulation in float32 (float64 for float64).

Forward: sum over p of mask min(|pred - target|^2, T^2): per-program partial sums, the last program (an integer
ticket) sums them in program order. Backward pointwise: d pred = 2 g mask (pred - target) where the error is
<= T^2 (0 where truncated), d target = -d pred, d mask = g min(err, T^2).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._field import accumulation

BLOCK = 128
RBLOCK = 128


@triton.jit
def _error(pred_ptr, target_ptr, n, pix, mask, P, ACC: tl.constexpr):
    base = n * 2 * P + pix
    dx = tl.load(pred_ptr + base, mask=mask, other=0.0).to(ACC) \
        - tl.load(target_ptr + base, mask=mask, other=0.0).to(ACC)
    dy = tl.load(pred_ptr + base + P, mask=mask, other=0.0).to(ACC) \
        - tl.load(target_ptr + base + P, mask=mask, other=0.0).to(ACC)
    return dx, dy, dx * dx + dy * dy


@triton.jit
def truncated_loss_fwd_kernel(pred_ptr, target_ptr, mask_ptr, psum_ptr, ticket_ptr, loss_ptr, P, cap, NBLK, NPROG,
                              HAS_MASK: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, RBLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n = (pid // NBLK).to(tl.int64)
    pix = (pid % NBLK) * BLOCK + tl.arange(0, BLOCK)
    mask = pix < P
    _, _, err = _error(pred_ptr, target_ptr, n, pix, mask, P, ACC)
    err = tl.minimum(err, cap)
    if HAS_MASK:
        err = err * tl.load(mask_ptr + n * P + pix, mask=mask, other=0.0).to(ACC)
    tl.store(psum_ptr + pid, tl.sum(tl.where(mask, err, 0.0), axis=0))
    tl.debug_barrier()
    ticket = tl.atomic_add(ticket_ptr, 1, sem="acq_rel")
    if ticket == NPROG - 1:  # the last program sums the partials in program order
        acc = tl.zeros([RBLOCK], ACC)
        for r0 in range(0, NPROG, RBLOCK):
            idx = r0 + tl.arange(0, RBLOCK)
            acc += tl.load(psum_ptr + idx, mask=idx < NPROG, other=0.0, volatile=True)
        tl.store(loss_ptr, tl.sum(acc, axis=0).to(loss_ptr.dtype.element_ty))


@triton.jit
def truncated_loss_bwd_kernel(grad_ptr, pred_ptr, target_ptr, mask_ptr, dpred_ptr, dtarget_ptr, dmask_ptr, P, cap,
                              HAS_MASK: tl.constexpr, NEED_PRED: tl.constexpr, NEED_TARGET: tl.constexpr,
                              NEED_MASK: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(1).to(tl.int64)
    pix = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = pix < P
    g = tl.load(grad_ptr).to(ACC)
    dx, dy, err = _error(pred_ptr, target_ptr, n, pix, mask, P, ACC)
    scale = g * 2.0
    if HAS_MASK:
        scale = scale * tl.load(mask_ptr + n * P + pix, mask=mask, other=0.0).to(ACC)
    scale = tl.where(err <= cap, scale, 0.0)  # clamp_max passes the gradient where err <= T^2
    ty = dpred_ptr.dtype.element_ty
    base = n * 2 * P + pix
    if NEED_PRED:
        tl.store(dpred_ptr + base, (scale * dx).to(ty), mask=mask)
        tl.store(dpred_ptr + base + P, (scale * dy).to(ty), mask=mask)
    if NEED_TARGET:
        tl.store(dtarget_ptr + base, (-scale * dx).to(ty), mask=mask)
        tl.store(dtarget_ptr + base + P, (-scale * dy).to(ty), mask=mask)
    if NEED_MASK:
        tl.store(dmask_ptr + n * P + pix, (g * tl.minimum(err, cap)).to(ty), mask=mask)


# Launchers, in the argument order of the pscfast::truncated_flow_loss schemas: contiguous pred, target
# (N, 2, H, W) and mask (N, 1, H, W) or None, of one dtype.

def truncated_flow_loss(pred, target, mask, T):
    N, _, H, W = pred.shape
    acc, acc_t = accumulation(pred.dtype)
    nblk = triton.cdiv(H * W, BLOCK)
    nprog = N * nblk
    psum = torch.empty(nprog, dtype=acc_t, device=pred.device)
    ticket = torch.zeros(1, dtype=torch.int32, device=pred.device)
    loss = torch.zeros((), dtype=pred.dtype, device=pred.device)
    if nprog:
        truncated_loss_fwd_kernel[(nprog,)](pred, target, pred if mask is None else mask, psum, ticket, loss, H * W,
                                            T * T, nblk, nprog, HAS_MASK=mask is not None, ACC=acc, BLOCK=BLOCK,
                                            RBLOCK=RBLOCK)
    return loss


def truncated_flow_loss_backward(grad, pred, target, mask, T, output_mask):
    """(d pred, d target, d mask) for the loss's gradient grad, each None unless output_mask asks for it (d mask
    also None for an absent mask)."""
    N, _, H, W = pred.shape
    need = [bool(output_mask[0]), bool(output_mask[1]), bool(output_mask[2]) and mask is not None]
    shapes = (pred.shape, pred.shape, (N, 1, H, W))
    out = [pred.new_empty(s) if want else None for s, want in zip(shapes, need)]
    if N and any(need):
        d_pred, d_target, d_mask = (pred if t is None else t for t in out)  # placeholders the kernel never writes
        truncated_loss_bwd_kernel[(triton.cdiv(H * W, BLOCK), N)](
            grad, pred, target, pred if mask is None else mask, d_pred, d_target, d_mask, H * W, T * T,
            HAS_MASK=mask is not None, NEED_PRED=need[0], NEED_TARGET=need[1], NEED_MASK=need[2],
            ACC=accumulation(pred.dtype)[0], BLOCK=BLOCK)
    return tuple(out)
