"""SFNet's training step in pscfast.training.loop: Adam (the paper's betas) on the adaptation layers only, the
backbone frozen, the loss of Lee et al. (TPAMI 2020, eq. 4) with the masks of each pair, the learning rate
divided by 5 from ``lr_decay_epoch`` on."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from pscfast.data import normalize, resize
from pscfast.losses import sfnet_loss
from pscfast.models.sfnet import SFNet
from pscfast.training.loop import TrainingLoop
from pscfast.training.sfnet.config import SFNetConfig
from pscfast.training.share import shared_copy


class SFNetTrainer(TrainingLoop):
    """Trains ``model`` (its adaptation layers, in place) on ``data``, MaskedPairs items."""

    def __init__(self, cfg: SFNetConfig, model: SFNet, data, device: torch.device):
        self.cfg, self.model, self.device = cfg, model, device
        loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.workers,
                            generator=torch.Generator().manual_seed(cfg.seed))
        steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
        if steps == 0:
            raise ValueError(f"sfnet: batch_size {cfg.batch_size} exceeds the {len(data)} training pairs")
        self.net = shared_copy(model).train()
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999))
        decay = cfg.lr_decay_epoch if cfg.lr_decay_epoch is not None else cfg.epochs
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [decay], gamma=0.2)
        super().__init__(name="sfnet", loader=loader, steps_per_epoch=steps, epochs=cfg.epochs, optimizer=opt,
                         scheduler=sched, scheduler_interval="epoch", lr=cfg.lr, progress=cfg.progress,
                         watched={"adapt3.": self.net.adapt3, "adapt4.": self.net.adapt4})

    def losses(self, batch) -> dict[str, torch.Tensor]:
        size, device = self.cfg.image_size, self.device
        photo = normalize(resize(batch["photo"].to(device), size))
        sketch = normalize(resize(batch["sketch"].to(device), size))
        fwd, bwd = self.net(photo, sketch)
        # fwd lives on the sketch and points into the photo: the sketch is the paper's source image s.
        return sfnet_loss(fwd, bwd, batch["sketch_mask"].to(device), batch["photo_mask"].to(device),
                          self.cfg.weights())
