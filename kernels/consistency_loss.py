"""Triton kernels of consistency_loss, PSC's forward-backward consistency loss (see
pscfast.ops._reference.consistency_loss). Accumulation in float32 (float64 for float64).

Forward, one launch: each program computes the cycle f_ab(f_bc) of a block of pixels, the release's mask
(cycle != 0, identity != 0, |cycle| <= 1, |identity| <= 1, per coordinate) and its partial (sum of squared
errors, count); the last program to finish (an integer ticket) sums the partials in program order:
deterministic. Backward: kernels/_grid_composition.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _grid_composition
from ._field import accumulation
from ._grid_composition import counted, cycle, identity

BLOCK = 128
RBLOCK = 128


@triton.jit
def consistency_fwd_kernel(fab_ptr, fbc_ptr, xs_ptr, ys_ptr, psum_ptr, pcnt_ptr, ticket_ptr, loss_ptr, count_ptr,
                           h, w, wo, P, NBLK, NPROG, NEAREST: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
                           RBLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n = (pid // NBLK).to(tl.int64)
    pix = (pid % NBLK) * BLOCK + tl.arange(0, BLOCK)
    mask = pix < P
    res = cycle(fab_ptr + n * h * w * 2, fbc_ptr + n * P * 2, pix, mask, h, w, NEAREST, ACC)
    cx, cy = res[20], res[21]
    ix, iy = identity(xs_ptr, ys_ptr, pix, mask, wo, ACC)
    kx = mask & counted(cx, ix)
    ky = mask & counted(cy, iy)
    sq = tl.where(kx, (cx - ix) * (cx - ix), 0.0) + tl.where(ky, (cy - iy) * (cy - iy), 0.0)
    tl.store(psum_ptr + pid, tl.sum(sq, axis=0))
    tl.store(pcnt_ptr + pid, tl.sum(kx.to(tl.int32) + ky.to(tl.int32), axis=0))
    tl.debug_barrier()
    ticket = tl.atomic_add(ticket_ptr, 1, sem="acq_rel")
    if ticket == NPROG - 1:  # the last program: every partial is written; sum them in program order
        acc = tl.zeros([RBLOCK], ACC)
        cnt = tl.zeros([RBLOCK], tl.int64)
        for r0 in range(0, NPROG, RBLOCK):
            idx = r0 + tl.arange(0, RBLOCK)
            acc += tl.load(psum_ptr + idx, mask=idx < NPROG, other=0.0, volatile=True)
            cnt += tl.load(pcnt_ptr + idx, mask=idx < NPROG, other=0, volatile=True).to(tl.int64)
        total = tl.sum(acc, axis=0)
        count = tl.sum(cnt, axis=0)
        tl.store(loss_ptr, (total / tl.maximum(count, 1).to(ACC)).to(loss_ptr.dtype.element_ty))
        tl.store(count_ptr, count)


# Launchers, in the argument order of the pscfast::consistency_loss schemas: contiguous fwd (N, h, w, 2) and bwd
# (N, h', w', 2) of one dtype, the identity's axes xs (w',) and ys (h',).

def consistency_loss(fwd, bwd, xs, ys, mode):
    """(loss, count): the masked mean squared error and the int64 number of masked-in coordinates."""
    N, h, w, _ = fwd.shape
    wo = bwd.shape[2]
    P = bwd.shape[1] * wo
    acc, acc_t = accumulation(fwd.dtype)
    nblk = triton.cdiv(P, BLOCK)
    nprog = N * nblk
    psum = torch.empty(nprog, dtype=acc_t, device=fwd.device)
    pcnt = torch.empty(nprog, dtype=torch.int32, device=fwd.device)
    ticket = torch.zeros(1, dtype=torch.int32, device=fwd.device)
    loss = torch.zeros((), dtype=fwd.dtype, device=fwd.device)
    count = torch.zeros((), dtype=torch.int64, device=fwd.device)
    if nprog:
        consistency_fwd_kernel[(nprog,)](fwd, bwd, xs, ys, psum, pcnt, ticket, loss, count, h, w, wo, P, nblk, nprog,
                                         NEAREST=mode == "nearest", ACC=acc, BLOCK=BLOCK, RBLOCK=RBLOCK)
    return loss, count


def consistency_loss_backward(grad, fwd, bwd, xs, ys, mode, count, output_mask):
    """(d fwd, d bwd) for the loss's gradient grad and the forward's count, each None unless output_mask asks for
    it."""
    return _grid_composition.backward(grad, count, xs, ys, fwd, bwd, mode, True, output_mask)
