"""local_correlation and spatial_correlation_sample: the windowed cost volume of PWC-Net / FlowNet / GLU-Net
style models.

One op with the semantics of the spatial_correlation_sampler package (C. Pinard's Pytorch-Correlation-extension):
kernel_size, patch_size, stride, padding, dilation and dilation_patch, each an int or an (h, w) pair, any
patch size (an even one reaches one step further forward than back), two entry points:
  spatial_correlation_sample / SpatialCorrelationSampler: the sampler's signature, positional order and 5-D
    output (N, PH, PW, H', W'), so that a port calls them unchanged;
  local_correlation / LocalCorrelation: keyword-only arguments (max_displacement=d is patch_size=2d+1) and the
    output flattened to (N, PH * PW, H', W').
Half precision accumulates in float32. The backward is hand-written in gather form (each input gradient element
sums its own contributions): no atomics, deterministic. The kernels index in int32: every argument and the
sizes they produce are checked against that bound before anything runs.
"""
from __future__ import annotations

import operator

import torch
from torch import nn

from pscfast import _extension

from . import _checks, _fake, _higher_order, _output_mask, _reference
from ._dispatch import ALL_FLOAT_DTYPES, Op, register_op

ARGS = ("kernel_size", "patch_size", "stride", "padding", "dilation", "dilation_patch")
_MINIMUM = dict(kernel_size=1, patch_size=1, stride=1, padding=0, dilation=1, dilation_patch=1)
INT32_MAX = 2**31 - 1


def _index(value) -> int | None:
    """value as an int when it is one (numpy integers included, bool excluded), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def pair(op: str, name: str, value, minimum: int) -> tuple[int, int]:
    """An int or an (h, w) pair of ints, each in [minimum, 2^31 - 1], as an (h, w) tuple."""
    if _index(value) is not None:
        value = (value, value)
    items = tuple(value) if isinstance(value, (tuple, list)) else ()
    h, w = (_index(v) for v in items) if len(items) == 2 else (None, None)
    if h is None or w is None or min(h, w) < minimum:
        raise ValueError(f"pscfast.ops.{op}: {name} must be an int >= {minimum} or an (h, w) pair of them, "
                         f"got {value!r}")
    if max(h, w) > INT32_MAX:
        raise ValueError(f"pscfast.ops.{op}: {name} = {value!r} exceeds 2^31 - 1 (the kernels index in int32)")
    return h, w


def geometry(op: str, shape, kernel_size, patch_size, stride, padding, dilation, dilation_patch,
             patch_label: str | None = None):
    """The six arguments as (h, w) pairs and the output shape (N, PH * PW, H', W') for inputs of `shape`
    (N, C, H, W), after checking that every position, window tap, displacement and size the kernels form fits
    in int32. Raises ValueError naming the argument otherwise (the patch as `patch_label` when given)."""
    args = {name: pair(op, name, value, _MINIMUM[name]) for name, value in
            zip(ARGS, (kernel_size, patch_size, stride, padding, dilation, dilation_patch))}
    patch_label = patch_label or f"patch_size {args['patch_size']}"
    n, _, h, w = shape
    if h * w > INT32_MAX:
        raise ValueError(f"pscfast.ops.{op}: the inputs' plane {h} x {w} has 2^31 pixels or more")
    channels = args["patch_size"][0] * args["patch_size"][1]
    if channels > INT32_MAX:
        raise ValueError(f"pscfast.ops.{op}: {patch_label} gives {channels} channels, more than 2^31 - 1")
    out = []
    for axis, size, k, p, s, pad, dil, dilp in zip(("height", "width"), (h, w), *args.values()):
        padded = size + 2 * pad
        if padded > INT32_MAX:
            raise ValueError(f"pscfast.ops.{op}: padding {args['padding']} makes the padded {axis} {padded}, more "
                             f"than 2^31 - 1")
        span = dil * (k - 1) + 1
        if span > padded:
            raise ValueError(f"pscfast.ops.{op}: the kernel window ({span} pixels with dilation {dil}) is larger "
                             f"than the inputs with padding {pad}: {tuple(shape[2:])}")
        reach = (p // 2) * dilp  # the largest displacement, forward (an even patch's longer side)
        if padded + reach > INT32_MAX:
            raise ValueError(f"pscfast.ops.{op}: {patch_label} with dilation_patch {args['dilation_patch']} "
                             f"reaches {reach} pixels along the {axis}: with the padded {axis} {padded} beyond "
                             f"int32 indexing")
        out.append((padded - span) // s + 1)
    if out[0] * out[1] > INT32_MAX:
        raise ValueError(f"pscfast.ops.{op}: the output plane {out[0]} x {out[1]} (padding {args['padding']}, "
                         f"stride {args['stride']}) has 2^31 pixels or more")
    if n * channels * out[0] * out[1] > 2**63 - 1:
        raise ValueError(f"pscfast.ops.{op}: the output ({n}, {channels}, {out[0]}, {out[1]}) would have more "
                         f"elements than a tensor can hold (2^63 - 1)")
    return args, (n, channels, out[0], out[1])


def output_shape(a_shape, kernel_size, patch_size, stride, padding, dilation, dilation_patch):
    """(N, PH * PW, H', W') of the cost volume of inputs of shape a_shape (N, C, H, W)."""
    return geometry("local_correlation", a_shape, kernel_size, patch_size, stride, padding, dilation,
                    dilation_patch)[1]


def _register() -> None:
    """Fake (meta) implementations of the compiled pscfast::local_correlation ops, and the reference backward that
    their C++ autograd kernel (csrc/ops/local_correlation_autograd.cpp) calls inside a recorded backward."""
    @torch.library.register_fake("pscfast::local_correlation")
    def _(a, b, *args):
        return a.new_empty(output_shape(a.shape, *args))

    @torch.library.register_fake("pscfast::_local_correlation_backward")
    def _(grad_out, a, b, kernel_size, patch_size, stride, padding, dilation, dilation_patch, output_mask):
        return _fake.grads(output_mask, a, b)

    _higher_order.register_reference_backward("local_correlation", _reference.local_correlation,
                                              lambda grad, a, b, *args: (a, b, *args))


if _extension.loaded():
    _register()


def _cpp(a, b, *args):
    return torch.ops.pscfast.local_correlation.default(a, b, *args)


class _LocalCorrelationTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, *args):
        from pscfast.kernels import local_correlation as k

        ctx.save_for_backward(a, b)  # the inputs: a recorded backward differentiates through them
        ctx.args = args
        return k.local_correlation(a.contiguous(), b.contiguous(), *args)

    @staticmethod
    def backward(ctx, grad):
        from pscfast.kernels import local_correlation as k

        a, b = ctx.saved_tensors
        if _higher_order.recording():
            return _higher_order.reference_grads(_reference.local_correlation, (a, b, *ctx.args), grad,
                                                 ctx.needs_input_grad)
        da, db = k.local_correlation_backward(grad.contiguous(), a, b, *ctx.args,
                                              _output_mask.from_autograd(ctx.needs_input_grad, 2))
        return (da, db) + (None,) * len(ctx.args)


def _triton(a, b, *args):
    return _LocalCorrelationTriton.apply(a, b, *args)


LOCAL_CORRELATION = register_op(Op("local_correlation",
                                   {"cpp": _cpp, "triton": _triton, "torch": _reference.local_correlation},
                                   cpp_dtypes=dict(ALL_FLOAT_DTYPES)))


def _run(op: str, a, b, names: tuple[str, str], sizes: dict, backend: str | None,
         patch_label: str | None = None) -> tuple[torch.Tensor, dict]:
    """Checks the inputs (named `names` in messages) and `sizes` (the six arguments), runs the op: the output
    (N, PH * PW, H', W') and the arguments as (h, w) pairs."""
    first, second = names
    _checks.tensor(op, first, a, dims=4)
    _checks.tensor(op, second, b, dims=4)
    _checks.same_device(op, **{first: a, second: b})
    if a.shape != b.shape:
        raise ValueError(f"pscfast.ops.{op}: {first} and {second} must have one shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    _checks.nonempty_spatial(op, first, a)
    args, _ = geometry(op, a.shape, *(sizes[name] for name in ARGS), patch_label=patch_label)
    a, b = _checks.promote(a, b)
    _, impl = LOCAL_CORRELATION.select(backend, a)
    return impl(a, b, *args.values()), args


def local_correlation(a: torch.Tensor, b: torch.Tensor, *, kernel_size=1, max_displacement=None, patch_size=None,
                      stride=1, padding=0, dilation=1, dilation_patch=1, backend: str | None = None) -> torch.Tensor:
    """Local cost volume between two feature maps: every position of a against a PH x PW window of b.

    Every argument after a and b is keyword-only: spatial_correlation_sampler's positional order (kernel_size,
    patch_size, stride, padding, dilation, dilation_patch) read here as (kernel_size, max_displacement, ...) would
    silently give another volume (FlowNetC's (1, 21, 1, 0, 1, 2): 43^2 channels instead of 21^2), so a
    positional call raises TypeError. A port from the sampler calls :func:`spatial_correlation_sample`, which
    takes its positional order and returns its 5-D layout.

    Args:
        a, b: (N, C, H, W) feature maps of one shape (first and second image).
        kernel_size: size of the window of a and b summed per output (1 = one dot product, PWC-Net).
        max_displacement: d, the largest displacement in each direction: patch_size = 2 d + 1.
        patch_size: PH x PW displacements (spatial_correlation_sampler's name); give it or max_displacement
            (default: max_displacement 4). Displacement index py covers (py - (PH - 1) // 2) * dilation_patch:
            an even patch reaches one step further forward than back, as the sampler.
        stride: step between output positions (in input pixels).
        padding: zero padding of a and b before the kernel window slides (as spatial_correlation_sampler).
        dilation: spacing of the kernel window taps.
        dilation_patch: spacing of the displacements.
        backend: "cpp", "triton" or "torch" (see pscfast.ops._dispatch); default: fastest available.
        Each of kernel_size, max_displacement, patch_size, stride, padding, dilation and dilation_patch is an int
        or an (h, w) pair.

    Returns:
        (N, PH * PW, H', W'), H' = (H + 2 padding - dilation (kernel_size - 1) - 1) // stride + 1 (W' likewise):
        out[n, py * PW + px, i, j] = sum over c and the window (ki, kj) of
        a[n, c, y, x] * b[n, c, y + (py - (PH - 1) // 2) dilation_patch, x + (px - (PW - 1) // 2) dilation_patch],
        y = i * stride - padding + ki * dilation (x likewise); positions outside the maps read 0.
        Not divided by C. ``out.view(N, PH, PW, H', W')`` is spatial_correlation_sampler's layout.

    Second derivatives (a backward with create_graph=True: gradient penalties, Hessian-vector products)
    differentiate the plain PyTorch reference (pscfast.ops._reference): exact, at the reference's speed.

    Example:
        >>> a = torch.randn(1, 8, 5, 5)
        >>> b = torch.roll(a, shifts=(1, 2), dims=(2, 3))  # b(y + 1, x + 2) = a(y, x)
        >>> int(local_correlation(a, b, max_displacement=2)[0, :, 2, 2].argmax())  # (1 + 2) * 5 + (2 + 2)
        19
    """
    op = "local_correlation"
    if patch_size is not None and max_displacement is not None:
        raise ValueError(f"pscfast.ops.{op}: give patch_size or max_displacement, not both")
    label = None
    if patch_size is None:
        d = pair(op, "max_displacement", 4 if max_displacement is None else max_displacement, 0)
        patch_size, label = tuple(2 * v + 1 for v in d), f"max_displacement {d}"
        if max(patch_size) > INT32_MAX:
            raise ValueError(f"pscfast.ops.{op}: {label} gives a patch of {patch_size}, more than 2^31 - 1")
    sizes = dict(kernel_size=kernel_size, patch_size=patch_size, stride=stride, padding=padding, dilation=dilation,
                 dilation_patch=dilation_patch)
    return _run(op, a, b, ("a", "b"), sizes, backend, label)[0]


def spatial_correlation_sample(input1: torch.Tensor, input2: torch.Tensor, kernel_size=1, patch_size=1, stride=1,
                               padding=0, dilation=1, dilation_patch=1, *, backend: str | None = None) -> torch.Tensor:
    """spatial_correlation_sampler's function, signature and output layout: a call written for it runs unchanged.

    The arguments, each an int or an (h, w) pair, in the sampler's positional order; see
    :func:`local_correlation` for their meaning. FlowNetC's volume is
    ``spatial_correlation_sample(a, b, 1, 21, 1, 0, 1, 2)`` (displacements -20..20 in steps of 2).

    Returns:
        (N, PH, PW, H', W'): out[n, py, px] = local_correlation(...)[n, py * PW + px].
    """
    sizes = dict(kernel_size=kernel_size, patch_size=patch_size, stride=stride, padding=padding, dilation=dilation,
                 dilation_patch=dilation_patch)
    out, args = _run("spatial_correlation_sample", input1, input2, ("input1", "input2"), sizes, backend)
    return out.view(out.shape[0], *args["patch_size"], *out.shape[2:])


class LocalCorrelation(nn.Module):
    """Module form of :func:`local_correlation` (keyword-only arguments): ``LocalCorrelation(max_displacement=4)``
    or ``LocalCorrelation(patch_size=(5, 9))``."""

    def __init__(self, *, kernel_size=1, max_displacement=None, patch_size=None, stride=1, padding=0, dilation=1,
                 dilation_patch=1, backend: str | None = None):
        super().__init__()
        self.kernel_size, self.max_displacement, self.patch_size = kernel_size, max_displacement, patch_size
        self.stride, self.padding, self.dilation, self.dilation_patch = stride, padding, dilation, dilation_patch
        self.backend = backend

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return local_correlation(a, b, kernel_size=self.kernel_size, max_displacement=self.max_displacement,
                                 patch_size=self.patch_size, stride=self.stride, padding=self.padding,
                                 dilation=self.dilation, dilation_patch=self.dilation_patch, backend=self.backend)

    def extra_repr(self) -> str:
        size = (f"patch_size={self.patch_size}" if self.patch_size is not None
                else f"max_displacement={4 if self.max_displacement is None else self.max_displacement}")
        return (f"kernel_size={self.kernel_size}, {size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, dilation_patch={self.dilation_patch}")


class SpatialCorrelationSampler(nn.Module):
    """spatial_correlation_sampler's Module, signature and 5-D output: :func:`spatial_correlation_sample`."""

    def __init__(self, kernel_size=1, patch_size=1, stride=1, padding=0, dilation=1, dilation_patch=1, *,
                 backend: str | None = None):
        super().__init__()
        self.kernel_size, self.patch_size, self.stride = kernel_size, patch_size, stride
        self.padding, self.dilation, self.dilation_patch, self.backend = padding, dilation, dilation_patch, backend

    def forward(self, input1: torch.Tensor, input2: torch.Tensor) -> torch.Tensor:
        return spatial_correlation_sample(input1, input2, self.kernel_size, self.patch_size, self.stride,
                                          self.padding, self.dilation, self.dilation_patch, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, patch_size={self.patch_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, dilation_patch={self.dilation_patch}")
