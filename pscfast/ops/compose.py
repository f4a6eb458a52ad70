"""compose: flow composition on absolute grids, F_ab o F_bc (f_ab sampled at the positions f_bc).

Backends: cpp (CPU C++ / CUDA C++), triton, torch (reference). The backward computes the f_bc gradient
pointwise and the f_ab gradient (a scatter) summed in a fixed order (deterministic), each only when autograd
asks for it.
"""
from __future__ import annotations

import torch
from torch import nn

from pscfast import _extension

from . import _checks, _fake, _higher_order, _output_mask, _reference
from ._dispatch import Op, register_op

MODES = ("nearest", "bilinear")


def _register() -> None:
    """Fake (meta) and autograd implementations of the compiled pscfast::compose ops."""
    @torch.library.register_fake("pscfast::compose")
    def _(f_ab, f_bc, mode):
        return _fake.like(f_bc)

    @torch.library.register_fake("pscfast::_compose_backward")
    def _(grad_out, f_ab, f_bc, mode, output_mask):
        return _fake.grads(output_mask, f_ab, f_bc)

    def setup(ctx, inputs, output):
        f_ab, f_bc, mode = inputs
        ctx.save_for_backward(f_ab, f_bc)
        ctx.mode = mode

    def backward(ctx, grad):
        f_ab, f_bc = ctx.saved_tensors
        if _higher_order.recording():
            return _higher_order.reference_grads(_reference.compose, (f_ab, f_bc, ctx.mode), grad,
                                                 ctx.needs_input_grad)
        d_ab, d_bc = torch.ops.pscfast._compose_backward(grad.contiguous(), f_ab, f_bc, ctx.mode,
                                                         _output_mask.from_autograd(ctx.needs_input_grad, 2))
        return d_ab, d_bc, None

    torch.library.register_autograd("pscfast::compose", backward, setup_context=setup)


if _extension.loaded():
    _register()


def _cpp(f_ab, f_bc, mode):
    return torch.ops.pscfast.compose(f_ab, f_bc, mode)


class _ComposeTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f_ab, f_bc, mode):
        from pscfast.kernels import compose as k

        ctx.save_for_backward(f_ab, f_bc)  # the inputs: a recorded backward differentiates through them
        ctx.mode = mode
        return k.compose(f_ab.contiguous(), f_bc.contiguous(), mode)

    @staticmethod
    def backward(ctx, grad):
        from pscfast.kernels import compose as k

        f_ab, f_bc = ctx.saved_tensors
        if _higher_order.recording():
            return _higher_order.reference_grads(_reference.compose, (f_ab, f_bc, ctx.mode), grad,
                                                 ctx.needs_input_grad)
        d_ab, d_bc = k.compose_backward(grad.contiguous(), f_ab.contiguous(), f_bc.contiguous(), ctx.mode,
                                        _output_mask.from_autograd(ctx.needs_input_grad, 2))
        return d_ab, d_bc, None


def _triton(f_ab, f_bc, mode):
    return _ComposeTriton.apply(f_ab, f_bc, mode)


COMPOSE = register_op(Op("compose", {"cpp": _cpp, "triton": _triton, "torch": _reference.compose}))

def compose(f_ab: torch.Tensor, f_bc: torch.Tensor, mode: str = "bilinear", *,
            backend: str | None = None) -> torch.Tensor:
    """F_ab o F_bc on absolute grids: f_ab sampled at the positions f_bc.

    Args:
        f_ab: (N, h, w, 2) absolute grid (x, y in [-1, 1], align_corners=True), read as a 2-channel image.
        f_bc: (N, h', w', 2) absolute grid of sampling positions into f_ab's grid; outside [-1, 1] reads 0.
        mode: "bilinear" (differentiable in both flows) or "nearest" (round half to even, as grid_sample;
            gradient to f_ab only).
        backend: "cpp", "triton" or "torch"; default: fastest available.

    Second derivatives (a backward with create_graph=True: gradient penalties, Hessian-vector products)
    differentiate the plain PyTorch reference (pscfast.ops._reference): exact, at the reference's speed.

    Returns:
        (N, h', w', 2) composed grid on f_bc's grid, in the common dtype.
    """
    _checks.choice("compose", "mode", mode, MODES)
    f_ab, f_bc = _checks.absolute_grids("compose", f_ab=f_ab, f_bc=f_bc)
    _, impl = COMPOSE.select(backend, f_ab)
    return impl(f_ab, f_bc, mode)


class Compose(nn.Module):
    """Module form of :func:`compose`: ``Compose(mode)(f_ab, f_bc)``."""

    def __init__(self, mode: str = "bilinear", backend: str | None = None):
        super().__init__()
        self.mode, self.backend = mode, backend

    def forward(self, f_ab, f_bc):
        return compose(f_ab, f_bc, self.mode, backend=self.backend)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
