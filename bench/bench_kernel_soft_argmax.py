"""kernel_soft_argmax: SFNet's kernel soft-argmax on PSC-layout correlations (16x16 and 32x32 grids) against
the naive PyTorch reference (`torch`: normalise, Gaussian, softmax and expectation as separate tensors)."""
import pytest
import torch

from bench.conftest import bench_device, providers, run_case
from pscfast.ops import kernel_soft_argmax

DEVICE = bench_device()
DTYPE = torch.float32
# (name, N, grid side): corr (N, side^2, side, side)
SHAPES = {
    "cuda": [("B256-g16", 256, 16), ("B64-g32", 64, 32)],
    "cpu": [("B16-g16", 16, 16), ("B4-g32", 4, 32)],
}[DEVICE]


@pytest.mark.parametrize("mode", ["fwd", "bwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", ["torch", "cpp", "triton"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_kernel_soft_argmax(benchmark, request, shape, provider, mode):
    name, n, g = shape
    why = dict(providers("kernel_soft_argmax", DEVICE, DTYPE, request.config.getoption("--bench-triton-cpu")))[provider]
    if why:
        pytest.skip(why)

    def make_inputs():
        corr = torch.randn(n, g * g, g, g, device=DEVICE, dtype=DTYPE).requires_grad_()
        return (corr,), (corr,)

    def call(corr):
        return kernel_soft_argmax(corr, 50.0, 5.0, backend=provider)

    run_case(benchmark, op="kernel_soft_argmax", provider=provider, mode=mode, shape=name, device=DEVICE,
             dtype=DTYPE, make_inputs=make_inputs, call=call, rounds=20 if DEVICE == "cuda" else 5,
             extra={"min_bytes": 2 * n * g ** 4 * 4})
