"""warp and warp_displacement: every backend against the PyTorch reference, coordinate contract,
gradcheck, opcheck, determinism, bad input."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

from pscfast.ops import Warp, WarpDisplacement, warp, warp_displacement
from pscfast.ops import _reference as ref
from tests.utils import BACKENDS, assert_close, identity_grid, noncontiguous, require

# (N, C, H, W, h, w, out_size)
SHAPES = [
    pytest.param((2, 3, 9, 7, 4, 5, None), id="odd-direct"),
    pytest.param((1, 4, 8, 10, 3, 4, (11, 13)), id="batch1-upsampled"),
    pytest.param((2, 2, 5, 6, 6, 7, (4, 3)), id="downsampled"),
]
CASES = [(m, p, a) for m in ("bilinear", "nearest") for p in ("zeros", "border") for a in (True, False)]


def _inputs(shape, dtype, device, contiguous=True):
    n, c, H, W, h, w, _ = shape
    x = torch.randn(n, c, H, W, dtype=dtype, device=device)
    grid = torch.rand(n, h, w, 2, dtype=dtype, device=device) * 2.4 - 1.2  # partly outside [-1, 1]
    if not contiguous:
        x, grid = noncontiguous(x), noncontiguous(grid)
    return x, grid


def _run(fn, x, grid, gout, *args, **kw):
    x, grid = x.detach().clone().requires_grad_(), grid.detach().clone().requires_grad_()
    out = fn(x, grid, *args, **kw)
    dx, dgrid = torch.autograd.grad(out, (x, grid), gout)
    return out, dx, dgrid


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference(device, backend, dtype, shape, contiguous):
    require("warp", backend, device, dtype)
    x, grid = _inputs(shape, dtype, device, contiguous)
    out_size = shape[-1] or shape[4:6]
    gout = torch.randn(x.shape[0], x.shape[1], *out_size, dtype=dtype, device=device)
    for mode, pad, align in CASES:
        case = f"{mode}/{pad}/align_corners={align}"
        got = _run(warp, x, grid, gout, shape[-1], mode, pad, align, backend=backend)
        exp = _run(ref.warp, x, grid, gout, shape[-1], mode, pad, align)
        assert_close(got[0], exp[0], msg=f"forward {case}")
        assert_close(got[1], exp[1], msg=f"image gradient {case}")
        # the grid gradient sums over pixels and channels and is scaled by (size - 1) / 2
        assert_close(got[2], exp[2], scale=float(exp[2].abs().max().clamp_min(1)), msg=f"grid gradient {case}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_half_precision_error_within_twice_naive(backend, dtype):
    """On CUDA: error against float32 at most 2x that of grid_sample in the same dtype (+ its ulp)."""
    device = "cuda"
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    require("warp", backend, device, dtype)
    x, grid = _inputs((4, 8, 64, 64, 16, 16, (64, 64)), torch.float32, device)
    exact = ref.warp(x, grid, (64, 64), "bilinear", "border")
    naive = ref.warp(x.to(dtype), grid.to(dtype), (64, 64), "bilinear", "border").float()
    ours = warp(x.to(dtype), grid.to(dtype), (64, 64), "bilinear", "border", backend=backend).float()
    ulp = torch.finfo(dtype).eps * exact.abs().max()
    assert (ours - exact).abs().max() <= 2 * (naive - exact).abs().max() + ulp


# (N, C, H, W, h, w, out_size): many one-channel samples (blocks across samples), channels, a resized grid
HALF_SHAPES = [(37, 1, 9, 9, 3, 3, None), (2, 3, 9, 7, 17, 13, None), (2, 2, 8, 10, 3, 4, (11, 13))]


@pytest.mark.parametrize("shape", HALF_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cpu(dtype, shape):
    """The CPU kernel computes half precision in float32: output and gradients are the float32 results of the
    same (half-precision) inputs, rounded once."""
    require("warp", "cpp", "cpu", torch.float32)  # skipped without the extension, never for the dtype
    x, grid = (t.to(dtype) for t in _inputs(shape, torch.float32, "cpu"))
    out_size = shape[-1] or shape[4:6]
    gout = torch.randn(x.shape[0], x.shape[1], *out_size).to(dtype)
    for mode, pad, align in CASES:
        got = _run(warp, x, grid, gout, shape[-1], mode, pad, align, backend="cpp")
        exp = _run(ref.warp, x.float(), grid.float(), gout.float(), shape[-1], mode, pad, align)
        for name, g, e in zip(("output", "image gradient", "grid gradient"), got, exp):
            assert g.dtype == dtype, name
            assert_close(g, e, dtype, scale=float(e.detach().abs().max().clamp_min(1)),
                         msg=f"{name} {mode}/{pad}/{align}")


@pytest.mark.parametrize("align", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_grid_reproduces_input(device, backend, align):
    require("warp", backend, device, torch.float64)
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64, device=device)
    for mode in ("bilinear", "nearest"):
        for pad in ("zeros", "border"):
            out = warp(x, identity_grid(2, 7, 9, align, torch.float64, device), None, mode, pad, align, backend=backend)
            torch.testing.assert_close(out, x, rtol=0, atol=1e-12)
    if align:  # a coarse identity resized with align_corners=True is still the identity
        coarse = identity_grid(2, 3, 4, True, torch.float64, device)
        torch.testing.assert_close(warp(x, coarse, (7, 9), backend=backend), x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_shift(device, backend):
    require("warp", backend, device, torch.float64)
    x = torch.randn(1, 2, 5, 8, dtype=torch.float64, device=device)
    grid = identity_grid(1, 5, 8, True, torch.float64, device)
    step = 2.0 / 7  # one pixel in x with align_corners=True
    shifted = grid + torch.tensor([2 * step, 0.0], dtype=torch.float64, device=device)
    out = warp(x, shifted, padding_mode="zeros", backend=backend)
    torch.testing.assert_close(out[..., :6], x[..., 2:], rtol=0, atol=1e-12)
    assert out[..., 6:].abs().max() == 0
    border = warp(x, shifted, padding_mode="border", backend=backend)
    torch.testing.assert_close(border[..., 6:], x[..., 7:].expand(-1, -1, -1, 2), rtol=0, atol=1e-12)
    half = warp(x, grid + torch.tensor([0.5 * step, 0.0], dtype=torch.float64, device=device), backend=backend)
    torch.testing.assert_close(half[..., :7], (x[..., :7] + x[..., 1:]) / 2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_warp_displacement(device, backend):
    require("warp", backend, device, torch.float64)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, device=device)
    zero = torch.zeros(2, 2, 6, 7, dtype=torch.float64, device=device)
    torch.testing.assert_close(warp_displacement(x, zero, backend=backend), x, rtol=0, atol=1e-12)
    flow = zero.clone()
    flow[:, 0], flow[:, 1] = 1.0, -2.0  # read one column right, two rows up
    out = warp_displacement(x, flow, backend=backend)
    torch.testing.assert_close(out[:, :, 2:, :6], x[:, :, :4, 1:], rtol=0, atol=1e-12)
    flow = (torch.randn(2, 2, 6, 7, dtype=torch.float64, device=device) * 2).requires_grad_()
    got = warp_displacement(x, flow, "bilinear", "border", backend=backend)
    exp = ref.warp_displacement(x, flow, "bilinear", "border")
    torch.testing.assert_close(got, exp)
    gout = torch.randn_like(got)
    torch.testing.assert_close(torch.autograd.grad(got, flow, gout)[0], torch.autograd.grad(exp, flow, gout)[0])


@pytest.mark.parametrize("pad", ["zeros", "border"])
@pytest.mark.parametrize("align", [True, False])
def test_gradcheck_float64(device, pad, align):
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, device=device, requires_grad=True)
    grid = (torch.rand(1, 3, 3, 2, dtype=torch.float64, device=device) * 2.2 - 1.1).requires_grad_()
    for backend in ("cpp", "torch"):
        require("warp", backend, device, torch.float64)
        fn = lambda x, g: warp(x, g, (6, 5), "bilinear", pad, align, backend=backend)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, grid))


def test_opcheck(device):
    require("warp", "cpp", device, torch.float32)
    x, grid = _inputs((2, 3, 6, 5, 3, 4, None), torch.float32, device)
    gout = torch.randn(2, 3, 7, 6, device=device)
    for mode, pad, align in CASES[:4] + CASES[6:]:
        args = (mode, pad, align)
        torch.library.opcheck(torch.ops.pscfast.warp.default,
                              (x.requires_grad_(), grid.requires_grad_(), [7, 6], *args))
        torch.library.opcheck(torch.ops.pscfast._warp_backward.default,
                              (gout, x.detach(), grid.detach(), *args, [True, True]))


def test_graph_node_releases_and_refuses_what_it_cannot_do(device):
    """The compiled op's autograd node: one gradient per input asked for (x only, grid only), its saved tensors
    freed by a backward without retain_graph, an in-place change of a saved input refused, and dual tensors
    (forward-mode AD) refused rather than their tangents dropped."""
    require("warp", "cpp", device, torch.float32)
    x, grid = _inputs((2, 3, 6, 5, 4, 4, None), torch.float32, device)
    gout = torch.randn(2, 3, 4, 4, device=device)
    expected = ref.warp(x, grid)
    for wants in ((True, False), (False, True)):
        xs, gs = x.clone().requires_grad_(wants[0]), grid.clone().requires_grad_(wants[1])
        out = torch.ops.pscfast.warp(xs, gs, [4, 4], "bilinear", "zeros", True)
        assert out.grad_fn.name() == "WarpBackward"
        (got,) = torch.autograd.grad(out, xs if wants[0] else gs, gout)
        x_ref, g_ref = x.clone().requires_grad_(wants[0]), grid.clone().requires_grad_(wants[1])
        (exp,) = torch.autograd.grad(ref.warp(x_ref, g_ref), x_ref if wants[0] else g_ref, gout)
        assert_close(got, exp)
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            out.backward(gout)
    gs = grid.clone().requires_grad_()
    out = warp(x, gs, backend="cpp")
    assert_close(out, expected)
    with torch.no_grad():
        gs.add_(0.1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward(gout)
    with fwAD.dual_level(), pytest.raises(NotImplementedError, match="forward-mode AD"):
        warp(fwAD.make_dual(x, torch.randn_like(x)), grid, backend="cpp")


def test_compiled_autograd_gives_eager_gradients(device):
    require("warp", "cpp", device, torch.float32)
    x, grid = _inputs((2, 3, 6, 5, 4, 4, None), torch.float32, device)
    gout = torch.randn(2, 3, 7, 6, device=device)

    def grads(compiled):
        xs, gs = x.clone().requires_grad_(), grid.clone().requires_grad_()
        loss = (warp(xs, gs, (7, 6), backend="cpp") * gout).sum()
        if compiled:
            with torch._dynamo.compiled_autograd._enable(torch.compile(backend="eager")):
                loss.backward()
        else:
            loss.backward()
        return xs.grad, gs.grad

    for got, exp in zip(grads(True), grads(False)):
        assert_close(got, exp)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_is_deterministic(device, backend):
    require("warp", backend, device, torch.float32)
    x, grid = _inputs((2, 16, 24, 24, 5, 5, None), torch.float32, device)
    gout = torch.randn(2, 16, 24, 24, device=device)
    first = _run(warp, x, grid, gout, (24, 24), backend=backend)
    second = _run(warp, x, grid, gout, (24, 24), backend=backend)
    assert torch.equal(first[1], second[1]) and torch.equal(first[2], second[2])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(5, 1, 9, 7, 4, 5), (3, 4, 8, 10, 6, 7), (1, 2, 6, 6, 30, 31)],
                         ids=["one-channel", "channels", "batch1-multiblock"])
def test_cpu_backward_of_both_equals_each_alone(shape, threads):
    """The CPU kernel computes both gradients in one pass where it can, and hands some masks to ATen's grid
    sampler (few channels); each gradient must equal the one computed alone, at any thread count."""
    n, c, H, W, h, w = shape
    x, grid = _inputs((n, c, H, W, h, w, None), torch.float32, "cpu")
    gout = torch.randn(n, c, h, w)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _, dx, dgrid = _run(warp, x, grid, gout)
        xr = x.detach().clone().requires_grad_()
        dx_alone, = torch.autograd.grad(warp(xr, grid.detach()), xr, gout)
        gr = grid.detach().clone().requires_grad_()
        dgrid_alone, = torch.autograd.grad(warp(x.detach(), gr), gr, gout)
    finally:
        torch.set_num_threads(before)
    assert_close(dx, dx_alone)
    assert_close(dgrid, dgrid_alone)
    _, dx_ref, dgrid_ref = _run(ref.warp, x, grid, gout, (h, w))
    assert_close(dx, dx_ref)
    assert_close(dgrid, dgrid_ref)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("c", [1, 2, 3, 16, 17])
def test_cpu_aten_handover_agrees_with_own_kernels(c, padding_mode, monkeypatch):
    """Without a resize and with few channels the CPU op hands the work to ATen's grid sampler (the forward of
    up to 2 channels, the grid-only gradient of up to 16, both gradients of one); with PSCFAST_CHECK_FINITE=0
    its own kernels run (a one-channel image's grid-only gradient comes from the forward's Jacobian in both:
    test_warp_one_channel.py). Every output and gradient, for every mask, agrees across the two and with the
    reference."""
    x, grid = _inputs((3, c, 9, 11, 7, 8, None), torch.float64, "cpu")
    gout = torch.randn(3, c, 7, 8, dtype=torch.float64)

    def results():
        found = [warp(x, grid, padding_mode=padding_mode)]
        for wanted in ((True, False), (False, True), (True, True)):
            xr, gr = x.clone().requires_grad_(wanted[0]), grid.clone().requires_grad_(wanted[1])
            inputs = [t for t, w in zip((xr, gr), wanted) if w]
            found += torch.autograd.grad(warp(xr, gr, padding_mode=padding_mode), inputs, gout)
        return found

    monkeypatch.delenv("PSCFAST_CHECK_FINITE", raising=False)
    handed_over = results()
    monkeypatch.setenv("PSCFAST_CHECK_FINITE", "0")
    own = results()
    for a, b in zip(handed_over, own):
        assert_close(a, b)
    _, dx_ref, dgrid_ref = _run(ref.warp, x, grid, gout, (7, 8), padding_mode=padding_mode)
    assert_close(handed_over[0], ref.warp(x, grid, (7, 8), padding_mode=padding_mode))
    for got, exp in zip(handed_over[1:], (dx_ref, dgrid_ref, dx_ref, dgrid_ref)):
        assert_close(got, exp)


def test_direct_cpu_call_equals_checked_call():
    """Plain CPU tensors go straight to the kernel; a tensor subclass (nn.Parameter), an int out_size or a mixed
    dtype takes the checked path: the same numbers either way."""
    x, grid = _inputs((2, 3, 8, 9, 5, 4, None), torch.float32, "cpu")
    direct = warp(x, grid, (6, 6))
    assert_close(direct, ref.warp(x, grid, (6, 6)))
    assert torch.equal(direct, warp(torch.nn.Parameter(x), grid, (6, 6)))
    assert torch.equal(direct, warp(x, grid, 6))
    assert torch.equal(warp(x.double(), grid.double(), (6, 6)), warp(x, grid.double(), (6, 6)))


def test_modules_equal_functions():
    x, grid = _inputs((2, 3, 8, 9, 4, 4, None), torch.float32, "cpu")
    m = Warp((8, 9), "bilinear", "border")
    assert torch.equal(m(x, grid), warp(x, grid, (8, 9), "bilinear", "border"))
    assert "border" in repr(m)
    flow = torch.randn(2, 2, 8, 9)
    assert torch.equal(WarpDisplacement()(x, flow), warp_displacement(x, flow))


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda x, g: warp(x[0], g), ValueError, "x must have 4 dimensions"),
        (lambda x, g: warp(x, g[..., :1]), ValueError, "grid must have size 2"),
        (lambda x, g: warp(x[:1], g), ValueError, "batch sizes differ"),
        (lambda x, g: warp(x.long(), g), TypeError, "x must be a floating-point tensor"),
        (lambda x, g: warp(x.numpy(), g), TypeError, "x must be a torch.Tensor"),
        (lambda x, g: warp(x, g.to("meta")), ValueError, "one device"),
        (lambda x, g: warp(x, g.index_fill(1, torch.tensor([0]), float("nan"))), ValueError, "grid contains NaN"),
        (lambda x, g: warp(x, g * float("inf")), ValueError, "grid contains NaN or infinite"),
        (lambda x, g: warp(x, g, mode="bicubic"), ValueError, "mode must be one of"),
        (lambda x, g: warp(x, g, padding_mode="reflection"), ValueError, "padding_mode must be one of"),
        (lambda x, g: warp(x, g, out_size=(0, 4)), ValueError, "out_size must be"),
        (lambda x, g: warp(x, g, out_size="big"), ValueError, "out_size must be"),
        (lambda x, g: warp(x[:, :, :0], g), ValueError, "x has an empty spatial size"),
        (lambda x, g: warp(x, g, backend="cuda"), ValueError, "unknown backend 'cuda'"),
        (lambda x, g: warp_displacement(x, g), ValueError, "flow must be (N, 2, h, w)"),
    ],
)
def test_bad_input(make, error, words):
    x, grid = torch.randn(2, 3, 5, 5), torch.rand(2, 4, 4, 2) * 2 - 1
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        make(x, grid)


def _expanded(*shape, dtype=torch.float32):
    """A tensor of `shape` that holds one element (zero strides): sizes far beyond memory, for the size checks."""
    return torch.zeros((), dtype=dtype).expand(*shape)


@pytest.mark.parametrize("backend", BACKENDS)
def test_plane_sizes_checked_before_anything_is_copied(backend):
    """A float32 image with a float64 grid is promoted (copied) to float64: sizes beyond the kernels' int32
    planes are refused first, naming the argument, so a zero-stride input of 2^62 pixels is never copied."""
    small, grid = torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="warp: x has a plane of 2147483648 x 2147483648"):
        warp(_expanded(1, 1, 2**31, 2**31), grid, backend=backend)
    with pytest.raises(ValueError, match="warp: out_size has a plane of 65536 x 32768"):
        warp(small, grid, (2**16, 2**15), backend=backend)
    with pytest.raises(ValueError, match="warp: grid has a plane of 32768 x 32768 .* fewer than 2\\^30"):
        warp(small, _expanded(1, 2**15, 2**15, 2, dtype=torch.float64), (4, 4), backend=backend)
    flow = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="warp_displacement: x has a plane"):
        warp_displacement(_expanded(1, 1, 2**31, 2**31), flow, backend=backend)
    with pytest.raises(ValueError, match="warp_displacement: flow has a plane"):
        warp_displacement(small, _expanded(1, 2, 2**15, 2**15, dtype=torch.float64), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_positions_refused_unless_disabled(backend, monkeypatch):
    """A NaN or infinite grid value is an error naming the argument on every path that reads it (the CPU kernel
    checks as it reads the grid: direct, one-channel blocks across samples, resized). With PSCFAST_CHECK_FINITE=0
    the CPU kernel samples a NaN as a point outside the image (zeros padding), never forming an index from it;
    grid_sample (the reference) gives NaN."""
    require("warp", backend, "cpu", torch.float32)
    for c, out_size in ((3, None), (1, None), (2, (9, 11))):
        x, grid = torch.randn(5, c, 6, 7), torch.rand(5, 4, 4, 2) * 2 - 1
        for bad in (float("nan"), float("inf")):
            poisoned = grid.clone()
            poisoned[3, 2, 1, 1] = bad
            monkeypatch.delenv("PSCFAST_CHECK_FINITE", raising=False)
            with pytest.raises(ValueError, match="pscfast.ops.warp: grid contains NaN or infinite values"):
                warp(x, poisoned, out_size, backend=backend)
            flow = torch.zeros(5, 2, 6, 7)
            flow[1, 0, 2, 3] = bad
            with pytest.raises(ValueError, match="pscfast.ops.warp_displacement: flow contains NaN or infinite"):
                warp_displacement(x, flow, backend=backend)
            monkeypatch.setenv("PSCFAST_CHECK_FINITE", "0")
            out = warp(x, poisoned, out_size, backend=backend)
            if backend == "cpp" and out_size is None and bad != bad:
                assert torch.equal(out[3, :, 2, 1], torch.zeros(c))
                assert torch.equal(out, warp(x, poisoned.nan_to_num(nan=-9.0), backend=backend))
