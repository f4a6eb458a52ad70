"""correlation: PSC's global multi-layer correlation (layer2 + layer3 of the encoder, tgt resized, src resized
or sampled at a grid), and RAFT's all-pairs volume at 256x320 (one 256-channel 32x40 map against another, the
rectangular grid), against the naive PyTorch version (interpolate / grid_sample, then a batched matmul per
layer and a cat: the `torch` provider). Everything requires grad, as in PSC's training."""
import pytest
import torch

from bench.conftest import bench_device, providers, run_case
from pscfast.ops import correlation

DEVICE = bench_device()
DTYPE = torch.float32
BATCH = 256 if DEVICE == "cuda" else 8  # CPU shapes scaled down in batch so the CPU suite stays short
# encoder: (layer2 (C, H, W), layer3 (C, H, W)) of the 256x256 input; RAFT: its feature map at stride 8
ENCODERS = {"R18": ((128, 32, 32), (256, 16, 16)), "R101": ((512, 32, 32), (1024, 16, 16))}
RAFT = ((256, 32, 40),)
# (name, layers, (h, w) of the source and target grids)
SHAPES = [(f"B{BATCH}-{enc}-g{size}", ENCODERS[enc], (size, size)) for enc in ENCODERS for size in (16, 32)]
SHAPES += [(f"B{BATCH}-RAFT-256x320", RAFT, (32, 40))]


def _minimum_bytes(layers, size, mode):
    """Read every map once and write the output (fwd); read maps and output gradient, write the map
    gradients (bwd); the grid is negligible."""
    item = torch.finfo(DTYPE).bits // 8
    maps = sum(2 * BATCH * c * h * w for c, h, w in layers) * item
    out = BATCH * len(layers) * (size[0] * size[1]) ** 2 * item
    fwd, bwd = maps + out, 2 * maps + out
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("warped", [False, True], ids=["plain", "warped"])
@pytest.mark.parametrize("provider", ["torch", "cpp", "triton"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_correlation(benchmark, request, shape, provider, warped, mode):
    name, layers, size = shape
    why = dict(providers("correlation", DEVICE, DTYPE, request.config.getoption("--bench-triton-cpu")))[provider]
    if why:
        pytest.skip(why)
    if warped and layers is RAFT:
        pytest.skip("RAFT's all-pairs volume samples no grid")

    def make_inputs():
        src = [torch.rand(BATCH, c, h, w, device=DEVICE, dtype=DTYPE, requires_grad=True) for c, h, w in layers]
        tgt = [torch.rand(BATCH, c, h, w, device=DEVICE, dtype=DTYPE, requires_grad=True) for c, h, w in layers]
        grid = None
        if warped:
            grid = (torch.rand(BATCH, *size, 2, device=DEVICE, dtype=DTYPE) * 2 - 1).requires_grad_()
        leaves = src + tgt + ([grid] if warped else [])
        return (src, tgt, grid), tuple(leaves)

    def call(src, tgt, grid):
        return correlation(src, tgt, grid, size, backend=provider)

    run_case(benchmark, op="correlation", provider=provider, mode=mode,
             shape=f"{name}-{'warped' if warped else 'plain'}",
             device=DEVICE, dtype=DTYPE, make_inputs=make_inputs, call=call, rounds=20 if DEVICE == "cuda" else 3,
             extra={"min_bytes": _minimum_bytes(layers, size, mode)})
