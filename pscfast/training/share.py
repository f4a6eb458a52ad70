"""Trainers work on copies of the caller's modules that hold the caller's tensors.

A stage that converts batch norms for distributed training, switches train/eval modes, compiles a module or
freezes an encoder does it on its own module objects, so the model it was given keeps its structure, modes
and ``requires_grad`` flags; the optimizer still updates the caller's parameters and the batch norms still
update its running statistics, because both copies hold the same tensors.
"""
from __future__ import annotations

import copy

from torch import nn


def shared_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s module tree holding the same Parameter and buffer objects."""
    memo = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return copy.deepcopy(module, memo)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s module tree whose parameters are views of the caller's that require no
    gradient (no weight gradients are computed through it) and whose buffers are the caller's own."""
    memo = {id(p): nn.Parameter(p.detach(), requires_grad=False) for p in module.parameters()}
    memo.update({id(b): b for b in module.buffers()})
    return copy.deepcopy(module, memo)
