"""One stage-2 training step of PSC (augmentation, frozen-encoder features, both STN directions, warps,
re-encoding, similarity + consistency losses, backward, SGD): pscfast's ops with batched on-device
augmentation ("pscfast") against the same step built the naive way: the reference ops and the release's
per-sample augmentation loop ("naive"). CPU: batch 8 R18 at 256x256; CUDA: batch 256 R18 with bf16 AMP."""
import pytest
import torch

from bench.conftest import bench_device, peak_bytes, record_result
from pscfast.training.config import TrainConfig
from pscfast.training.estimator_stage import EstimatorStage
from pscfast.training.pipeline import build_model

DEVICE = bench_device()
BATCH = 256 if DEVICE == "cuda" else 8


class _Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return BATCH

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"photo": torch.rand(3, 256, 256, generator=g), "sketch": torch.rand(3, 256, 256, generator=g),
                "class_id": 1}


PROVIDERS = {"pscfast": dict(backend=None, augment_loop=False), "naive": dict(backend="torch", augment_loop=True)}


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_train_step(benchmark, provider):
    # the paper's stage 2 (R18, PSC's losses), not the default run's
    cfg = TrainConfig(arch="resnet18", pretrained=False, sim_weight=0.1, con_weight=1.0, warp_weight=0.0,
                      image_size=256, batch_size=BATCH, epochs_estimator=1, augment=True, progress=False,
                      tensorboard=False, device=DEVICE, **PROVIDERS[provider])
    device = torch.device(DEVICE)
    torch.manual_seed(0)
    stage = EstimatorStage(cfg, build_model(cfg, device), _Pairs(), device, 0, 1)
    batch = next(iter(stage.loader))
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)

    def step():
        stage.train_step(batch)
        sync()

    step()  # warm-up
    peak = peak_bytes(step, DEVICE)  # beyond the resident model, optimizer state and batch
    benchmark.group = f"train_step-B{BATCH}"
    benchmark.pedantic(step, rounds=3 if DEVICE == "cuda" else 2, iterations=1)
    stats = benchmark.stats.stats
    record = {"op": "train_step", "provider": provider, "mode": "fwd+bwd", "shape": f"B{BATCH}-R18-256",
              "device": DEVICE, "dtype": "bf16-amp" if DEVICE == "cuda" else "float32", "median_s": stats.median,
              "iqr_s": stats.iqr, "min_s": stats.min, "rounds": stats.rounds, "peak_bytes": peak}
    record_result(benchmark, record)
