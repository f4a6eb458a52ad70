"""local_correlation and spatial_correlation_sample: every backend against the PyTorch reference (forward and
backward; odd, even and rectangular patches, (h, w) pairs), known-shift contract, spatial_correlation_sampler's
signature and layout (and its output, where the package is installed), gradcheck, opcheck, determinism, half
precision, bad input, integer arguments beyond int32."""
import pytest
import torch
import torch.nn.functional as F

from pscfast.ops import LocalCorrelation, SpatialCorrelationSampler, local_correlation, spatial_correlation_sample
from pscfast.ops import _reference as ref
from tests.utils import BACKENDS, assert_close, noncontiguous, require

# (N, C, H, W), the keyword arguments (the reference takes patch_size, the op either name)
CASES = [
    pytest.param((2, 3, 7, 5), dict(patch_size=5), id="pwc-odd"),
    pytest.param((1, 2, 6, 9), dict(kernel_size=3, patch_size=3, stride=2, padding=1, dilation_patch=2),
                 id="batch1-k3-s2-p1-dp2"),
    pytest.param((2, 2, 5, 6), dict(kernel_size=2, patch_size=7, dilation=2), id="k2-dil2-p7"),
    pytest.param((1, 37, 5, 4), dict(patch_size=3, stride=3, padding=2, dilation_patch=3), id="c37-s3-p2-dp3"),
    pytest.param((1, 3, 6, 7), dict(patch_size=4, dilation_patch=2), id="even-patch4-dp2"),
    pytest.param((2, 2, 7, 8), dict(kernel_size=(2, 3), patch_size=(3, 4), stride=(2, 1), padding=(0, 2),
                                    dilation=(2, 1), dilation_patch=(1, 2)), id="rectangular-pairs"),
    # kernel size 1, stride 1, no padding and rows of 8 or more: the CPU row kernels (widths not a multiple of
    # their 8-column step, channel counts not a multiple of their 4-channel block, displacements beyond the image)
    pytest.param((2, 5, 6, 13), dict(patch_size=7, dilation_patch=2), id="rows-w13-p7-dp2"),
    pytest.param((1, 37, 4, 9), dict(patch_size=(4, 3), dilation_patch=(1, 3)), id="rows-c37-even-patch"),
    pytest.param((1, 2, 3, 10), dict(patch_size=9), id="rows-displacements-beyond-h"),
    pytest.param((2, 3, 5, 24), dict(patch_size=(3, 21), dilation_patch=(1, 2)), id="rows-w24-p21"),
]


def _run(fn, a, b, gout, **kw):
    a, b = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    out = fn(a, b, **kw)
    da, db = torch.autograd.grad(out, (a, b), gout)
    return out, da, db


def _taps(kw):
    """(products summed per output, per input gradient element) of a case, for the tolerance's scale."""
    k, p = (torch.tensor(kw.get(name, 1)).broadcast_to(2).prod().item() for name in ("kernel_size", "patch_size"))
    return float(k), float(k * p)


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("shape, kw", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference(device, backend, dtype, shape, kw, contiguous):
    require("local_correlation", backend, device, dtype)
    if backend == "triton" and device == "cpu" and not contiguous:
        pytest.skip("Triton interpreter is slow; its launcher makes inputs contiguous, strided inputs run on CUDA")
    torch.manual_seed(sum(shape) * 100 + len(str(kw)))
    a, b = (torch.randn(shape, dtype=dtype, device=device) for _ in range(2))
    if not contiguous:
        a, b = noncontiguous(a), noncontiguous(b)
    exp_out = ref.local_correlation(a, b, **kw)
    gout = torch.randn_like(exp_out)
    got = _run(local_correlation, a, b, gout, **kw, backend=backend)
    exp = _run(ref.local_correlation, a, b, gout, **kw)
    window, grad_terms = _taps(kw)
    assert_close(got[0], exp[0], scale=shape[1] * window, msg="forward")  # sums of C k^2 products
    assert_close(got[1], exp[1], scale=grad_terms, msg="gradient of a")  # sums of P^2 k^2 products
    assert_close(got[2], exp[2], scale=grad_terms, msg="gradient of b")


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
    assert torch.equal(spatial_correlation_sample(a, b, 1, 5), out)


def test_even_and_rectangular_patch_displacements():
    """An even patch starts at -(P - 1) // 2 (the sampler's patchRad): P = 4 covers -1..2; a (3, 4) patch with
    dilation_patch (2, 1) covers rows -2, 0, 2 and columns -1..2."""
    a, b = torch.randn(1, 3, 7, 8, dtype=torch.float64), torch.randn(1, 3, 7, 8, dtype=torch.float64)
    out = spatial_correlation_sample(a, b, patch_size=(3, 4), dilation_patch=(2, 1))
    assert out.shape == (1, 3, 4, 7, 8)
    i, j = 3, 4
    for py, oy in enumerate((-2, 0, 2)):
        for px, ox in enumerate((-1, 0, 1, 2)):
            torch.testing.assert_close(out[0, py, px, i, j], (a[0, :, i, j] * b[0, :, i + oy, j + ox]).sum())
    even = local_correlation(a, b, patch_size=4).view(1, 4, 4, 7, 8)
    torch.testing.assert_close(even[0, 3, 0, i, j], (a[0, :, i, j] * b[0, :, i + 2, j - 1]).sum())


def test_flownetc_positional_arguments():
    """FlowNetC's sampler call (kernel 1, patch 21, stride 1, padding 0, dilation 1, dilation_patch 2) runs
    unchanged and gives 21 x 21 displacements; the same positional call to local_correlation is refused instead
    of being read as max_displacement 21 (43 x 43 channels)."""
    a, b = torch.randn(2, 4, 9, 10), torch.randn(2, 4, 9, 10)
    out = spatial_correlation_sample(a, b, 1, 21, 1, 0, 1, 2)
    assert out.shape == (2, 21, 21, 9, 10)
    assert torch.equal(SpatialCorrelationSampler(1, 21, 1, 0, 1, 2)(a, b), out)
    assert torch.equal(spatial_correlation_sample(input1=a, input2=b, patch_size=21, dilation_patch=2), out)
    flat = local_correlation(a, b, kernel_size=1, patch_size=21, dilation_patch=2)
    assert torch.equal(flat, out.flatten(1, 2))
    torch.testing.assert_close(flat, local_correlation(a, b, max_displacement=10, dilation_patch=2))
    with pytest.raises(TypeError, match="positional"):
        local_correlation(a, b, 1, 21, 1, 0, 1, 2)
    with pytest.raises(TypeError, match="positional"):
        LocalCorrelation(1, 21)


def test_matches_spatial_correlation_sampler():
    """The package itself, where installed: the same positional call, the same 5-D result."""
    sampler = pytest.importorskip("spatial_correlation_sampler", reason="spatial-correlation-sampler not installed")
    a, b = torch.randn(2, 8, 9, 10), torch.randn(2, 8, 9, 10)
    for args in [(1, 7), (3, 5, 2, 1, 1, 2), (1, 3), (1, 4, 1, 0, 1, 2), ((1, 3), (3, 4), (2, 1), (0, 1), 1, (1, 2))]:
        theirs = sampler.spatial_correlation_sample(a, b, *args)
        ours = spatial_correlation_sample(a, b, *args)
        assert ours.shape == theirs.shape
        assert_close(ours, theirs, scale=8.0 * 9)


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
        for kw in [dict(patch_size=3), dict(kernel_size=2, patch_size=(2, 3), stride=(2, 1), padding=1,
                                            dilation_patch=(1, 2))]:
            fn = lambda a, b: local_correlation(a, b, **kw, backend=backend)  # noqa: E731
            assert torch.autograd.gradcheck(fn, (a, b), fast_mode=backend == "torch")


def test_opcheck(device):
    require("local_correlation", "cpp", device, torch.float32)
    a, b = torch.randn(2, 3, 6, 5, device=device), torch.randn(2, 3, 6, 5, device=device)
    for args in [([3, 3], [3, 3], [2, 2], [1, 1], [2, 2], [1, 1]), ([2, 1], [4, 3], [1, 2], [0, 1], [1, 1], [1, 2])]:
        out = torch.ops.pscfast.local_correlation(a, b, *args)
        torch.library.opcheck(torch.ops.pscfast.local_correlation.default,
                              (a.clone().requires_grad_(), b.clone().requires_grad_(), *args))
        torch.library.opcheck(torch.ops.pscfast._local_correlation_backward.default,
                              (torch.randn_like(out), a, b, *args, [True, True]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_is_deterministic(device, backend):
    require("local_correlation", backend, device, torch.float32)
    a, b = torch.randn(2, 8, 6, 7, device=device), torch.randn(2, 8, 6, 7, device=device)
    gout = torch.randn(2, 25, 6, 7, device=device)
    first = _run(local_correlation, a, b, gout, max_displacement=2, backend=backend)
    second = _run(local_correlation, a, b, gout, max_displacement=2, backend=backend)
    assert all(torch.equal(x, y) for x, y in zip(first, second))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape, kw", [
    ((3, 4, 45, 9), dict(kernel_size=3, patch_size=5, stride=2, padding=2, dilation=2, dilation_patch=2)),
    ((2, 3, 40, 6), dict(patch_size=(9, 3), dilation_patch=(3, 1))),
    ((5, 2, 7, 5), dict(kernel_size=2, patch_size=4, padding=(3, 0))),
], ids=["k3-s2-p2-dil2-dp2", "reach-beyond-bands", "short-images"])
def test_cpu_forward_in_row_bands(shape, kw, threads):
    """The CPU forward copies, per task, only the rows a band of output rows reads (bands of 1 to 8 rows, by the
    thread count and the image height; rows of b beyond a band by the displacements' reach, rows outside the
    image by the padding): the same numbers at any thread count, equal to the reference."""
    a, b = noncontiguous(torch.randn(*shape, dtype=torch.float64)), torch.randn(*shape, dtype=torch.float64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = local_correlation(a, b, backend="cpp", **kw)
    finally:
        torch.set_num_threads(before)
    assert_close(got, ref.local_correlation(a, b, **kw))


@pytest.mark.parametrize("size", [(3, 4), (5, 11)], ids=["narrow", "rows"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_half_precision_accumulates_in_float32(device, backend, dtype, size):
    """With C = 256 channels the error against float64, forward and backward, is that of rounding each result
    once (fp32 accumulation), not of a sum in half precision. Rows of 8 or more take the CPU row kernels."""
    # the CPU kernel must serve half precision: skipped without the extension, never for the dtype
    require("local_correlation", backend, device, torch.float32 if (backend, device) == ("cpp", "cpu") else dtype)
    a, b = (torch.randn(1, 256, *size, device=device).to(dtype) for _ in range(2))
    gout = torch.randn(1, 9, *size, device=device).to(dtype)
    ours = _run(local_correlation, a, b, gout, max_displacement=1, backend=backend)
    exact = _run(ref.local_correlation, a.double(), b.double(), gout.double(), patch_size=3)
    eps = torch.finfo(dtype).eps
    for name, got, want in zip(("output", "grad a", "grad b"), ours, exact):
        assert got.dtype == dtype and torch.isfinite(got).all(), name
        assert ((got.double() - want).abs() <= eps * want.abs() + 1e-3).all(), name


def test_modules_equal_functions():
    a, b = torch.randn(2, 3, 8, 9), torch.randn(2, 3, 8, 9)
    m = LocalCorrelation(kernel_size=3, max_displacement=2, stride=2, padding=1)
    assert torch.equal(m(a, b), local_correlation(a, b, kernel_size=3, max_displacement=2, stride=2, padding=1))
    assert "max_displacement=2" in repr(m)
    m = LocalCorrelation(patch_size=(4, 3), dilation_patch=(1, 2))
    assert torch.equal(m(a, b), local_correlation(a, b, patch_size=(4, 3), dilation_patch=(1, 2)))
    assert "patch_size=(4, 3)" in repr(m)
    s = SpatialCorrelationSampler(3, (4, 3), 2, 1, 1, (1, 2))
    assert torch.equal(s(a, b), spatial_correlation_sample(a, b, 3, (4, 3), 2, 1, 1, (1, 2)))
    assert "patch_size=(4, 3)" in repr(s)


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
        (lambda a, b: local_correlation(a, b, stride=(1, 2, 3)), ValueError, r"stride must be .* \(h, w\) pair"),
        (lambda a, b: local_correlation(a, b, dilation=(1, True)), ValueError, "dilation must be an int"),
        (lambda a, b: local_correlation(a, b, kernel_size=9), ValueError, "larger than the inputs"),
        (lambda a, b: local_correlation(a, b, kernel_size=(1, 6)), ValueError, "larger than the inputs"),
        (lambda a, b: local_correlation(a, b, patch_size=0), ValueError, "patch_size must be an int >= 1"),
        (lambda a, b: local_correlation(a, b, patch_size=3, max_displacement=1), ValueError, "not both"),
        (lambda a, b: local_correlation(a[:, :, :0], b[:, :, :0]), ValueError, "a has an empty spatial size"),
        (lambda a, b: local_correlation(a, b, backend="cuda"), ValueError, "unknown backend 'cuda'"),
        (lambda a, b: spatial_correlation_sample(a, b[:, :2]), ValueError,
         "spatial_correlation_sample: input1 and input2 must have one shape"),
        (lambda a, b: spatial_correlation_sample(a, b, 1, -3), ValueError,
         "spatial_correlation_sample: patch_size must be an int >= 1"),
    ],
)
def test_bad_input(make, error, words):
    a, b = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    with pytest.raises(error, match=words):
        make(a, b)


# Arguments that the compiled kernels, which index in int32, used to truncate silently (dilation_patch
# 2^32 + 1 behaved as 1, padding 2^32 as 0, max_displacement 32768 gave 131073 channels instead of 65537^2).
OVERFLOW = [
    pytest.param(dict(max_displacement=1, dilation_patch=2**32 + 1), "dilation_patch .* exceeds 2\\^31 - 1",
                 id="dilation_patch-2^32+1"),
    pytest.param(dict(max_displacement=1, padding=2**32), "padding .* exceeds 2\\^31 - 1", id="padding-2^32"),
    pytest.param(dict(max_displacement=32768), "max_displacement \\(32768, 32768\\) gives 4295098369 channels",
                 id="max_displacement-32768"),
    pytest.param(dict(patch_size=3, dilation_patch=2**31 - 2), "dilation_patch .* reaches 2147483646 pixels",
                 id="reach-beyond-int32"),
    pytest.param(dict(patch_size=1, padding=(2**30, 0)), "padded height 2147483652", id="padded-height"),
    pytest.param(dict(patch_size=1, padding=30000), "output plane 60004 x 60004", id="output-plane"),
    pytest.param(dict(max_displacement=(0, 2**30)), "max_displacement \\(0, 1073741824\\) gives a patch",
                 id="patch-from-max_displacement"),
]


@pytest.mark.parametrize("kw, words", OVERFLOW)
@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_arguments_beyond_int32_are_refused(backend, kw, words):
    """Every backend refuses them with the same message before anything runs (the torch backend would try to
    allocate the padded maps)."""
    a, b = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match=f"pscfast.ops.local_correlation: .*{words}"):
        local_correlation(a, b, **kw, backend=backend)


def _op_args(kw):
    """The compiled op's six (h, w) lists for local_correlation's keyword arguments."""
    from pscfast.ops.local_correlation import ARGS

    kw = dict(kw)
    if "max_displacement" in kw:
        kw["patch_size"] = 2 * kw.pop("max_displacement") + 1
    values = [kw.get(name, 0 if name == "padding" else 1) for name in ARGS]
    return [list(v) if isinstance(v, tuple) else [v, v] for v in values]


@pytest.mark.parametrize("kw, words", OVERFLOW[:-1])
def test_compiled_op_refuses_what_it_cannot_index(kw, words):
    """Direct calls of the compiled op, eager and fake (meta), refuse the same arguments instead of truncating."""
    require("local_correlation", "cpp", "cpu", torch.float32)
    a = torch.randn(1, 2, 4, 4)
    with pytest.raises(RuntimeError, match="pscfast::local_correlation"):
        torch.ops.pscfast.local_correlation(a, a, *_op_args(kw))
    with pytest.raises(ValueError, match="pscfast.ops.local_correlation"):
        torch.ops.pscfast.local_correlation(a.to("meta"), a.to("meta"), *_op_args(kw))


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_dilation_patch_within_int32(backend):
    """dilation_patch 2^20 on 4 x 4 maps: every displacement but (0, 0) leaves the maps, so only the centre
    channel is non-zero; eager and fake shapes agree."""
    a, b = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    out = local_correlation(a, b, patch_size=3, dilation_patch=2**20, backend=backend)
    assert out.shape == (1, 9, 4, 4)
    assert not out[0, [0, 1, 2, 3, 5, 6, 7, 8]].any()
    torch.testing.assert_close(out[0, 4], (a * b).sum(1)[0])
    if backend == "cpp":
        args = _op_args(dict(patch_size=3, dilation_patch=2**20))
        assert torch.ops.pscfast.local_correlation(a.to("meta"), b.to("meta"), *args).shape == out.shape
