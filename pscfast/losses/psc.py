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
