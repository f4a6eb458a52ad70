"""Second and higher derivatives of the fused ops.

The hand-written backward kernels compute first derivatives. When autograd records the backward itself
(``torch.autograd.grad(..., create_graph=True)``: gradient penalties, Hessian-vector products,
``gradgradcheck``), an op's backward instead differentiates its plain PyTorch reference
(:mod:`pscfast.ops._reference`) at the same inputs, so the gradients it returns carry a graph of their own and
every higher derivative is exact, at the reference's speed and memory. First derivatives never take this path.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def recording() -> bool:
    """True inside a backward that autograd records (create_graph=True), which must return differentiable
    gradients; False in a plain ``.backward()``."""
    return torch.is_grad_enabled()


def _tensors(arg) -> bool:
    return isinstance(arg, (list, tuple)) and len(arg) > 0 and all(isinstance(t, torch.Tensor) for t in arg)


def reference_grads(reference: Callable, args: Sequence, grads, needs_input_grad: Sequence) -> tuple:
    """Gradients of ``reference(*args)`` weighted by ``grads`` (one per output, None for an output without
    one), for the args whose ``needs_input_grad`` entry is set, with ``create_graph=True``.

    ``args`` holds tensors, lists of tensors or plain values, and ``needs_input_grad`` has one entry per arg
    (a list for a list of tensors), as autograd gives them to a backward. Returns one entry per arg: None, a
    tensor, or a list of tensors and None, the layout that a backward returns.
    """
    wrt, slots = [], []
    for i, (arg, need) in enumerate(zip(args, needs_input_grad)):
        if _tensors(arg):
            flags = need if isinstance(need, (list, tuple)) else [need] * len(arg)
            for j, (t, flag) in enumerate(zip(arg, flags)):
                if flag:
                    wrt.append(t)
                    slots.append((i, j))
        elif isinstance(arg, torch.Tensor) and need:
            wrt.append(arg)
            slots.append((i, None))
    result: list = [[None] * len(a) if _tensors(a) else None for a in args]
    with torch.enable_grad():
        out = reference(*args)
    outs = out if isinstance(out, (list, tuple)) else (out,)
    grads = grads if isinstance(grads, (list, tuple)) else (grads,)
    pairs = [(o, g) for o, g in zip(outs, grads)
             if g is not None and isinstance(o, torch.Tensor) and o.requires_grad]
    if not wrt or not pairs:
        return tuple(result)
    found = torch.autograd.grad([o for o, _ in pairs], wrt, [g.to(o.dtype) for o, g in pairs],
                                create_graph=True, allow_unused=True)
    for (i, j), t, g in zip(slots, wrt, found):
        g = torch.zeros_like(t) if g is None else g
        if j is None:
            result[i] = g
        else:
            result[i][j] = g
    return tuple(result)


def register_reference_backward(op: str, reference: Callable, reference_args: Callable) -> None:
    """Implements ``pscfast::_<op>_backward_reference(grad_out, <the forward's arguments>, output_mask) -> Tensor[]``,
    which the op's C++ autograd kernel (csrc/ops/common/autograd.h) calls inside a recorded backward: the
    gradients of ``reference`` at those arguments, weighted by grad_out and carrying their own graph, one per set
    output_mask entry. ``reference_args(grad_out, *forward_args)`` gives the reference's arguments (e.g. the output
    size that grad_out implies); the first ``len(output_mask)`` of them are the differentiable inputs."""
    @torch.library.impl(f"pscfast::_{op}_backward_reference", "CompositeImplicitAutograd")
    def _(grad_out, *args):
        *forward_args, output_mask = args
        ref_args = reference_args(grad_out, *forward_args)
        needs = list(output_mask) + [False] * (len(ref_args) - len(output_mask))
        grads = reference_grads(reference, ref_args, grad_out, needs)
        return [g for g, need in zip(grads, output_mask) if need]
