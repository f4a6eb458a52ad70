"""consistency_loss (PSC's fused flow composition + masked MSE) against the naive PyTorch version (the `torch`
provider: grid_sample composition + masked MSE) at PSC's flow sizes, batch 256, 16x16 and 32x32 grids (CPU:
batch 64)."""
import pytest
import torch

from bench.conftest import bench_device, providers, run_case
from pscfast.ops import consistency_loss

DEVICE = bench_device()
DTYPE = torch.float32
BATCH = 256 if DEVICE == "cuda" else 64
SHAPES = [(f"B{BATCH}-g{g}", BATCH, g) for g in (16, 32)]
MODES = ["fwd", "fwd+bwd"]


def _grid(n, g):
    return (torch.rand(n, g, g, 2, device=DEVICE, dtype=DTYPE) * 2.2 - 1.1).requires_grad_()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sampling", ["nearest", "bilinear"])
@pytest.mark.parametrize("provider", ["torch", "cpp", "triton"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_consistency_loss(benchmark, request, shape, provider, sampling, mode):
    name, n, g = shape
    triton_cpu = request.config.getoption("--bench-triton-cpu")
    why = dict(providers("consistency_loss", DEVICE, DTYPE, triton_cpu))[provider]
    if why:
        pytest.skip(why)

    def make_inputs():
        fwd, bwd = _grid(n, g), _grid(n, g)
        return (fwd, bwd), (fwd, bwd)

    run_case(benchmark, op="consistency_loss", provider=provider, mode=mode, shape=f"{name}-{sampling}",
             device=DEVICE, dtype=DTYPE, make_inputs=make_inputs,
             call=lambda fwd, bwd: consistency_loss(fwd, bwd, sampling, backend=provider),
             rounds=50 if DEVICE == "cuda" else 10)
