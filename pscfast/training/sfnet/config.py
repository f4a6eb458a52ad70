"""SFNet's training configuration (frozen dataclass): ``python train/run.py --model sfnet`` takes a flag per
field (pscfast._flags; the comment on each field is its help text)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pscfast._config import check_types
from pscfast.losses.sfnet import WEIGHTS
from pscfast.models.resnet import ARCHS
from pscfast.models.sfnet import BETA, SIGMA
from pscfast.training.config import check_backend


@dataclass(frozen=True)
class SFNetConfig:
    """Defaults: a short CPU run on the synthetic benchmark. The paper (Lee et al., TPAMI 2020) trains 40
    epochs at lr 3e-5, divided by 5 after 30 epochs, batch 16, on ResNet-101."""
    CHOICES: ClassVar[dict[str, tuple]] = {"arch": tuple(ARCHS)}

    arch: str = "resnet18"               # the backbone (frozen)
    data_root: str = "runs/synthetic"    # Sketchy root, with masks (generated there when it is the synthetic default)
    csv_dir: str | None = None           # where train_pairs_ps.csv / test_pairs_ps.csv are (none: data_root)
    out: str = "runs/sfnet"              # output folder: final.pt and the correspondence picture
    image_size: int = 256                # training/inference resolution: 16x16 flows (layer3)
    batch_size: int = 8                  # pairs per step
    epochs: int = 16                     # training epochs
    max_steps_per_epoch: int | None = None  # at most this many steps per epoch (none: the whole training set)
    lr: float = 1e-3                     # Adam learning rate (the paper: 3e-5 for 7k iterations)
    lr_decay_epoch: int | None = None    # the lr is divided by 5 from this epoch on (the paper: 30)
    beta: float = BETA                   # kernel soft argmax temperature
    sigma: float = SIGMA                 # kernel soft argmax Gaussian std, in feature cells
    w_mask: float = WEIGHTS["mask"]      # weight of the mask consistency loss
    w_flow: float = WEIGHTS["flow"]      # weight of the flow consistency loss
    w_smooth: float = WEIGHTS["smooth"]  # weight of the smoothness loss
    imagenet: str | None = None          # torchvision/MoCo ImageNet checkpoint for the backbone
    init: str | None = None              # PSC checkpoint whose encoder becomes the backbone
    backend: str | None = None           # pscfast.ops backend ("torch" = reference ops)
    eval_batch_size: int = 16            # batch size of the PCK evaluation
    eval_limit: int | None = None        # evaluate on the first N test pairs only
    workers: int = 0                     # data-loader worker processes
    seed: int = 0                        # seeds the model init and the data order
    device: str = "auto"                 # auto (CUDA when there is one) | cpu | cuda | cuda:N
    progress: bool = True                # a progress bar

    def __post_init__(self):
        check_types(self)
        for name in ("batch_size", "epochs", "lr", "beta", "sigma", "eval_batch_size"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SFNetConfig: {name} must be positive, got {getattr(self, name)!r}")
        for name in ("w_mask", "w_flow", "w_smooth", "workers"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"SFNetConfig: {name} must be non-negative, got {getattr(self, name)!r}")
        for name in ("max_steps_per_epoch", "lr_decay_epoch", "eval_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"SFNetConfig: {name} must be at least 1 or None, got {getattr(self, name)!r}")
        if self.image_size < 32:
            raise ValueError(f"SFNetConfig: image_size must be at least 32 (layer3 has stride 16), "
                             f"got {self.image_size}")
        check_backend(self)

    def weights(self) -> dict[str, float]:
        return {"mask": self.w_mask, "flow": self.w_flow, "smooth": self.w_smooth}
