"""correlation against the PyTorch reference: goldens, every backend's forward and backward on square and
rectangular grids, RAFT's all-pairs volume, half precision, gradcheck, gradgradcheck, opcheck, the grid's
gradient alone. The coordinate contract, determinism, the Module and bad input are in
test_correlation_contract.py."""
import itertools
from pathlib import Path

import pytest
import torch

from pscfast.ops import correlation
from pscfast.ops import _reference as ref
from tests.utils import BACKENDS, assert_close, noncontiguous, require

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden-psc-ops.pt"

# per layer (C, Hs, Ws, Ht, Wt); N; size (source grid); target_size (target grid, None: size)
CASES = [
    pytest.param(([(3, 9, 7, 5, 8)], 2, 7, None), id="1layer-odd-size7"),
    pytest.param(([(4, 9, 11, 6, 5), (6, 5, 4, 7, 7)], 1, 7, None), id="2layers-batch1"),
    pytest.param(([(2, 32, 32, 32, 32), (5, 16, 16, 16, 16), (3, 17, 13, 3, 4)], 2, 16, None), id="3layers-size16"),
    pytest.param(([(3, 9, 7, 5, 8), (2, 6, 10, 4, 4)], 2, (5, 8), None), id="2layers-rect5x8"),
    pytest.param(([(4, 9, 11, 6, 5)], 2, (3, 7), (6, 4)), id="src3x7-tgt6x4"),
    pytest.param(([(2, 7, 5, 7, 5)], 1, (7, 5), (1, 9)), id="native-src-tgt1x9"),
]


def _pair(size):
    return (size, size) if isinstance(size, int) else size


def _inputs(layers, n, size, dtype, device, contiguous=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    src = [torch.randn(n, c, hs, ws, generator=gen, dtype=dtype) for c, hs, ws, _, _ in layers]
    tgt = [torch.randn(n, c, ht, wt, generator=gen, dtype=dtype) for c, _, _, ht, wt in layers]
    grid = torch.rand(n, *_pair(size), 2, generator=gen, dtype=dtype) * 2.4 - 1.2  # partly outside [-1, 1]
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
    layers, n, size, target_size = case
    (hs, ws), (ht, wt) = _pair(size), _pair(target_size or size)
    if backend == "triton" and device == "cpu" and hs > 8 and (dtype, contiguous) != (torch.float32, True):
        pytest.skip("the Triton interpreter is slow: size 16 runs for float32 contiguous inputs only")
    src, tgt, grid = _inputs(layers, n, size, dtype, device, contiguous, seed=len(layers) * 10 + warped)
    grid = grid if warped else None
    gout = torch.randn(n, len(layers) * ht * wt, hs, ws, dtype=dtype, device=device)
    got = _run(correlation, src, tgt, grid, size, gout, target_size=target_size, backend=backend)
    exp = _run(ref.correlation, src, tgt, grid, size, gout, target_size=target_size)
    names = ["forward"] + [f"src[{i}] grad" for i in range(len(src))] + [f"tgt[{i}] grad" for i in range(len(tgt))]
    names += ["grid grad"] if warped else []
    for name, a, b in zip(names, got, exp):
        # outputs and gradients are sums over channels and positions: atol scales with their magnitude
        assert_close(a, b, scale=float(b.detach().abs().max().clamp_min(1)), msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_maps(device, backend):
    """Maps in channels-last memory: a map already at its grid's size is multiplied as it lies (a transposed
    matrix for the BLAS), the others are resampled; values and gradients are the reference's."""
    require("correlation", backend, device, torch.float64)
    # layer 0 direct on both sides, layer 1 resized on both, layer 2: src direct, tgt resized to 4 x 4
    src, tgt, _ = _inputs([(3, 5, 6, 5, 6), (4, 7, 9, 5, 6), (2, 5, 6, 6, 5)], 2, (5, 6), torch.float64, device)
    last = [t.contiguous(memory_format=torch.channels_last) for t in src + tgt]
    assert not any(t.is_contiguous() for t in last)

    def both(fn, s, t, grid, size, **kw):  # layers 0-1 on a 5 x 6 target grid, layer 2 on a 4 x 4 one
        return torch.cat([fn(s[:2], t[:2], grid, size, **kw), fn(s[2:], t[2:], grid, size, (4, 4), **kw)], 1)

    gout = torch.randn(2, 2 * 30 + 16, 5, 6, dtype=torch.float64, device=device)
    got = _run(lambda *a: both(correlation, *a, backend=backend), last[:3], last[3:], None, (5, 6), gout)
    exp = _run(lambda *a: both(ref.correlation, *a), src, tgt, None, (5, 6), gout)
    for a, b in zip(got, exp):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


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


@pytest.mark.parametrize("grids", [((4, 4), (4, 4)), ((3, 5), (2, 6))], ids=["square", "rectangular"])
def test_opcheck(device, grids):
    require("correlation", "cpp", device, torch.float32)
    size, target_size = grids
    src, tgt, grid = _inputs([(3, 5, 6, 4, 7), (2, 3, 3, 5, 5)], 2, size, torch.float32, device)
    gout = torch.randn(2, 2 * target_size[0] * target_size[1], *size, device=device)
    for g in (None, grid):
        args = ([s.requires_grad_() for s in src], [t.requires_grad_() for t in tgt],
                g.requires_grad_() if g is not None else None, list(size), list(target_size))
        torch.library.opcheck(torch.ops.pscfast.correlation.default, args)
        detached = ([s.detach() for s in src], [t.detach() for t in tgt], g.detach() if g is not None else None)
        torch.library.opcheck(torch.ops.pscfast._correlation_backward.default,
                              (gout, *detached, list(size), list(target_size), 1.0, [True, False, True]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_raft_all_pairs_volume_equals_matmul(backend):
    """RAFT at 256x320 (feature maps 32x40 at stride 8): correlation(size=(h, w)) is RAFT's
    corr = fmap1^T fmap2 (channel = fmap2 position), forward and gradients. Before, size=(32, 40) gave a
    32x32 correlation."""
    require("correlation", backend, "cpu", torch.float64)
    n, c = (1, 4) if backend == "triton" else (2, 16)  # the interpreter is slow
    f1 = torch.randn(n, c, 32, 40, dtype=torch.float64, requires_grad=True)
    f2 = torch.randn(n, c, 32, 40, dtype=torch.float64, requires_grad=True)
    out = correlation(f1, f2, size=(32, 40), backend=backend)
    assert out.shape == (n, 32 * 40, 32, 40)
    raft = torch.matmul(f1.flatten(2).transpose(1, 2), f2.flatten(2))  # (n, fmap1 position, fmap2 position)
    torch.testing.assert_close(out.view(n, 32 * 40, 32 * 40).transpose(1, 2), raft, rtol=0, atol=1e-12)
    gout = torch.randn(n, 32 * 40, 32 * 40, dtype=torch.float64)
    got = torch.autograd.grad(out.view(n, 32 * 40, 32 * 40).transpose(1, 2), (f1, f2), gout)
    expected = torch.autograd.grad(raft, (f1, f2), gout)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("warped", [False, True], ids=["plain", "warped"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradgradcheck(backend, warped):
    """Second derivatives (create_graph=True) on every backend, rectangular grids: before, the cpp backward
    raised an unrelated "mm(): functions with out=..." error and the Triton one returned detached
    gradients."""
    require("correlation", backend, "cpu", torch.float64)
    src, tgt, grid = _inputs([(2, 4, 5, 3, 4)], 1, (2, 3), torch.float64, "cpu")
    grid = grid * 0.9 if warped else None  # away from pixel boundaries, where sampling has no derivative

    def fn(s, t, *g):
        return correlation([s], [t], g[0] if g else None, (2, 3), (3, 2), backend=backend)

    args = [src[0].requires_grad_(), tgt[0].requires_grad_()] + ([grid.requires_grad_()] if warped else [])
    assert torch.autograd.gradgradcheck(fn, args)


def test_only_required_gradients():
    """Gradients flow only to what requires them (here: the grid, as in PSC's frozen-feature case)."""
    require("correlation", "cpp", "cpu", torch.float32)
    src, tgt, grid = _inputs([(3, 8, 8, 6, 6)], 2, 4, torch.float32, "cpu")
    grid.requires_grad_()
    out = correlation(src, tgt, grid, 4, backend="cpp")
    exp = ref.correlation(src, tgt, grid, 4)
    gout = torch.randn_like(out)
    assert_close(torch.autograd.grad(out, grid, gout)[0], torch.autograd.grad(exp, grid, gout)[0], scale=10.0)



@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_backward_output_mask(backend):
    """ATen's output_mask (src, tgt, grid): the backward op and the Triton launcher return an empty list for a
    masked map gradient and None for a masked grid gradient, and every other gradient unchanged."""
    dtype = torch.float64 if backend == "cpp" else torch.float32  # the Triton kernels take no float64
    require("correlation", backend, "cpu", dtype)
    if backend == "cpp":
        backward = torch.ops.pscfast._correlation_backward
    else:
        from pscfast.kernels import correlation_backward as k

        backward = k.correlation_backward
    src, tgt, grid = _inputs([(2, 5, 6, 3, 4), (3, 4, 4, 3, 3)], 2, (3, 2), dtype, "cpu")
    gout = torch.randn(2, 2 * 12, 3, 2, dtype=dtype)
    # both layers on a 3 x 4 target grid; layer 1's target (3 x 3) is resized, layer 0's (3 x 4) is direct
    for g in (None, grid):
        full = backward(gout, src, tgt, g, [3, 2], [3, 4], 0.5, [True, True, True])
        assert len(full[0]) == 2 and len(full[1]) == 2 and (full[2] is None) == (g is None)
        for mask in itertools.product((False, True), repeat=3):
            got = backward(gout, src, tgt, g, [3, 2], [3, 4], 0.5, list(mask))
            for want, grads, expected in zip(mask[:2], got[:2], full[:2]):
                assert len(grads) == (2 if want else 0)
                for a, b in zip(grads, expected):
                    assert torch.equal(a, b)
            if mask[2] and g is not None:
                assert torch.equal(got[2], full[2])
            else:
                assert got[2] is None


@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
def test_sample_blocks_on_worker_threads(grad_mode):
    """Batches of at least as many samples as threads run their per-sample GEMMs on worker threads, which do not
    inherit the caller's dispatch state: inputs that require grad (here the target, multiplied where it lies)
    must not reach autograd from there."""
    require("correlation", "cpp", "cpu", torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(11)
        src = [torch.randn(4, 8, 12, 12, generator=g, requires_grad=True)]
        tgt = [torch.randn(4, 8, 5, 5, generator=g, requires_grad=True)]  # at its grid's size: read in place
        grid = (torch.rand(4, 6, 6, 2, generator=g) * 2 - 1).requires_grad_()
        with torch.set_grad_enabled(grad_mode):
            out = correlation(src, tgt, grid, 6, target_size=5, backend="cpp")
            want = ref.correlation(src, tgt, grid, (6, 6), (5, 5))
        assert_close(out, want, torch.float32)
        if grad_mode:
            got = torch.autograd.grad(out.square().sum(), [*src, *tgt, grid])
            expected = torch.autograd.grad(want.square().sum(), [*src, *tgt, grid])
            for a, b in zip(got, expected):
                assert_close(a, b, torch.float32, scale=10.0)
    finally:
        torch.set_num_threads(threads)
