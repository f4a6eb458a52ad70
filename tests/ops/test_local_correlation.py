"""local_correlation: every backend against the PyTorch reference (forward and backward), known-shift contract,
spatial_correlation_sampler's layout (and its output, where the package is installed), gradcheck, opcheck,
determinism, half precision, bad input."""
import pytest
import torch
import torch.nn.functional as F

from pscfast.ops import LocalCorrelation, local_correlation
from pscfast.ops import _reference as ref
from tests.utils import BACKENDS, assert_close, noncontiguous, require

# (N, C, H, W), kernel_size, max_displacement, stride, padding, dilation, dilation_patch
CASES = [
    pytest.param((2, 3, 7, 5), 1, 2, 1, 0, 1, 1, id="pwc-odd"),
    pytest.param((1, 2, 6, 9), 3, 1, 2, 1, 1, 2, id="batch1-k3-s2-p1-dp2"),
    pytest.param((2, 2, 5, 6), 2, 3, 1, 0, 2, 1, id="k2-dil2-d3"),
    pytest.param((1, 37, 5, 4), 1, 1, 3, 2, 1, 3, id="c37-s3-p2-dp3"),
]


def _run(fn, a, b, gout, *args, **kw):
    a, b = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    out = fn(a, b, *args, **kw)
    da, db = torch.autograd.grad(out, (a, b), gout)
    return out, da, db


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("shape, k, d, stride, pad, dil, dilp", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference(device, backend, dtype, shape, k, d, stride, pad, dil, dilp, contiguous):
    require("local_correlation", backend, device, dtype)
    if backend == "triton" and device == "cpu" and not contiguous:
        pytest.skip("Triton interpreter is slow; its launcher makes inputs contiguous, strided inputs run on CUDA")
    torch.manual_seed(sum(shape) * 100 + k * 10 + d)
    a, b = (torch.randn(shape, dtype=dtype, device=device) for _ in range(2))
    if not contiguous:
        a, b = noncontiguous(a), noncontiguous(b)
    args = (k, d, stride, pad, dil, dilp)
    exp_out = ref.local_correlation(a, b, *args)
    gout = torch.randn_like(exp_out)
    got = _run(local_correlation, a, b, gout, *args, backend=backend)
    exp = _run(ref.local_correlation, a, b, gout, *args)
    scale = float(shape[1] * k * k)  # sums of C k^2 (forward) and P^2 k^2 (backward) products
    assert_close(got[0], exp[0], scale=scale, msg="forward")
    assert_close(got[1], exp[1], scale=float((2 * d + 1) ** 2 * k * k), msg="gradient of a")
    assert_close(got[2], exp[2], scale=float((2 * d + 1) ** 2 * k * k), msg="gradient of b")


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_shift_peaks_at_its_displacement(device, backend):
    """b = a shifted by (dy, dx), unit-norm features: the largest channel at interior positions is that shift."""
    require("local_correlation", backend, device, torch.float32)
    d, P = 3, 7
    a = F.normalize(torch.randn(1, 8, 10, 11, device=device), dim=1)
    for dy, dx in [(1, 2), (-3, 0), (2, -1), (0, 0)]:
        b = torch.roll(a, shifts=(dy, dx), dims=(2, 3))  # b(y + dy, x + dx) = a(y, x)
        out = local_correlation(a, b, max_displacement=d, backend=backend)
        inner = out[:, :, 3:-3, 3:-3]
        assert (inner.argmax(dim=1) == (dy + d) * P + (dx + d)).all(), (dy, dx)
        torch.testing.assert_close(inner.amax(dim=1), torch.ones_like(inner[:, 0]), rtol=0, atol=1e-5)


def test_layout_of_spatial_correlation_sampler():
    """out.view(N, P, P, H', W')[n, py, px, i, j] is the sum over c of a(i, j) b(i + py - d, j + px - d)."""
    a, b = torch.randn(1, 4, 6, 7, dtype=torch.float64), torch.randn(1, 4, 6, 7, dtype=torch.float64)
    out = local_correlation(a, b, max_displacement=2).view(1, 5, 5, 6, 7)
    i, j, py, px = 3, 2, 0, 4
    torch.testing.assert_close(out[0, py, px, i, j], (a[0, :, i, j] * b[0, :, i + py - 2, j + px - 2]).sum())
    assert out[0, 0, 0, 0, 0] == 0  # the partner (-2, -2) is outside b
    assert torch.equal(local_correlation(a, b, patch_size=5), out.view(1, 25, 6, 7))


def test_matches_spatial_correlation_sampler():
    sampler = pytest.importorskip("spatial_correlation_sampler", reason="spatial-correlation-sampler not installed")
    a, b = torch.randn(2, 8, 9, 10), torch.randn(2, 8, 9, 10)
    for k, d, stride, pad, dil, dilp in [(1, 3, 1, 0, 1, 1), (3, 2, 2, 1, 1, 2), (1, 1, 1, 0, 1, 1)]:
        theirs = sampler.spatial_correlation_sample(a, b, kernel_size=k, patch_size=2 * d + 1, stride=stride,
                                                    padding=pad, dilation=dil, dilation_patch=dilp)
        ours = local_correlation(a, b, k, d, stride, pad, dil, dilp)
        assert_close(ours, theirs.reshape(ours.shape), scale=8.0 * k * k)


def test_matches_localcorr():
    """localcorr's Triton sampler (kernel_size 1, stride 1; on CPU under the Triton interpreter)."""
    peer = pytest.importorskip("localcorr.triton.spatial_corr", reason="localcorr not installed")
    a, b = torch.randn(1, 4, 6, 7), torch.randn(1, 4, 6, 7)
    for d, dilp in [(2, 1), (1, 2)]:
        theirs = peer.TritonSpatialCorrelationSampler(patch_size=2 * d + 1, dilation_patch=dilp)(a, b)
        ours = local_correlation(a, b, max_displacement=d, dilation_patch=dilp)
        assert_close(ours, theirs.reshape(ours.shape), scale=4.0)


def test_gradcheck_float64(device):
    a = torch.randn(1, 2, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(1, 2, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    for backend in ("cpp", "torch"):
        require("local_correlation", backend, device, torch.float64)
        for args in [(1, 1, 1, 0, 1, 1), (2, 1, 2, 1, 1, 2)]:
            fn = lambda a, b: local_correlation(a, b, *args, backend=backend)  # noqa: E731
            assert torch.autograd.gradcheck(fn, (a, b), fast_mode=backend == "torch")


def test_opcheck(device):
    require("local_correlation", "cpp", device, torch.float32)
    a, b = torch.randn(2, 3, 6, 5, device=device), torch.randn(2, 3, 6, 5, device=device)
    for args in [(3, 1, 2, 1, 2, 1)]:
        out = torch.ops.pscfast.local_correlation(a, b, *args)
        torch.library.opcheck(torch.ops.pscfast.local_correlation.default,
                              (a.clone().requires_grad_(), b.clone().requires_grad_(), *args))
        torch.library.opcheck(torch.ops.pscfast._local_correlation_backward.default,
                              (torch.randn_like(out), a, b, *args, True, True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_is_deterministic(device, backend):
    require("local_correlation", backend, device, torch.float32)
    a, b = torch.randn(2, 8, 6, 7, device=device), torch.randn(2, 8, 6, 7, device=device)
    gout = torch.randn(2, 25, 6, 7, device=device)
    first = _run(local_correlation, a, b, gout, 1, 2, backend=backend)
    second = _run(local_correlation, a, b, gout, 1, 2, backend=backend)
    assert all(torch.equal(x, y) for x, y in zip(first, second))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_half_precision_accumulates_in_float32(device, backend, dtype):
    """With C = 256 channels the error against float64 is that of rounding the output once (fp32 accumulation),
    not of a sum in half precision."""
    require("local_correlation", backend, device, dtype)
    a, b = (torch.randn(1, 256, 3, 4, device=device).to(dtype) for _ in range(2))
    ours = local_correlation(a, b, max_displacement=1, backend=backend)
    assert ours.dtype == dtype and torch.isfinite(ours).all()
    exact = ref.local_correlation(a.double(), b.double(), max_displacement=1)
    eps = torch.finfo(dtype).eps
    assert ((ours.double() - exact).abs() <= eps * exact.abs() + 1e-3).all()


def test_module_equals_function():
    a, b = torch.randn(2, 3, 8, 9), torch.randn(2, 3, 8, 9)
    m = LocalCorrelation(kernel_size=3, max_displacement=2, stride=2, padding=1)
    assert torch.equal(m(a, b), local_correlation(a, b, 3, 2, 2, 1))
    assert "max_displacement=2" in repr(m)


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda a, b: local_correlation(a[0], b[0]), ValueError, "a must have 4 dimensions"),
        (lambda a, b: local_correlation(a, b[:, :2]), ValueError, "a and b must have one shape"),
        (lambda a, b: local_correlation(a.long(), b), TypeError, "a must be a floating-point tensor"),
        (lambda a, b: local_correlation(a, b.numpy()), TypeError, "b must be a torch.Tensor"),
        (lambda a, b: local_correlation(a, b.to("meta")), ValueError, "one device"),
        (lambda a, b: local_correlation(a, b, max_displacement=-1), ValueError, "max_displacement must be an int"),
        (lambda a, b: local_correlation(a, b, max_displacement=1.5), ValueError, "max_displacement must be an int"),
        (lambda a, b: local_correlation(a, b, stride=0), ValueError, "stride must be an int >= 1"),
        (lambda a, b: local_correlation(a, b, kernel_size=9), ValueError, "larger than a"),
        (lambda a, b: local_correlation(a, b, patch_size=4), ValueError, "patch_size must be a positive odd"),
        (lambda a, b: local_correlation(a[:, :, :0], b[:, :, :0]), ValueError, "a has an empty spatial size"),
        (lambda a, b: local_correlation(a, b, backend="cuda"), ValueError, "unknown backend 'cuda'"),
    ],
)
def test_bad_input(make, error, words):
    a, b = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    with pytest.raises(error, match=words):
        make(a, b)
