"""local_correlation: the windowed cost volume of PWC-Net / FlowNet / GLU-Net style models.

Semantics and argument names of the spatial_correlation_sampler package (kernel_size, patch -> here
max_displacement with patch = 2 d + 1, stride, padding, dilation, dilation_patch), with its
(N, P, P, H', W') output flattened to (N, P * P, H', W'). Half precision accumulates in float32. The
backward is hand-written in gather form (each input gradient element sums its own contributions): no atomics,
deterministic.
"""
from __future__ import annotations

import torch
from torch import nn

from pscfast import _extension

from . import _checks, _fake, _reference
from ._dispatch import Op, register_op

_INT_ARGS = ("kernel_size", "max_displacement", "stride", "padding", "dilation", "dilation_patch")


def output_shape(a_shape, kernel_size, max_displacement, stride, padding, dilation) -> tuple[int, int, int, int]:
    """(N, P * P, H', W') of the cost volume of inputs of shape a_shape (N, C, H, W)."""
    n, _, h, w = a_shape
    span = dilation * (kernel_size - 1) + 1
    p = 2 * max_displacement + 1
    return n, p * p, (h + 2 * padding - span) // stride + 1, (w + 2 * padding - span) // stride + 1


def _register() -> None:
    """Fake (meta) and autograd implementations of the compiled pscfast::local_correlation ops."""
    @torch.library.register_fake("pscfast::local_correlation")
    def _(a, b, kernel_size, max_displacement, stride, padding, dilation, dilation_patch):
        return a.new_empty(output_shape(a.shape, kernel_size, max_displacement, stride, padding, dilation))

    @torch.library.register_fake("pscfast::_local_correlation_backward")
    def _(grad_out, a, b, *args):
        return _fake.like(a), _fake.like(b)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])
        ctx.args = inputs[2:]

    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[:2]
        if not (need_a or need_b):
            return (None,) * 8
        da, db = torch.ops.pscfast._local_correlation_backward(grad.contiguous(), a, b, *ctx.args, need_a, need_b)
        return (da if need_a else None, db if need_b else None) + (None,) * 6

    torch.library.register_autograd("pscfast::local_correlation", backward, setup_context=setup)


if _extension.loaded():
    _register()


def _cpp(a, b, *args):
    return torch.ops.pscfast.local_correlation(a, b, *args)


class _LocalCorrelationTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, *args):
        from pscfast.kernels import local_correlation as k

        a, b = a.contiguous(), b.contiguous()
        ctx.save_for_backward(a, b)
        ctx.args = args
        return k.local_correlation_fwd(a, b, *args)

    @staticmethod
    def backward(ctx, grad):
        from pscfast.kernels import local_correlation as k

        a, b = ctx.saved_tensors
        grad = grad.contiguous()
        da = k.local_correlation_bwd(grad, b, *ctx.args, sign=1) if ctx.needs_input_grad[0] else None
        db = k.local_correlation_bwd(grad, a, *ctx.args, sign=-1) if ctx.needs_input_grad[1] else None
        return (da, db) + (None,) * len(ctx.args)


def _triton(a, b, *args):
    return _LocalCorrelationTriton.apply(a, b, *args)


LOCAL_CORRELATION = register_op(Op("local_correlation",
                                   {"cpp": _cpp, "triton": _triton, "torch": _reference.local_correlation}))


def _nonneg_int(op: str, name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"pscfast.ops.{op}: {name} must be an int >= {minimum}, got {value!r}")
    return value


def local_correlation(a: torch.Tensor, b: torch.Tensor, kernel_size: int = 1, max_displacement: int = 4,
                      stride: int = 1, padding: int = 0, dilation: int = 1, dilation_patch: int = 1, *,
                      patch_size: int | None = None, backend: str | None = None) -> torch.Tensor:
    """Local cost volume between two feature maps: every position of a against a (2d+1)^2 window of b.

    Args:
        a, b: (N, C, H, W) feature maps of one shape (first and second image).
        kernel_size: side of the window of a and b summed per output (1 = one dot product, PWC-Net).
        max_displacement: d, the largest displacement in each direction; patch size P = 2 d + 1.
        stride: step between output positions (in input pixels).
        padding: zero padding of a and b before the kernel window slides (as spatial_correlation_sampler).
        dilation: spacing of the kernel window taps.
        dilation_patch: spacing of the displacements (displacement (dy, dx) * dilation_patch).
        patch_size: spatial_correlation_sampler's name for P (odd); give it or max_displacement.
        backend: "cpp", "triton" or "torch" (see pscfast.ops._dispatch); default: fastest available.

    Returns:
        (N, P * P, H', W'), H' = (H + 2 padding - dilation (kernel_size - 1) - 1) // stride + 1:
        out[n, (dy + d) * P + (dx + d), i, j] = sum over c and the window (ki, kj) of
        a[n, c, y, x] * b[n, c, y + dy * dilation_patch, x + dx * dilation_patch],
        y = i * stride - padding + ki * dilation (x likewise); positions outside the maps read 0.
        Not divided by C. ``out.view(N, P, P, H', W')`` is spatial_correlation_sampler's layout.

    Example:
        >>> a = torch.randn(1, 8, 5, 5)
        >>> b = torch.roll(a, shifts=(1, 2), dims=(2, 3))  # b(y + 1, x + 2) = a(y, x)
        >>> int(local_correlation(a, b, max_displacement=2)[0, :, 2, 2].argmax())  # (1 + 2) * 5 + (2 + 2)
        19
    """
    op = "local_correlation"
    _checks.tensor(op, "a", a, dims=4)
    _checks.tensor(op, "b", b, dims=4)
    _checks.same_device(op, a=a, b=b)
    if a.shape != b.shape:
        raise ValueError(f"pscfast.ops.{op}: a and b must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    _checks.nonempty_spatial(op, "a", a)
    if patch_size is not None:
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"pscfast.ops.{op}: patch_size must be a positive odd int, got {patch_size!r}")
        max_displacement = (patch_size - 1) // 2
    args = dict(kernel_size=kernel_size, max_displacement=max_displacement, stride=stride, padding=padding,
                dilation=dilation, dilation_patch=dilation_patch)
    for name, value in args.items():
        _nonneg_int(op, name, value, 0 if name in ("max_displacement", "padding") else 1)
    if min(output_shape(a.shape, kernel_size, max_displacement, stride, padding, dilation)[2:]) < 1:
        raise ValueError(f"pscfast.ops.{op}: the kernel window ({dilation * (kernel_size - 1) + 1} pixels) is "
                         f"larger than a with padding {padding}: {tuple(a.shape[2:])}")
    a, b = _checks.promote(a, b)
    _, impl = LOCAL_CORRELATION.select(backend, a)
    return impl(a, b, *(args[name] for name in _INT_ARGS))


class LocalCorrelation(nn.Module):
    """Module form of :func:`local_correlation`: ``LocalCorrelation(max_displacement=4)(a, b)``."""

    def __init__(self, kernel_size: int = 1, max_displacement: int = 4, stride: int = 1, padding: int = 0,
                 dilation: int = 1, dilation_patch: int = 1, backend: str | None = None):
        super().__init__()
        self.kernel_size, self.max_displacement, self.stride = kernel_size, max_displacement, stride
        self.padding, self.dilation, self.dilation_patch, self.backend = padding, dilation, dilation_patch, backend

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return local_correlation(a, b, self.kernel_size, self.max_displacement, self.stride, self.padding,
                                 self.dilation, self.dilation_patch, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, max_displacement={self.max_displacement}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, dilation_patch={self.dilation_patch}")
