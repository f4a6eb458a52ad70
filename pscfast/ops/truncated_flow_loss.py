"""truncated_flow_loss: Zhou et al.'s (CVPR 2016) truncated Euclidean flow loss.

Backends: cpp (CPU C++ / CUDA C++), triton, torch (reference). The forward reduces per-block partial sums in a
fixed order; the backward is pointwise and computes only the gradients asked for: deterministic.
"""
from __future__ import annotations

import torch
from torch import nn

from pscfast import _extension

from . import _checks, _fake, _higher_order, _output_mask, _reference
from ._dispatch import Op, register_op


def _register() -> None:
    """Fake (meta) and autograd implementations of the compiled pscfast::truncated_flow_loss ops."""
    @torch.library.register_fake("pscfast::truncated_flow_loss")
    def _(pred, target, mask, T):
        return pred.new_empty(())

    @torch.library.register_fake("pscfast::_truncated_flow_loss_backward")
    def _(grad, pred, target, mask, T, output_mask):
        return _fake.grads(output_mask, pred, target, mask)

    def setup(ctx, inputs, output):
        pred, target, mask, T = inputs
        ctx.save_for_backward(pred, target, mask)
        ctx.T = T

    def backward(ctx, grad):
        pred, target, mask = ctx.saved_tensors
        if _higher_order.recording():
            return _higher_order.reference_grads(_reference.truncated_flow_loss, (pred, target, mask, ctx.T), grad,
                                                 ctx.needs_input_grad)
        grads = torch.ops.pscfast._truncated_flow_loss_backward(grad, pred, target, mask, ctx.T,
                                                                _output_mask.from_autograd(ctx.needs_input_grad, 3))
        return (*grads, None)

    torch.library.register_autograd("pscfast::truncated_flow_loss", backward, setup_context=setup)


if _extension.loaded():
    _register()


def _cpp(pred, target, mask, T):
    return torch.ops.pscfast.truncated_flow_loss(pred, target, mask, T)


def _contiguous(*tensors):
    return [None if t is None else t.contiguous() for t in tensors]


class _TruncatedFlowLossTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred, target, mask, T):
        from pscfast.kernels import truncated_flow_loss as k

        ctx.save_for_backward(pred, target, mask)  # the inputs: a recorded backward differentiates through them
        ctx.T = T
        return k.truncated_flow_loss(*_contiguous(pred, target, mask), T)

    @staticmethod
    def backward(ctx, grad):
        from pscfast.kernels import truncated_flow_loss as k

        pred, target, mask = ctx.saved_tensors
        if _higher_order.recording():
            return _higher_order.reference_grads(_reference.truncated_flow_loss, (pred, target, mask, ctx.T), grad,
                                                 ctx.needs_input_grad)
        return (*k.truncated_flow_loss_backward(grad, *_contiguous(pred, target, mask), ctx.T,
                                                _output_mask.from_autograd(ctx.needs_input_grad, 3)), None)


def _triton(pred, target, mask, T):
    return _TruncatedFlowLossTriton.apply(pred, target, mask, T)


TRUNCATED_FLOW_LOSS = register_op(Op("truncated_flow_loss", {"cpp": _cpp, "triton": _triton,
                                                             "torch": _reference.truncated_flow_loss}))


def truncated_flow_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                        T: float = 15.0, *, backend: str | None = None) -> torch.Tensor:
    """Zhou et al.'s truncated Euclidean flow loss: sum over pixels p of mask(p) * min(||pred(p) -
    target(p)||^2, T^2), a scalar. pred, target: (N, 2, H, W) displacement fields; mask (N, 1, H, W), default
    all ones (a 0/1 mask selects the valid pixels). The gradient is 0 where the error is truncated. Second
    derivatives (create_graph=True) differentiate the plain PyTorch reference (pscfast.ops._reference)."""
    op = "truncated_flow_loss"
    _checks.field(op, "pred", pred, 2)
    _checks.field(op, "target", target, 2, pred)
    if mask is not None:
        _checks.field(op, "mask", mask, 1, pred)
    if not isinstance(T, (int, float)) or isinstance(T, bool) or not T > 0:
        raise ValueError(f"pscfast.ops.{op}: T must be a positive number, got {T!r}")
    given = {k: v for k, v in dict(pred=pred, target=target, mask=mask).items() if v is not None}
    _checks.same_device(op, **given)
    _checks.same_batch(op, **given)
    pred, target, *rest = _checks.promote(*given.values())
    mask = rest[0] if rest else None
    _, impl = TRUNCATED_FLOW_LOSS.select(backend, pred)
    return impl(pred, target, mask, float(T))


class TruncatedFlowLoss(nn.Module):
    """Module form of :func:`truncated_flow_loss`: ``TruncatedFlowLoss(T)(pred, target, mask)``."""

    def __init__(self, T: float = 15.0, backend: str | None = None):
        super().__init__()
        self.T, self.backend = T, backend

    def forward(self, pred, target, mask=None):
        return truncated_flow_loss(pred, target, mask, self.T, backend=self.backend)

    def extra_repr(self) -> str:
        return f"T={self.T}"
