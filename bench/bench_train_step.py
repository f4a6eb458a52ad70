"""One stage-2 training step of PSC (augmentation, frozen-encoder features, both STN directions, warps,
re-encoding, similarity + consistency losses, backward, SGD): pscfast's ops with batched on-device
augmentation ("pscfast") against the same step built the naive way: the reference ops and the release's
per-sample augmentation loop ("naive"). CPU: batch 8 R18 at 256x256; CUDA: batch 256 R18 with bf16 AMP."""
import pytest
import torch

from bench._training_step import RandomPairs, time_train_step
from bench.conftest import bench_device
from pscfast.training.config import TrainConfig
from pscfast.training.estimator_stage import EstimatorStage
from pscfast.training.pipeline import build_model

DEVICE = bench_device()
BATCH = 256 if DEVICE == "cuda" else 8
PROVIDERS = {"pscfast": dict(backend=None, augment_loop=False), "naive": dict(backend="torch", augment_loop=True)}


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_train_step(benchmark, provider):
    # the paper's stage 2 (R18 from the identity, PSC's losses), not the default run's
    cfg = TrainConfig(stage="estimator", arch="resnet18", pretrained=False, match_start=False, sim_weight=0.1,
                      con_weight=1.0, warp_weight=0.0, image_size=256, batch_size=BATCH, epochs_estimator=1,
                      augment=True, progress=False, tensorboard=False, device=DEVICE, **PROVIDERS[provider])
    device = torch.device(DEVICE)
    torch.manual_seed(0)
    stage = EstimatorStage(cfg, build_model(cfg, device), RandomPairs(BATCH), device, 0, 1)
    benchmark.group = f"train_step-B{BATCH}"
    time_train_step(benchmark, stage, DEVICE, op="train_step", provider=provider, shape=f"B{BATCH}-R18-256")
