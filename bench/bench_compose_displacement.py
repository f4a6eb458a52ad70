"""compose_displacement (Zhou et al.'s composition of displacement fields with matchability) against the naive
PyTorch version (the `torch` provider: grid_sample of the displacement field and matchability) at PSC's flow
sizes, batch 256, 16x16 and 32x32 grids (CPU: batch 64)."""
import pytest
import torch

from bench.conftest import bench_device, providers, run_case
from pscfast.ops import compose_displacement

DEVICE = bench_device()
DTYPE = torch.float32
BATCH = 256 if DEVICE == "cuda" else 64
SHAPES = [(f"B{BATCH}-g{g}", BATCH, g) for g in (16, 32)]
MODES = ["fwd", "fwd+bwd"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", ["torch", "cpp", "triton"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_compose_displacement(benchmark, request, shape, provider, mode):
    name, n, g = shape
    triton_cpu = request.config.getoption("--bench-triton-cpu")
    why = dict(providers("compose_displacement", DEVICE, DTYPE, triton_cpu))[provider]
    if why:
        pytest.skip(why)

    def make_inputs():
        flows = [(torch.randn(n, 2, g, g, device=DEVICE, dtype=DTYPE) * 3).requires_grad_() for _ in range(2)]
        maps = [torch.rand(n, 1, g, g, device=DEVICE, dtype=DTYPE).requires_grad_() for _ in range(2)]
        return (*flows, *maps), (*flows, *maps)

    run_case(benchmark, op="compose_displacement", provider=provider, mode=mode, shape=name, device=DEVICE,
             dtype=DTYPE, make_inputs=make_inputs,
             call=lambda *t: compose_displacement(*t, backend=provider), rounds=50 if DEVICE == "cuda" else 10)
