"""correlation: PSC's global multi-layer correlation, the STN's input (Lu, Wang, Fan, ICML 2023; the
release), on square or rectangular grids.

Backends: cpp (CPU: per-sample scratch buffers + GEMM; CUDA: fused tiles), triton, torch (reference). A map
already at its grid's size is multiplied as it lies, with the BLAS (cuBLAS on CUDA), so a single-layer
correlation without resampling is a batched matrix product. Otherwise the fused GPU kernels resize or
sample the maps while they load them, so no resized copy of the maps is written to memory; the CPU kernel
keeps one sample's resized maps in a scratch buffer. A scale (RAFT's 1 / sqrt(C)) is the GEMMs' alpha, or
multiplies the fused kernels' accumulators as they are stored, forward and backward, so it costs no pass of
its own over the volume or its gradient. Backward passes are hand-written and deterministic, the cpp
backend's autograd is C++ (csrc/ops/correlation_autograd.cpp); second derivatives come from the reference.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch
from torch import nn

from pscfast import _extension

from . import _checks, _fake, _higher_order, _reference
from ._dispatch import Op, TENSOR, compiled_callable, is_compiling, register_op


def _register() -> None:
    """Fake (meta) implementations of the compiled pscfast::correlation ops, and the reference backward that
    their C++ autograd (csrc/ops/correlation_autograd.cpp) calls when autograd records the backward."""
    @torch.library.register_fake("pscfast::correlation")
    def _(src, tgt, grid, size, target_size, scale=1.0):
        return src[0].new_empty((src[0].shape[0], len(src) * target_size[0] * target_size[1], size[0], size[1]))

    @torch.library.register_fake("pscfast::_correlation_backward")
    def _(grad_out, src, tgt, grid, size, target_size, scale, output_mask):
        dsrc = [_fake.like(s) for s in src] if output_mask[0] else []
        dtgt = [_fake.like(t) for t in tgt] if output_mask[1] else []
        dgrid = _fake.like(grid) if output_mask[2] and grid is not None else None
        return dsrc, dtgt, dgrid

    @torch.library.impl("pscfast::_correlation_backward_reference", "CompositeImplicitAutograd")
    def _(grad_out, src, tgt, grid, size, target_size, scale, output_mask):
        """_correlation_backward's gradients, differentiable: those of the reference (_higher_order)."""
        need = ([output_mask[0] and s.requires_grad for s in src], [output_mask[1] and t.requires_grad for t in tgt],
                output_mask[2] and grid is not None and grid.requires_grad)
        dsrc, dtgt, dgrid, *_ = _higher_order.reference_grads(
            _reference.correlation, (src, tgt, grid, tuple(size), tuple(target_size), scale), grad_out,
            (*need, False, False, False))
        fill = lambda grads, maps: [torch.zeros_like(m) if d is None else d for d, m in zip(grads, maps)]  # noqa: E731
        return (fill(dsrc, src) if output_mask[0] else [], fill(dtgt, tgt) if output_mask[1] else [],
                dgrid if output_mask[2] else None)


_KERNEL = None  # the compiled op, for correlation()'s plain-call fast path
if _extension.loaded():
    _register()
    _KERNEL = compiled_callable("correlation")


def _cpp(src, tgt, grid, size, target_size, scale):
    return torch.ops.pscfast.correlation(list(src), list(tgt), grid, list(size), list(target_size), scale)


class _CorrelationTriton(torch.autograd.Function):
    """Triton path; the layers travel flattened (autograd tracks tensor arguments only)."""

    @staticmethod
    def forward(ctx, size, target_size, scale, layers, grid, *maps):
        from pscfast.kernels import correlation as k

        ctx.size, ctx.target_size, ctx.scale, ctx.layers = size, target_size, scale, layers
        ctx.has_grid = grid is not None
        ctx.save_for_backward(grid, *maps)  # the inputs themselves: second derivatives differentiate through them
        maps = [m.contiguous() for m in maps]
        grid = grid.contiguous() if grid is not None else None
        return k.correlation(maps[:layers], maps[layers:], grid, size, target_size, scale)

    @staticmethod
    def backward(ctx, grad):
        from pscfast.kernels import correlation_backward as k

        grid, *maps = ctx.saved_tensors
        L = ctx.layers
        need = ctx.needs_input_grad
        if _higher_order.recording():
            dgrid, dsrc, dtgt = _higher_order.reference_grads(
                lambda g, s, t: _reference.correlation(s, t, g, ctx.size, ctx.target_size, ctx.scale),
                (grid, maps[:L], maps[L:]), grad, (need[4], list(need[5:5 + L]), list(need[5 + L:])))
            return (None, None, None, None, dgrid, *dsrc, *dtgt)
        mask = [any(need[5:5 + L]), any(need[5 + L:]), ctx.has_grid and need[4]]
        dsrc, dtgt, dgrid = k.correlation_backward(grad.contiguous(), [m.contiguous() for m in maps[:L]],
                                                   [m.contiguous() for m in maps[L:]],
                                                   grid.contiguous() if grid is not None else None, ctx.size,
                                                   ctx.target_size, ctx.scale, mask)
        return (None, None, None, None, dgrid, *(dsrc or [None] * L), *(dtgt or [None] * L))


def _triton(src, tgt, grid, size, target_size, scale):
    return _CorrelationTriton.apply(size, target_size, scale, len(src), grid, *src, *tgt)


CORRELATION = register_op(Op("correlation", {"cpp": _cpp, "triton": _triton, "torch": _reference.correlation}))


def _plain_call(src, tgt, size, target_size, scale: float, backend):
    """The compiled CPU op called directly for plain CPU tensors (no grid, a finite float scale, sizes as ints or
    pairs of ints), or None. The op checks every argument itself (layer counts, shapes, channels, one dtype and
    device, sizes); any refusal returns None, and correlation()'s checks then name what is wrong or promote mixed
    dtypes. Those checks cost 10 us per call, against 1.5 for a built-in matmul. CPU only: a meta tensor among
    the maps would reach the op's fake implementation, which checks nothing."""
    src = [src] if type(src) is TENSOR else src
    tgt = [tgt] if type(tgt) is TENSOR else tgt
    if (type(src) not in (list, tuple) or type(tgt) not in (list, tuple) or not src or not -math.inf < scale < math.inf
            or any(type(t) is not TENSOR or not t.is_cpu for t in (*src, *tgt))
            or CORRELATION.select_eager(backend, src[0])[0] != "cpp"):
        return None
    size = (size, size) if type(size) is int else size
    if target_size is None:
        target_size = size
    elif type(target_size) is int:
        target_size = (target_size, target_size)
    try:
        return _KERNEL(list(src), list(tgt), None, size, target_size, scale)
    except (RuntimeError, TypeError, ValueError, IndexError):
        return None


def _layer(op: str, name: str, t) -> torch.Tensor:
    t = _checks.tensor(op, name, t, dims=4)
    if t.shape[1] == 0:
        raise ValueError(f"pscfast.ops.{op}: {name} has no channels, shape {tuple(t.shape)}")
    _checks.nonempty_spatial(op, name, t)
    return t


def _layers(op: str, name: str, value) -> list[torch.Tensor]:
    # a valid single tensor, then list / tuple, first: the Sequence check and the argument names' f-strings
    # cost microseconds per call, and a small global correlation's whole op costs a few hundred
    if isinstance(value, torch.Tensor):
        if value.dim() == 4 and value.is_floating_point() and all(value.shape[1:]):
            return [value]
        return [_layer(op, f"{name}[0]", value)]
    if not isinstance(value, (list, tuple)) and not isinstance(value, Sequence) or len(value) == 0:
        raise TypeError(f"pscfast.ops.{op}: {name} must be a non-empty sequence of (N, C, H, W) tensors")
    return [_layer(op, f"{name}[{i}]", t) for i, t in enumerate(value)]


def _scale(op: str, scale) -> float:
    """scale as a float: a real, finite number (a bool or a tensor is a mistake, not a scale)."""
    if type(scale) is not float:  # the common case first: a Python float costs one type check
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"pscfast.ops.{op}: scale must be a real number (a Python float or int), got "
                            f"{type(scale).__name__}")
        scale = float(scale)
    if not -math.inf < scale < math.inf:  # NaN too; math.isfinite would break a torch.compile graph
        raise ValueError(f"pscfast.ops.{op}: scale must be finite, got {scale}")
    return scale


def correlation(src: Sequence[torch.Tensor], tgt: Sequence[torch.Tensor], grid: torch.Tensor | None = None,
                size: int | tuple[int, int] = 16, target_size: int | tuple[int, int] | None = None, *,
                scale: float = 1.0, backend: str | None = None) -> torch.Tensor:
    """Correlate per-layer feature maps of a source and a target image: every source position of the
    size grid against every target position of the target_size grid.

    Args:
        src, tgt: sequences of L per-layer maps (N, C_l, H_l, W_l); layer l of src and tgt share C_l, and
            layers may differ in size and channels (a single tensor means one layer).
        grid: optional absolute grid (N, hs, ws, 2) at which src is sampled (bilinear, zeros padding,
            align_corners=True) from its native resolution; without it src is resized like tgt
            (bilinear, align_corners=False).
        size: the source grid (hs, ws), the output's spatial size; an int means a square (16 in the paper).
        target_size: the target grid (ht, wt) to which tgt is resized; default: size.
        scale: a real, finite number multiplying every dot product (and so every gradient), applied inside
            the products (the GEMMs' alpha, or where the fused kernels store), not as an extra pass over the
            output. ``scale=1 / math.sqrt(C)`` on RAFT's feature maps gives its all-pairs volume (Teed and
            Deng, ECCV 2020).
        backend: see pscfast.ops._dispatch.

    Returns:
        (N, L * ht * wt, hs, ws): channel l * ht * wt + row-major tgt position, spatial = src position.
        A map already at its grid's size is used as it is, so on feature maps (N, C, h, w) with
        size=(h, w) this is fmap1^T fmap2, laid out target-major:
        ``correlation(f1, f2, size=(h, w)).view(N, h * w, h * w).transpose(1, 2)`` is
        ``torch.bmm(f1.flatten(2).transpose(1, 2), f2.flatten(2))``, and with ``scale=1 / math.sqrt(C)``
        RAFT's all-pairs volume (its ``corr / sqrt(C)``).
        Differentiable in every map and in the grid, also twice (second derivatives through the reference).
    """
    if grid is None and type(scale) is float and not is_compiling():
        out = _plain_call(src, tgt, size, target_size, scale, backend)
        if out is not None:
            return out
    op = "correlation"
    scale = _scale(op, scale)
    src, tgt = _layers(op, "src", src), _layers(op, "tgt", tgt)
    if len(src) != len(tgt):
        raise ValueError(f"pscfast.ops.{op}: src has {len(src)} layers but tgt has {len(tgt)}")
    for i, (s, t) in enumerate(zip(src, tgt)):
        if s.shape[:2] != t.shape[:2] or s.shape[0] != src[0].shape[0]:
            raise ValueError(f"pscfast.ops.{op}: layer {i}: src {tuple(s.shape)} and tgt {tuple(t.shape)} must "
                             "share the batch size and the channel count")
    size = _checks.size_pair(op, "size", size)
    target_size = size if target_size is None else _checks.size_pair(op, "target_size", target_size)
    for name, (h, w) in (("size", size), ("target_size", target_size)):
        if h * w >= 1 << 31:
            raise ValueError(f"pscfast.ops.{op}: {name} {(h, w)} has {h * w} positions; at most 2^31 - 1")
    if len({t.device for t in (*src, *tgt)}) > 1:  # the named message only when it fails
        _checks.same_device(op, **{f"src[{i}]": s for i, s in enumerate(src)},
                            **{f"tgt[{i}]": t for i, t in enumerate(tgt)})
    if grid is not None:
        _checks.tensor(op, "grid", grid, dims=4, last=2)
        if tuple(grid.shape[:3]) != (src[0].shape[0], *size):
            raise ValueError(f"pscfast.ops.{op}: grid must be (N, hs, ws, 2) = ({src[0].shape[0]}, {size[0]}, "
                             f"{size[1]}, 2), got {tuple(grid.shape)}")
        _checks.same_device(op, src=src[0], grid=grid)
        _checks.finite(op, "grid", grid)
    tensors = [*src, *tgt, *([grid] if grid is not None else [])]
    if any(t.dtype != tensors[0].dtype for t in tensors):
        tensors = _checks.promote(*tensors)
        src, tgt = tensors[: len(src)], tensors[len(src): 2 * len(src)]
        grid = tensors[-1] if grid is not None else None
    _, impl = CORRELATION.select(backend, src[0])
    return impl(src, tgt, grid, size, target_size, scale)


class Correlation(nn.Module):
    """Module form of :func:`correlation`: ``Correlation(size, target_size, scale)(src, tgt, grid=None)``."""

    def __init__(self, size: int | tuple[int, int] = 16, target_size: int | tuple[int, int] | None = None,
                 scale: float = 1.0, backend: str | None = None):
        super().__init__()
        self.size, self.target_size, self.scale, self.backend = size, target_size, scale, backend

    def forward(self, src, tgt, grid=None):
        return correlation(src, tgt, grid, self.size, self.target_size, scale=self.scale, backend=self.backend)

    def extra_repr(self) -> str:
        scale = f", scale={self.scale}" if self.scale != 1 else ""
        return f"size={self.size}, target_size={self.target_size}{scale}"
