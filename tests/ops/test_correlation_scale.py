"""correlation's `scale` (RAFT's 1 / sqrt(C), Teed and Deng, ECCV 2020), taken inside the products: every backend
against the reference times the scale, forward and the gradients of src, tgt and grid, on direct, resized and
sampled layers in every memory layout; gradcheck, second derivatives, opcheck and torch.compile with a scale;
scale 1 still torch.bmm's product bit for bit; the ATen calls that apply the scale never read their output;
bad scales."""
import math
import re

import numpy as np
import pytest
import torch

from pscfast.ops import Correlation, correlation
from pscfast.ops import _reference as ref
from tests.utils import BACKENDS, assert_close, noncontiguous, require

# per layer (C, Hs, Ws, Ht, Wt); N; size; target_size (None: size); sampled at a grid; scale. A map at its grid's
# size is direct (multiplied as it lies), otherwise resized or sampled; a layer direct on both sides is one
# batched product, the others one product per sample.
CASES = [
    pytest.param(([(5, 7, 9, 7, 9)], 2, (7, 9), None, False, 0.37), id="direct-1layer"),
    pytest.param(([(3, 5, 6, 4, 3), (4, 5, 6, 4, 3)], 3, (5, 6), (4, 3), False, -1.7), id="direct-2layers-rect"),
    # layer 1: src direct, tgt resized
    pytest.param(([(3, 9, 7, 5, 8), (2, 5, 7, 4, 4)], 2, (5, 7), (3, 5), False, 1 / 16), id="resized-2layers-odd"),
    # layers: both direct, both resized, tgt direct and src resized
    pytest.param(([(3, 5, 7, 3, 5), (2, 8, 6, 4, 4), (2, 6, 6, 3, 5)], 1, (5, 7), (3, 5), False, 0.37),
                 id="mixed-3layers-batch1"),
    pytest.param(([(3, 9, 7, 3, 5), (2, 6, 10, 6, 5)], 2, (4, 5), (3, 5), True, -0.6), id="grid-2layers"),
    pytest.param(([(4, 4, 5, 4, 5)], 3, (4, 5), None, True, 2.5), id="grid-at-map-size"),
]
LAYOUTS = ["contiguous", "strided", "channels_last"]


def _inputs(layers, n, size, dtype, layout, seed):
    gen = torch.Generator().manual_seed(seed)
    src = [torch.randn(n, c, hs, ws, generator=gen, dtype=dtype) for c, hs, ws, _, _ in layers]
    tgt = [torch.randn(n, c, ht, wt, generator=gen, dtype=dtype) for c, _, _, ht, wt in layers]
    grid = torch.rand(n, *size, 2, generator=gen, dtype=dtype) * 2.4 - 1.2  # partly outside [-1, 1]
    if layout == "strided":
        src, tgt, grid = [noncontiguous(s) for s in src], [noncontiguous(t) for t in tgt], noncontiguous(grid)
    elif layout == "channels_last":
        src = [s.contiguous(memory_format=torch.channels_last) for s in src]
        tgt = [t.contiguous(memory_format=torch.channels_last) for t in tgt]
    return src, tgt, grid


def _value_and_grads(fn, src, tgt, grid, gout):
    """fn(src, tgt, grid) and the gradients of <fn(...), gout> with respect to src, tgt (and grid when given)."""
    src = [s.detach().clone().requires_grad_() for s in src]
    tgt = [t.detach().clone().requires_grad_() for t in tgt]
    grid = grid.detach().clone().requires_grad_() if grid is not None else None
    out = fn(src, tgt, grid)
    leaves = src + tgt + ([grid] if grid is not None else [])
    return [out, *torch.autograd.grad(out, leaves, gout)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference_times_scale(backend, dtype, case, layout):
    require("correlation", backend, "cpu", dtype)
    layers, n, size, target_size, warped, scale = case
    seed = 7001 + 97 * [c.values[0] for c in CASES].index(case) + 13 * LAYOUTS.index(layout)  # new per test
    src, tgt, grid = _inputs(layers, n, size, dtype, layout, seed)
    grid = grid if warped else None
    ht, wt = target_size or size
    gout = torch.randn(n, len(layers) * ht * wt, *size, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    got = _value_and_grads(lambda s, t, g: correlation(s, t, g, size, target_size, scale=scale, backend=backend),
                           src, tgt, grid, gout)
    # the reference without a scale, multiplied afterwards: RAFT's own order of operations
    exp = _value_and_grads(lambda s, t, g: ref.correlation(s, t, g, size, target_size) * scale, src, tgt, grid, gout)
    names = ["forward"] + [f"src[{i}] grad" for i in range(len(layers))] + \
        [f"tgt[{i}] grad" for i in range(len(layers))] + (["grid grad"] if warped else [])
    assert len(got) == len(names)
    for name, a, b in zip(names, got, exp):
        assert a.shape == b.shape, name
        assert_close(a, b, scale=float(b.detach().abs().max().clamp_min(1)), msg=f"{name} (scale {scale})")


def test_raft_all_pairs_volume():
    """RAFT's corr = matmul(fmap1^T, fmap2) / sqrt(C), as its release computes it, from one op call."""
    require("correlation", "cpp", "cpu", torch.float32)
    gen = torch.Generator().manual_seed(2020)
    n, c, h, w = 1, 64, 6, 10
    f1 = torch.randn(n, c, h, w, generator=gen, requires_grad=True)
    f2 = torch.randn(n, c, h, w, generator=gen, requires_grad=True)
    corr = torch.matmul(f1.view(n, c, h * w).transpose(1, 2), f2.view(n, c, h * w))
    raft = corr / torch.sqrt(torch.tensor(c).float())
    ours = correlation([f2], [f1], None, (h, w), scale=1 / math.sqrt(c)).view(n, h * w, h * w)
    assert_close(ours, raft)
    gout = torch.randn(n, h * w, h * w, generator=gen)
    for a, b in zip(torch.autograd.grad(ours, (f1, f2), gout), torch.autograd.grad(raft, (f1, f2), gout)):
        assert_close(a, b, scale=10.0)


@pytest.mark.parametrize("warped", [False, True], ids=["plain", "warped"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend, warped):
    require("correlation", backend, "cpu", torch.float64)
    # layer 0 resized on both sides, layer 1: tgt direct (3 x 3), src resized or sampled
    src, tgt, grid = _inputs([(2, 5, 4, 4, 3), (1, 3, 3, 3, 3)], 1, (3, 3), torch.float64, "contiguous", 4242)
    grid = grid * 0.9 if warped else None  # away from pixel boundaries, where sampling has no derivative

    def fn(*args):
        g = args[4] if warped else None
        return correlation(list(args[:2]), list(args[2:4]), g, 3, (3, 3), scale=0.37, backend=backend)

    args = [t.clone().requires_grad_() for t in src + tgt + ([grid] if warped else [])]
    # the interpreter is slow (a full check of the Triton backend takes minutes): its Jacobian is checked along
    # random directions, and its gradients against the reference's above
    assert torch.autograd.gradcheck(fn, args, fast_mode=backend == "triton")


@pytest.mark.parametrize("warped", [False, True], ids=["plain", "warped"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradgradcheck(backend, warped):
    """Second derivatives (create_graph=True) carry the scale: the cpp backend's recorded backward calls the
    reference's, and Triton's differentiates the reference, each with the forward's scale."""
    require("correlation", backend, "cpu", torch.float64)
    src, tgt, grid = _inputs([(2, 4, 5, 3, 4)], 1, (2, 3), torch.float64, "contiguous", 5151)
    grid = grid * 0.9 if warped else None

    def fn(s, t, *g):
        return correlation([s], [t], g[0] if g else None, (2, 3), (3, 2), scale=-0.6, backend=backend)

    args = [src[0].requires_grad_(), tgt[0].requires_grad_()] + ([grid.requires_grad_()] if warped else [])
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_penalty_matches_reference(backend):
    """A gradient penalty (the norm of a first gradient, differentiated again) against the reference's."""
    require("correlation", backend, "cpu", torch.float64)
    src, tgt, grid = _inputs([(3, 6, 5, 4, 4)], 2, (3, 4), torch.float64, "contiguous", 6161)
    grid = (grid * 0.9).requires_grad_()
    scale = 1 / math.sqrt(3)

    def penalty(fn):
        s = src[0].detach().clone().requires_grad_()
        out = fn([s], tgt, grid)
        (g,) = torch.autograd.grad(out.square().sum(), s, create_graph=True)
        return torch.autograd.grad(g.square().sum(), [s, grid])

    got = penalty(lambda s, t, g: correlation(s, t, g, (3, 4), (4, 4), scale=scale, backend=backend))
    exp = penalty(lambda s, t, g: ref.correlation(s, t, g, (3, 4), (4, 4)) * scale)
    for a, b in zip(got, exp):
        assert_close(a, b, scale=float(b.abs().max().clamp_min(1)))


@pytest.mark.parametrize("grids", [((4, 4), (4, 4)), ((3, 5), (2, 6))], ids=["square", "rectangular"])
def test_opcheck(grids):
    require("correlation", "cpp", "cpu", torch.float32)
    size, target_size = grids
    # layer 0 resampled, layer 1's tgt at the target grid's size (direct)
    src, tgt, grid = _inputs([(3, 5, 6, 4, 7), (2, 3, 3, *target_size)], 2, size, torch.float32, "contiguous", 77)
    gout = torch.randn(2, 2 * target_size[0] * target_size[1], *size)
    for g in (None, grid):
        args = ([s.clone().requires_grad_() for s in src], [t.clone().requires_grad_() for t in tgt],
                g.clone().requires_grad_() if g is not None else None, list(size), list(target_size), 0.37)
        torch.library.opcheck(torch.ops.pscfast.correlation.default, args)
        for mask in ([True, True, True], [False, True, False], [True, False, True]):
            torch.library.opcheck(torch.ops.pscfast._correlation_backward.default,
                                  (gout, src, tgt, g, list(size), list(target_size), 0.37, mask))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scale_one_is_bmm_bit_for_bit(layout):
    """With scale 1 (the default) a direct layer is torch.bmm's product itself, forward and backward
    (dtgt = src G^T, dsrc = tgt G): the scale path changes nothing there."""
    require("correlation", "cpp", "cpu", torch.float32)
    src, tgt, _ = _inputs([(32, 12, 10, 12, 10)], 3, (12, 10), torch.float32, layout, 31337)
    s, t = src[0].requires_grad_(), tgt[0].requires_grad_()
    for kwargs in ({}, {"scale": 1.0}, {"scale": 1}):
        out = correlation(s, t, None, (12, 10), **kwargs, backend="cpp")
        T, S = t.flatten(2), s.flatten(2)  # (N, C, 120): views, as the kernel passes them to the BLAS
        assert torch.equal(out.view(3, 120, 120), torch.bmm(T.transpose(1, 2), S))
        G = torch.randn(3, 120, 12, 10)
        ds, dt = torch.autograd.grad(out, (s, t), G)
        G = G.view(3, 120, 120)
        assert torch.equal(dt.reshape(3, 32, 120), torch.bmm(S.detach(), G.transpose(1, 2)))
        assert torch.equal(ds.reshape(3, 32, 120), torch.bmm(T.detach(), G))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dims", [(2, 3, 4, 5), (3, 40, 24, 30)], ids=["small", "blas"])
def test_beta_zero_never_reads_the_output(dims, dtype):
    """The CPU kernel writes into uninitialised memory with baddbmm_ / addmm_ (beta 0, alpha = scale), in place on
    views like these: NaN there must not reach the result (ATen's small-product loop and the BLAS path alike)."""
    n, c, rows, cols = dims
    gen = torch.Generator().manual_seed(99)
    a = torch.randn(n, c, rows, generator=gen, dtype=dtype).transpose(1, 2)  # (n, rows, c), transposed items
    b = torch.randn(n, c, cols, generator=gen, dtype=dtype)
    expected = torch.bmm(a, b) * 0.37
    for lhs in (a, a.contiguous()):  # the same values in both stride orders
        for layers in (1, 2):  # a layer's block is a narrow view of the whole output
            out = torch.full((n, layers * rows, cols), float("nan"), dtype=dtype)
            block = out.narrow(1, (layers - 1) * rows, rows)
            block.baddbmm_(lhs, b, beta=0, alpha=0.37)
            assert_close(block, expected)
            for i in range(n):  # the per-sample GEMMs
                out.fill_(float("nan"))
                sample = out.narrow(1, (layers - 1) * rows, rows).select(0, i)
                sample.addmm_(lhs[i], b[i], beta=0, alpha=0.37)
                assert_close(sample, expected[i])


def test_compile_with_the_scale_an_argument():
    """Under torch.compile a scale passed in (not a constant of the traced code) still reaches the op."""
    require("correlation", "cpp", "cpu", torch.float32)
    src, tgt, grid = _inputs([(3, 7, 6, 5, 5)], 2, (4, 5), torch.float32, "contiguous", 808)
    torch._dynamo.reset()
    fn = torch.compile(lambda s, t, g, k: correlation(s, t, g, (4, 5), (5, 5), scale=k, backend="cpp"),
                       backend="aot_eager", fullgraph=True)
    for scale in (0.37, -2.0, 1.0):
        assert_close(fn(src, tgt, grid, scale), ref.correlation(src, tgt, grid, (4, 5), (5, 5)) * scale)


def test_module_takes_the_scale():
    src, tgt, _ = _inputs([(3, 8, 8, 6, 6)], 2, (4, 3), torch.float32, "contiguous", 909)
    m = Correlation((4, 3), (2, 5), scale=0.25)
    assert torch.equal(m(src, tgt), correlation(src, tgt, None, (4, 3), (2, 5), scale=0.25))
    assert_close(m(src, tgt), ref.correlation(src, tgt, None, (4, 3), (2, 5)) * 0.25)
    assert "size=(4, 3), target_size=(2, 5), scale=0.25" in repr(m)
    assert "scale" not in repr(Correlation(4))
    with pytest.raises(ValueError, match="pscfast.ops.correlation: scale must be finite"):
        Correlation(4, scale=math.inf)(src, tgt)


@pytest.mark.parametrize("scale", [2, np.float32(0.25), np.float64(-0.5)], ids=["int", "np.float32", "np.float64"])
def test_other_real_numbers(scale):
    src, tgt, _ = _inputs([(3, 6, 6, 4, 4)], 2, (4, 4), torch.float64, "contiguous", 1111)
    assert_close(correlation(src, tgt, None, 4, scale=scale), ref.correlation(src, tgt, None, 4) * float(scale))


@pytest.mark.parametrize(
    "scale, error, words",
    [
        (True, TypeError, "scale must be a real number (a Python float or int), got bool"),
        (torch.tensor(0.5), TypeError, "scale must be a real number (a Python float or int), got Tensor"),
        ("0.5", TypeError, "scale must be a real number .*, got str"),
        (None, TypeError, "scale must be a real number .*, got NoneType"),
        (0.5 + 0j, TypeError, "scale must be a real number .*, got complex"),
        (float("nan"), ValueError, "scale must be finite, got nan"),
        (float("inf"), ValueError, "scale must be finite, got inf"),
        (-math.inf, ValueError, "scale must be finite, got -inf"),
        (np.float64("nan"), ValueError, "scale must be finite"),
    ],
)
def test_bad_scale(scale, error, words):
    src, tgt = [torch.randn(2, 3, 6, 6)], [torch.randn(2, 3, 5, 5)]
    with pytest.raises(error, match="pscfast.ops.correlation: " + re.sub(r"([()])", r"\\\1", words)):
        correlation(src, tgt, None, 4, scale=scale)
