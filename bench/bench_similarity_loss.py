"""similarity_loss: PSC's weighted perceptual similarity (one direction), fused kernels against the naive
PyTorch version (the `torch` provider: interpolate, cat, bmm, two L1 normalisations, max, min-max,
cross-entropy). Features are post-ReLU (non-negative) layer2 + layer3 maps of a 256x256 image; both fw and ft
require grad. Peak memory is measured beyond the resident inputs (PERF.md, op 3). On a GPU also bfloat16 as in
AMP training: bf16 features, every provider called under torch.autocast(bfloat16)."""
import pytest
import torch

from bench.conftest import bench_device, providers, run_case
from pscfast.ops import similarity_loss

DEVICE = bench_device()
DTYPES = [torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])
R18, R101 = ((128, 32), (256, 16)), ((512, 32), (1024, 16))  # (channels, side) of layer2, layer3
# (name, N, layers, grid size); CPU shapes are scaled down in batch so the CPU suite stays short
SHAPES = {
    "cuda": [("B256-R18-g16", 256, R18, 16), ("B256-R101-g16", 256, R101, 16), ("B256-R18-g32", 256, R18, 32),
             ("B32-R18-g64", 32, R18, 64), ("B256-R18-g64", 256, R18, 64)],
    "cpu": [("B8-R18-g16", 8, R18, 16), ("B4-R18-g32", 4, R18, 32), ("B4-R18-g64", 4, R18, 64)],
}[DEVICE]


def _min_flops(n, layers, g, mode):
    """The GEMM work any implementation must do: forward S (2 P^2 C), backward dFw and dFt (4 P^2 C)."""
    c, p = sum(ch for ch, _ in layers), g * g
    return {"fwd": 2, "fwd+bwd": 6}[mode] * n * p * p * c


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", ["torch", "cpp", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_similarity_loss(benchmark, request, shape, dtype, provider, mode):
    name, n, layers, g = shape
    why = dict(providers("similarity_loss", DEVICE, dtype, request.config.getoption("--bench-triton-cpu")))[provider]
    if why:
        pytest.skip(why)

    def make_inputs():
        fw = [torch.relu(torch.randn(n, c, s, s, device=DEVICE, dtype=dtype)).requires_grad_() for c, s in layers]
        ft = [torch.relu(torch.randn(n, c, s, s, device=DEVICE, dtype=dtype)).requires_grad_() for c, s in layers]
        return (fw, ft), (*fw, *ft)

    def call(fw, ft):
        with torch.autocast(DEVICE, dtype=dtype, enabled=dtype != torch.float32):
            return similarity_loss(fw, ft, 0.001, g, backend=provider)

    run_case(benchmark, op="similarity_loss", provider=provider, mode=mode, shape=name, device=DEVICE,
             dtype=dtype, make_inputs=make_inputs, call=call, rounds=10 if DEVICE == "cuda" else 3, rotate=2,
             extra={"min_flops": _min_flops(n, layers, g, mode)})
