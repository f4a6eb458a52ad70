"""kernel_soft_argmax: SFNet's differentiable argmax (Lee et al., TPAMI 2020, eq. 2-3).

Turns a correlation in pscfast's layout (N, Ht*Wt, Hs, Ws) into an absolute flow (N, Hs, Ws, 2) into the
target, the flow convention of PSC. Backward hand-written in every backend (no gradient through the
discrete argmax, as the paper), deterministic; second derivatives through the reference.
Arguments travel in one order everywhere (Python, the C++ schema, the Triton launchers):
corr, beta, sigma, target_size, normalize.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from pscfast import _extension

from . import _checks, _fake, _higher_order, _reference
from ._dispatch import Op, register_op

NORMALIZE = ("l2", "sfnet", "none")


def _register() -> None:
    """Fake (meta) and autograd implementations of the compiled pscfast::kernel_soft_argmax ops."""
    @torch.library.register_fake("pscfast::kernel_soft_argmax")
    def _(corr, beta, sigma, target_size, normalize):
        return corr.new_empty((corr.shape[0], corr.shape[2], corr.shape[3], 2))

    @torch.library.register_fake("pscfast::_kernel_soft_argmax_backward")
    def _(grad_out, corr, beta, sigma, target_size, normalize, output_mask):
        return _fake.like(corr) if output_mask[0] else None

    def setup(ctx, inputs, output):
        corr, beta, sigma, target_size, normalize = inputs
        ctx.save_for_backward(corr)
        ctx.args = (beta, sigma, tuple(target_size), normalize)

    def backward(ctx, grad):
        (corr,) = ctx.saved_tensors
        if _higher_order.recording():
            return _higher_order.reference_grads(_reference.kernel_soft_argmax, (corr, *ctx.args), grad,
                                                 ctx.needs_input_grad)
        beta, sigma, target_size, normalize = ctx.args
        dcorr = torch.ops.pscfast._kernel_soft_argmax_backward(grad.contiguous(), corr, beta, sigma,
                                                               list(target_size), normalize,
                                                               [ctx.needs_input_grad[0]])
        return (dcorr,) + (None,) * 4

    torch.library.register_autograd("pscfast::kernel_soft_argmax", backward, setup_context=setup)


if _extension.loaded():
    _register()


def _cpp(corr, beta, sigma, target_size, normalize):
    return torch.ops.pscfast.kernel_soft_argmax(corr, beta, sigma, list(target_size), normalize)


class _KernelSoftArgmaxTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, corr, beta, sigma, target_size, normalize):
        from pscfast.kernels import kernel_soft_argmax as k

        ctx.save_for_backward(corr)  # the input itself: second derivatives differentiate through it
        ctx.args = (beta, sigma, target_size, normalize)
        return k.kernel_soft_argmax(corr.contiguous(), *ctx.args)

    @staticmethod
    def backward(ctx, grad):
        from pscfast.kernels import kernel_soft_argmax as k

        (corr,) = ctx.saved_tensors
        if _higher_order.recording():
            return _higher_order.reference_grads(_reference.kernel_soft_argmax, (corr, *ctx.args), grad,
                                                 ctx.needs_input_grad)
        return (k.kernel_soft_argmax_backward(grad.contiguous(), corr.contiguous(), *ctx.args,
                                              [ctx.needs_input_grad[0]]),) + (None,) * 4


def _triton(corr, beta, sigma, target_size, normalize):
    return _KernelSoftArgmaxTriton.apply(corr, beta, sigma, target_size, normalize)


KERNEL_SOFT_ARGMAX = register_op(Op("kernel_soft_argmax", {"cpp": _cpp, "triton": _triton,
                                                           "torch": _reference.kernel_soft_argmax}))


def kernel_soft_argmax(corr: torch.Tensor, beta: float = 50.0, sigma: float = 5.0,
                       target_size: tuple[int, int] | int | None = None, normalize: str = "l2", *,
                       backend: str | None = None) -> torch.Tensor:
    """SFNet's kernel soft argmax: per source position, the expected target position under a softmax of the
    (normalised) correlation row multiplied by a Gaussian centred at the row's discrete argmax.

    Args:
        corr: (N, Ht * Wt, Hs, Ws), channel = row-major target position, spatial = source position (the layout
            of pscfast.ops.correlation).
        beta: softmax temperature (SFNet: 50).
        sigma: standard deviation of the Gaussian, in target-grid cells (SFNet: 5).
        target_size: (Ht, Wt); default a square, Ht = Wt = sqrt(channels).
        normalize: how each correlation row is L2-normalised over the target positions first (the paper's
            n_p, eq. 3):
            "l2" (default) c / max(||c||, 1e-12), as F.normalize(corr, dim=1);
            "sfnet" c / sqrt(||c||^2 + 1e-6), SFNet's L2normalize (the gradient of an all-zero row is
            1e3 d L / d n, where "l2" gives 1e12 d L / d n);
            "none" the correlation as given: exactly the soft argmax of SFNet's code, whose model normalises the
            correlation before it (``normalize="sfnet"`` on the raw correlation does both).
        backend: "cpp", "triton" or "torch" (see pscfast.ops._dispatch); default: fastest available.

    Returns:
        (N, Hs, Ws, 2) absolute grid into the target, last dim (x, y), normalised with align_corners=True
        (-1 and 1 are the centres of the first and last target cell; 0 along an axis of size 1).
        Differentiable in corr (also twice: second derivatives come from the plain PyTorch reference); no
        gradient flows through the argmax.

    The softmax is evaluated as SFNet's code does, exp(beta * (k n - max k n)), so float32 results keep
    SFNet's accuracy for large beta.

    Example:
        >>> corr = torch.zeros(1, 9, 1, 1)
        >>> corr[0, 5] = 1.0  # source position -> target cell (row 1, column 2) of a 3 x 3 target
        >>> kernel_soft_argmax(corr, beta=1000.0).flatten().tolist()
        [1.0, 0.0]
    """
    op = "kernel_soft_argmax"
    _checks.tensor(op, "corr", corr, dims=4)
    _checks.nonempty_spatial(op, "corr", corr)
    beta, sigma = _checks.positive_number(op, "beta", beta), _checks.positive_number(op, "sigma", sigma)
    _checks.choice(op, "normalize", normalize, NORMALIZE)
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
    return impl(corr, beta, sigma, target_size, normalize)


class KernelSoftArgmax(nn.Module):
    """Module form of :func:`kernel_soft_argmax`: ``KernelSoftArgmax(beta=50, sigma=5)(corr)``."""

    def __init__(self, beta: float = 50.0, sigma: float = 5.0, target_size=None, normalize: str = "l2",
                 backend: str | None = None):
        super().__init__()
        self.beta, self.sigma, self.target_size, self.normalize = beta, sigma, target_size, normalize
        self.backend = backend

    def forward(self, corr: torch.Tensor) -> torch.Tensor:
        return kernel_soft_argmax(corr, self.beta, self.sigma, self.target_size, self.normalize,
                                  backend=self.backend)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, sigma={self.sigma}, target_size={self.target_size}, normalize={self.normalize!r}"
