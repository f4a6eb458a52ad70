"""PSC's stage 2: the STN warp estimator learns with the encoder frozen (Lu, Wang, Fan, ICML 2023; the
authors' release). Both directions come from one STN, fwd = stn(photo, sketch) and bwd = stn(sketch, photo);
the images warped by them are re-encoded by the frozen encoder, whose gradient reaches the flows, and the loss
is the weighted perceptual similarity (0.1) plus the forward-backward consistency (1.0).
"""
from __future__ import annotations

import torch
from torch import nn

from pscfast import ops
from pscfast.data import normalize
from pscfast.losses import stage2_loss
from pscfast.models import PHOTO, SKETCH, PSCNet
from pscfast.training import distributed as dist_utils
from pscfast.training.augment import augment_pair
from pscfast.training.augment_reference import augment_reference
from pscfast.training.share import frozen_copy, shared_copy
from pscfast.training.stage import PSCStage


class FlowPair(nn.Module):
    """fwd = stn(photo, sketch), bwd = stn(sketch, photo) in one forward (one DDP call per step)."""

    def __init__(self, stn: nn.Module):
        super().__init__()
        self.stn = stn

    def forward(self, f_photo, f_sketch):
        return self.stn(f_photo, f_sketch), self.stn(f_sketch, f_photo)


class EstimatorStage(PSCStage):
    """Stage 2 on ``model.stn``; ``encoder`` is a frozen view of ``model.encoder`` in the mode
    ``encoder_train_mode`` asks for (False: eval, True: the release's train-mode BN)."""

    number = 2

    def build(self, model: PSCNet, data):
        self.encoder = frozen_copy(model.encoder).train(self.cfg.encoder_train_mode)
        stn = shared_copy(model.stn).train()
        if self.world > 1:
            stn = dist_utils.sync_batchnorm(stn, self.device)
        return FlowPair(stn), list(stn.parameters()), self.cfg.lr_estimator, {"stn.": stn}

    def losses(self, batch) -> dict[str, torch.Tensor]:
        cfg, enc = self.cfg, self.encoder
        augment = augment_reference if cfg.augment_loop else augment_pair
        photo, sketch, _ = augment(*self.images(batch), self.aug, self.gen)
        photo, sketch = normalize(photo), normalize(sketch)
        with self.autocast():
            with torch.no_grad():
                f_photo, f_sketch = enc.features(photo, PHOTO), enc.features(sketch, SKETCH)
            fwd, bwd = self.forward(f_photo, f_sketch)
            size = tuple(photo.shape[-2:])
            # re-encode the warped images: gradients reach the flows through the frozen encoder
            w_photo = ops.warp(photo, fwd.to(photo.dtype), out_size=size, padding_mode="border", backend=cfg.backend)
            w_sketch = ops.warp(sketch, bwd.to(photo.dtype), out_size=size, padding_mode="border", backend=cfg.backend)
            fw_photo, fw_sketch = enc.features(w_photo, PHOTO), enc.features(w_sketch, SKETCH)
        f = lambda fs: [t.float() for t in fs]  # noqa: E731  (losses in fp32)
        return stage2_loss(f(fw_photo), f(f_sketch), f(fw_sketch), f(f_photo), fwd.float(), bwd.float(),
                           cfg.sim_weight, cfg.con_weight, cfg.tau, cfg.backend)
