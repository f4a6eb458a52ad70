"""similarity_loss: PSC's weighted perceptual similarity (Lu, Wang, Fan, ICML 2023; the authors' release), fused.

The ops take the layer lists: each layer is resized (bilinear, align_corners=False) and the layers are
concatenated inside the op, one sample (CPU) or one chunk of samples (CUDA, Triton) at a time, as separable
interpolation matrices whose adjoint is two matmuls (deterministic, unlike interpolate's CUDA backward).
So neither the resized features of the whole batch nor the (size^2 x size^2) similarity matrix are ever
stored: S is recomputed tile by tile in a forward pass and two backward passes; autograd keeps only the
input layers (resident anyway) and the per-sample stats. Backends: cpp (CPU, CUDA), triton, torch (reference).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pscfast import _extension

from . import _checks, _fake, _higher_order, _reference
from ._dispatch import Op, register_op
from .correlation import _layers


def _register() -> None:
    """Fake (meta) and autograd implementations of the compiled pscfast::similarity_loss ops."""
    @torch.library.register_fake("pscfast::similarity_loss")
    def _(fw, ft, tau, size):
        x = fw[0]
        n, p = x.shape[0], size * size
        stats_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype  # fp32 LSE
        return x.new_empty((n, p)), x.new_empty((n, p)), x.new_empty((n, 3, p), dtype=stats_dtype)

    @torch.library.register_fake("pscfast::_similarity_loss_backward")
    def _(grad_ce, fw, ft, stats, tau, size, output_mask):
        return ([_fake.like(x) for x in fw] if output_mask[0] else []), ([_fake.like(x) for x in ft]
                                                                         if output_mask[1] else [])

    @torch.library.register_fake("pscfast_testing::similarity_resize")
    def _(layers, size):
        return layers[0].new_empty((layers[0].shape[0], sum(x.shape[1] for x in layers), size * size))

    @torch.library.register_fake("pscfast_testing::similarity_resize_adjoint")
    def _(grad, layers, size):
        return [_fake.like(x) for x in layers]

    def setup(ctx, inputs, output):
        fw, ft, tau, size = inputs
        ctx.layers, ctx.tau, ctx.size = len(fw), tau, size
        ctx.save_for_backward(*fw, *ft, output[2])
        ctx.mark_non_differentiable(output[1], output[2])

    def backward(ctx, grad_ce, grad_weight, grad_stats):
        *layers, stats = ctx.saved_tensors
        L = ctx.layers
        if _higher_order.recording():
            dfw, dft, _, _ = _higher_order.reference_grads(
                _reference.similarity_loss, (layers[:L], layers[L:], ctx.tau, ctx.size), (grad_ce, None),
                ctx.needs_input_grad)
            return dfw, dft, None, None
        need = [any(n) if isinstance(n, (list, tuple)) else bool(n) for n in ctx.needs_input_grad[:2]]
        dfw, dft = torch.ops.pscfast._similarity_loss_backward(grad_ce.contiguous(), layers[:L], layers[L:], stats,
                                                                ctx.tau, ctx.size, need)
        none = [None] * L  # a list input takes a list of gradients
        return (dfw if need[0] else none), (dft if need[1] else none), None, None

    torch.library.register_autograd("pscfast::similarity_loss", backward, setup_context=setup)


if _extension.loaded():
    _register()


def _cpp(fw, ft, tau, size):
    ce, weight, _ = torch.ops.pscfast.similarity_loss(list(fw), list(ft), tau, size)
    return ce, weight


class _SimilarityLossTriton(torch.autograd.Function):
    """Triton path; the layers travel flattened (autograd tracks tensor arguments only)."""

    @staticmethod
    def forward(ctx, tau, size, layers, *maps):
        from pscfast.kernels import similarity_loss as k

        ce, weight, stats = k.similarity_loss(maps[:layers], maps[layers:], tau, size)
        ctx.save_for_backward(stats, *maps)
        ctx.tau, ctx.size, ctx.layers = tau, size, layers
        ctx.mark_non_differentiable(weight)
        return ce, weight

    @staticmethod
    def backward(ctx, grad_ce, grad_weight):
        from pscfast.kernels import similarity_loss as k

        stats, *maps = ctx.saved_tensors
        L, need = ctx.layers, ctx.needs_input_grad
        if _higher_order.recording():
            dmaps = _higher_order.reference_grads(
                lambda *m: _reference.similarity_loss(m[:L], m[L:], ctx.tau, ctx.size), maps, (grad_ce, None),
                need[3:])
            return (None, None, None, *dmaps)
        dfw, dft = k.similarity_loss_backward(grad_ce, maps[:L], maps[L:], stats, ctx.tau, ctx.size,
                                              [any(need[3:3 + L]), any(need[3 + L:])])
        return (None, None, None, *(dfw or [None] * L), *(dft or [None] * L))


def _triton(fw, ft, tau, size):
    return _SimilarityLossTriton.apply(tau, size, len(fw), *fw, *ft)


SIMILARITY_LOSS = register_op(Op("similarity_loss", {"cpp": _cpp, "triton": _triton,
                                                     "torch": _reference.similarity_loss},
                                  triton_dtypes=(torch.float16, torch.bfloat16, torch.float32)))


def similarity_loss(fw: Sequence[torch.Tensor], ft: Sequence[torch.Tensor], tau: float = 0.001, size: int = 16,
                    *, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position cross-entropy and weight of PSC's weighted perceptual similarity, one direction.

    Args:
        fw, ft: sequences of per-layer maps (N, C_l, H_l, W_l) of the warped and the target image; each is
            resized to size x size (bilinear, align_corners=False) and the layers are concatenated on channels.
        tau: softmax temperature, a positive finite number (0.001 in the paper: logits up to ~1000).
        size: the grid side (16 in the paper; 32 and 64 for finer correspondence): the grid is size x size
            (a pair must be square; the loss matches position i of fw with position i of ft, so both sides
            share one grid, and PSC's is square).
        backend: "cpp", "triton" or "torch" (see pscfast.ops._dispatch); default: fastest available.

    Returns:
        (ce, weight), each (N, size^2); the direction's loss is (ce * weight).mean(). weight is detached;
        ce is differentiable in fw and ft, also twice (second derivatives through the reference).
    """
    op = "similarity_loss"
    fw, ft = _layers(op, "fw", fw), _layers(op, "ft", ft)
    if [f.shape[:2] for f in fw] != [f.shape[:2] for f in ft]:
        raise ValueError(f"pscfast.ops.{op}: fw and ft must have the same layers (batch and channels), got "
                         f"{[tuple(f.shape) for f in fw]} and {[tuple(f.shape) for f in ft]}")
    if fw[0].shape[0] == 0:
        raise ValueError(f"pscfast.ops.{op}: the batch is empty; the weight is min-max scaled over the batch, "
                         "so it needs at least one sample")
    tau = _checks.positive_number(op, "tau", tau)
    h, w = _checks.size_pair(op, "size", size)
    if h != w:
        raise ValueError(f"pscfast.ops.{op}: size must be one int (the grid is size x size) or a square pair, got "
                         f"{size!r}: rectangular grids are not supported")
    if h * h >= 1 << 31:
        raise ValueError(f"pscfast.ops.{op}: size {h} has {h * h} positions; at most 2^31 - 1")
    size = h
    _checks.same_device(op, **{f"fw[{i}]": f for i, f in enumerate(fw)}, **{f"ft[{i}]": f for i, f in enumerate(ft)})
    *tensors, = _checks.promote(*fw, *ft)
    fw, ft = tensors[: len(fw)], tensors[len(fw):]
    _, impl = SIMILARITY_LOSS.select(backend, fw[0])
    return impl(fw, ft, tau, size)


class SimilarityLoss(nn.Module):
    """``SimilarityLoss(tau, size)(fw, ft) -> (ce, weight)``."""

    def __init__(self, tau: float = 0.001, size: int = 16, backend: str | None = None):
        super().__init__()
        self.tau, self.size, self.backend = tau, size, backend

    def forward(self, fw, ft):
        return similarity_loss(fw, ft, self.tau, self.size, backend=self.backend)
