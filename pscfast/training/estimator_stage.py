"""PSC's stage 2: the STN warp estimator learns with the encoder frozen (Lu, Wang, Fan, ICML 2023; the
authors' release). Both directions come from one STN, fwd = stn(photo, sketch) and bwd = stn(sketch, photo);
the images warped by them are re-encoded by the frozen encoder, whose gradient reaches the flows, and the loss
is the weighted perceptual similarity (0.1) plus the forward-backward consistency (1.0).

``warp_weight`` adds known warps (not in the paper): each training photo and sketch against itself under a
random warp of the release's affine / TPS ranges, each in its own BN branch; the STN must return the warp's
grid (pscfast.losses.known_warp_loss). With ``sim_weight`` and ``con_weight`` 0 the pairs' flows are not
computed at all.
"""
from __future__ import annotations

import torch
from torch import nn

from pscfast import ops
from pscfast.data import normalize
from pscfast.losses import known_warp_loss, stage2_loss
from pscfast.models import PHOTO, SKETCH, PSCNet
from pscfast.models.psc import STN_STRIDES
from pscfast.training import distributed as dist_utils
from pscfast.training.augment import AugmentConfig, apply_geometry, augment_pair, geometry_grid, sample_geometry
from pscfast.training.augment_reference import augment_reference
from pscfast.training.share import frozen_copy, shared_copy
from pscfast.training.stage import PSCStage


class FlowPair(nn.Module):
    """fwd = stn(photo, sketch), bwd = stn(sketch, photo), and with ``known = (src, tgt)`` also stn(src, tgt) for
    the known-warp supervision, in one forward (one DDP call per step). ``f_photo=None`` skips fwd and bwd."""

    def __init__(self, stn: nn.Module):
        super().__init__()
        self.stn = stn

    def forward(self, f_photo, f_sketch, known=None):
        flows = None if f_photo is None else (self.stn(f_photo, f_sketch), self.stn(f_sketch, f_photo))
        return flows if known is None else (flows, self.stn(*known))


def known_warps(encoder, images: torch.Tensor, modality: int, geometry: AugmentConfig, generator=None,
                strides=STN_STRIDES):
    """Each image (normalised, (N, 3, H, W)) and the same image under a random warp drawn from ``geometry``,
    both encoded at ``strides`` without gradient in ``modality``. Returns (features of the images, features of
    the warped images, the warps' sampling grids (N, H, W, 2)): ``stn(src, tgt)`` should return the grid."""
    n, _, h, w = images.shape
    grid = geometry_grid(sample_geometry(n, geometry, generator, images.device), h, w, images.dtype)
    with torch.no_grad():
        warped = apply_geometry(images, grid)
        return encoder.features(images, modality, strides), encoder.features(warped, modality, strides), grid


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
        pair = cfg.sim_weight > 0 or cfg.con_weight > 0 or not cfg.warp_weight  # PSC's losses on the pairs
        with self.autocast():
            known = self._known_warps(photo, sketch) if cfg.warp_weight else None
            with torch.no_grad():
                f_photo, f_sketch = (enc.features(photo, PHOTO), enc.features(sketch, SKETCH)) if pair else (None, None)
            out = self.forward(f_photo, f_sketch, None if known is None else known[:2])
            flows, pred = (out, None) if known is None else out
            losses = self._pair_losses(photo, sketch, f_photo, f_sketch, *flows) if pair else {}
        if known is not None:
            warp = known_warp_loss(pred.float(), known[2])
            losses = {**losses, "loss": losses.get("loss", 0) + cfg.warp_weight * warp, "warp": warp.detach()}
        return losses

    def _pair_losses(self, photo, sketch, f_photo, f_sketch, fwd, bwd, weights=None, strides=STN_STRIDES,
                     size: int = 16) -> dict[str, torch.Tensor]:
        """PSC's stage-2 losses of the predicted flows (weighted similarity and consistency); f_photo and
        f_sketch are the maps at ``strides``, the similarity is taken at size x size. ``weights``: (similarity,
        consistency), by default the configuration's stage-2 weights."""
        cfg, enc = self.cfg, self.encoder
        sim_weight, con_weight = weights or (cfg.sim_weight, cfg.con_weight)
        image_size = tuple(photo.shape[-2:])
        # re-encode the warped images: gradients reach the flows through the frozen encoder
        w_photo = ops.warp(photo, fwd.to(photo.dtype), out_size=image_size, padding_mode="border",
                           backend=cfg.backend)
        w_sketch = ops.warp(sketch, bwd.to(photo.dtype), out_size=image_size, padding_mode="border",
                            backend=cfg.backend)
        fw_photo, fw_sketch = enc.features(w_photo, PHOTO, strides), enc.features(w_sketch, SKETCH, strides)
        f = lambda fs: [t.float() for t in fs]  # noqa: E731  (losses in fp32)
        return stage2_loss(f(fw_photo), f(f_sketch), f(fw_sketch), f(f_photo), fwd.float(), bwd.float(),
                           sim_weight, con_weight, cfg.tau, cfg.backend, size)

    def _known_warps(self, photo: torch.Tensor, sketch: torch.Tensor, strides=STN_STRIDES):
        """known_warps of the photos (photo BN) and the sketches (sketch BN), one batch: (src, tgt, grids)."""
        (src_p, tgt_p, grid_p), (src_s, tgt_s, grid_s) = (
            known_warps(self.encoder, x, m, AugmentConfig(), self.gen, strides)
            for x, m in ((photo, PHOTO), (sketch, SKETCH)))
        return ([torch.cat(t) for t in zip(src_p, src_s)], [torch.cat(t) for t in zip(tgt_p, tgt_s)],
                torch.cat([grid_p, grid_s]))
