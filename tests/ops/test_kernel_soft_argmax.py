"""kernel_soft_argmax: every backend against the PyTorch reference (forward and backward), SFNet's contract
(one-hot rows, the Gaussian window, no gradient through the argmax), gradcheck, opcheck, determinism, bad input."""
import pytest
import torch

from pscfast.ops import KernelSoftArgmax, kernel_soft_argmax
from pscfast.ops import _reference as ref
from pscfast.ops.kernel_soft_argmax import NORMALIZE
from tests.utils import BACKENDS, assert_close, noncontiguous, require

# (N, Ht, Wt, Hs, Ws)
SHAPES = [
    pytest.param((2, 4, 5, 3, 7), id="odd"),
    pytest.param((1, 9, 8, 5, 4), id="batch1-72-targets"),
    pytest.param((2, 1, 7, 2, 3), id="one-target-row"),
    pytest.param((1, 5, 5, 9, 9), id="81-sources"),
]
PARAMS = [(50.0, 5.0), (10.0, 1.5), (200.0, 0.7)]


def _run(fn, corr, gout, *args, **kw):
    corr = corr.detach().clone().requires_grad_()
    out = fn(corr, *args, **kw)
    return out, torch.autograd.grad(out, corr, gout)[0]


@pytest.mark.parametrize("normalize", NORMALIZE)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference(device, backend, dtype, shape, contiguous, normalize):
    require("kernel_soft_argmax", backend, device, dtype)
    n, ht, wt, hs, ws = shape
    torch.manual_seed(sum(shape))
    corr = torch.randn(n, ht * wt, hs, ws, dtype=dtype, device=device) * 3
    if not contiguous:
        corr = noncontiguous(corr)
    gout = torch.randn(n, hs, ws, 2, dtype=dtype, device=device)
    for beta, sigma in PARAMS:
        got = _run(kernel_soft_argmax, corr, gout, beta, sigma, (ht, wt), normalize, backend=backend)
        exp = _run(ref.kernel_soft_argmax, corr, gout, beta, sigma, (ht, wt), normalize)
        case = f"beta={beta} sigma={sigma}"
        assert_close(got[0], exp[0], msg=f"forward {case}")
        # the gradient is scaled by beta and by the cell size 2 / (W - 1)
        assert_close(got[1], exp[1], scale=beta, msg=f"gradient {case}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_row(device, backend):
    """A source position whose correlation row is 0 (norm clamped as F.normalize) matches the reference."""
    require("kernel_soft_argmax", backend, device, torch.float64)
    corr = torch.randn(1, 16, 2, 3, dtype=torch.float64, device=device)
    corr[:, :, 1, 2] = 0
    gout = torch.randn(1, 2, 3, 2, dtype=torch.float64, device=device)
    got = _run(kernel_soft_argmax, corr, gout, backend=backend)
    exp = _run(ref.kernel_soft_argmax, corr, gout)
    assert_close(got[0], exp[0])
    torch.testing.assert_close(got[1], exp[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_hot_rows_give_their_target_position(device, backend):
    require("kernel_soft_argmax", backend, device, torch.float32)
    ht, wt, hs, ws = 5, 6, 4, 3
    target = torch.randint(0, ht * wt, (2, hs, ws), device=device)
    corr = torch.nn.functional.one_hot(target, ht * wt).permute(0, 3, 1, 2).float() * 7.0
    grid = kernel_soft_argmax(corr, beta=1000.0, sigma=5.0, target_size=(ht, wt), backend=backend)
    expected = torch.stack((target % wt * 2.0 / (wt - 1) - 1, target // wt * 2.0 / (ht - 1) - 1), dim=-1)
    torch.testing.assert_close(grid, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gaussian_suppresses_a_far_second_mode(device, backend):
    """Two equal-height modes far apart: plain soft-argmax would average them; the kernel keeps the first
    (the discrete argmax) within a fraction of a cell."""
    require("kernel_soft_argmax", backend, device, torch.float64)
    corr = torch.zeros(1, 100, 1, 1, dtype=torch.float64, device=device)
    corr[0, 0], corr[0, 99], corr[0, 1] = 1.0, 1.0 - 1e-9, 0.5  # cells (0, 0), (9, 9) and (0, 1)
    grid = kernel_soft_argmax(corr, beta=50.0, sigma=1.0, backend=backend)
    x, y = ((grid[0, 0, 0] + 1) * 4.5).tolist()  # back to cells
    assert 0 <= x < 0.2 and 0 <= y < 0.01


def test_no_gradient_through_the_argmax():
    """The gradient equals that of the same computation with the Gaussian centre held fixed."""
    corr = torch.randn(1, 25, 2, 2, dtype=torch.float64, requires_grad=True)
    grid = kernel_soft_argmax(corr, 20.0, 2.0)
    (grad,) = torch.autograd.grad(grid.sum(), corr)
    c = corr.detach().clone().requires_grad_()
    n = torch.nn.functional.normalize(c.flatten(2), dim=1)
    q = torch.arange(25, dtype=torch.float64)
    best = n.argmax(1, keepdim=True).detach()
    k = torch.exp(-((q[None, :, None] % 5 - best % 5) ** 2 + (q[None, :, None] // 5 - best // 5) ** 2) / 8.0)
    m = torch.softmax(20.0 * k * n, dim=1)
    expected = ((m * (q % 5)[None, :, None]).sum(1) + (m * (q // 5)[None, :, None]).sum(1)) * 0.5 - 2
    torch.testing.assert_close(grid.sum(), expected.sum())
    torch.testing.assert_close(grad, torch.autograd.grad(expected.sum(), c)[0])


def test_gradcheck_float64(device):
    corr = torch.randn(1, 12, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    for backend in ("cpp", "torch"):
        require("kernel_soft_argmax", backend, device, torch.float64)
        for beta, sigma in [(5.0, 1.0), (2.0, 0.8)]:
            fn = lambda c: kernel_soft_argmax(c, beta, sigma, (3, 4), backend=backend)  # noqa: E731
            assert torch.autograd.gradcheck(fn, (corr,))


@pytest.mark.parametrize("normalize", NORMALIZE)
def test_opcheck(device, normalize):
    require("kernel_soft_argmax", "cpp", device, torch.float32)
    corr = torch.randn(2, 20, 3, 5, device=device)
    args = (50.0, 5.0, [4, 5], normalize)
    torch.library.opcheck(torch.ops.pscfast.kernel_soft_argmax.default, (corr.clone().requires_grad_(), *args))
    for mask in ([True], [False]):
        torch.library.opcheck(torch.ops.pscfast._kernel_soft_argmax_backward.default,
                              (torch.randn(2, 3, 5, 2, device=device), corr, *args, mask))


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_backward_output_mask(backend):
    """ATen's output_mask: the backward op (and the Triton launcher) return None for a masked gradient and the
    autograd gradient otherwise."""
    dtype = torch.float64 if backend == "cpp" else torch.float32  # the Triton kernel takes no float64
    require("kernel_soft_argmax", backend, "cpu", dtype)
    if backend == "cpp":
        backward = torch.ops.pscfast._kernel_soft_argmax_backward
    else:
        from pscfast.kernels import kernel_soft_argmax as k

        backward = k.kernel_soft_argmax_backward
    corr = torch.randn(2, 12, 3, 2, dtype=dtype, requires_grad=True)
    gout = torch.randn(2, 3, 2, 2, dtype=dtype)
    expected = torch.autograd.grad(kernel_soft_argmax(corr, 5.0, 1.0, (3, 4), backend="torch"), corr, gout)[0]
    args = (gout, corr.detach(), 5.0, 1.0, [3, 4], "l2")
    assert backward(*args, [False]) is None
    assert_close(backward(*args, [True]), expected)


def test_argument_order_is_one_everywhere():
    """Python, the C++ schema and the Triton launchers take (corr, beta, sigma, target_size, normalize); the
    backward adds grad_out first and output_mask last, and sizes are symbolic."""
    import inspect

    from pscfast.kernels import kernel_soft_argmax as k

    names = ["corr", "beta", "sigma", "target_size", "normalize"]
    assert list(inspect.signature(kernel_soft_argmax).parameters)[:5] == names
    assert list(inspect.signature(ref.kernel_soft_argmax).parameters) == names
    assert list(inspect.signature(k.kernel_soft_argmax).parameters) == names
    assert list(inspect.signature(k.kernel_soft_argmax_backward).parameters) == ["grad_out", *names, "output_mask"]
    require("kernel_soft_argmax", "cpp", "cpu", torch.float32)
    schema = torch.ops.pscfast.kernel_soft_argmax.default._schema
    assert [a.name for a in schema.arguments] == names
    assert "SymInt[2] target_size" in str(schema)
    backward = torch.ops.pscfast._kernel_soft_argmax_backward.default._schema
    assert [a.name for a in backward.arguments] == ["grad_out", *names, "output_mask"]
    assert "SymInt[2] target_size" in str(backward)


@pytest.mark.parametrize("normalize", NORMALIZE)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradgradcheck(backend, normalize):
    """Second derivatives (create_graph=True) on every backend: before, the cpp backward was a constant to
    autograd (a silent zero) and the Triton one returned detached gradients."""
    require("kernel_soft_argmax", backend, "cpu", torch.float64)
    corr = torch.rand(1, 12, 1, 2, dtype=torch.float64, requires_grad=True)
    fn = lambda c: kernel_soft_argmax(c, 5.0, 1.5, (3, 4), normalize, backend=backend)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (corr,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_derivative_equals_the_reference(backend):
    """A gradient penalty through the op: the same value and gradient as through the reference."""
    require("kernel_soft_argmax", backend, "cpu", torch.float64)
    corr0 = torch.rand(2, 20, 3, 2, dtype=torch.float64)

    def penalty_grad(fn):
        corr = corr0.clone().requires_grad_()
        (g,) = torch.autograd.grad(fn(corr).pow(2).sum(), corr, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), corr)
        return gg

    got = penalty_grad(lambda c: kernel_soft_argmax(c, 8.0, 2.0, (4, 5), backend=backend))
    expected = penalty_grad(lambda c: ref.kernel_soft_argmax(c, 8.0, 2.0, (4, 5)))
    assert expected.abs().sum() > 0
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_is_deterministic(device, backend):
    require("kernel_soft_argmax", backend, device, torch.float32)
    corr = torch.randn(2, 64, 9, 8, device=device)
    gout = torch.randn(2, 9, 8, 2, device=device)
    first = _run(kernel_soft_argmax, corr, gout, backend=backend)
    second = _run(kernel_soft_argmax, corr, gout, backend=backend)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_half_precision(device, backend, dtype):
    """Half inputs, float32 accumulation: the result is the float32 result of the rounded input, rounded once."""
    require("kernel_soft_argmax", backend, device, dtype)
    corr = torch.randn(2, 64, 5, 6, device=device).to(dtype)
    ours = kernel_soft_argmax(corr, backend=backend)
    exact = ref.kernel_soft_argmax(corr.double())
    assert ours.dtype == dtype
    torch.testing.assert_close(ours.double(), exact, rtol=0, atol=2 * torch.finfo(dtype).eps)


def test_module_equals_function():
    corr = torch.randn(2, 12, 3, 3)
    m = KernelSoftArgmax(beta=20.0, sigma=2.0, target_size=(3, 4), normalize="sfnet")
    assert torch.equal(m(corr), kernel_soft_argmax(corr, 20.0, 2.0, (3, 4), "sfnet"))
    assert "sigma=2.0" in repr(m) and "normalize='sfnet'" in repr(m)


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda c: kernel_soft_argmax(c[0]), ValueError, "corr must have 4 dimensions"),
        (lambda c: kernel_soft_argmax(c.long()), TypeError, "corr must be a floating-point tensor"),
        (lambda c: kernel_soft_argmax(c[:, :15]), ValueError, "not a square number"),
        (lambda c: kernel_soft_argmax(c, target_size=(3, 5)), ValueError, "has 15 positions but corr has 16"),
        (lambda c: kernel_soft_argmax(c, beta=0.0), ValueError, "beta must be a positive finite number"),
        (lambda c: kernel_soft_argmax(c, sigma=float("nan")), ValueError, "sigma must be a positive finite"),
        (lambda c: kernel_soft_argmax(c, beta="50"), ValueError, "beta must be a positive finite number, got '50'"),
        (lambda c: kernel_soft_argmax(c, sigma=True), ValueError, "sigma must be a positive finite number"),
        (lambda c: kernel_soft_argmax(c, beta=float("inf")), ValueError, "beta must be a positive finite number"),
        (lambda c: kernel_soft_argmax(c, target_size="44"), ValueError, "target_size must be a positive int"),
        (lambda c: kernel_soft_argmax(c, target_size=(4, 4, 1)), ValueError, "target_size must be a positive int"),
        (lambda c: kernel_soft_argmax(c, normalize="L2"), ValueError, "normalize must be one of 'l2', 'sfnet'"),
        (lambda c: kernel_soft_argmax(c, normalize=False), ValueError, "normalize must be one of"),
        (lambda c: kernel_soft_argmax(c * float("nan")), ValueError, "corr contains NaN"),
        (lambda c: kernel_soft_argmax(c[..., :0]), ValueError, "corr has an empty spatial size"),
        (lambda c: kernel_soft_argmax(c, backend="gpu"), ValueError, "unknown backend 'gpu'"),
    ],
)
def test_bad_input(make, error, words):
    corr = torch.randn(2, 16, 3, 3)
    with pytest.raises(error, match=words):
        make(corr)
