"""Stage 3 (not in the paper): the refinement levels of PSCNet (pscfast.models.refine) learn on top of its STN,
the encoder frozen, so that the model returns a flow finer than the STN's 16x16.

Losses at the finest flow's size S: the known-warp loss (``refine_warp_weight``: each training photo and sketch
against itself under a random warp, as in stage 2, the refined flow against the warp's grid resized to S x S),
PSC's weighted perceptual similarity through the fused op at S x S, with the same tau and weighting, on every
encoder map the model reads (``refine_sim_weight``), and the forward-backward consistency of the refined flows
(``refine_con_weight``). The STN is frozen, unless ``refine_stn``: then it learns on, from the known warps at
its own 16x16 (``warp_weight``), jointly with the levels.
"""
from __future__ import annotations

import torch
from torch import nn

from pscfast.data import normalize
from pscfast.losses import known_warp_loss
from pscfast.models import PHOTO, SKETCH, PSCNet
from pscfast.models.psc import STN_STRIDES
from pscfast.training import distributed as dist_utils
from pscfast.training.augment import augment_pair
from pscfast.training.augment_reference import augment_reference
from pscfast.training.estimator_stage import EstimatorStage
from pscfast.training.share import frozen_copy, shared_copy


class RefinePair(nn.Module):
    """The refined flows of the pairs (fwd, bwd), and with ``known = (src, tgt)`` the STN's and the refined flow
    of the known warps, in one forward (one DDP call per step). Features are {stride: map} dicts;
    ``p_photo=None`` skips the pairs."""

    def __init__(self, stn: nn.Module, refine: nn.Module):
        super().__init__()
        self.stn, self.refine = stn, refine

    def _flows(self, src, tgt) -> tuple[torch.Tensor, torch.Tensor]:
        coarse = self.stn([src[s] for s in STN_STRIDES], [tgt[s] for s in STN_STRIDES])
        return coarse, self.refine(coarse, src, tgt)

    def forward(self, p_photo, p_sketch, known=None):
        flows = None if p_photo is None else (self._flows(p_photo, p_sketch)[1], self._flows(p_sketch, p_photo)[1])
        return flows if known is None else (flows, self._flows(*known))


class RefineStage(EstimatorStage):
    """Stage 3 on ``model.refine`` (and ``model.stn`` with ``refine_stn``); the encoder is frozen as in stage 2."""

    number = 3

    def build(self, model: PSCNet, data):
        cfg = self.cfg
        if not len(model.refine.levels):
            raise ValueError("stage 3: the model has no refinement levels to train (build it with "
                             "PSCNet(..., refine=...); train/run.py does so from --refine-sizes)")
        self.encoder = frozen_copy(model.encoder).train(cfg.encoder_train_mode)
        self.strides = tuple(sorted({*STN_STRIDES, *model.refine.strides}))
        self.size = model.refine.size
        refine = shared_copy(model.refine).train()
        stn = shared_copy(model.stn).train() if cfg.refine_stn else frozen_copy(model.stn).eval()
        if self.world > 1 and cfg.refine_stn:
            stn = dist_utils.sync_batchnorm(stn, self.device)
        trained = {"refine.": refine, **({"stn.": stn} if cfg.refine_stn else {})}
        params = [p for module in trained.values() for p in module.parameters()]
        return RefinePair(stn, refine), params, cfg.lr_refine, trained

    def losses(self, batch) -> dict[str, torch.Tensor]:
        cfg, enc = self.cfg, self.encoder
        augment = augment_reference if cfg.augment_loop else augment_pair
        photo, sketch, _ = augment(*self.images(batch), self.aug, self.gen)
        photo, sketch = normalize(photo), normalize(sketch)
        weights = (cfg.refine_sim_weight, cfg.refine_con_weight)
        pair = any(weights) or not cfg.refine_warp_weight
        pyramid = lambda maps: dict(zip(self.strides, maps))  # noqa: E731
        with self.autocast():
            known = self._known_warps(photo, sketch, self.strides) if cfg.refine_warp_weight else None
            with torch.no_grad():
                p_photo, p_sketch = ((pyramid(enc.features(photo, PHOTO, self.strides)),
                                      pyramid(enc.features(sketch, SKETCH, self.strides))) if pair else (None, None))
            out = self.forward(p_photo, p_sketch, None if known is None else (pyramid(known[0]), pyramid(known[1])))
            flows, pred = (out, None) if known is None else out
            losses = {}
            if pair:
                losses = self._pair_losses(photo, sketch, [p_photo[s] for s in self.strides],
                                           [p_sketch[s] for s in self.strides], *flows, weights, self.strides,
                                           self.size)
        if known is not None:
            coarse, fine = pred
            warp = known_warp_loss(fine.float(), known[2])
            total = losses.get("loss", 0) + cfg.refine_warp_weight * warp
            losses = {**losses, "warp": warp.detach()}
            if cfg.refine_stn:
                warp16 = known_warp_loss(coarse.float(), known[2])
                total = total + cfg.warp_weight * warp16
                losses["warp16"] = warp16.detach()
            losses["loss"] = total
        return losses
