"""warp: PSC's full-resolution image warp from a low-resolution flow (grid resized on the fly), against
the naive PyTorch version (interpolate the grid to 256x256, then grid_sample). Only the flow requires grad,
as in PSC's training (the images are inputs)."""
import pytest
import torch

from bench.conftest import bench_device, providers, run_case
from pscfast.ops import warp

DEVICE = bench_device()
DTYPE = torch.float32
# (name, N, C, H, W, grid size); CPU shapes are scaled down in batch so the CPU suite stays short
# A grid as large as the image ("g256") is the plain grid_sample case: there the naive version is
# torch.nn.functional.grid_sample itself, the peer every user already has.
SHAPES = {
    "cuda": [("B256-3x256x256-g16", 256, 3, 256, 256, 16), ("B256-3x256x256-g32", 256, 3, 256, 256, 32),
             ("B256-3x256x256-g256", 256, 3, 256, 256, 256)],
    "cpu": [("B8-3x256x256-g16", 8, 3, 256, 256, 16), ("B8-3x256x256-g32", 8, 3, 256, 256, 32),
            ("B8-3x256x256-g256", 8, 3, 256, 256, 256)],
}[DEVICE]


def _minimum_bytes(n, c, H, W):
    """Read the image once and write the output once (the flow is negligible)."""
    return 2 * n * c * H * W * torch.finfo(DTYPE).bits // 8


@pytest.mark.parametrize("mode", ["fwd", "bwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", ["torch", "cpp", "triton"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_warp(benchmark, request, shape, provider, mode):
    name, n, c, H, W, g = shape
    why = dict(providers("warp", DEVICE, DTYPE, request.config.getoption("--bench-triton-cpu")))[provider]
    if why:
        pytest.skip(why)

    def make_inputs():
        image = torch.rand(n, c, H, W, device=DEVICE, dtype=DTYPE)
        flow = (torch.rand(n, g, g, 2, device=DEVICE, dtype=DTYPE) * 2 - 1).requires_grad_()
        return (image, flow), (flow,)

    def call(image, flow):
        return warp(image, flow, (H, W), "bilinear", "border", True, backend=provider)

    run_case(benchmark, op="warp", provider=provider, mode=mode, shape=name, device=DEVICE, dtype=DTYPE,
             make_inputs=make_inputs, call=call, rounds=20 if DEVICE == "cuda" else 5,
             extra={"min_bytes": _minimum_bytes(n, c, H, W)})
