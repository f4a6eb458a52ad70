"""Autograd and fake (meta) implementations of the pscfast:: operators compiled in pscfast._C.

The backward formulas live in the kernels (each backward op's comment has the math); here we only route
the gradients and describe output shapes, so the ops work under autograd, torch.compile and opcheck.
Double backward is not provided: the backward ops have no derivative of their own.
"""
from __future__ import annotations

import torch

from pscfast import _extension


def _register_warp() -> None:
    @torch.library.register_fake("pscfast::warp")
    def _(x, grid, out_size, mode, padding_mode, align_corners):
        return x.new_empty((x.shape[0], x.shape[1], out_size[0], out_size[1]))

    @torch.library.register_fake("pscfast::_warp_backward_grid")
    def _(grad_out, x, grid, mode, padding_mode, align_corners):
        return torch.empty_like(grid)

    @torch.library.register_fake("pscfast::_warp_backward_x")
    def _(grad_out, grid, x_size, mode, padding_mode, align_corners):
        return grad_out.new_empty(x_size)

    def setup_warp(ctx, inputs, output):
        x, grid, _, mode, padding_mode, align_corners = inputs
        ctx.save_for_backward(x, grid)
        ctx.args = (mode, padding_mode, align_corners)

    def backward_warp(ctx, grad):
        x, grid = ctx.saved_tensors
        grad = grad.contiguous()
        dx = dgrid = None
        if ctx.needs_input_grad[0]:
            dx = torch.ops.pscfast._warp_backward_x(grad, grid, list(x.shape), *ctx.args)
        if ctx.needs_input_grad[1]:
            dgrid = torch.ops.pscfast._warp_backward_grid(grad, x, grid, *ctx.args)
        return dx, dgrid, None, None, None, None

    torch.library.register_autograd("pscfast::warp", backward_warp, setup_context=setup_warp)


# Each op adds one _register_<op> function above; they all run once the extension is loaded.
if _extension.loaded():
    for _name, _fn in list(globals().items()):
        if _name.startswith("_register_") and callable(_fn):
            _fn()
