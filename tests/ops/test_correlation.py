"""correlation against the PyTorch reference: goldens, every backend's forward and backward, half precision,
gradcheck, opcheck, the grid's gradient alone. The coordinate contract, determinism, the Module
and bad input are in test_correlation_contract.py."""
from pathlib import Path

import pytest
import torch

from pscfast.ops import correlation
from pscfast.ops import _reference as ref
from tests.utils import BACKENDS, assert_close, noncontiguous, require

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden-psc-ops.pt"

# per layer (C, Hs, Ws, Ht, Wt); N; size
CASES = [
    pytest.param(([(3, 9, 7, 5, 8)], 2, 7), id="1layer-odd-size7"),
    pytest.param(([(4, 9, 11, 6, 5), (6, 5, 4, 7, 7)], 1, 7), id="2layers-batch1"),
    pytest.param(([(2, 32, 32, 32, 32), (5, 16, 16, 16, 16), (3, 17, 13, 3, 4)], 2, 16), id="3layers-size16"),
]


def _inputs(layers, n, size, dtype, device, contiguous=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    src = [torch.randn(n, c, hs, ws, generator=gen, dtype=dtype) for c, hs, ws, _, _ in layers]
    tgt = [torch.randn(n, c, ht, wt, generator=gen, dtype=dtype) for c, _, _, ht, wt in layers]
    grid = torch.rand(n, size, size, 2, generator=gen, dtype=dtype) * 2.4 - 1.2  # partly outside [-1, 1]
    src, tgt, grid = [s.to(device) for s in src], [t.to(device) for t in tgt], grid.to(device)
    if not contiguous:
        src, tgt, grid = [noncontiguous(s) for s in src], [noncontiguous(t) for t in tgt], noncontiguous(grid)
    return src, tgt, grid


def _run(fn, src, tgt, grid, size, gout=None, **kw):
    """Output and the gradients of <out, gout> with respect to src, tgt (and grid when given)."""
    src = [s.detach().clone().requires_grad_() for s in src]
    tgt = [t.detach().clone().requires_grad_() for t in tgt]
    grid = grid.detach().clone().requires_grad_() if grid is not None else None
    out = fn(src, tgt, grid, size, **kw)
    if gout is None:
        return out
    leaves = src + tgt + ([grid] if grid is not None else [])
    return [out, *torch.autograd.grad(out, leaves, gout)]


def _golden():
    g = torch.load(GOLDEN)
    return list(g["corr_src"].values()), list(g["corr_tgt"].values()), g


@pytest.mark.parametrize("backend", BACKENDS)
def test_golden(device, backend):
    require("correlation", backend, device, torch.float32)
    src, tgt, g = _golden()
    n = 1 if backend == "triton" and device == "cpu" else None  # the interpreter is slow: one sample
    src, tgt = [s[:n].to(device) for s in src], [t[:n].to(device) for t in tgt]
    for grid, key in ((None, "corr_plain"), (g["corr_grid"][:n].to(device), "corr_warped")):
        out = correlation(src, tgt, grid, 16, backend=backend).cpu()
        exp = g[key][:n]
        assert out.shape == exp.shape
        torch.testing.assert_close(out, exp, rtol=1e-5, atol=1e-5 * float(exp.abs().max()), msg=key)


@pytest.mark.parametrize("warped", [False, True], ids=["plain", "warped"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference(device, backend, dtype, case, contiguous, warped):
    require("correlation", backend, device, dtype)
    layers, n, size = case
    if backend == "triton" and device == "cpu" and size > 8 and (dtype, contiguous) != (torch.float32, True):
        pytest.skip("the Triton interpreter is slow: size 16 runs for float32 contiguous inputs only")
    src, tgt, grid = _inputs(layers, n, size, dtype, device, contiguous, seed=len(layers) * 10 + warped)
    grid = grid if warped else None
    gout = torch.randn(n, len(layers) * size * size, size, size, dtype=dtype, device=device)
    got = _run(correlation, src, tgt, grid, size, gout, backend=backend)
    exp = _run(ref.correlation, src, tgt, grid, size, gout)
    names = ["forward"] + [f"src[{i}] grad" for i in range(len(src))] + [f"tgt[{i}] grad" for i in range(len(tgt))]
    names += ["grid grad"] if warped else []
    for name, a, b in zip(names, got, exp):
        # outputs and gradients are sums over channels and positions: atol scales with their magnitude
        assert_close(a, b, scale=float(b.detach().abs().max().clamp_min(1)), msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_half_precision_error_within_twice_naive(backend, dtype):
    """On CUDA: error against float32 at most 2x that of the naive op in the same dtype (+ its ulp)."""
    device = "cuda"
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    require("correlation", backend, device, dtype)
    src, tgt, grid = _inputs([(64, 32, 32, 32, 32), (128, 16, 16, 16, 16)], 4, 16, torch.float32, device)
    half = lambda ts: [t.to(dtype) for t in ts]  # noqa: E731
    for g in (None, grid):
        exact = ref.correlation(src, tgt, g, 16)
        gh = g.to(dtype) if g is not None else None
        naive = ref.correlation(half(src), half(tgt), gh, 16).float()
        ours = correlation(half(src), half(tgt), gh, 16, backend=backend).float()
        ulp = torch.finfo(dtype).eps * exact.abs().max()
        assert (ours - exact).abs().max() <= 2 * (naive - exact).abs().max() + ulp


@pytest.mark.parametrize("warped", [False, True], ids=["plain", "warped"])
def test_gradcheck_float64(device, warped):
    src, tgt, grid = _inputs([(2, 5, 4, 3, 5), (1, 3, 3, 4, 4)], 1, 3, torch.float64, device)
    # keep grid points away from pixel boundaries, where bilinear sampling is not differentiable
    grid = grid * 0.9 if warped else None
    for backend in ("cpp", "torch"):
        require("correlation", backend, device, torch.float64)
        n = len(src)

        def fn(*args):
            g = args[2 * n] if warped else None
            return correlation(list(args[:n]), list(args[n:2 * n]), g, 3, backend=backend)

        args = [t.clone().requires_grad_() for t in src + tgt + ([grid] if warped else [])]
        assert torch.autograd.gradcheck(fn, args)


def test_opcheck(device):
    require("correlation", "cpp", device, torch.float32)
    src, tgt, grid = _inputs([(3, 5, 6, 4, 7), (2, 3, 3, 5, 5)], 2, 4, torch.float32, device)
    gout = torch.randn(2, 2 * 16, 4, 4, device=device)
    for g in (None, grid):
        args = ([s.requires_grad_() for s in src], [t.requires_grad_() for t in tgt],
                g.requires_grad_() if g is not None else None, 4)
        torch.library.opcheck(torch.ops.pscfast.correlation.default, args)
        detached = ([s.detach() for s in src], [t.detach() for t in tgt], g.detach() if g is not None else None)
        torch.library.opcheck(torch.ops.pscfast._correlation_backward.default, (gout, *detached, 4, [True, False, True]))


def test_only_required_gradients():
    """Gradients flow only to what requires them (here: the grid, as in PSC's frozen-feature case)."""
    require("correlation", "cpp", "cpu", torch.float32)
    src, tgt, grid = _inputs([(3, 8, 8, 6, 6)], 2, 4, torch.float32, "cpu")
    grid.requires_grad_()
    out = correlation(src, tgt, grid, 4, backend="cpp")
    exp = ref.correlation(src, tgt, grid, 4)
    gout = torch.randn_like(out)
    assert_close(torch.autograd.grad(out, grid, gout)[0], torch.autograd.grad(exp, grid, gout)[0], scale=10.0)

