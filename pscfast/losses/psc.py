"""PSC's stage-2 losses through pscfast.ops: weighted perceptual similarity (0.1) and forward-backward
consistency (1.0); and the known-warp loss, the error of the flow the STN predicts for an image against itself
under a warp whose grid is known. ``backend`` picks the pscfast.ops backend ("torch" = the reference ops)."""
from __future__ import annotations

from typing import Sequence

import torch

from pscfast import ops
from pscfast.ops._reference import resize_grid


def similarity(fw: Sequence[torch.Tensor], ft: Sequence[torch.Tensor], tau: float = 0.001,
               backend: str | None = None, size: int = 16) -> torch.Tensor:
    """One direction: mean over (n, j) of weight * CE; fw = features of the warped image, ft of the target,
    each layer resized to size x size (the paper: 16)."""
    ce, w = ops.similarity_loss(fw, ft, tau, size, backend=backend)
    return (ce * w).mean()


def stage2_loss(fw_photo, f_sketch, fw_sketch, f_photo, fwd: torch.Tensor, bwd: torch.Tensor,
                sim_weight: float = 0.1, con_weight: float = 1.0, tau: float = 0.001,
                backend: str | None = None, size: int = 16) -> dict[str, torch.Tensor]:
    """Total loss and its parts. fw_photo: features of the photo warped by fwd (on the sketch grid), compared
    with the sketch's; fw_sketch: the sketch warped by bwd, compared with the photo's; the similarity at
    size x size (the flows' own grid for the consistency)."""
    sim = similarity(fw_photo, f_sketch, tau, backend, size) + similarity(fw_sketch, f_photo, tau, backend, size)
    con = ops.consistency_loss(fwd, bwd, backend=backend)
    return {"loss": sim_weight * sim + con_weight * con, "similarity": sim.detach(), "consistency": con.detach()}


def known_warp_loss(pred: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per coordinate between predicted grids (N, h, w, 2) and the true ones resized to
    (h, w), over the cells whose true position lies inside the image (border padding carries no match there)."""
    target = resize_grid(grid, tuple(pred.shape[1:3])).to(pred.dtype)
    inside = (target.abs() <= 1).all(-1, keepdim=True).to(pred.dtype)
    return ((pred - target).abs() * inside).sum() / (2 * inside.sum()).clamp_min(1)
