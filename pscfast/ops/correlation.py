"""correlation: PSC's global multi-layer correlation, the STN's input (Lu, Wang, Fan, ICML 2023; the release).

Backends: cpp (CPU: per-sample scratch buffers + GEMM; CUDA: fused tiles), triton, torch (reference). The
fused GPU kernels resize or sample the maps while they load them, so no resized copy of the maps is
written to memory; the CPU kernel keeps one sample's resized maps in a scratch buffer. Backward passes are
hand-written and deterministic.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pscfast import _extension

from . import _checks, _fake, _reference
from ._dispatch import Op, register_op


def _register() -> None:
    """Fake (meta) and autograd implementations of the compiled pscfast::correlation ops."""
    @torch.library.register_fake("pscfast::correlation")
    def _(src, tgt, grid, size):
        return src[0].new_empty((src[0].shape[0], len(src) * size * size, size, size))

    @torch.library.register_fake("pscfast::_correlation_backward")
    def _(grad_out, src, tgt, grid, size, output_mask):
        dsrc = [_fake.like(s) for s in src] if output_mask[0] else []
        dtgt = [_fake.like(t) for t in tgt] if output_mask[1] else []
        dgrid = _fake.like(grid) if output_mask[2] and grid is not None else src[0].new_empty((0,))
        return dsrc, dtgt, dgrid

    def setup(ctx, inputs, output):
        src, tgt, grid, size = inputs
        ctx.layers, ctx.size, ctx.has_grid = len(src), size, grid is not None
        ctx.save_for_backward(*src, *tgt, *([grid] if grid is not None else []))

    def backward(ctx, grad):
        saved, L = ctx.saved_tensors, ctx.layers
        src, tgt = list(saved[:L]), list(saved[L:2 * L])
        grid = saved[2 * L] if ctx.has_grid else None
        need = [any(n) if isinstance(n, (list, tuple)) else bool(n) for n in ctx.needs_input_grad[:3]]
        mask = [need[0], need[1], ctx.has_grid and need[2]]
        dsrc, dtgt, dgrid = torch.ops.pscfast._correlation_backward(grad.contiguous(), src, tgt, grid, ctx.size, mask)
        none = [None] * L  # a list input takes a list of gradients
        return (dsrc if mask[0] else none, dtgt if mask[1] else none, dgrid if mask[2] else None, None)

    torch.library.register_autograd("pscfast::correlation", backward, setup_context=setup)


if _extension.loaded():
    _register()


def _cpp(src, tgt, grid, size):
    return torch.ops.pscfast.correlation(list(src), list(tgt), grid, size)


class _CorrelationTriton(torch.autograd.Function):
    """Triton path; the layers travel flattened (autograd tracks tensor arguments only)."""

    @staticmethod
    def forward(ctx, size, layers, grid, *maps):
        from pscfast.kernels import correlation as k

        maps = [m.contiguous() for m in maps]
        grid = grid.contiguous() if grid is not None else None
        ctx.size, ctx.layers, ctx.has_grid = size, layers, grid is not None
        ctx.save_for_backward(grid, *maps)
        return k.correlation_fwd(maps[:layers], maps[layers:], grid, size)

    @staticmethod
    def backward(ctx, grad):
        from pscfast.kernels import correlation_backward as k

        grid, *maps = ctx.saved_tensors
        L = ctx.layers
        need = ctx.needs_input_grad
        dsrc, dtgt, dgrid = k.correlation_bwd(grad.contiguous(), maps[:L], maps[L:], grid, ctx.size,
                                              any(need[3:3 + L]), any(need[3 + L:]), ctx.has_grid and need[2])
        return (None, None, dgrid, *(dsrc or [None] * L), *(dtgt or [None] * L))


def _triton(src, tgt, grid, size):
    return _CorrelationTriton.apply(size, len(src), grid, *src, *tgt)


CORRELATION = register_op(Op("correlation", {"cpp": _cpp, "triton": _triton, "torch": _reference.correlation}))


def _layers(op: str, name: str, value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        value = [value]
    if not isinstance(value, Sequence) or len(value) == 0:
        raise TypeError(f"pscfast.ops.{op}: {name} must be a non-empty sequence of (N, C, H, W) tensors")
    layers = [_checks.tensor(op, f"{name}[{i}]", t, dims=4) for i, t in enumerate(value)]
    for i, t in enumerate(layers):
        if t.shape[1] == 0:
            raise ValueError(f"pscfast.ops.{op}: {name}[{i}] has no channels, shape {tuple(t.shape)}")
        _checks.nonempty_spatial(op, f"{name}[{i}]", t)
    return layers


def correlation(src: Sequence[torch.Tensor], tgt: Sequence[torch.Tensor], grid: torch.Tensor | None = None,
                size: int = 16, *, backend: str | None = None) -> torch.Tensor:
    """Correlate per-layer feature maps of a source and a target image on a size x size grid.

    Args:
        src, tgt: sequences of L per-layer maps (N, C_l, H_l, W_l); layer l of src and tgt share C_l, and
            layers may differ in size and channels (a single tensor means one layer).
        grid: optional absolute grid (N, size, size, 2) at which src is sampled (bilinear, zeros padding,
            align_corners=True) from its native resolution; without it src is resized like tgt
            (bilinear, align_corners=False).
        size: the correlation grid side (16 in the paper).
        backend: see pscfast.ops._dispatch.

    Returns:
        (N, L * size * size, size, size): channel l * size^2 + row-major tgt position, spatial = src position.
    """
    op = "correlation"
    src, tgt = _layers(op, "src", src), _layers(op, "tgt", tgt)
    if len(src) != len(tgt):
        raise ValueError(f"pscfast.ops.{op}: src has {len(src)} layers but tgt has {len(tgt)}")
    for i, (s, t) in enumerate(zip(src, tgt)):
        if s.shape[:2] != t.shape[:2] or s.shape[0] != src[0].shape[0]:
            raise ValueError(f"pscfast.ops.{op}: layer {i}: src {tuple(s.shape)} and tgt {tuple(t.shape)} must "
                             "share the batch size and the channel count")
    size = _checks.size_pair(op, "size", size)[0]
    _checks.same_device(op, **{f"src[{i}]": s for i, s in enumerate(src)}, **{f"tgt[{i}]": t for i, t in enumerate(tgt)})
    if grid is not None:
        _checks.tensor(op, "grid", grid, dims=4, last=2)
        if tuple(grid.shape[:3]) != (src[0].shape[0], size, size):
            raise ValueError(f"pscfast.ops.{op}: grid must be (N, size, size, 2) = ({src[0].shape[0]}, {size}, "
                             f"{size}, 2), got {tuple(grid.shape)}")
        _checks.same_device(op, src=src[0], grid=grid)
        _checks.finite(op, "grid", grid)
    *tensors, = _checks.promote(*src, *tgt, *([grid] if grid is not None else []))
    src, tgt = tensors[: len(src)], tensors[len(src): 2 * len(src)]
    grid = tensors[-1] if grid is not None else None
    _, impl = CORRELATION.select(backend, src[0])
    return impl(src, tgt, grid, size)


class Correlation(nn.Module):
    """Module form of :func:`correlation`: ``Correlation(size)(src, tgt, grid=None)``."""

    def __init__(self, size: int = 16, backend: str | None = None):
        super().__init__()
        self.size, self.backend = size, backend

    def forward(self, src, tgt, grid=None):
        return correlation(src, tgt, grid, self.size, backend=self.backend)

    def extra_repr(self) -> str:
        return f"size={self.size}"
