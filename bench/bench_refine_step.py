"""One stage-3 training step of PSCNet's refinement level (frozen encoder at strides 4, 8 and 16, the frozen
STN, both refined directions, the known warps, re-encoding of the warped images, PSC's weighted perceptual
similarity and the consistency at the refined flow's size, backward, SGD) at 32x32 and 64x64: the fused ops
("pscfast") against the same step on the plain PyTorch reference ops ("naive"), whose similarity builds the
(size^2 x size^2) matrix per sample and layer. Lite0 at 256x256 (its stride-4 map is 64x64); CPU batch 4,
CUDA batch 64 with bf16 AMP."""
import pytest
import torch

from bench._training_step import RandomPairs, time_train_step
from bench.conftest import bench_device
from pscfast.training.config import TrainConfig
from pscfast.training.pipeline import build_model
from pscfast.training.refine_stage import RefineStage

DEVICE = bench_device()
BATCH = 64 if DEVICE == "cuda" else 4
PROVIDERS = {"pscfast": None, "naive": "torch"}


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_refine_step(benchmark, provider, size):
    cfg = TrainConfig(stage="refine", pretrained=False, image_size=256, batch_size=BATCH, epochs_refine=1,
                      refine_sizes=(size,), refine_strides=(4,), refine_displacement=4, refine_match=False,
                      refine_sim_weight=0.1, refine_con_weight=1.0, refine_warp_weight=1.0, augment=False,
                      progress=False, tensorboard=False, device=DEVICE, backend=PROVIDERS[provider],
                      amp="bf16" if DEVICE == "cuda" else "none")
    device = torch.device(DEVICE)
    torch.manual_seed(0)
    stage = RefineStage(cfg, build_model(cfg, device), RandomPairs(BATCH), device, 0, 1)
    benchmark.group = f"refine_step-B{BATCH}-{size}"
    time_train_step(benchmark, stage, DEVICE, op="refine_step", provider=provider,
                    shape=f"B{BATCH}-Lite0-256-flow{size}")
