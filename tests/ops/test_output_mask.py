"""ATen's output_mask convention of the backward ops (pscfast/ops/_output_mask.py): every `_<op>_backward` and its
Triton launcher `pscfast.kernels.<op>.<op>_backward` take one bool per differentiable input, return None for a
gradient masked out (nothing allocated, nothing computed) and the very same values for the others; opcheck accepts
each mask; autograd asks for exactly the gradients of the inputs that require one.

CASES is a table, one entry per op with tensor inputs: the backward op's arguments before output_mask and where its
differentiable inputs sit among them, and the public function that reaches it through autograd. The two ops whose
differentiable inputs are lists of layers, correlation and similarity_loss, return an empty list for a masked
gradient; their own test files check each mask (test_backward_output_mask).
"""
from __future__ import annotations

import importlib
import itertools
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pscfast import ops
from tests.utils import require

BACKENDS = ("cpp", "triton")
DTYPE = torch.float64


@dataclass(frozen=True)
class Case:
    make: Callable[[str], tuple]  # device -> the backward op's arguments before output_mask
    inputs: tuple[int, ...]  # positions of the differentiable inputs among them, in output_mask order
    forward: Callable  # (backend, *differentiable inputs) -> the public op's output or outputs


def _randn(device, *shape, scale=1.0):
    return torch.randn(shape, dtype=DTYPE, device=device) * scale


def _grid(device, *shape):
    return torch.rand(*shape, 2, dtype=DTYPE, device=device) * 2.4 - 1.2  # partly outside [-1, 1]


LOCAL = ((2, 1), (3, 4), (1, 2), (1, 0), (1, 1), (1, 2))  # kernel, patch, stride, padding, dilation, dilation_patch


def _local_correlation(device):
    a, b = _randn(device, 2, 3, 6, 5), _randn(device, 2, 3, 6, 5)
    out = ops.local_correlation(a, b, **dict(zip(("kernel_size", "patch_size", "stride", "padding", "dilation",
                                                  "dilation_patch"), LOCAL)), backend="torch")
    return (torch.randn_like(out), a, b, *(list(s) for s in LOCAL))


CASES = {
    "warp": Case(
        lambda d: (_randn(d, 2, 3, 7, 6), _randn(d, 2, 3, 6, 5), _grid(d, 2, 3, 4), "bilinear", "border", False),
        (1, 2), lambda b, x, g: ops.warp(x, g, (7, 6), "bilinear", "border", False, backend=b)),
    "local_correlation": Case(
        _local_correlation, (1, 2), lambda b, x, y: ops.spatial_correlation_sample(x, y, *LOCAL, backend=b)),
    "compose": Case(
        lambda d: (_randn(d, 2, 3, 6, 2), _grid(d, 2, 5, 4), _grid(d, 2, 3, 6), "bilinear"),
        (1, 2), lambda b, f, g: ops.compose(f, g, "bilinear", backend=b)),
    "consistency_loss": Case(  # count: any positive int64 scalar (the forward's number of counted coordinates)
        lambda d: (_randn(d), _grid(d, 2, 5, 4), _grid(d, 2, 3, 6), torch.linspace(-1, 1, 6, dtype=DTYPE, device=d),
                   torch.linspace(-1, 1, 3, dtype=DTYPE, device=d), "bilinear",
                   torch.tensor(17, dtype=torch.int64, device=d)),
        (1, 2), lambda b, f, g: ops.consistency_loss(f, g, "bilinear", backend=b)),
    "compose_displacement": Case(
        lambda d: (_randn(d, 2, 2, 5, 4), _randn(d, 2, 1, 5, 4), _randn(d, 2, 2, 5, 4, scale=2.0),
                   _randn(d, 2, 2, 3, 6), torch.rand(2, 1, 5, 4, dtype=DTYPE, device=d),
                   torch.rand(2, 1, 3, 6, dtype=DTYPE, device=d)),
        (2, 3, 4, 5), lambda b, *t: ops.compose_displacement(*t, backend=b)),
    "truncated_flow_loss": Case(
        lambda d: (_randn(d), _randn(d, 2, 2, 5, 4, scale=3.0), _randn(d, 2, 2, 5, 4, scale=3.0),
                   torch.rand(2, 1, 5, 4, dtype=DTYPE, device=d), 4.0),
        (1, 2, 3), lambda b, p, t, m: ops.truncated_flow_loss(p, t, m, 4.0, backend=b)),
    "kernel_soft_argmax": Case(
        lambda d: (_randn(d, 2, 5, 3, 2), _randn(d, 2, 20, 5, 3), 30.0, 2.0, [4, 5], "sfnet"),
        (1,), lambda b, c: ops.kernel_soft_argmax(c, 30.0, 2.0, (4, 5), "sfnet", backend=b)),
}


def _backward(op: str, backend: str) -> Callable:
    if backend == "cpp":
        call = getattr(torch.ops.pscfast, f"_{op}_backward")
    else:
        call = getattr(importlib.import_module(f"pscfast.kernels.{op}"), f"{op}_backward")
    return lambda *args: _gradients(call(*args))


def _gradients(out) -> tuple:
    """A backward op's result as a tuple of gradients (an op with one differentiable input returns it bare)."""
    return (out,) if out is None or isinstance(out, torch.Tensor) else tuple(out)


def _masks(k: int):
    return [list(m) for m in itertools.product((False, True), repeat=k)]


def _setup(op, backend, device):
    require(op, backend, device, DTYPE)
    torch.manual_seed(0)
    return CASES[op].make(device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(CASES))
def test_masked_gradients_are_none_and_the_others_unchanged(op, backend, device):
    args, k = _setup(op, backend, device), len(CASES[op].inputs)
    call = _backward(op, backend)
    full = call(*args, [True] * k)
    assert all(isinstance(g, torch.Tensor) for g in full), "every gradient asked for is computed"
    for mask in _masks(k):
        got = call(*args, mask)
        assert len(got) == k
        for i, (want, g, f) in enumerate(zip(mask, got, full)):
            if want:
                assert torch.equal(g, f), f"gradient {i} with output_mask {mask}"
            else:
                assert g is None, f"gradient {i} masked out by {mask} is {type(g).__name__}, not None"


@pytest.mark.parametrize("op", list(CASES))
def test_opcheck_with_each_gradient_masked(op, device):
    args, k = _setup(op, "cpp", device), len(CASES[op].inputs)
    backward = getattr(torch.ops.pscfast, f"_{op}_backward").default
    for mask in [[j != i for j in range(k)] for i in range(k)] + [[False] * k]:
        torch.library.opcheck(backward, (*args, mask))


class _BackwardCalls(TorchDispatchMode):
    """The output_mask of every call of one compiled backward op."""

    def __init__(self, name: str):
        super().__init__()
        self.name, self.masks = name, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.name() == self.name:
            self.masks.append(list(args[-1]))
        return func(*args, **(kwargs or {}))


def _grads(op, backend, device, inputs, wanted, monkeypatch):
    """The gradients of `wanted` (flags over the differentiable inputs) through the public op, and the masks
    that its backward op or launcher received."""
    leaves = [t.detach().clone().requires_grad_(w) for t, w in zip(inputs, wanted)]
    out = CASES[op].forward(backend, *leaves)
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o * torch.linspace(0.5, 1.5, o.numel(), dtype=o.dtype, device=device).view_as(o)).sum()
               for o in outs)
    if backend == "cpp":
        calls = _BackwardCalls(f"pscfast::_{op}_backward")
        with calls:
            grads = torch.autograd.grad(loss, [t for t in leaves if t.requires_grad])
        return grads, calls.masks
    module = importlib.import_module(f"pscfast.kernels.{op}")
    launcher, masks = getattr(module, f"{op}_backward"), []

    def recording(*args):
        masks.append([bool(m) for m in args[-1]])
        return launcher(*args)

    monkeypatch.setattr(module, f"{op}_backward", recording)
    grads = torch.autograd.grad(loss, [t for t in leaves if t.requires_grad])
    monkeypatch.setattr(module, f"{op}_backward", launcher)
    return grads, masks


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(CASES))
def test_autograd_asks_for_the_gradients_it_needs(op, backend, device, monkeypatch):
    args = _setup(op, backend, device)
    inputs = [args[i] for i in CASES[op].inputs]
    k = len(inputs)
    full, masks = _grads(op, backend, device, inputs, [True] * k, monkeypatch)
    assert masks == [[True] * k]
    for i in range(k):
        wanted = [j == i for j in range(k)]
        (grad,), masks = _grads(op, backend, device, inputs, wanted, monkeypatch)
        assert masks == [wanted], f"input {i} alone requires grad"
        assert torch.equal(grad, full[i])


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_absent_optional_input_has_no_gradient(backend, device):
    """truncated_flow_loss without a mask: its gradient is None even when asked for."""
    grad, pred, target, _, T = _setup("truncated_flow_loss", backend, device)
    d_pred, d_target, d_mask = _backward("truncated_flow_loss", backend)(grad, pred, target, None, T, [True] * 3)
    assert d_pred is not None and d_target is not None and d_mask is None
