"""ATen's convention for the backward ops: each ``pscfast::_<op>_backward`` takes ``bool[K] output_mask``, one
entry per differentiable input of the forward op in input order, and skips the work of a gradient whose entry is
false, which comes back as None (an undefined tensor; an empty list for a Tensor[] input). The Triton launchers
``pscfast.kernels.<op>.<op>_backward`` take the same mask and return the same None.
"""
from __future__ import annotations

from typing import Sequence


def from_autograd(needs_input_grad: Sequence, count: int) -> list[bool]:
    """The output_mask of a backward op whose first `count` forward inputs are differentiable, from autograd's
    ``ctx.needs_input_grad`` (an entry of a Tensor[] input, a list, asks for the list when any element does)."""
    return [any(n) if isinstance(n, (list, tuple)) else bool(n) for n in needs_input_grad[:count]]
