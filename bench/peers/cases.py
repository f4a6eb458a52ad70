"""The benchmark cases at other models' shapes: for each, how to make its inputs and every provider of it
(`naive`: the model's plain-PyTorch code; `pscfast`: the same computation through pscfast.ops, the default
backend as a user gets it; `sampler`: spatial-correlation-sampler where the model's port uses it).

Shapes: GLU-Net (256x256 pyramid, batch 2: global correlation at 16x16 with 256 channels, feature warps and
local cost volumes at 32x32 with 256 channels and 64x64 with 128), SFNet (ResNet-101's 1024- and
2048-channel levels at 16x16 for a 256x256 image, batch 1, and the paper's training shape, batch 16 at
20x20), RAFT (batch 1, 256 channels at 1/8 of 256x256 and 256x320 images; lookups of 9x9 windows for the
1024 pixels of a 32x32 map), FlowNetC (batch 2, 256 channels, 32x40, patch 21 with dilation 2) and PWC-Net's
md 4 cost volume at the five levels of its 384x448 training crop (batch 2, 32 to 196 channels). Inputs
require grad where the model trains them (GLU-Net's pyramid is frozen: its warps differentiate the flow
only; RAFT's lookups differentiate the correlation only, the coordinates being detached).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from . import cost_volume, glunet, raft, sfnet


@dataclass(frozen=True)
class Case:
    op: str  # the results' op: a pscfast op, or <model>_head for a whole head
    shape: str  # the results' shape label, model first
    make: Callable  # make(dims, device, dtype) -> (inputs, tensors that require grad)
    dims: tuple  # the model's shape
    small: tuple  # a small shape of the same kind, for the tests
    providers: dict[str, Callable]  # name -> fn(*inputs)
    dtypes: tuple = (torch.float32,)
    unavailable: dict[str, Callable] = field(default_factory=dict)  # name -> fn(dims, dtype, device) -> reason
    canonical: dict[str, Callable] = field(default_factory=dict)  # name -> output in the compared layout

    @property
    def id(self) -> str:
        return f"{self.op}-{self.shape}"

    def why_not(self, provider: str, dims: tuple, dtype: torch.dtype, device: str) -> str | None:
        """Why `provider` cannot run this case here (a package missing, an argument the op rejects), or None."""
        check = self.unavailable.get(provider)
        return check(dims, dtype, device) if check else None


def _randn(shape, device, dtype, grad=False):
    return torch.randn(shape, device=device, dtype=dtype).requires_grad_(grad)


def _pair(grad_a, grad_b):
    def make(dims, device, dtype):
        a, b = _randn(dims, device, dtype, grad_a), _randn(dims, device, dtype, grad_b)
        return (a, b), tuple(t for t in (a, b) if t.requires_grad)
    return make


def _single(dims, device, dtype):
    x = _randn(dims, device, dtype, True)
    return (x,), (x,)


def _warp(grad_x, grad_grid):
    """dims (N, C, H, W, h, w): x (N, C, H, W) sampled at a grid (N, h, w, 2) reaching a little outside."""
    def make(dims, device, dtype):
        n, c, h, w, gh, gw = dims
        x = _randn((n, c, h, w), device, dtype, grad_x)
        grid = (torch.rand(n, gh, gw, 2, device=device, dtype=dtype) * 2.2 - 1.1).requires_grad_(grad_grid)
        return (x, grid), tuple(t for t in (x, grid) if t.requires_grad)
    return make


def _spread(head_inputs):
    """A head module's head_inputs(*dims, device, dtype) as a case's make(dims, device, dtype)."""
    return lambda dims, device, dtype: head_inputs(*dims, device, dtype)


def _local(radius, step=1, sampler_entry=False):
    pscfast_fn = cost_volume.pscfast_sampler_local if sampler_entry else cost_volume.pscfast_local
    return {
        "naive": lambda a, b: cost_volume.shift_and_multiply(a, b, radius, step),
        "pscfast": lambda a, b: pscfast_fn(a, b, radius, step),
        "sampler": lambda a, b: cost_volume.sampler_local(a, b, radius, step),
    }


_SAMPLER = {"sampler": lambda dims, dtype, device: cost_volume.sampler_missing(dtype, device)}
_HALF = (torch.float32, torch.bfloat16)

# PWC-Net's pyramid at its 384x448 training crop: (level, channels, H, W)
PWC_LEVELS = [(6, 196, 6, 7), (5, 128, 12, 14), (4, 96, 24, 28), (3, 64, 48, 56), (2, 32, 96, 112)]


def _glunet_canonical(out):
    side = int(round(out.shape[1] ** 0.5))
    return glunet.column_to_row_major(out, side, side)


CASES = [
    # global correlation
    Case("correlation", "GLU-Net-L4-B2-C256-16x16", _pair(True, True), (2, 256, 16, 16), (2, 8, 5, 5),
         {"naive": glunet.global_correlation, "pscfast": glunet.pscfast_global_correlation},
         canonical={"naive": _glunet_canonical}),
    *(Case("correlation", f"SFNet-B{n}-C{c}-{s}x{s}", _pair(True, True), (n, c, s, s), (2, 16, 5, 5),
           {"naive": sfnet.correlation, "pscfast": sfnet.pscfast_correlation})
      for n, c, s in ((1, 1024, 16), (1, 2048, 16), (16, 1024, 20))),
    *(Case("correlation", f"RAFT-B1-C256-{h}x{w}", _pair(True, True), (1, 256, h, w), (1, 8, h // 8, w // 8),
           {"naive": raft.all_pairs, "pscfast": raft.pscfast_all_pairs})
      for h, w in ((32, 32), (32, 40))),
    # warps
    Case("warp", "GLU-Net-L3-B2-C256-32x32", _warp(False, True), (2, 256, 32, 32, 32, 32), (2, 4, 6, 7, 6, 7),
         {"naive": glunet.sample, "pscfast": glunet.pscfast_sample}, dtypes=_HALF),
    Case("warp", "RAFT-lookup-1024x1x32x32-9x9", _warp(True, False), (1024, 1, 32, 32, 9, 9), (12, 1, 8, 8, 9, 9),
         {"naive": raft.sample, "pscfast": raft.pscfast_sample}),
    Case("warp", "SFNet-mask-B16-1x16x16", _warp(False, True), (16, 1, 16, 16, 16, 16), (3, 1, 5, 5, 5, 5),
         {"naive": sfnet.sample, "pscfast": sfnet.pscfast_sample}),
    # local cost volumes
    Case("local_correlation", "GLU-Net-L3-md4-B2-C256-32x32", _pair(False, True), (2, 256, 32, 32), (2, 8, 6, 7),
         _local(4), dtypes=_HALF, unavailable=_SAMPLER),
    Case("local_correlation", "GLU-Net-L2-md4-B2-C128-64x64", _pair(False, True), (2, 128, 64, 64), (2, 8, 6, 7),
         _local(4), unavailable=_SAMPLER),
    Case("local_correlation", "FlowNetC-p21-d2-B2-C256-32x40", _pair(True, True), (2, 256, 32, 40), (1, 4, 9, 11),
         _local(10, 2, sampler_entry=True), unavailable=_SAMPLER),
    *(Case("local_correlation", f"PWC-Net-L{lvl}-md4-B2-C{c}-{h}x{w}", _pair(True, True), (2, c, h, w),
           (2, 4, min(h, 7), min(w, 8)), _local(4), unavailable=_SAMPLER)
      for lvl, c, h, w in PWC_LEVELS),
    # kernel soft-argmax
    Case("kernel_soft_argmax", "SFNet-B16-20x20", _single, (16, 400, 20, 20), (2, 36, 6, 6),
         {"naive": sfnet.kernel_soft_argmax, "pscfast": sfnet.pscfast_kernel_soft_argmax}),
    # whole heads
    *(Case("raft_head", f"RAFT-B1-C256-{h}x{w}-{raft.ITERATIONS}it", _spread(raft.head_inputs), (1, 256, h, w),
           (1, 8, h // 4, w // 4), {"naive": raft.head, "pscfast": raft.pscfast_head})
      for h, w in ((32, 32), (32, 40))),
    *(Case("sfnet_head", f"SFNet-B{n}-C1024+2048-{s}x{s}", _spread(sfnet.head_inputs), (n, 1024, 2048, s),
           (2, 16, 24, 5), {"naive": sfnet.head, "pscfast": sfnet.pscfast_head})
      for n, s in ((1, 16), (16, 20))),
    Case("glunet_head", "GLU-Net-B2-C256-16x16+32x32", _spread(glunet.head_inputs), (2, 256, 256, 16), (2, 8, 8, 4),
         {"naive": glunet.head, "pscfast": glunet.pscfast_head}),
]
