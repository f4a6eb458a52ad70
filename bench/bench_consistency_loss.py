"""consistency_loss (PSC's fused flow composition + masked MSE) and Zhou et al.'s compose_displacement and
truncated_flow_loss, against the naive PyTorch versions (the `torch` provider: grid_sample composition +
masked MSE; grid_sample of the displacement field and matchability; elementwise min + sum) at PSC's flow
sizes, batch 256, 16x16 and 32x32 grids (CPU: batch 64)."""
import pytest
import torch

from bench.conftest import bench_device, providers, run_case
from pscfast.ops import compose_displacement, consistency_loss, truncated_flow_loss

DEVICE = bench_device()
DTYPE = torch.float32
BATCH = 256 if DEVICE == "cuda" else 64
SHAPES = [(f"B{BATCH}-g{g}", BATCH, g) for g in (16, 32)]
MODES = ["fwd", "fwd+bwd"]


def _skip(op, provider, request):
    why = dict(providers(op, DEVICE, DTYPE, request.config.getoption("--bench-triton-cpu")))[provider]
    if why:
        pytest.skip(why)


def _grid(n, g):
    return (torch.rand(n, g, g, 2, device=DEVICE, dtype=DTYPE) * 2.2 - 1.1).requires_grad_()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sampling", ["nearest", "bilinear"])
@pytest.mark.parametrize("provider", ["torch", "cpp", "triton"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_consistency_loss(benchmark, request, shape, provider, sampling, mode):
    name, n, g = shape
    _skip("consistency_loss", provider, request)

    def make_inputs():
        fwd, bwd = _grid(n, g), _grid(n, g)
        return (fwd, bwd), (fwd, bwd)

    run_case(benchmark, op="consistency_loss", provider=provider, mode=mode, shape=f"{name}-{sampling}",
             device=DEVICE, dtype=DTYPE, make_inputs=make_inputs,
             call=lambda fwd, bwd: consistency_loss(fwd, bwd, sampling, backend=provider),
             rounds=50 if DEVICE == "cuda" else 10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", ["torch", "cpp", "triton"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_compose_displacement(benchmark, request, shape, provider, mode):
    name, n, g = shape
    _skip("compose_displacement", provider, request)

    def make_inputs():
        flows = [(torch.randn(n, 2, g, g, device=DEVICE, dtype=DTYPE) * 3).requires_grad_() for _ in range(2)]
        maps = [torch.rand(n, 1, g, g, device=DEVICE, dtype=DTYPE).requires_grad_() for _ in range(2)]
        return (*flows, *maps), (*flows, *maps)

    run_case(benchmark, op="compose_displacement", provider=provider, mode=mode, shape=name, device=DEVICE,
             dtype=DTYPE, make_inputs=make_inputs,
             call=lambda *t: compose_displacement(*t, backend=provider), rounds=50 if DEVICE == "cuda" else 10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", ["torch", "cpp", "triton"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_truncated_flow_loss(benchmark, request, shape, provider, mode):
    name, n, g = shape
    _skip("truncated_flow_loss", provider, request)

    def make_inputs():
        pred = (torch.randn(n, 2, g, g, device=DEVICE, dtype=DTYPE) * 10).requires_grad_()
        target = torch.randn(n, 2, g, g, device=DEVICE, dtype=DTYPE) * 10
        mask = (torch.rand(n, 1, g, g, device=DEVICE) > 0.2).to(DTYPE)
        return (pred, target, mask), (pred,)

    run_case(benchmark, op="truncated_flow_loss", provider=provider, mode=mode, shape=name, device=DEVICE,
             dtype=DTYPE, make_inputs=make_inputs,
             call=lambda p, t, m: truncated_flow_loss(p, t, m, 15.0, backend=provider),
             rounds=50 if DEVICE == "cuda" else 10)
