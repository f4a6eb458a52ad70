"""compose and consistency_loss: flow composition on absolute grids and PSC's forward-backward
consistency loss.

Backends: cpp (CPU C++ / CUDA C++), triton, torch (reference). The loss is fused: one launch computes the
cycle, the release's mask and per-block partial sums, reduced in a fixed order (deterministic); the
backward recomputes the cycle elementwise. The f_ab gradient (a scatter) is summed in a fixed order too.
"""
from __future__ import annotations

import torch
from torch import nn

from pscfast import _extension

from . import _checks, _fake, _higher_order, _reference
from ._dispatch import Op, register_op

MODES = ("nearest", "bilinear")


def _identity_axes(bwd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The identity grid's x (w',) and y (h',) coordinates exactly as the reference builds them."""
    h, w = bwd.shape[1:3]
    return (torch.linspace(-1, 1, w, dtype=bwd.dtype, device=bwd.device),
            torch.linspace(-1, 1, h, dtype=bwd.dtype, device=bwd.device))


def _reference_loss(fwd, bwd, xs, ys, mode):
    """The reference loss with the compiled op's arguments (xs, ys: the identity's axes, constants)."""
    return _reference.consistency_loss(fwd, bwd, mode)


def _register() -> None:
    """Fake (meta) and autograd implementations of the compiled pscfast::compose and consistency ops."""
    @torch.library.register_fake("pscfast::compose")
    def _(f_ab, f_bc, mode):
        return _fake.like(f_bc)

    @torch.library.register_fake("pscfast::_compose_backward")
    def _(grad_out, f_ab, f_bc, mode):
        return _fake.like(f_ab), _fake.like(f_bc)

    @torch.library.register_fake("pscfast::consistency_loss")
    def _(fwd, bwd, xs, ys, mode):
        return fwd.new_empty(()), fwd.new_empty((), dtype=torch.int64)

    @torch.library.register_fake("pscfast::_consistency_loss_backward")
    def _(grad, count, fwd, bwd, xs, ys, mode):
        return _fake.like(fwd), _fake.like(bwd)

    def setup_compose(ctx, inputs, output):
        f_ab, f_bc, mode = inputs
        ctx.save_for_backward(f_ab, f_bc)
        ctx.mode = mode

    def backward_compose(ctx, grad):
        f_ab, f_bc = ctx.saved_tensors
        if _higher_order.recording():
            return _higher_order.reference_grads(_reference.compose, (f_ab, f_bc, ctx.mode), grad,
                                                 ctx.needs_input_grad)
        d_ab, d_bc = torch.ops.pscfast._compose_backward(grad.contiguous(), f_ab, f_bc, ctx.mode)
        return d_ab, d_bc, None

    def setup_loss(ctx, inputs, output):
        fwd, bwd, xs, ys, mode = inputs
        ctx.save_for_backward(fwd, bwd, xs, ys, output[1])
        ctx.mode = mode

    def backward_loss(ctx, grad, _grad_count):
        fwd, bwd, xs, ys, count = ctx.saved_tensors
        if _higher_order.recording():
            return _higher_order.reference_grads(_reference_loss, (fwd, bwd, xs, ys, ctx.mode), grad,
                                                 ctx.needs_input_grad)
        d_fwd, d_bwd = torch.ops.pscfast._consistency_loss_backward(grad, count, fwd, bwd, xs, ys, ctx.mode)
        return d_fwd, d_bwd, None, None, None

    torch.library.register_autograd("pscfast::compose", backward_compose, setup_context=setup_compose)
    torch.library.register_autograd("pscfast::consistency_loss", backward_loss, setup_context=setup_loss)


if _extension.loaded():
    _register()


def _compose_cpp(f_ab, f_bc, mode):
    return torch.ops.pscfast.compose(f_ab, f_bc, mode)


def _loss_cpp(fwd, bwd, mode):
    return torch.ops.pscfast.consistency_loss(fwd, bwd, *_identity_axes(bwd), mode)[0]


class _ComposeTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f_ab, f_bc, mode):
        from pscfast.kernels import compose as k

        ctx.save_for_backward(f_ab, f_bc)  # the inputs: a recorded backward differentiates through them
        ctx.mode = mode
        return k.compose_fwd(f_ab.contiguous(), f_bc.contiguous(), mode)

    @staticmethod
    def backward(ctx, grad):
        from pscfast.kernels import compose as k

        f_ab, f_bc = ctx.saved_tensors
        if _higher_order.recording():
            return _higher_order.reference_grads(_reference.compose, (f_ab, f_bc, ctx.mode), grad,
                                                 ctx.needs_input_grad)
        d_ab, d_bc = k.compose_bwd(grad.contiguous(), f_ab.contiguous(), f_bc.contiguous(), ctx.mode)
        return d_ab, d_bc, None


class _LossTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fwd, bwd, mode):
        from pscfast.kernels import compose as k

        xs, ys = _identity_axes(bwd)
        loss, count = k.consistency_fwd(fwd.contiguous(), bwd.contiguous(), xs, ys, mode)
        ctx.save_for_backward(fwd, bwd, xs, ys, count)
        ctx.mode = mode
        return loss

    @staticmethod
    def backward(ctx, grad):
        from pscfast.kernels import compose as k

        fwd, bwd, xs, ys, count = ctx.saved_tensors
        if _higher_order.recording():
            return _higher_order.reference_grads(_reference.consistency_loss, (fwd, bwd, ctx.mode), grad,
                                                 ctx.needs_input_grad)
        d_fwd, d_bwd = k.consistency_bwd(grad.contiguous(), count, fwd.contiguous(), bwd.contiguous(), xs, ys,
                                         ctx.mode)
        return d_fwd, d_bwd, None


def _compose_triton(f_ab, f_bc, mode):
    return _ComposeTriton.apply(f_ab, f_bc, mode)


def _loss_triton(fwd, bwd, mode):
    return _LossTriton.apply(fwd, bwd, mode)


COMPOSE = register_op(Op("compose", {"cpp": _compose_cpp, "triton": _compose_triton, "torch": _reference.compose}))
CONSISTENCY_LOSS = register_op(Op("consistency_loss", {"cpp": _loss_cpp, "triton": _loss_triton,
                                                       "torch": _reference.consistency_loss}))


def _flows(op: str, **flows: torch.Tensor) -> list[torch.Tensor]:
    for name, f in flows.items():
        _checks.tensor(op, name, f, dims=4, last=2)
        _checks.nonempty_spatial(op, name, f[..., 0])
        _checks.plane(op, name, f.shape[1:3], bits=30)
        _checks.finite(op, name, f)
    _checks.same_device(op, **flows)
    _checks.same_batch(op, **flows)
    return _checks.promote(*flows.values())


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
    f_ab, f_bc = _flows("compose", f_ab=f_ab, f_bc=f_bc)
    _, impl = COMPOSE.select(backend, f_ab)
    return impl(f_ab, f_bc, mode)


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
    fwd, bwd = _flows("consistency_loss", fwd=fwd, bwd=bwd)
    _, impl = CONSISTENCY_LOSS.select(backend, fwd)
    return impl(fwd, bwd, mode)


class Compose(nn.Module):
    """Module form of :func:`compose`: ``Compose(mode)(f_ab, f_bc)``."""

    def __init__(self, mode: str = "bilinear", backend: str | None = None):
        super().__init__()
        self.mode, self.backend = mode, backend

    def forward(self, f_ab, f_bc):
        return compose(f_ab, f_bc, self.mode, backend=self.backend)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class ConsistencyLoss(nn.Module):
    """Module form of :func:`consistency_loss`: ``ConsistencyLoss(mode)(fwd, bwd)``."""

    def __init__(self, mode: str = "nearest", backend: str | None = None):
        super().__init__()
        self.mode, self.backend = mode, backend

    def forward(self, fwd, bwd):
        return consistency_loss(fwd, bwd, self.mode, backend=self.backend)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
