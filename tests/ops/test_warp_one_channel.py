"""The CPU warp's one-channel paths. A one-channel image whose grid alone requires grad (SFNet's mask warps): the
forward also returns d(out)/d(grid) (pscfast::_warp_with_jacobian) and the grid's gradient is its product with
the output's gradient (pscfast::_warp_jacobian_product). A one-channel float forward without a resize runs the
same fused loop without the Jacobian. Values and gradients against the reference, the path taken, the two ops
themselves, opcheck, gradcheck, thread counts, torch.compile and compiled autograd, non-finite grids."""
import pytest
import torch

from pscfast.ops import _reference as ref
from pscfast.ops import warp
from tests.utils import assert_close, noncontiguous, require

# (N, H, W, h, w): SFNet's masks (one 256-point block per sample), RAFT-like 9x9 windows (blocks across
# samples, runs not a multiple of 8), a sample of several blocks, a single point
SHAPES = [(16, 16, 16, 16, 16), (37, 8, 8, 9, 9), (2, 5, 7, 3, 301), (1, 3, 4, 1, 1)]
CASES = [(p, a) for p in ("zeros", "border") for a in (True, False)]


def _inputs(n, H, W, h, w, dtype, contiguous=True):
    x = torch.randn(n, 1, H, W, dtype=dtype)
    grid = torch.rand(n, h, w, 2, dtype=dtype) * 2.6 - 1.3  # partly outside [-1, 1]
    grid[0, 0, 0] = torch.tensor([-1.0, 1.0])  # exactly on the corners and edges
    if h * w > 1:
        grid.view(n, -1, 2)[0, 1] = torch.tensor([1.0, 0.0])
    if not contiguous:
        x, grid = noncontiguous(x), noncontiguous(grid)
    return x, grid


def _ops_run(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()}


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("shape", SHAPES, ids=["sfnet", "raft-windows", "multiblock", "one-point"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_gradient_matches_reference(dtype, shape, contiguous):
    require("warp", "cpp", "cpu", dtype)
    x, grid = _inputs(*shape, dtype, contiguous)
    gout = torch.randn(shape[0], 1, *shape[3:], dtype=dtype)
    for pad, align in CASES:
        case = f"{pad}/align_corners={align}"
        g = grid.clone().requires_grad_()
        out = warp(x, g, None, "bilinear", pad, align, backend="cpp")
        (dgrid,) = torch.autograd.grad(out, g, gout)
        g_ref = grid.clone().requires_grad_()
        out_ref = ref.warp(x, g_ref, None, "bilinear", pad, align)
        (dgrid_ref,) = torch.autograd.grad(out_ref, g_ref, gout)
        assert_close(out, out_ref, msg=f"forward {case}")
        assert_close(dgrid, dgrid_ref, scale=float(dgrid_ref.abs().max().clamp_min(1)), msg=f"grid gradient {case}")


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("shape", SHAPES, ids=["sfnet", "raft-windows", "multiblock", "one-point"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_matches_reference(dtype, shape, contiguous):
    x, grid = _inputs(*shape, torch.float32, contiguous)
    for pad, align in CASES:
        got = warp(x.to(dtype), grid.to(dtype), None, "bilinear", pad, align, backend="cpp")
        exp = ref.warp(x.to(dtype).float(), grid.to(dtype).float(), None, "bilinear", pad, align)
        assert got.dtype == dtype
        assert_close(got.float(), exp, dtype=dtype, msg=f"{pad}/align_corners={align}")


@pytest.mark.parametrize("H, W", [(1, 1), (1, 2), (2, 2), (5, 3), (3, 17)])
def test_every_tap_position_at_the_edges(H, W):
    """Points on a quarter-pixel lattice from 2 pixels outside the image to 2 past it, through every row and
    column: each tap inside, on the edge and outside (the float loop reads a row's two taps as one pair, from a
    column and row clamped into the image). The image sits in storage between NaNs, so a tap that read beyond it
    and counted would show."""
    n = 3
    storage = torch.full((n * H * W + 2,), float("nan"))
    storage[1:-1] = torch.randn(n * H * W)
    x = storage[1:-1].view(n, 1, H, W)
    px = torch.arange(-8, 4 * W + 8) / 4.0 - 0.5  # pixel coordinates, align_corners=False
    py = torch.arange(-8, 4 * H + 8) / 4.0 - 0.5
    ys, xs = torch.meshgrid(py, px, indexing="ij")
    pixel = torch.stack((xs, ys), dim=-1)
    for pad, align in CASES:
        size = torch.tensor([W, H], dtype=torch.float32)
        grid = (2 * pixel + 1) / size - 1 if not align else 2 * pixel / (size - 1).clamp_min(1) - 1
        grid = grid.expand(n, *grid.shape).contiguous()
        g = grid.clone().requires_grad_()
        out = warp(x, g, None, "bilinear", pad, align, backend="cpp")
        (dgrid,) = torch.autograd.grad(out.sum(), g)
        g_ref = grid.clone().requires_grad_()
        out_ref = ref.warp(x, g_ref, None, "bilinear", pad, align)
        (dgrid_ref,) = torch.autograd.grad(out_ref.sum(), g_ref)
        case = f"{pad}/align_corners={align}"
        assert_close(out, out_ref, msg=f"forward {case}")
        assert_close(warp(x, grid, None, "bilinear", pad, align, backend="cpp"), out_ref, msg=f"no grad {case}")
        assert_close(dgrid, dgrid_ref, scale=float(dgrid_ref.abs().max().clamp_min(1)), msg=f"gradient {case}")


def test_path_taken_only_where_it_applies():
    """The Jacobian forward runs for a one-channel bilinear image that does not require grad and a grid that
    does, at the output's size; otherwise the op's own forward and backward kernels."""
    x, grid = _inputs(3, 6, 7, 4, 5, torch.float32)

    def ops(x, grid, out_size=None, mode="bilinear"):
        def step():
            out = warp(x, grid, out_size, mode)
            out.backward(torch.ones_like(out))
        return _ops_run(step)

    taken = ops(x, grid.clone().requires_grad_())
    assert {"pscfast::_warp_with_jacobian", "pscfast::_warp_jacobian_product"} <= taken
    assert "pscfast::_warp_backward" not in taken
    others = [ops(x.clone().requires_grad_(), grid.clone().requires_grad_()),  # the image's gradient too
              ops(x.expand(3, 2, 6, 7), grid.clone().requires_grad_()),  # two channels
              ops(x, grid.clone().requires_grad_(), (8, 9)),  # a resized grid
              ops(x, grid.clone().requires_grad_(), mode="nearest")]
    for found in others:
        assert "pscfast::_warp_with_jacobian" not in found and "pscfast::_warp_backward" in found


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jacobian_op_is_the_derivative_of_each_point(dtype):
    """_warp_with_jacobian for several channels: the output, and per channel the gradient of the output's sum in
    the grid (each output point depends on its own grid point only)."""
    x = torch.randn(2, 3, 7, 6, dtype=dtype)
    grid = torch.rand(2, 5, 4, 2, dtype=dtype) * 2.4 - 1.2
    for pad, align in CASES:
        out, jac = torch.ops.pscfast._warp_with_jacobian(x, grid, "bilinear", pad, align)
        assert jac.shape == (2, 3, 5, 4, 2)
        assert_close(out, ref.warp(x, grid, None, "bilinear", pad, align))
        for c in range(3):
            g = grid.clone().requires_grad_()
            (exp,) = torch.autograd.grad(ref.warp(x[:, c:c + 1], g, None, "bilinear", pad, align).sum(), g)
            assert_close(jac[:, c], exp, scale=float(exp.abs().max().clamp_min(1)))


def test_jacobian_product_op():
    for c in (1, 3):
        gout = torch.randn(2, c, 5, 3, dtype=torch.float64)
        jac = torch.randn(2, c, 5, 3, 2, dtype=torch.float64)
        got = torch.ops.pscfast._warp_jacobian_product(noncontiguous(gout), jac)
        assert_close(got, (gout.unsqueeze(-1) * jac).sum(1))
    with pytest.raises(RuntimeError, match="_warp_jacobian_product"):
        torch.ops.pscfast._warp_jacobian_product(gout, jac[:, :, :4])


def test_opcheck():
    x, grid = _inputs(3, 6, 5, 4, 3, torch.float32)
    for pad, align in CASES:
        torch.library.opcheck(torch.ops.pscfast._warp_with_jacobian.default, (x, grid, "bilinear", pad, align))
        torch.library.opcheck(torch.ops.pscfast.warp.default,
                              (x, grid.clone().requires_grad_(), [4, 3], "bilinear", pad, align))
    torch.library.opcheck(torch.ops.pscfast._warp_jacobian_product.default,
                          (torch.randn(3, 2, 4, 3), torch.randn(3, 2, 4, 3, 2)))


@pytest.mark.parametrize("pad", ["zeros", "border"])
@pytest.mark.parametrize("align", [True, False])
def test_gradcheck_float64(pad, align):
    x = torch.randn(3, 1, 5, 4, dtype=torch.float64)
    grid = (torch.rand(3, 3, 4, 2, dtype=torch.float64) * 2.2 - 1.1).requires_grad_()
    fn = lambda g: warp(x, g, None, "bilinear", pad, align, backend="cpp")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (grid,))
    assert torch.autograd.gradgradcheck(fn, (grid,))  # second derivatives: the reference's


@pytest.mark.parametrize("threads", [1, 2])
def test_bitwise_across_thread_counts(threads):
    x, grid = _inputs(80, 8, 8, 9, 9, torch.float32)  # 6480 points: more than one task's share
    gout = torch.randn(80, 1, 9, 9)

    def run():
        g = grid.clone().requires_grad_()
        out = warp(x, g)
        return out, torch.autograd.grad(out, g, gout)[0]

    expected = run()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = run()
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_compiled_and_compiled_autograd_give_eager_gradients():
    x, grid = _inputs(4, 6, 5, 4, 3, torch.float32)
    gout = torch.randn(4, 1, 4, 3)

    def grad(fn, compiled_autograd=False):
        g = grid.clone().requires_grad_()
        loss = (fn(x, g) * gout).sum()
        if compiled_autograd:
            with torch._dynamo.compiled_autograd._enable(torch.compile(backend="eager")):
                loss.backward()
        else:
            loss.backward()
        return g.grad

    eager = grad(warp)
    torch._dynamo.reset()
    assert_close(grad(torch.compile(warp, fullgraph=True, backend="aot_eager")), eager)
    assert_close(grad(warp, compiled_autograd=True), eager)


@pytest.mark.parametrize("shape, point", [((5, 6, 7, 4, 4), (3, 2, 1)), ((3, 6, 7, 3, 3), (2, 2, 2))],
                         ids=["eight-point-groups", "last-of-27"])
def test_nonfinite_grid_refused_unless_disabled(monkeypatch, shape, point):
    """A non-finite value among the points the float loop takes eight at a time, and among the few after them."""
    x, grid = _inputs(*shape, torch.float32)
    n, i, j = point
    for bad in (float("nan"), float("inf")):
        poisoned = grid.clone()
        poisoned[n, i, j, 1] = bad
        monkeypatch.delenv("PSCFAST_CHECK_FINITE", raising=False)
        with pytest.raises(ValueError, match="pscfast.ops.warp: grid contains NaN or infinite values"):
            warp(x, poisoned.requires_grad_())
        monkeypatch.setenv("PSCFAST_CHECK_FINITE", "0")
        # as the op's own kernels: a NaN samples as a point outside the image
        g = poisoned.detach().requires_grad_()
        out = warp(x, g)
        assert_close(out, warp(x, poisoned.detach()))
        assert out[n, 0, i, j] == 0 and torch.autograd.grad(out.sum(), g)[0].isfinite().all()
