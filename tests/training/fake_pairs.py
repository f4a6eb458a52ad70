"""A tiny in-memory stand-in for PSCTrainPairs (same item layout) and the matching test configuration."""
import torch
from torch.utils.data import Dataset

from pscfast.training.config import TrainConfig


class FakePairs(Dataset):
    """Deterministic smooth random photo/sketch pairs: dict photo, sketch (3, 32, 32) in [0, 1], class_id."""

    def __init__(self, n: int = 4, size: int = 32):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(1000 + i)
        low = torch.rand(2, 3, 8, 8, generator=g)
        img = torch.nn.functional.interpolate(low, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return {"photo": img[0], "sketch": img[1], "class_id": 1}


def tiny_config(**kw) -> TrainConfig:
    base = dict(arch="resnet18", pretrained=False, stage="both", sim_weight=0.1, con_weight=1.0, warp_weight=0.0,
                match_start=False, image_size=32, batch_size=2, epochs_encoder=2, epochs_estimator=2,
                max_steps_per_epoch=None, moco_k=2, warmup_epochs=0.5, augment=True, progress=False,
                tensorboard=False, device="cpu")
    return TrainConfig(**{**base, **kw})
