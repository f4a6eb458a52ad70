"""similarity_loss: PSC's weighted perceptual similarity (SPEC sections 1 and 3, op 3), fused.

The layers are resized and concatenated with ATen ops (O(N C size^2), differentiable by autograd); the
compiled and Triton kernels take the concatenated features and never store the (size^2 x size^2)
similarity matrix: they recompute it tile by tile in a forward pass and two backward passes.
Backends: cpp (CPU, CUDA), triton, torch (reference).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pscfast import _extension

from . import _checks, _reference
from ._dispatch import Op, register_op
from .correlation import _layers


def _register() -> None:
    """Fake (meta) and autograd implementations of the compiled pscfast::similarity_loss ops."""
    @torch.library.register_fake("pscfast::similarity_loss")
    def _(fw, ft, tau):
        n, p = fw.shape[0], fw.shape[2] * fw.shape[3]
        stats_dtype = torch.float32 if fw.dtype in (torch.float16, torch.bfloat16) else fw.dtype  # fp32 LSE
        return fw.new_empty((n, p)), fw.new_empty((n, p)), fw.new_empty((n, 3, p), dtype=stats_dtype)

    @torch.library.register_fake("pscfast::_similarity_loss_backward")
    def _(grad_ce, fw, ft, stats, tau, need_ft):
        return torch.empty_like(fw, memory_format=torch.contiguous_format), \
            (torch.empty_like(ft, memory_format=torch.contiguous_format) if need_ft else fw.new_empty((0,)))

    def setup(ctx, inputs, output):
        fw, ft, tau = inputs
        ctx.save_for_backward(fw, ft, output[2])
        ctx.tau = tau
        ctx.mark_non_differentiable(output[1], output[2])

    def backward(ctx, grad_ce, grad_weight, grad_stats):
        fw, ft, stats = ctx.saved_tensors
        dfw, dft = torch.ops.pscfast._similarity_loss_backward(grad_ce.contiguous(), fw, ft, stats, ctx.tau,
                                                                ctx.needs_input_grad[1])
        return (dfw if ctx.needs_input_grad[0] else None), (dft if ctx.needs_input_grad[1] else None), None

    torch.library.register_autograd("pscfast::similarity_loss", backward, setup_context=setup)


if _extension.loaded():
    _register()


def _features(layers, size: int) -> torch.Tensor:
    """(N, sum C_l, size, size): every layer resized (bilinear, align_corners=False), then concatenated."""
    return torch.cat([_reference.resize_features(f, size) for f in layers], dim=1)


def _cpp(fw, ft, tau, size):
    ce, weight, _ = torch.ops.pscfast.similarity_loss(_features(fw, size).contiguous(),
                                                      _features(ft, size).contiguous(), tau)
    return ce, weight


class _SimilarityLossTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fw, ft, tau):
        from pscfast.kernels import similarity_loss as k

        ce, weight, stats = k.similarity_loss_fwd(fw, ft, tau)
        ctx.save_for_backward(fw, ft, stats)
        ctx.tau = tau
        ctx.mark_non_differentiable(weight)
        return ce, weight

    @staticmethod
    def backward(ctx, grad_ce, grad_weight):
        from pscfast.kernels import similarity_loss as k

        fw, ft, stats = ctx.saved_tensors
        dfw, dft = k.similarity_loss_bwd(grad_ce.contiguous(), fw, ft, stats, ctx.tau, ctx.needs_input_grad[1])
        return (dfw if ctx.needs_input_grad[0] else None), dft, None


def _triton(fw, ft, tau, size):
    return _SimilarityLossTriton.apply(_features(fw, size).contiguous(), _features(ft, size).contiguous(), tau)


SIMILARITY_LOSS = register_op(Op("similarity_loss", {"cpp": _cpp, "triton": _triton,
                                                     "torch": _reference.similarity_loss},
                                  triton_dtypes=(torch.float16, torch.bfloat16, torch.float32)))


def similarity_loss(fw: Sequence[torch.Tensor], ft: Sequence[torch.Tensor], tau: float = 0.001, size: int = 16,
                    *, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position cross-entropy and weight of PSC's weighted perceptual similarity, one direction.

    Args:
        fw, ft: sequences of per-layer maps (N, C_l, H_l, W_l) of the warped and the target image; each is
            resized to size x size (bilinear, align_corners=False) and the layers are concatenated on channels.
        tau: softmax temperature (0.001 in the paper: logits up to ~1000).
        size: the grid side (16 in the paper; 32 and 64 for finer correspondence).
        backend: "cpp", "triton" or "torch" (see pscfast.ops._dispatch); default: fastest available.

    Returns:
        (ce, weight), each (N, size^2); the direction's loss is (ce * weight).mean(). weight is detached.
    """
    op = "similarity_loss"
    fw, ft = _layers(op, "fw", fw), _layers(op, "ft", ft)
    if [f.shape[:2] for f in fw] != [f.shape[:2] for f in ft]:
        raise ValueError(f"pscfast.ops.{op}: fw and ft must have the same layers (batch and channels), got "
                         f"{[tuple(f.shape) for f in fw]} and {[tuple(f.shape) for f in ft]}")
    if not tau > 0:
        raise ValueError(f"pscfast.ops.{op}: tau must be positive, got {tau}")
    size = _checks.size_pair(op, "size", size)[0]
    _checks.same_device(op, **{f"fw[{i}]": f for i, f in enumerate(fw)}, **{f"ft[{i}]": f for i, f in enumerate(ft)})
    *tensors, = _checks.promote(*fw, *ft)
    fw, ft = tensors[: len(fw)], tensors[len(fw):]
    _, impl = SIMILARITY_LOSS.select(backend, fw[0])
    return impl(fw, ft, float(tau), size)


class SimilarityLoss(nn.Module):
    """``SimilarityLoss(tau, size)(fw, ft) -> (ce, weight)``."""

    def __init__(self, tau: float = 0.001, size: int = 16, backend: str | None = None):
        super().__init__()
        self.tau, self.size, self.backend = tau, size, backend

    def forward(self, fw, ft):
        return similarity_loss(fw, ft, self.tau, self.size, backend=self.backend)
