"""truncated_flow_loss (Zhou et al.'s truncated Euclidean flow loss) against the naive PyTorch version (the
`torch` provider: elementwise min + sum) at PSC's flow sizes, batch 256, 16x16 and 32x32 grids (CPU: batch
64)."""
import pytest
import torch

from bench.conftest import bench_device, providers, run_case
from pscfast.ops import truncated_flow_loss

DEVICE = bench_device()
DTYPE = torch.float32
BATCH = 256 if DEVICE == "cuda" else 64
SHAPES = [(f"B{BATCH}-g{g}", BATCH, g) for g in (16, 32)]
MODES = ["fwd", "fwd+bwd"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", ["torch", "cpp", "triton"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_truncated_flow_loss(benchmark, request, shape, provider, mode):
    name, n, g = shape
    triton_cpu = request.config.getoption("--bench-triton-cpu")
    why = dict(providers("truncated_flow_loss", DEVICE, DTYPE, triton_cpu))[provider]
    if why:
        pytest.skip(why)

    def make_inputs():
        pred = (torch.randn(n, 2, g, g, device=DEVICE, dtype=DTYPE) * 10).requires_grad_()
        target = torch.randn(n, 2, g, g, device=DEVICE, dtype=DTYPE) * 10
        mask = (torch.rand(n, 1, g, g, device=DEVICE) > 0.2).to(DTYPE)
        return (pred, target, mask), (pred,)

    run_case(benchmark, op="truncated_flow_loss", provider=provider, mode=mode, shape=name, device=DEVICE,
             dtype=DTYPE, make_inputs=make_inputs,
             call=lambda p, t, m: truncated_flow_loss(p, t, m, 15.0, backend=provider),
             rounds=50 if DEVICE == "cuda" else 10)
