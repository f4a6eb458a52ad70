"""PSC's stage-2 losses through pscfast.ops: weighted perceptual similarity (0.1) and forward-backward
consistency (1.0). ``backend`` picks the pscfast.ops backend ("torch" = the reference ops)."""
from __future__ import annotations

from typing import Sequence

import torch

from pscfast import ops


def similarity(fw: Sequence[torch.Tensor], ft: Sequence[torch.Tensor], tau: float = 0.001,
               backend: str | None = None) -> torch.Tensor:
    """One direction: mean over (n, j) of weight * CE; fw = features of the warped image, ft of the target."""
    ce, w = ops.similarity_loss(fw, ft, tau, backend=backend)
    return (ce * w).mean()


def stage2_loss(fw_photo, f_sketch, fw_sketch, f_photo, fwd: torch.Tensor, bwd: torch.Tensor,
                sim_weight: float = 0.1, con_weight: float = 1.0, tau: float = 0.001,
                backend: str | None = None) -> dict[str, torch.Tensor]:
    """Total loss and its parts. fw_photo: features of the photo warped by fwd (on the sketch grid), compared
    with the sketch's; fw_sketch: the sketch warped by bwd, compared with the photo's."""
    sim = similarity(fw_photo, f_sketch, tau, backend) + similarity(fw_sketch, f_photo, tau, backend)
    con = ops.consistency_loss(fwd, bwd, backend=backend)
    return {"loss": sim_weight * sim + con_weight * con, "similarity": sim.detach(), "consistency": con.detach()}


def known_warps(encoder, images: torch.Tensor, modality: int, geometry, generator=None):
    """Self-supervision of the warp estimator by known warps: each image (normalised, (N, 3, H, W)) and the same
    image under a random warp drawn from ``geometry`` (an :class:`~pscfast.training.augment.AugmentConfig`: the
    release's affine / TPS ranges), both encoded without gradient in ``modality``. Returns (features of the
    images, features of the warped images, the warps' sampling grids (N, H, W, 2)): ``stn(src, tgt)`` should
    return the grid, which :func:`known_warp_loss` scores."""
    from pscfast.training.augment import apply_geometry, geometry_grid, sample_geometry
    n, _, h, w = images.shape
    grid = geometry_grid(sample_geometry(n, geometry, generator, images.device), h, w, images.dtype)
    with torch.no_grad():
        return encoder.features(images, modality), encoder.features(apply_geometry(images, grid), modality), grid


def known_warp_loss(pred: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per coordinate between predicted grids (N, h, w, 2) and the true ones resized to
    (h, w), over the cells whose true position lies inside the image (border padding carries no match there)."""
    from pscfast.ops._reference import resize_grid
    target = resize_grid(grid, tuple(pred.shape[1:3])).to(pred.dtype)
    inside = (target.abs() <= 1).all(-1, keepdim=True).to(pred.dtype)
    return ((pred - target).abs() * inside).sum() / (2 * inside.sum()).clamp_min(1)
