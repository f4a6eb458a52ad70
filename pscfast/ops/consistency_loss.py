"""consistency_loss: PSC's forward-backward consistency loss (Lu, Wang, Fan, ICML 2023), as the authors' release
computes it: the masked MSE between compose(fwd, bwd) and the identity.

Backends: cpp (CPU C++ / CUDA C++), triton, torch (reference). Fused: one launch computes the cycle, the
release's mask and per-block partial sums, reduced in a fixed order (deterministic); the backward recomputes
the cycle elementwise, sums the fwd gradient (a scatter) in a fixed order too, and computes only the gradients
autograd asks for.
"""
from __future__ import annotations

import torch
from torch import nn

from pscfast import _extension

from . import _checks, _fake, _higher_order, _output_mask, _reference
from ._dispatch import Op, register_op
from .compose import MODES


def _identity_axes(bwd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The identity grid's x (w',) and y (h',) coordinates exactly as the reference builds them."""
    h, w = bwd.shape[1:3]
    return (torch.linspace(-1, 1, w, dtype=bwd.dtype, device=bwd.device),
            torch.linspace(-1, 1, h, dtype=bwd.dtype, device=bwd.device))


def _reference_loss(fwd, bwd, xs, ys, mode):
    """The reference loss with the compiled op's arguments (xs, ys: the identity's axes, constants)."""
    return _reference.consistency_loss(fwd, bwd, mode)


def _register() -> None:
    """Fake (meta) and autograd implementations of the compiled pscfast::consistency_loss ops."""
    @torch.library.register_fake("pscfast::consistency_loss")
    def _(fwd, bwd, xs, ys, mode):
        return fwd.new_empty(()), fwd.new_empty((), dtype=torch.int64)

    @torch.library.register_fake("pscfast::_consistency_loss_backward")
    def _(grad, fwd, bwd, xs, ys, mode, count, output_mask):
        return _fake.grads(output_mask, fwd, bwd)

    def setup(ctx, inputs, output):
        fwd, bwd, xs, ys, mode = inputs
        ctx.save_for_backward(fwd, bwd, xs, ys, output[1])
        ctx.mode = mode

    def backward(ctx, grad, _grad_count):
        fwd, bwd, xs, ys, count = ctx.saved_tensors
        if _higher_order.recording():
            return _higher_order.reference_grads(_reference_loss, (fwd, bwd, xs, ys, ctx.mode), grad,
                                                 ctx.needs_input_grad)
        d_fwd, d_bwd = torch.ops.pscfast._consistency_loss_backward(
            grad, fwd, bwd, xs, ys, ctx.mode, count, _output_mask.from_autograd(ctx.needs_input_grad, 2))
        return d_fwd, d_bwd, None, None, None

    torch.library.register_autograd("pscfast::consistency_loss", backward, setup_context=setup)


if _extension.loaded():
    _register()


def _cpp(fwd, bwd, mode):
    return torch.ops.pscfast.consistency_loss(fwd, bwd, *_identity_axes(bwd), mode)[0]


class _ConsistencyLossTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fwd, bwd, mode):
        from pscfast.kernels import consistency_loss as k

        xs, ys = _identity_axes(bwd)
        loss, count = k.consistency_loss(fwd.contiguous(), bwd.contiguous(), xs, ys, mode)
        ctx.save_for_backward(fwd, bwd, xs, ys, count)
        ctx.mode = mode
        return loss

    @staticmethod
    def backward(ctx, grad):
        from pscfast.kernels import consistency_loss as k

        fwd, bwd, xs, ys, count = ctx.saved_tensors
        if _higher_order.recording():
            return _higher_order.reference_grads(_reference.consistency_loss, (fwd, bwd, ctx.mode), grad,
                                                 ctx.needs_input_grad)
        d_fwd, d_bwd = k.consistency_loss_backward(grad.contiguous(), fwd.contiguous(), bwd.contiguous(), xs, ys,
                                                   ctx.mode, count, _output_mask.from_autograd(ctx.needs_input_grad, 2))
        return d_fwd, d_bwd, None


def _triton(fwd, bwd, mode):
    return _ConsistencyLossTriton.apply(fwd, bwd, mode)


CONSISTENCY_LOSS = register_op(Op("consistency_loss", {"cpp": _cpp, "triton": _triton,
                                                       "torch": _reference.consistency_loss}))


def consistency_loss(fwd: torch.Tensor, bwd: torch.Tensor, mode: str = "nearest", *,
                     backend: str | None = None) -> torch.Tensor:
    """PSC's forward-backward consistency loss: masked MSE between compose(fwd, bwd) and the identity.

    fwd, bwd: absolute grids (N, h, w, 2) in the release convention (fwd on the sketch grid pointing into the
    photo, bwd the reverse). mode "nearest" reproduces the release (gradient to fwd only); "bilinear" is
    differentiable in both flows. The mask keeps each cycle coordinate c (x and y on their own) with identity
    coordinate i where c != 0, i != 0, |c| <= 1, |i| <= 1. Returns a scalar, 0 when nothing is masked in.
    Second derivatives (create_graph=True) differentiate the plain PyTorch reference (pscfast.ops._reference).
    """
    _checks.choice("consistency_loss", "mode", mode, MODES)
    fwd, bwd = _checks.absolute_grids("consistency_loss", fwd=fwd, bwd=bwd)
    _, impl = CONSISTENCY_LOSS.select(backend, fwd)
    return impl(fwd, bwd, mode)


class ConsistencyLoss(nn.Module):
    """Module form of :func:`consistency_loss`: ``ConsistencyLoss(mode)(fwd, bwd)``."""

    def __init__(self, mode: str = "nearest", backend: str | None = None):
        super().__init__()
        self.mode, self.backend = mode, backend

    def forward(self, fwd, bwd):
        return consistency_loss(fwd, bwd, self.mode, backend=self.backend)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
