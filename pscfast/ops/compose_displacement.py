"""compose_displacement and truncated_flow_loss: Zhou et al.'s (CVPR 2016) transitive composition of pixel
displacement fields with matchability, and their truncated Euclidean flow loss.

Backends: cpp (CPU C++ / CUDA C++), triton, torch (reference). Hand-written backward passes: the image-a
gradients are pointwise, the image-b gradients (scatters) are summed in a fixed order, the loss reduces
per-block partial sums in a fixed order: all deterministic.
"""
from __future__ import annotations

import torch
from torch import nn

from pscfast import _extension

from . import _checks, _fake, _higher_order, _reference
from ._dispatch import Op, register_op


def _register() -> None:
    """Fake (meta) and autograd implementations of the compiled pscfast cycle ops."""
    @torch.library.register_fake("pscfast::compose_displacement")
    def _(f_ab, f_bc, m_ab, m_bc):
        return _fake.like(f_ab), _fake.like(m_ab)

    @torch.library.register_fake("pscfast::_compose_displacement_backward")
    def _(grad_f, grad_m, f_ab, f_bc, m_ab, m_bc):
        return _fake.like(f_ab), _fake.like(f_bc), _fake.like(m_ab), _fake.like(m_bc)

    @torch.library.register_fake("pscfast::truncated_flow_loss")
    def _(pred, target, mask, T):
        return pred.new_empty(())

    @torch.library.register_fake("pscfast::_truncated_flow_loss_backward")
    def _(grad, pred, target, mask, T, output_mask):
        shapes = (pred.shape, pred.shape, pred[:, :1].shape)
        return tuple(pred.new_empty(s if need else (0,)) for s, need in zip(shapes, output_mask))

    def setup_compose(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward_compose(ctx, grad_f, grad_m):
        if _higher_order.recording():
            return _higher_order.reference_grads(_reference.compose_displacement, ctx.saved_tensors,
                                                 (grad_f, grad_m), ctx.needs_input_grad)
        return torch.ops.pscfast._compose_displacement_backward(grad_f.contiguous(), grad_m.contiguous(),
                                                                *ctx.saved_tensors)

    def setup_loss(ctx, inputs, output):
        pred, target, mask, T = inputs
        ctx.save_for_backward(pred, target, mask)
        ctx.T = T

    def backward_loss(ctx, grad):
        pred, target, mask = ctx.saved_tensors
        if _higher_order.recording():
            return _higher_order.reference_grads(_reference.truncated_flow_loss, (pred, target, mask, ctx.T), grad,
                                                 ctx.needs_input_grad)
        need = [bool(n) for n in ctx.needs_input_grad[:3]]  # the bench and PSC need d pred only
        if not any(need):
            return None, None, None, None
        grads = torch.ops.pscfast._truncated_flow_loss_backward(grad, pred, target, mask, ctx.T, need)
        return (*(d if n else None for d, n in zip(grads, need)), None)

    torch.library.register_autograd("pscfast::compose_displacement", backward_compose, setup_context=setup_compose)
    torch.library.register_autograd("pscfast::truncated_flow_loss", backward_loss, setup_context=setup_loss)


if _extension.loaded():
    _register()


def _compose_cpp(f_ab, f_bc, m_ab, m_bc):
    return tuple(torch.ops.pscfast.compose_displacement(f_ab, f_bc, m_ab, m_bc))


def _loss_cpp(pred, target, mask, T):
    return torch.ops.pscfast.truncated_flow_loss(pred, target, mask, T)


def _contiguous(*tensors):
    return [None if t is None else t.contiguous() for t in tensors]


class _ComposeTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f_ab, f_bc, m_ab, m_bc):
        from pscfast.kernels import compose_displacement as k

        ctx.save_for_backward(f_ab, f_bc, m_ab, m_bc)  # the inputs: a recorded backward differentiates through them
        return k.compose_displacement_fwd(*_contiguous(f_ab, f_bc, m_ab, m_bc))

    @staticmethod
    def backward(ctx, grad_f, grad_m):
        from pscfast.kernels import compose_displacement as k

        if _higher_order.recording():
            return _higher_order.reference_grads(_reference.compose_displacement, ctx.saved_tensors,
                                                 (grad_f, grad_m), ctx.needs_input_grad)
        return k.compose_displacement_bwd(grad_f.contiguous(), grad_m.contiguous(),
                                          *_contiguous(*ctx.saved_tensors))


class _LossTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred, target, mask, T):
        from pscfast.kernels import compose_displacement as k

        ctx.save_for_backward(pred, target, mask)  # the inputs: a recorded backward differentiates through them
        ctx.T = T
        return k.truncated_loss_fwd(*_contiguous(pred, target, mask), T)

    @staticmethod
    def backward(ctx, grad):
        from pscfast.kernels import compose_displacement as k

        pred, target, mask = ctx.saved_tensors
        if _higher_order.recording():
            return _higher_order.reference_grads(_reference.truncated_flow_loss, (pred, target, mask, ctx.T), grad,
                                                 ctx.needs_input_grad)
        return (*k.truncated_loss_bwd(grad, *_contiguous(pred, target, mask), ctx.T, ctx.needs_input_grad[:3]),
                None)


def _compose_triton(f_ab, f_bc, m_ab, m_bc):
    return _ComposeTriton.apply(f_ab, f_bc, m_ab, m_bc)


def _loss_triton(pred, target, mask, T):
    return _LossTriton.apply(pred, target, mask, T)


def _compose_torch(f_ab, f_bc, m_ab, m_bc):
    return _reference.compose_displacement(f_ab, f_bc, m_ab, m_bc)


COMPOSE_DISPLACEMENT = register_op(Op("compose_displacement", {"cpp": _compose_cpp, "triton": _compose_triton,
                                                               "torch": _compose_torch}))
TRUNCATED_FLOW_LOSS = register_op(Op("truncated_flow_loss", {"cpp": _loss_cpp, "triton": _loss_triton,
                                                             "torch": _reference.truncated_flow_loss}))


def _field(op: str, name: str, t: torch.Tensor, channels: int, like: torch.Tensor | None = None) -> None:
    _checks.tensor(op, name, t, dims=4)
    if t.shape[1] != channels:
        raise ValueError(f"pscfast.ops.{op}: {name} must be (N, {channels}, H, W), got shape {tuple(t.shape)}")
    _checks.nonempty_spatial(op, name, t)
    if like is not None and t.shape[2:] != like.shape[2:]:
        raise ValueError(f"pscfast.ops.{op}: {name} must have the spatial size {tuple(like.shape[2:])}, "
                         f"got shape {tuple(t.shape)}")
    _checks.plane(op, name, t.shape[2:], bits=30)
    _checks.finite(op, name, t)


def compose_displacement(f_ab: torch.Tensor, f_bc: torch.Tensor, m_ab: torch.Tensor | None = None,
                         m_bc: torch.Tensor | None = None, *, backend: str | None = None):
    """Transitive composition of pixel displacement fields with matchability (Zhou et al., CVPR 2016).

    F_ac(p) = F_ab(p) + F_bc(p + F_ab(p)),  M_ac(p) = M_ab(p) * M_bc(p + F_ab(p)), sampled bilinearly with 0
    outside image b.

    Args:
        f_ab: (N, 2, H, W) displacement on image a, channel 0 = x (columns), 1 = y (rows), in pixels.
        f_bc: (N, 2, Hb, Wb) displacement on image b.
        m_ab: (N, 1, H, W) matchability of a -> b, default 1.
        m_bc: (N, 1, Hb, Wb) matchability of b -> c, default 1 (then M_ac is the in-image fraction of the
            bilinear taps).
        backend: "cpp", "triton" or "torch"; default: fastest available.

    Second derivatives (a backward with create_graph=True: gradient penalties, Hessian-vector products)
    differentiate the plain PyTorch reference (pscfast.ops._reference): exact, at the reference's speed.

    Returns:
        (f_ac (N, 2, H, W), m_ac (N, 1, H, W)); gradients flow to both flows and both maps.
    """
    op = "compose_displacement"
    _field(op, "f_ab", f_ab, 2)
    _field(op, "f_bc", f_bc, 2)
    if m_ab is not None:
        _field(op, "m_ab", m_ab, 1, f_ab)
    if m_bc is not None:
        _field(op, "m_bc", m_bc, 1, f_bc)
    given = {k: v for k, v in dict(f_ab=f_ab, f_bc=f_bc, m_ab=m_ab, m_bc=m_bc).items() if v is not None}
    _checks.same_device(op, **given)
    _checks.same_batch(op, **given)
    f_ab, f_bc, *maps = _checks.promote(*given.values())
    m_ab = maps.pop(0) if m_ab is not None else f_ab.new_ones(f_ab[:, :1].shape)
    m_bc = maps.pop(0) if m_bc is not None else f_bc.new_ones(f_bc[:, :1].shape)
    _, impl = COMPOSE_DISPLACEMENT.select(backend, f_ab)
    return impl(f_ab, f_bc, m_ab, m_bc)


def truncated_flow_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                        T: float = 15.0, *, backend: str | None = None) -> torch.Tensor:
    """Zhou et al.'s truncated Euclidean flow loss: sum over pixels p of mask(p) * min(||pred(p) -
    target(p)||^2, T^2), a scalar. pred, target: (N, 2, H, W) displacement fields; mask (N, 1, H, W), default
    all ones (a 0/1 mask selects the valid pixels). The gradient is 0 where the error is truncated. Second
    derivatives (create_graph=True) differentiate the plain PyTorch reference (pscfast.ops._reference)."""
    op = "truncated_flow_loss"
    _field(op, "pred", pred, 2)
    _field(op, "target", target, 2, pred)
    if mask is not None:
        _field(op, "mask", mask, 1, pred)
    if not isinstance(T, (int, float)) or isinstance(T, bool) or not T > 0:
        raise ValueError(f"pscfast.ops.{op}: T must be a positive number, got {T!r}")
    given = {k: v for k, v in dict(pred=pred, target=target, mask=mask).items() if v is not None}
    _checks.same_device(op, **given)
    _checks.same_batch(op, **given)
    pred, target, *rest = _checks.promote(*given.values())
    mask = rest[0] if rest else None
    _, impl = TRUNCATED_FLOW_LOSS.select(backend, pred)
    return impl(pred, target, mask, float(T))


class ComposeDisplacement(nn.Module):
    """Module form of :func:`compose_displacement`: ``ComposeDisplacement()(f_ab, f_bc, m_ab, m_bc)``."""

    def __init__(self, backend: str | None = None):
        super().__init__()
        self.backend = backend

    def forward(self, f_ab, f_bc, m_ab=None, m_bc=None):
        return compose_displacement(f_ab, f_bc, m_ab, m_bc, backend=self.backend)


class TruncatedFlowLoss(nn.Module):
    """Module form of :func:`truncated_flow_loss`: ``TruncatedFlowLoss(T)(pred, target, mask)``."""

    def __init__(self, T: float = 15.0, backend: str | None = None):
        super().__init__()
        self.T, self.backend = T, backend

    def forward(self, pred, target, mask=None):
        return truncated_flow_loss(pred, target, mask, self.T, backend=self.backend)

    def extra_repr(self) -> str:
        return f"T={self.T}"
