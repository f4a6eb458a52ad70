"""The autograd node of the compiled correlation (csrc/ops/correlation_autograd.cpp): gradients for exactly the
inputs that require them, in every combination of layers and grid, the same map on both sides, no graph
without grad, torch.compile and compiled autograd, a second backward, forward-mode AD refused."""
import itertools

import pytest
import torch

from pscfast.ops import _reference as ref
from pscfast.ops import correlation
from tests.utils import assert_close, require

LAYERS = [(3, 6, 5, 4, 4), (2, 4, 4, 3, 5)]  # (C, Hs, Ws, Ht, Wt)


def _inputs(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    src = [torch.randn(2, c, hs, ws, generator=gen, dtype=dtype) for c, hs, ws, _, _ in LAYERS]
    tgt = [torch.randn(2, c, ht, wt, generator=gen, dtype=dtype) for c, _, _, ht, wt in LAYERS]
    grid = torch.rand(2, 3, 4, 2, generator=gen, dtype=dtype) * 1.8 - 0.9
    return src, tgt, grid


@pytest.mark.parametrize("warped", [False, True], ids=["plain", "warped"])
def test_gradients_for_exactly_what_requires_them(warped):
    require("correlation", "cpp", "cpu", torch.float64)
    src, tgt, grid = _inputs()
    inputs = src + tgt + ([grid] if warped else [])
    gout = None
    for wanted in itertools.product((False, True), repeat=len(inputs)):
        if not any(wanted):
            continue
        leaves = [t.clone().requires_grad_(w) for t, w in zip(inputs, wanted)]
        args = (leaves[:2], leaves[2:4], leaves[4] if warped else None, (3, 4), (4, 4))
        out = correlation(*args, backend="cpp")
        expected = ref.correlation(*args)
        gout = torch.randn_like(out) if gout is None else gout
        out.backward(gout)
        expected_grads = torch.autograd.grad(expected, [t for t in leaves if t.requires_grad], gout)
        got_grads = [t.grad for t in leaves if t.requires_grad]
        assert all(t.grad is None for t in leaves if not t.requires_grad)
        for got, exp in zip(got_grads, expected_grads):
            assert_close(got, exp, scale=10.0, msg=f"requires grad: {wanted}")


def test_same_map_on_both_sides():
    """A self-correlation: the map's gradient is the sum of its source and target gradients."""
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    gout = torch.randn(2, 25, 5, 5, dtype=torch.float64)
    (got,) = torch.autograd.grad(correlation(x, x, size=5, backend="cpp"), x, gout)
    (expected,) = torch.autograd.grad(ref.correlation([x], [x], None, 5), x, gout)
    assert_close(got, expected, scale=10.0)


def test_no_graph_without_grad():
    src, tgt, _ = _inputs()
    assert correlation(src, tgt, size=(3, 4), target_size=(4, 4), backend="cpp").grad_fn is None
    with torch.no_grad():
        out = correlation([s.requires_grad_() for s in src], tgt, size=(3, 4), target_size=(4, 4), backend="cpp")
    assert out.grad_fn is None


def test_second_backward_refused():
    src, tgt, _ = _inputs()
    out = correlation([s.requires_grad_() for s in src], tgt, size=(3, 4), target_size=(4, 4), backend="cpp")
    out.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        out.sum().backward()


def test_compiled_and_compiled_autograd_give_eager_gradients():
    src, tgt, grid = _inputs(dtype=torch.float32)
    gout = torch.randn(2, 32, 3, 4)

    def grads(fn, compiled_autograd=False):
        leaves = [t.clone().requires_grad_() for t in (*src, *tgt, grid)]
        loss = (fn(leaves[:2], leaves[2:4], leaves[4]) * gout).sum()
        if compiled_autograd:
            with torch._dynamo.compiled_autograd._enable(torch.compile(backend="eager")):
                loss.backward()
        else:
            loss.backward()
        return [t.grad for t in leaves]

    def fn(s, t, g):
        return correlation(s, t, g, (3, 4), (4, 4), backend="cpp")

    eager = grads(fn)
    torch._dynamo.reset()
    for compiled in (grads(torch.compile(fn, fullgraph=True, backend="aot_eager")), grads(fn, compiled_autograd=True)):
        for got, exp in zip(compiled, eager):
            assert_close(got, exp)


def test_forward_mode_refused():
    import torch.autograd.forward_ad as fwAD

    src, tgt, _ = _inputs()
    with fwAD.dual_level():
        dual = fwAD.make_dual(src[0], torch.ones_like(src[0]))
        with pytest.raises(NotImplementedError, match="forward-mode AD"):
            correlation([dual, src[1]], tgt, size=(3, 4), target_size=(4, 4), backend="cpp")
