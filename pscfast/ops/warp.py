"""warp: sample an image or feature map at an absolute grid, with the grid resized on the fly.

The warp of PSC's warp estimator (16x16 flow -> 256x256 image, bilinear, border, align_corners=True) and
of any model that warps by a flow. The resized grid is never written to memory; the backward is
deterministic and computes only the gradients autograd asks for (the image's, the grid's or both).
"""
from __future__ import annotations

import torch
from torch import nn

from pscfast import _extension

from . import _checks, _fake, _higher_order, _output_mask, _reference
from ._dispatch import ALL_FLOAT_DTYPES, Op, TENSOR, compiled_callable, is_compiling, register_op

MODES = ("bilinear", "nearest")
NONFINITE_GRID = "grid contains NaN or infinite values"  # the end of the CPU kernel's refusal
PADDINGS = ("zeros", "border")


def _register() -> None:
    """Fake (meta) implementations of the compiled pscfast::warp ops, and the reference backward that their C++
    autograd kernel (csrc/ops/warp_autograd.cpp) calls inside a recorded backward."""
    @torch.library.register_fake("pscfast::warp")
    def _(x, grid, out_size, mode, padding_mode, align_corners):
        return x.new_empty((x.shape[0], x.shape[1], out_size[0], out_size[1]))

    @torch.library.register_fake("pscfast::_warp_with_jacobian")
    def _(x, grid, mode, padding_mode, align_corners):
        n, c, (h, w) = x.shape[0], x.shape[1], grid.shape[1:3]
        return x.new_empty((n, c, h, w)), x.new_empty((n, c, h, w, 2))

    @torch.library.register_fake("pscfast::_warp_jacobian_product")
    def _(grad_out, jacobian):
        return jacobian.new_empty((jacobian.shape[0], jacobian.shape[2], jacobian.shape[3], 2))

    @torch.library.register_fake("pscfast::_warp_backward")
    def _(grad_out, x, grid, mode, padding_mode, align_corners, output_mask):
        return _fake.grads(output_mask, x, grid)

    _higher_order.register_reference_backward(
        "warp", _reference.warp, lambda grad, x, grid, *args: (x, grid, tuple(grad.shape[-2:]), *args))


_KERNEL = None  # the compiled op, for warp()'s plain-call fast path
if _extension.loaded():
    _register()
    _KERNEL = compiled_callable("warp")


def _cpp(x, grid, out_size, mode, padding_mode, align_corners):
    return torch.ops.pscfast.warp.default(x, grid, out_size, mode, padding_mode, align_corners)


class _WarpTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, grid, out_size, mode, padding_mode, align_corners):
        from pscfast.kernels import warp as k

        ctx.save_for_backward(x, grid)
        ctx.args, ctx.out_size = (mode, padding_mode, align_corners), out_size
        return k.warp(x.contiguous(), grid.contiguous(), out_size, mode, padding_mode, align_corners)

    @staticmethod
    def backward(ctx, grad):
        from pscfast.kernels import warp as k

        x, grid = ctx.saved_tensors
        if _higher_order.recording():
            return _higher_order.reference_grads(_reference.warp, (x, grid, ctx.out_size, *ctx.args), grad,
                                                 ctx.needs_input_grad)
        dx, dgrid = k.warp_backward(grad.contiguous(), x, grid.contiguous(), *ctx.args,
                                    _output_mask.from_autograd(ctx.needs_input_grad, 2))
        return dx, dgrid, None, None, None, None


def _triton(x, grid, out_size, mode, padding_mode, align_corners):
    return _WarpTriton.apply(x, grid, tuple(out_size), mode, padding_mode, align_corners)


WARP = register_op(Op("warp", {"cpp": _cpp, "triton": _triton, "torch": _reference.warp},
                      cpp_dtypes=dict(ALL_FLOAT_DTYPES)))
_CPU_KERNEL_DTYPES = frozenset(ALL_FLOAT_DTYPES["cpu"])


def warp(x: torch.Tensor, grid: torch.Tensor, out_size=None, mode: str = "bilinear", padding_mode: str = "zeros",
         align_corners: bool = True, *, backend: str | None = None) -> torch.Tensor:
    """Sample x at an absolute sampling grid, resizing the grid on the fly.

    Args:
        x: (N, C, H, W) image or feature map.
        grid: (N, h, w, 2) absolute sampling positions, last dim (x, y), normalised to [-1, 1] as
            grid_sample (align_corners=True: -1 and 1 are the centres of the end pixels).
        out_size: (Ho, Wo) of the output, default (h, w). A different size resizes the grid bilinearly
            (align_corners=True) inside the kernel, e.g. a 16x16 flow warping a 256x256 image.
        mode: "bilinear" or "nearest" (round half to even).
        padding_mode: "zeros" (0 outside the image) or "border" (nearest edge value).
        align_corners: grid normalisation, as grid_sample.
        backend: "cpp", "triton" or "torch" (see pscfast.ops._dispatch); default: fastest available.

    Returns:
        (N, C, Ho, Wo) tensor in the common dtype of x and grid. The kernels index in int32: x and output planes
        of fewer than 2^31 pixels, grids of fewer than 2^30 points (checked on the sizes before anything runs).

    Second derivatives (a backward with create_graph=True: gradient penalties, Hessian-vector products)
    differentiate the plain PyTorch reference (pscfast.ops._reference): exact, at the reference's speed.

    Example:
        >>> x = torch.arange(12.0).view(1, 1, 3, 4)
        >>> ys, xs = torch.meshgrid(torch.linspace(-1, 1, 3), torch.linspace(-1, 1, 4), indexing="ij")
        >>> identity = torch.stack((xs, ys), dim=-1)[None]
        >>> torch.allclose(warp(x, identity), x)
        True
    """
    # Plain CPU tensors of one dtype outside torch.compile go straight to the compiled CPU kernel, which checks
    # every argument itself and refuses a non-finite grid as it reads it: a small warp's whole budget is a few
    # microseconds. Any refusal falls back to the checks below, which name what is wrong.
    if (type(x) is TENSOR and type(grid) is TENSOR and x.dtype is grid.dtype and x.is_cpu and grid.is_cpu
            and x.dtype in _CPU_KERNEL_DTYPES and not is_compiling() and WARP.select_eager(backend, x)[0] == "cpp"):
        try:  # a tuple of ints, not a torch.Size: the op's argument parser takes 1 us less
            return _KERNEL(x, grid, (grid.shape[1], grid.shape[2]) if out_size is None else out_size, mode,
                           padding_mode, align_corners)
        except (RuntimeError, TypeError, ValueError, IndexError):
            pass  # (or the call was fine but unusual: out_size=16)
    op = "warp"
    out_size = _check_arguments(op, x, grid, out_size, mode, padding_mode)
    x, grid = _checks.promote(x, grid)
    name, impl = WARP.select(backend, x)
    if name != "cpp" or not x.is_cpu:  # the CPU kernel checks the grid as it reads it
        _checks.finite(op, "grid", grid)
    return impl(x, grid, out_size, mode, padding_mode, bool(align_corners))


def _check_arguments(op, x, grid, out_size, mode, padding_mode) -> tuple[int, int]:
    """Everything but the grid's finiteness, sizes before anything is copied; returns out_size as (Ho, Wo)."""
    _checks.tensor(op, "x", x, dims=4)
    _checks.tensor(op, "grid", grid, dims=4, last=2)
    _checks.same_device(op, x=x, grid=grid)
    _checks.same_batch(op, x=x, grid=grid)
    _checks.choice(op, "mode", mode, MODES)
    _checks.choice(op, "padding_mode", padding_mode, PADDINGS)
    _checks.nonempty_spatial(op, "x", x)
    grid_plane = grid.shape[1:3]
    _checks.nonempty_plane(op, "grid", grid_plane)
    out_size = tuple(grid_plane) if out_size is None else _checks.size_pair(op, "out_size", out_size)
    _checks.plane(op, "x", x.shape[2:])
    _checks.plane(op, "grid", grid_plane, bits=30)  # 2 coordinates per point: 2^31 values
    _checks.plane(op, "out_size", out_size)
    return out_size


def warp_displacement(x: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros",
                      *, backend: str | None = None) -> torch.Tensor:
    """Backward-warp x (N, C, H, W) by a pixel displacement field flow (N, 2, h, w), the convention of
    PWC-Net and RAFT: output pixel (i, j) reads x at (j + flow[:, 0, i, j], i + flow[:, 1, i, j]).
    Returns (N, C, h, w); gradients flow to x and to the flow."""
    op = "warp_displacement"
    _checks.tensor(op, "x", x, dims=4)
    _checks.tensor(op, "flow", flow, dims=4)
    if flow.shape[1] != 2:
        raise ValueError(f"pscfast.ops.{op}: flow must be (N, 2, h, w), got shape {tuple(flow.shape)}")
    _checks.same_device(op, x=x, flow=flow)
    _checks.same_batch(op, x=x, flow=flow)
    _checks.choice(op, "mode", mode, MODES)
    _checks.choice(op, "padding_mode", padding_mode, PADDINGS)
    _checks.nonempty_spatial(op, "x", x)
    _checks.nonempty_spatial(op, "flow", flow)
    _checks.plane(op, "x", x.shape[2:])
    _checks.plane(op, "flow", flow.shape[2:], bits=30)  # the grid it becomes holds 2 coordinates per point
    x, flow = _checks.promote(x, flow)
    name, impl = WARP.select(backend, x)
    kernel_checks = name == "cpp" and x.is_cpu
    if not kernel_checks:
        _checks.finite(op, "flow", flow)
    grid = _reference.displacement_to_grid(flow, tuple(x.shape[-2:]))
    try:
        return impl(x, grid, tuple(grid.shape[1:3]), mode, padding_mode, False)
    except ValueError as error:  # the kernel's refusal of a non-finite grid, which only a non-finite flow makes
        if kernel_checks and str(error).endswith(NONFINITE_GRID):
            raise ValueError(f"pscfast.ops.{op}: flow contains NaN or infinite values (or displacements beyond "
                             f"{x.dtype}'s range)") from None
        raise


class Warp(nn.Module):
    """Module form of :func:`warp`: ``Warp(out_size)(x, grid)``."""

    def __init__(self, out_size=None, mode: str = "bilinear", padding_mode: str = "zeros",
                 align_corners: bool = True, backend: str | None = None):
        super().__init__()
        self.out_size, self.mode, self.padding_mode = out_size, mode, padding_mode
        self.align_corners, self.backend = align_corners, backend

    def forward(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return warp(x, grid, self.out_size, self.mode, self.padding_mode, self.align_corners, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"out_size={self.out_size}, mode={self.mode!r}, padding_mode={self.padding_mode!r}, "
                f"align_corners={self.align_corners}")


class WarpDisplacement(nn.Module):
    """Module form of :func:`warp_displacement`: ``WarpDisplacement()(x, flow)``."""

    def __init__(self, mode: str = "bilinear", padding_mode: str = "zeros", backend: str | None = None):
        super().__init__()
        self.mode, self.padding_mode, self.backend = mode, padding_mode, backend

    def forward(self, x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        return warp_displacement(x, flow, self.mode, self.padding_mode, backend=self.backend)
