"""kernel_soft_argmax: SFNet's differentiable argmax (Lee et al., TPAMI 2020, eq. 2-3).

Turns a correlation in pscfast's layout (N, Ht*Wt, Hs, Ws) into an absolute flow (N, Hs, Ws, 2) into the
target, the flow convention of PSC. Backward hand-written in every backend (no gradient through the
discrete argmax, as the paper), deterministic.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from pscfast import _extension

from . import _checks, _fake, _reference
from ._dispatch import Op, register_op


def _register() -> None:
    """Fake (meta) and autograd implementations of the compiled pscfast::kernel_soft_argmax ops."""
    @torch.library.register_fake("pscfast::kernel_soft_argmax")
    def _(corr, target_h, target_w, beta, sigma):
        return corr.new_empty((corr.shape[0], corr.shape[2], corr.shape[3], 2))

    @torch.library.register_fake("pscfast::_kernel_soft_argmax_backward")
    def _(grad_out, corr, target_h, target_w, beta, sigma):
        return _fake.like(corr)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.args = inputs[1:]

    def backward(ctx, grad):
        (corr,) = ctx.saved_tensors
        dcorr = torch.ops.pscfast._kernel_soft_argmax_backward(grad.contiguous(), corr, *ctx.args)
        return (dcorr,) + (None,) * 4

    torch.library.register_autograd("pscfast::kernel_soft_argmax", backward, setup_context=setup)


if _extension.loaded():
    _register()


def _cpp(corr, target_size, beta, sigma):
    return torch.ops.pscfast.kernel_soft_argmax(corr, *target_size, beta, sigma)


class _KernelSoftArgmaxTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, corr, target_size, beta, sigma):
        from pscfast.kernels import soft_argmax as k

        corr = corr.contiguous()
        ctx.save_for_backward(corr)
        ctx.args = (target_size, beta, sigma)
        return k.soft_argmax_fwd(corr, *ctx.args)

    @staticmethod
    def backward(ctx, grad):
        from pscfast.kernels import soft_argmax as k

        (corr,) = ctx.saved_tensors
        return k.soft_argmax_bwd(grad.contiguous(), corr, *ctx.args), None, None, None


def _triton(corr, target_size, beta, sigma):
    return _KernelSoftArgmaxTriton.apply(corr, target_size, beta, sigma)


def _torch(corr, target_size, beta, sigma):
    return _reference.kernel_soft_argmax(corr, beta, sigma, target_size)


KERNEL_SOFT_ARGMAX = register_op(Op("kernel_soft_argmax", {"cpp": _cpp, "triton": _triton, "torch": _torch}))


def _positive(op: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"pscfast.ops.{op}: {name} must be a positive finite number, got {value!r}")
    return float(value)


def kernel_soft_argmax(corr: torch.Tensor, beta: float = 50.0, sigma: float = 5.0,
                       target_size: tuple[int, int] | int | None = None, *, backend: str | None = None) -> torch.Tensor:
    """SFNet's kernel soft argmax: per source position, the expected target position under a softmax of the
    L2-normalised correlation row multiplied by a Gaussian centred at the row's discrete argmax.

    Args:
        corr: (N, Ht * Wt, Hs, Ws), channel = row-major target position, spatial = source position (the layout
            of pscfast.ops.correlation).
        beta: softmax temperature (SFNet: 50).
        sigma: standard deviation of the Gaussian, in target-grid cells (SFNet: 5).
        target_size: (Ht, Wt); default a square, Ht = Wt = sqrt(channels).
        backend: "cpp", "triton" or "torch" (see pscfast.ops._dispatch); default: fastest available.

    Returns:
        (N, Hs, Ws, 2) absolute grid into the target, last dim (x, y), normalised with align_corners=True
        (-1 and 1 are the centres of the first and last target cell; 0 along an axis of size 1).
        Differentiable in corr; no gradient flows through the argmax.

    Example:
        >>> corr = torch.zeros(1, 9, 1, 1)
        >>> corr[0, 5] = 1.0  # source position -> target cell (row 1, column 2) of a 3 x 3 target
        >>> kernel_soft_argmax(corr, beta=1000.0).flatten().tolist()
        [1.0, 0.0]
    """
    op = "kernel_soft_argmax"
    _checks.tensor(op, "corr", corr, dims=4)
    _checks.nonempty_spatial(op, "corr", corr)
    beta, sigma = _positive(op, "beta", beta), _positive(op, "sigma", sigma)
    channels = corr.shape[1]
    if target_size is None:
        side = math.isqrt(channels)
        if side * side != channels or channels == 0:
            raise ValueError(f"pscfast.ops.{op}: corr has {channels} channels, not a square number of target "
                             "positions: pass target_size=(Ht, Wt)")
        target_size = (side, side)
    target_size = _checks.size_pair(op, "target_size", target_size)
    if target_size[0] * target_size[1] != channels:
        raise ValueError(f"pscfast.ops.{op}: target_size {target_size} has {target_size[0] * target_size[1]} "
                         f"positions but corr has {channels} channels")
    _checks.finite(op, "corr", corr)
    _, impl = KERNEL_SOFT_ARGMAX.select(backend, corr)
    return impl(corr, target_size, beta, sigma)


class KernelSoftArgmax(nn.Module):
    """Module form of :func:`kernel_soft_argmax`: ``KernelSoftArgmax(beta=50, sigma=5)(corr)``."""

    def __init__(self, beta: float = 50.0, sigma: float = 5.0, target_size=None, backend: str | None = None):
        super().__init__()
        self.beta, self.sigma, self.target_size, self.backend = beta, sigma, target_size, backend

    def forward(self, corr: torch.Tensor) -> torch.Tensor:
        return kernel_soft_argmax(corr, self.beta, self.sigma, self.target_size, backend=self.backend)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, sigma={self.sigma}, target_size={self.target_size}"
