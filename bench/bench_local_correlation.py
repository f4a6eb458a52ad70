"""local_correlation: PWC-Net-style cost volume (kernel_size 1, max displacement 4) against the naive PyTorch
versions (the reference's loop over displacements, `torch`; an F.unfold version, `unfold`) and, where they are
installed, spatial_correlation_sampler (`sampler`) and localcorr's Triton sampler (`localcorr`, CUDA only: on
CPU it is the Triton interpreter); neither is a pscfast dependency. Each case also records the
largest error against float64 (`max_err`) and whether the output is finite: on CUDA in float16 too, where
the sampler's half path is known to give NaN."""
import pytest
import torch
import torch.nn.functional as F

from bench.conftest import bench_device, providers, run_case
from pscfast.ops import _reference as ref
from pscfast.ops import local_correlation

DEVICE = bench_device()
D = 4
# (name, N, C, H, W); CPU shapes are scaled down so the CPU suite stays short
SHAPES = {
    "cuda": [("B256-C64-32x32-d4", 256, 64, 32, 32), ("B32-C128-64x64-d4", 32, 128, 64, 64)],
    "cpu": [("B4-C64-32x32-d4", 4, 64, 32, 32), ("B2-C128-48x48-d4", 2, 128, 48, 48)],
}[DEVICE]
DTYPES = [torch.float32] + ([torch.float16] if DEVICE == "cuda" else [])


def unfold_correlation(a, b, d):
    """Naive PyTorch: gather every displaced b with F.unfold ((N, C, P^2, H, W) in memory), multiply, sum."""
    n, c, h, w = a.shape
    p = 2 * d + 1
    windows = F.unfold(b, kernel_size=p, padding=d).view(n, c, p * p, h, w)
    return (a.unsqueeze(2) * windows).sum(1)


def _sampler():
    try:
        from spatial_correlation_sampler import spatial_correlation_sample
    except ImportError as exc:
        return None, f"spatial-correlation-sampler is not installed ({exc})"
    return spatial_correlation_sample, None


def _localcorr(device):
    try:
        from localcorr.triton.spatial_corr import TritonSpatialCorrelationSampler
    except ImportError as exc:
        return None, f"localcorr is not installed ({exc})"
    if device != "cuda":
        return None, "localcorr's kernels are Triton: on CPU only the interpreter"
    return TritonSpatialCorrelationSampler, None


def _impl(provider):
    if provider == "localcorr":
        module = _localcorr(DEVICE)[0](patch_size=2 * D + 1)
        return lambda a, b: module(a, b).flatten(1, 2)
    if provider == "unfold":
        return lambda a, b: unfold_correlation(a, b, D)
    if provider == "sampler":
        fn = _sampler()[0]
        return lambda a, b: fn(a, b, kernel_size=1, patch_size=2 * D + 1).flatten(1, 2)
    return lambda a, b: local_correlation(a, b, max_displacement=D, backend=provider)


def _all_providers(dtype):
    found = providers("local_correlation", DEVICE, dtype, False)
    return found + [("unfold", None), ("sampler", _sampler()[1]), ("localcorr", _localcorr(DEVICE)[1])]


@pytest.mark.parametrize("mode", ["fwd", "bwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", ["torch", "cpp", "triton", "unfold", "sampler", "localcorr"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_local_correlation(benchmark, request, shape, dtype, provider, mode):
    name, n, c, h, w = shape
    why = dict(_all_providers(dtype))[provider]
    if why:
        pytest.skip(why)
    call = _impl(provider)

    def make_inputs():
        a = torch.randn(n, c, h, w, device=DEVICE, dtype=dtype).requires_grad_()
        b = torch.randn(n, c, h, w, device=DEVICE, dtype=dtype).requires_grad_()
        return (a, b), (a, b)

    (a, b), _ = make_inputs()
    with torch.no_grad():
        out = call(a[:2], b[:2]).double()
        exact = ref.local_correlation(a[:2].double(), b[:2].double(), patch_size=2 * D + 1)
    accuracy = {"max_err": float((out - exact).abs().max()), "finite": bool(torch.isfinite(out).all())}
    run_case(benchmark, op="local_correlation", provider=provider, mode=mode, shape=name, device=DEVICE, dtype=dtype,
             make_inputs=make_inputs, call=call, rounds=20 if DEVICE == "cuda" else 3,
             extra={"min_bytes": (2 * n * c * h * w + n * (2 * D + 1) ** 2 * h * w) * a.element_size(),
                    "flops": 2 * n * c * h * w * (2 * D + 1) ** 2, **accuracy})
