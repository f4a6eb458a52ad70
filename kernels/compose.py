"""Triton kernels of the compose op: f_ab (N, h, w, 2) sampled at the absolute grid f_bc (N, h', w', 2)
(align_corners=True, zeros outside; see pscfast.ops._reference.compose). Accumulation in float32 (float64 for
float64). Forward: one program per block of output pixels; backward: kernels/_grid_composition.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _grid_composition
from ._field import accumulation
from ._grid_composition import cycle

BLOCK = 128


@triton.jit
def compose_fwd_kernel(fab_ptr, fbc_ptr, out_ptr, h, w, P, NEAREST: tl.constexpr, ACC: tl.constexpr,
                       BLOCK: tl.constexpr):
    n = tl.program_id(1).to(tl.int64)
    pix = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = pix < P
    res = cycle(fab_ptr + n * h * w * 2, fbc_ptr + n * P * 2, pix, mask, h, w, NEAREST, ACC)
    out = out_ptr + n * P * 2 + 2 * pix
    tl.store(out, res[20].to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out + 1, res[21].to(out_ptr.dtype.element_ty), mask=mask)


# Launchers, in the argument order of the pscfast::compose schemas: contiguous f_ab (N, h, w, 2) and f_bc
# (N, h', w', 2) of one dtype.

def compose(f_ab, f_bc, mode):
    N, h, w, _ = f_ab.shape
    P = f_bc.shape[1] * f_bc.shape[2]
    out = torch.empty_like(f_bc)
    if out.numel():
        compose_fwd_kernel[(triton.cdiv(P, BLOCK), N)](f_ab, f_bc, out, h, w, P, NEAREST=mode == "nearest",
                                                       ACC=accumulation(f_ab.dtype)[0], BLOCK=BLOCK)
    return out


def compose_backward(grad_out, f_ab, f_bc, mode, output_mask):
    """(d f_ab, d f_bc) for a contiguous grad_out (N, h', w', 2), each None unless output_mask asks for it."""
    return _grid_composition.backward(grad_out, grad_out, grad_out, grad_out, f_ab, f_bc, mode, False, output_mask)
