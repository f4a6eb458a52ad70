"""compose_displacement: Zhou et al.'s (CVPR 2016) transitive composition of pixel displacement fields with
matchability.

Backends: cpp (CPU C++ / CUDA C++), triton, torch (reference). Hand-written backward: the image-a gradients
are pointwise, the image-b gradients (scatters) are summed in a fixed order (deterministic); only the gradients
autograd asks for are computed (the maps that the Python layer fills with ones never are).
"""
from __future__ import annotations

import torch
from torch import nn

from pscfast import _extension

from . import _checks, _fake, _higher_order, _output_mask, _reference
from ._dispatch import Op, register_op


def _register() -> None:
    """Fake (meta) and autograd implementations of the compiled pscfast::compose_displacement ops."""
    @torch.library.register_fake("pscfast::compose_displacement")
    def _(f_ab, f_bc, m_ab, m_bc):
        return _fake.like(f_ab), _fake.like(m_ab)

    @torch.library.register_fake("pscfast::_compose_displacement_backward")
    def _(grad_f, grad_m, f_ab, f_bc, m_ab, m_bc, output_mask):
        return _fake.grads(output_mask, f_ab, f_bc, m_ab, m_bc)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad_f, grad_m):
        if _higher_order.recording():
            return _higher_order.reference_grads(_reference.compose_displacement, ctx.saved_tensors,
                                                 (grad_f, grad_m), ctx.needs_input_grad)
        return torch.ops.pscfast._compose_displacement_backward(grad_f.contiguous(), grad_m.contiguous(),
                                                                *ctx.saved_tensors,
                                                                _output_mask.from_autograd(ctx.needs_input_grad, 4))

    torch.library.register_autograd("pscfast::compose_displacement", backward, setup_context=setup)


if _extension.loaded():
    _register()


def _cpp(f_ab, f_bc, m_ab, m_bc):
    return tuple(torch.ops.pscfast.compose_displacement(f_ab, f_bc, m_ab, m_bc))


class _ComposeDisplacementTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f_ab, f_bc, m_ab, m_bc):
        from pscfast.kernels import compose_displacement as k

        ctx.save_for_backward(f_ab, f_bc, m_ab, m_bc)  # the inputs: a recorded backward differentiates through them
        return k.compose_displacement(*(t.contiguous() for t in (f_ab, f_bc, m_ab, m_bc)))

    @staticmethod
    def backward(ctx, grad_f, grad_m):
        from pscfast.kernels import compose_displacement as k

        if _higher_order.recording():
            return _higher_order.reference_grads(_reference.compose_displacement, ctx.saved_tensors,
                                                 (grad_f, grad_m), ctx.needs_input_grad)
        return k.compose_displacement_backward(grad_f.contiguous(), grad_m.contiguous(),
                                               *(t.contiguous() for t in ctx.saved_tensors),
                                               _output_mask.from_autograd(ctx.needs_input_grad, 4))


def _triton(f_ab, f_bc, m_ab, m_bc):
    return _ComposeDisplacementTriton.apply(f_ab, f_bc, m_ab, m_bc)


def _torch(f_ab, f_bc, m_ab, m_bc):
    return _reference.compose_displacement(f_ab, f_bc, m_ab, m_bc)


COMPOSE_DISPLACEMENT = register_op(Op("compose_displacement", {"cpp": _cpp, "triton": _triton, "torch": _torch}))


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
    _checks.field(op, "f_ab", f_ab, 2)
    _checks.field(op, "f_bc", f_bc, 2)
    if m_ab is not None:
        _checks.field(op, "m_ab", m_ab, 1, f_ab)
    if m_bc is not None:
        _checks.field(op, "m_bc", m_bc, 1, f_bc)
    given = {k: v for k, v in dict(f_ab=f_ab, f_bc=f_bc, m_ab=m_ab, m_bc=m_bc).items() if v is not None}
    _checks.same_device(op, **given)
    _checks.same_batch(op, **given)
    f_ab, f_bc, *maps = _checks.promote(*given.values())
    m_ab = maps.pop(0) if m_ab is not None else f_ab.new_ones(f_ab[:, :1].shape)
    m_bc = maps.pop(0) if m_bc is not None else f_bc.new_ones(f_bc[:, :1].shape)
    _, impl = COMPOSE_DISPLACEMENT.select(backend, f_ab)
    return impl(f_ab, f_bc, m_ab, m_bc)


class ComposeDisplacement(nn.Module):
    """Module form of :func:`compose_displacement`: ``ComposeDisplacement()(f_ab, f_bc, m_ab, m_bc)``."""

    def __init__(self, backend: str | None = None):
        super().__init__()
        self.backend = backend

    def forward(self, f_ab, f_bc, m_ab=None, m_bc=None):
        return compose_displacement(f_ab, f_bc, m_ab, m_bc, backend=self.backend)
